"""The SQL of store tallies (``store_tally``): what a running store batch has stored of
each study, kept in the index so that its audit message survives the batch's process.

A batch upserts its rows as it goes and deletes them in the transaction that writes its
audit messages. Rows left by a process that died are taken, at most once across the
nodes sharing the index (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; one node on SQLite),
by the job that audits them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from netpacs.index.schema import store_tally


@dataclass(frozen=True, slots=True)
class TallyRow:
    """One study's tally in one batch."""

    batch: str
    study_instance_uid: str  # '' for objects refused before their study was known
    actor: dict[str, Any]  # who stored, as the audit trail names them
    origin: str  # how, for people ("C-STORE from EDGH_CT1 (RXC)")
    patients: tuple[tuple[str, str], ...]  # (patient ID, issuer)
    stored: int
    refused: dict[str, int]  # why -> how many
    touched_at: dt.datetime


def _values(row: TallyRow) -> dict[str, Any]:
    return {
        "batch": row.batch,
        "study_instance_uid": row.study_instance_uid,
        "actor_json": orjson.dumps(row.actor).decode(),
        "origin": row.origin,
        "patients_json": orjson.dumps(row.patients).decode(),
        "stored": row.stored,
        "refused_json": orjson.dumps(row.refused).decode(),
        "touched_at": row.touched_at,
    }


def save_tallies(conn: sa.Connection, rows: Sequence[TallyRow]) -> None:
    """Insert or update each row (keyed by batch and study)."""
    if not rows:
        return
    make = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = make(store_tally)
    changing = ("patients_json", "stored", "refused_json", "touched_at")
    stmt = stmt.on_conflict_do_update(
        index_elements=["batch", "study_instance_uid"],
        set_={name: stmt.excluded[name] for name in changing},
    )
    conn.execute(stmt, [_values(row) for row in rows])


def delete_batch(conn: sa.Connection, batch: str) -> None:
    conn.execute(sa.delete(store_tally).where(store_tally.c.batch == batch))


def take_stale(conn: sa.Connection, *, before: dt.datetime, limit: int = 100) -> list[TallyRow]:
    """Rows untouched since ``before`` (their batch's process died), deleted in ``conn``'s
    transaction: the caller audits them in the same transaction."""
    stmt = (
        sa.select(store_tally)
        .where(store_tally.c.touched_at < before)
        .order_by(store_tally.c.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    rows = conn.execute(stmt).all()
    if rows:
        conn.execute(sa.delete(store_tally).where(store_tally.c.id.in_([r.id for r in rows])))
    return [
        TallyRow(
            batch=r.batch,
            study_instance_uid=r.study_instance_uid,
            actor=orjson.loads(r.actor_json),
            origin=r.origin,
            patients=tuple((p[0], p[1]) for p in orjson.loads(r.patients_json)),
            stored=r.stored,
            refused=orjson.loads(r.refused_json),
            touched_at=r.touched_at if r.touched_at.tzinfo else r.touched_at.replace(tzinfo=dt.UTC),
        )
        for r in rows
    ]
