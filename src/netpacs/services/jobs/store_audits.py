"""Stale store audits: the audit messages of store batches whose process died.

An association, STOW-RS request or import run keeps its counts per study in the index
while it runs (:mod:`netpacs.services.ingest_batch`) and turns them into its audit
messages when it ends. A process killed in between leaves its tally behind, untouched:
this job audits each study of such a batch once (on any node; rows are taken under row
locks), with the counts it last saved, and says the batch did not end properly.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from netpacs.index.tally import take_stale
from netpacs.services.audit import Actor, AuditService
from netpacs.services.ingest_batch import SAVE_EVERY, store_record

log = logging.getLogger(__name__)

Run = Callable[[Callable[[sa.Connection], Any]], Any]
EVERY = 60.0  # seconds between looks
#: A live batch saves at least every SAVE_EVERY seconds while it stores, and an
#: association idle for longer than the DIMSE timeout is aborted (and closed): a tally
#: untouched this long belongs to a process that is gone.
STALE_AFTER = dt.timedelta(minutes=10)
assert STALE_AFTER.total_seconds() > 4 * SAVE_EVERY


class StaleStoreAudits:
    name = "stale store audits"

    def __init__(
        self,
        run: Run,
        audit: AuditService,
        *,
        every: float = EVERY,
        stale_after: dt.timedelta = STALE_AFTER,
    ) -> None:
        self._run = run
        self._audit = audit
        self._every = every
        self._stale_after = stale_after

    def step(self) -> float:
        """Audit up to a batch's worth of stale tallies; at once again if there were."""
        audited: int = self._run(self._audit_stale)
        if audited:
            log.warning("audited %d studies of store batches whose process ended", audited)
        return 0.0 if audited else self._every

    def _audit_stale(self, conn: sa.Connection) -> int:
        rows = take_stale(conn, before=dt.datetime.now(dt.UTC) - self._stale_after)
        for row in rows:
            note = (
                "; the batch did not end properly (its process stopped): counts as of "
                f"{row.touched_at:%Y-%m-%d %H:%M:%S} UTC"
            )
            record = store_record(
                Actor(**row.actor),
                row.origin,
                row.study_instance_uid,
                stored=row.stored,
                refused=row.refused,
                patients=list(row.patients),
                note=note,
            )
            self._audit.record_in(conn, record)
        return len(rows)

    def close(self) -> None:
        pass
