"""The patient and ADT identity rows the ADT rules read and write."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from netpacs.index.schema import adt_identity, patient
from netpacs.services.adt.events import Identity

PATIENT_COLUMNS = ("patient_name", "patient_birth_date", "patient_sex", "nhs_number")


def patient_pk(conn: sa.Connection, identity: Identity) -> int | None:
    pk = conn.execute(
        sa.select(patient.c.id).where(
            patient.c.patient_id == identity.patient_id, patient.c.issuer == identity.issuer
        )
    ).scalar()
    return None if pk is None else int(pk)


def patient_row(conn: sa.Connection, identity: Identity) -> dict[str, Any] | None:
    row = conn.execute(
        sa.select(patient).where(
            patient.c.patient_id == identity.patient_id, patient.c.issuer == identity.issuer
        )
    ).first()
    return None if row is None else plain(row)


def identity_row(conn: sa.Connection, identity: Identity) -> dict[str, Any] | None:
    row = conn.execute(
        sa.select(adt_identity).where(
            adt_identity.c.patient_id == identity.patient_id,
            adt_identity.c.issuer == identity.issuer,
        )
    ).first()
    return None if row is None else plain(row)


def plain(row: sa.Row[Any]) -> dict[str, Any]:
    # Column names are sqlalchemy quoted_name, a str subclass orjson will not take as keys.
    return {str(k): v for k, v in row._mapping.items()}


def store_patient(
    conn: sa.Connection, identity: Identity, columns: dict[str, str], now: dt.datetime
) -> int:
    """The patient row of ``identity``, created when missing, with ``columns`` set."""
    pk = patient_pk(conn, identity)
    if pk is None:
        return int(
            conn.execute(
                sa.insert(patient)
                .values(
                    patient_id=identity.patient_id,
                    issuer=identity.issuer,
                    created_at=now,
                    **columns,
                )
                .returning(patient.c.id)
            ).scalar_one()
        )
    if columns:
        conn.execute(sa.update(patient).where(patient.c.id == pk).values(**columns))
    return pk
