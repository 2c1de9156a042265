"""Alembic environment: runs on the connection given by netpacs.index.db.migrate."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from netpacs.index.schema import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    context.run_migrations()
