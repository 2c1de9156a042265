"""The SQL of the job backlogs the metrics show: how much waits, and since when.

A few aggregate queries on indexed columns: results not yet accepted per trust
(``result_outbox`` by ``sent_at, trust``), audit records not yet forwarded
(``audit_event`` by ``forwarded_at, id``) and open store tallies (``store_tally``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from netpacs.index.schema import audit_event, result_outbox, store_tally

Waiting = tuple[int, dt.datetime | None]  # how many, and the oldest's time


@dataclass(frozen=True, slots=True)
class BacklogReading:
    at: dt.datetime
    results: dict[str, Waiting]  # by trust (ODS code), only trusts with results waiting
    audit: Waiting | None  # None: not read (no forwarding configured)
    tallies: Waiting  # by the time each was last saved


def _aware(when: dt.datetime | None) -> dt.datetime | None:
    if when is None:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def read_backlog(conn: sa.Connection, *, audit_forwarding: bool) -> BacklogReading:
    now = dt.datetime.now(dt.UTC)
    rows = conn.execute(
        sa.select(result_outbox.c.trust, sa.func.count(), sa.func.min(result_outbox.c.created_at))
        .where(result_outbox.c.sent_at.is_(None))
        .group_by(result_outbox.c.trust)
    ).all()
    results = {row[0]: (int(row[1]), _aware(row[2])) for row in rows}
    audit: Waiting | None = None
    if audit_forwarding:
        waiting = audit_event.c.forwarded_at.is_(None)
        count = conn.execute(
            sa.select(sa.func.count()).select_from(audit_event).where(waiting)
        ).scalar_one()
        # The oldest by id (the index), not MIN(event_time) over every waiting row.
        first = conn.execute(
            sa.select(audit_event.c.event_time).where(waiting).order_by(audit_event.c.id).limit(1)
        ).scalar()
        audit = (int(count), _aware(first))
    count, first = conn.execute(
        sa.select(sa.func.count(), sa.func.min(store_tally.c.touched_at))
    ).one()
    return BacklogReading(now, results, audit, (int(count), _aware(first)))
