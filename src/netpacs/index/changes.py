"""The SQL of the change feed (``change_feed``): append in the changing transaction, read
in order.

Ids come from the database in insert order, but on PostgreSQL transactions commit in
any order: a reader that saw id 12 may later see id 11 appear. So a reader is given a
``cursor`` that advances only over entries older than :data:`SETTLE` (no transaction
of netpacs stays open that long); newer entries are sent again on the next read, and
the edges apply them idempotently.

The feed is trimmed (:func:`trim`, the core's job services.edge.feed.FeedTrim): an
entry goes once every edge that reads the feed has read past it (the position each
edge last asked from, :func:`note_read`), and at the latest after the retention. The
highest id trimmed is kept (``edge_cursor`` row :data:`TRIMMED`): an edge that asks
from before it has missed entries, and is told to resync fully.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence

import sqlalchemy as sa

from netpacs.domain.changes import Change, ChangeKind
from netpacs.index.schema import change_feed, edge_cursor

SETTLE = dt.timedelta(seconds=30)
MAX_UIDS = 10_000  # studies named in one entry (a merge of a patient with more is cut)
TRIMMED = "change-feed-trimmed"  # edge_cursor: the highest id trimmed
_READ = "feed:"  # edge_cursor: where an edge last asked from (its name follows)


def record_change(
    conn: sa.Connection,
    kind: ChangeKind,
    *,
    patient_id: str = "",
    issuer: str = "",
    nhs_number: str | None = None,
    prior_patient_id: str | None = None,
    study_uids: Iterable[str] = (),
    now: dt.datetime | None = None,
) -> None:
    """Append one entry in ``conn``'s transaction (it commits with the change)."""
    conn.execute(
        sa.insert(change_feed).values(
            at=now or dt.datetime.now(dt.UTC),
            kind=kind.value,
            patient_id=patient_id,
            issuer=issuer,
            nhs_number=nhs_number or None,
            prior_patient_id=prior_patient_id,
            study_uids=" ".join(list(study_uids)[:MAX_UIDS]),
        )
    )


def read_changes(
    conn: sa.Connection,
    *,
    after: int,
    limit: int,
    admissions_of: str | None,
    now: dt.datetime | None = None,
) -> tuple[list[Change], int, bool]:
    """The entries after id ``after`` (at most ``limit``), the cursor to ask from next
    time, and whether more entries wait. ``admissions_of``: only that trust's
    admissions are given (an edge prefetches for its own trust); None: all."""
    now = now or dt.datetime.now(dt.UTC)
    rows = conn.execute(
        sa.select(change_feed)
        .where(change_feed.c.id > after)
        .order_by(change_feed.c.id)
        .limit(limit)
    ).all()
    settled = now - SETTLE
    cursor = after
    advancing = True
    changes: list[Change] = []
    for row in rows:
        at = row.at if row.at.tzinfo else row.at.replace(tzinfo=dt.UTC)
        advancing = advancing and at < settled
        if advancing:
            cursor = int(row.id)
        kind = ChangeKind(row.kind)
        if kind is ChangeKind.ADMIT and admissions_of is not None and row.issuer != admissions_of:
            continue
        changes.append(
            Change(
                id=int(row.id),
                kind=kind,
                patient_id=row.patient_id,
                issuer=row.issuer,
                nhs_number=row.nhs_number,
                prior_patient_id=row.prior_patient_id,
                study_uids=tuple(row.study_uids.split()),
            )
        )
    return changes, cursor, len(rows) == limit


def _cursor(conn: sa.Connection, name: str) -> int | None:
    found = conn.execute(
        sa.select(edge_cursor.c.position).where(edge_cursor.c.name == name)
    ).scalar()
    return None if found is None else int(found)


def _set_cursor(conn: sa.Connection, name: str, position: int) -> None:
    done = conn.execute(
        sa.update(edge_cursor).where(edge_cursor.c.name == name).values(position=position)
    ).rowcount
    if not done:
        conn.execute(sa.insert(edge_cursor).values(name=name, position=position))


def reader_name(client_id: str) -> str:
    """The ``edge_cursor`` row of an edge's read position (names are at most 32)."""
    name = _READ + client_id
    if len(name) <= 32:
        return name
    return _READ + hashlib.sha256(client_id.encode()).hexdigest()[: 32 - len(_READ)]


def note_read(conn: sa.Connection, client_id: str, position: int) -> None:
    """The edge ``client_id`` asked for the entries after ``position``: it has applied
    every entry up to it."""
    _set_cursor(conn, reader_name(client_id), position)


def trimmed_through(conn: sa.Connection) -> int:
    """The highest id trimmed (0: none)."""
    return _cursor(conn, TRIMMED) or 0


def top(conn: sa.Connection) -> int:
    """The feed's last id (0: empty, never written)."""
    last = conn.execute(sa.select(sa.func.max(change_feed.c.id))).scalar()
    return max(int(last or 0), trimmed_through(conn))


def trim(conn: sa.Connection, *, readers: Sequence[str], retain_since: dt.datetime) -> int:
    """Delete the entries every reader (an edge's client id) has read past, and those
    older than ``retain_since`` whoever has not read them; how many went. Readers that
    never read the feed hold nothing back (an edge starts at the feed's end)."""
    positions = [p for p in (_cursor(conn, reader_name(r)) for r in readers) if p is not None]
    read_by_all = min(positions) if positions else 0
    expired = conn.execute(
        sa.select(sa.func.max(change_feed.c.id)).where(change_feed.c.at < retain_since)
    ).scalar()
    horizon = max(read_by_all, int(expired or 0))
    if horizon <= trimmed_through(conn):
        return 0
    gone = conn.execute(sa.delete(change_feed).where(change_feed.c.id <= horizon)).rowcount
    _set_cursor(conn, TRIMMED, horizon)
    return int(gone or 0)
