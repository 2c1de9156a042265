"""The edge's forward queue (issue 13): what the site stored, until the core holds it.

A row per object stored at the edge from the site (written in the same transaction as
its index row, so an acknowledged object is always queued), ``forwarded_at`` set once
the core has confirmed it holds the same bytes. Studies go in order of precedence:
emergency studies first (the edge's own worklist item says so), then the study whose
oldest waiting object is oldest; within a study, objects in the order they arrived.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from netpacs.index.schema import edge_forward, instance, worklist_item

EMERGENCY = "emergency"


def enqueue(conn: sa.Connection, sop_instance_uid: str, study_instance_uid: str) -> None:
    """Queue an object for the core (in the transaction that indexes it); an object
    queued before (stored again after a deletion) waits again."""
    now = dt.datetime.now(dt.UTC)
    updated = conn.execute(
        sa.update(edge_forward)
        .where(edge_forward.c.sop_instance_uid == sop_instance_uid)
        .values(
            study_instance_uid=study_instance_uid,
            enqueued_at=now,
            attempts=0,
            next_attempt_at=None,
            last_error=None,
            forwarded_at=None,
            how=None,
        )
    ).rowcount
    if not updated:
        conn.execute(
            sa.insert(edge_forward).values(
                sop_instance_uid=sop_instance_uid,
                study_instance_uid=study_instance_uid,
                enqueued_at=now,
                attempts=0,
            )
        )


def _waiting(now: dt.datetime) -> sa.ColumnElement[bool]:
    return sa.and_(
        edge_forward.c.forwarded_at.is_(None),
        sa.or_(edge_forward.c.next_attempt_at.is_(None), edge_forward.c.next_attempt_at <= now),
    )


@dataclass(frozen=True, slots=True)
class NextStudy:
    study_instance_uid: str
    emergency: bool


def next_study(
    conn: sa.Connection, now: dt.datetime, busy: Collection[str] = ()
) -> NextStudy | None:
    """The study whose objects go next: emergency first, then oldest first (``busy``:
    studies another sender has in hand)."""
    emergency = (
        sa.select(1)
        .where(
            worklist_item.c.study_instance_uid == edge_forward.c.study_instance_uid,
            worklist_item.c.priority == EMERGENCY,
        )
        .exists()
    )
    is_emergency = sa.func.max(sa.case((emergency, 1), else_=0))
    row = conn.execute(
        sa.select(edge_forward.c.study_instance_uid, is_emergency.label("emergency"))
        .where(_waiting(now), edge_forward.c.study_instance_uid.not_in(list(busy)))
        .group_by(edge_forward.c.study_instance_uid)
        .order_by(
            is_emergency.desc(),
            sa.func.min(edge_forward.c.enqueued_at),
            sa.func.min(edge_forward.c.id),
        )
        .limit(1)
    ).first()
    if row is None:
        return None
    return NextStudy(str(row.study_instance_uid), bool(row.emergency))


@dataclass(frozen=True, slots=True)
class Waiting:
    """An object waiting to go, with where the edge keeps it."""

    sop_instance_uid: str
    attempts: int
    blob_key: str | None  # None: no longer held here (deleted at the edge)
    dataset_offset: int
    blob_size: int
    blob_crc32: int  # of the whole object, recorded when the edge stored it


def waiting_in_study(
    conn: sa.Connection, study_instance_uid: str, now: dt.datetime, limit: int
) -> list[Waiting]:
    rows = conn.execute(
        sa.select(
            edge_forward.c.sop_instance_uid,
            edge_forward.c.attempts,
            instance.c.blob_key,
            instance.c.dataset_offset,
            instance.c.blob_size,
            instance.c.blob_crc32,
        )
        .select_from(
            edge_forward.outerjoin(
                instance, instance.c.sop_instance_uid == edge_forward.c.sop_instance_uid
            )
        )
        .where(edge_forward.c.study_instance_uid == study_instance_uid, _waiting(now))
        .order_by(edge_forward.c.id)
        .limit(limit)
    ).all()
    return [
        Waiting(
            r.sop_instance_uid,
            int(r.attempts),
            r.blob_key,
            int(r.dataset_offset or 0),
            int(r.blob_size or 0),
            int(r.blob_crc32 or 0),
        )
        for r in rows
    ]


def confirm(conn: sa.Connection, uids: Sequence[str], how: str, now: dt.datetime) -> None:
    """The core holds these objects (``how``: sent, reconciled, or gone: deleted at the
    edge before it was sent)."""
    if uids:
        conn.execute(
            sa.update(edge_forward)
            .where(edge_forward.c.sop_instance_uid.in_(list(uids)))
            .values(forwarded_at=now, how=how, last_error=None, next_attempt_at=None)
        )


def postpone(
    conn: sa.Connection, failures: dict[str, str], now: dt.datetime, *, first: float, most: float
) -> None:
    """Try these objects again later (each one's wait doubling, up to ``most`` s)."""
    for uid, why in failures.items():
        attempts = conn.execute(
            sa.select(edge_forward.c.attempts).where(edge_forward.c.sop_instance_uid == uid)
        ).scalar()
        n = int(attempts or 0) + 1
        wait = min(most, first * 2 ** min(n - 1, 20))
        conn.execute(
            sa.update(edge_forward)
            .where(edge_forward.c.sop_instance_uid == uid)
            .values(
                attempts=n,
                last_error=why[:500],
                next_attempt_at=now + dt.timedelta(seconds=wait),
            )
        )


@dataclass(frozen=True, slots=True)
class Backlog:
    count: int
    oldest: dt.datetime | None  # when the oldest waiting object was stored (UTC)
    forwarded: int  # confirmed by the core, ever
    failing: int  # waiting objects the core refused or did not confirm at least once


def backlog(conn: sa.Connection) -> Backlog:
    waiting = edge_forward.c.forwarded_at.is_(None)
    row = conn.execute(
        sa.select(
            sa.func.count().filter(waiting),
            sa.func.min(edge_forward.c.enqueued_at).filter(waiting),
            sa.func.count().filter(edge_forward.c.forwarded_at.is_not(None)),
            sa.func.count().filter(sa.and_(waiting, edge_forward.c.attempts > 0)),
        )
    ).one()
    oldest = row[1]
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=dt.UTC)
    return Backlog(int(row[0]), oldest, int(row[2]), int(row[3]))


def unconfirmed(conn: sa.Connection, sop_instance_uids: Sequence[str]) -> set[str]:
    """Of these objects, those stored here that the core has not yet confirmed: the
    cache must keep them."""
    return set(
        conn.execute(
            sa.select(edge_forward.c.sop_instance_uid).where(
                edge_forward.c.sop_instance_uid.in_(list(sop_instance_uids)),
                edge_forward.c.forwarded_at.is_(None),
            )
        ).scalars()
    )
