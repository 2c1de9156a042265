"""SR sweep: stores the SR of each signed report whose SR could not be stored at signing.

The reporting service stores a report's Basic Text SR right after the signature
commits; when that fails (the archive refused it, the process died) the report stays
signed and this job stores the SR later, through the reporting service's own rule.
One node sweeps at a time (a PostgreSQL advisory lock held for the sweep), so the SR
of a version is stored once; the lock goes with a node that dies.
"""

from __future__ import annotations

import logging
from typing import Protocol

from netpacs.index import outbox
from netpacs.services.jobs.claiming import Claiming

log = logging.getLogger(__name__)

EVERY = 60.0  # seconds between sweeps


class MissingSrs(Protocol):
    def store_missing_srs(self) -> int:
        """Store the SRs that are missing; how many were stored."""
        ...


class SrSweep:
    name = "SR sweep"

    def __init__(self, reports: MissingSrs, *, claiming: Claiming, every: float = EVERY) -> None:
        self._reports = reports
        self._claiming = claiming
        self._every = every

    def step(self) -> float:
        with self._claiming.claim() as claim:
            if not outbox.try_lock(claim, "SR sweep"):
                return self._every  # another node is sweeping
            stored = self._reports.store_missing_srs()
        if stored:
            log.warning("stored %d report SRs that were missing", stored)
        return self._every

    def close(self) -> None:
        pass
