"""The index's metadata (naming convention) and the column types its tables share."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

UID = sa.String(64)
# The info of a column the database writes itself (a trigger), never the code.
BY_DATABASE = {"by_database": True}
TS = sa.DateTime(timezone=True)
