"""The SQL of the change feed (``change_feed``): append in the changing transaction, read
in order.

Ids come from the database in insert order, but on PostgreSQL transactions commit in
any order: a reader that saw id 12 may later see id 11 appear. So a reader is given a
``cursor`` that advances only over entries older than :data:`SETTLE` (no transaction
of netpacs stays open that long); newer entries are sent again on the next read, and
the edges apply them idempotently.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import sqlalchemy as sa

from netpacs.domain.changes import Change, ChangeKind
from netpacs.index.schema import change_feed

SETTLE = dt.timedelta(seconds=30)
MAX_UIDS = 10_000  # studies named in one entry (a merge of a patient with more is cut)


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
