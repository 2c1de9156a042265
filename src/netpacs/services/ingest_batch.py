"""The stores of one association, STOW-RS request or import run, audited as they end.

Every way an object arrives stores through an :class:`IngestBatch`: it calls the ingest
service for each object and counts the outcomes per study; :meth:`IngestBatch.close`
writes one DICOM Instances Transferred message (PS3.15 A.5.3.5) per study with the real
counts of stored and refused instances and why they were refused. Objects refused
before their study was known (unparsable, no Study Instance UID) are counted in one
message of their own, without a study.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from netpacs.domain.outcomes import Origin, StoreOutcome, StoreStatus
from netpacs.services.access import Principal
from netpacs.services.audit import AuditRecord, AuditService, Event, Outcome, Purpose
from netpacs.services.ingest import IngestService

_WHY: dict[StoreStatus, str] = {
    StoreStatus.CONFLICT: "already stored with different content",
    StoreStatus.INVALID: "invalid",
    StoreStatus.FAILED: "not written (storage or index failure)",
}


@dataclass(slots=True)
class _Study:
    stored: int = 0
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    patients: set[tuple[str, str]] = field(default_factory=set)

    def detail(self) -> str:
        text = f"{self.stored} instances stored"
        if self.refused:
            why = ", ".join(f"{n} {reason}" for reason, n in sorted(self.refused.items()))
            text += f", {self.refused.total()} refused ({why})"
        return text

    def outcome(self) -> Outcome:
        if not self.refused:
            return Outcome.SUCCESS
        return Outcome.MINOR_FAILURE if self.stored else Outcome.SERIOUS_FAILURE


class IngestBatch:
    """Stores for one principal and origin; thread-safe; audited by :meth:`close`."""

    def __init__(
        self, ingest: IngestService, audit: AuditService, principal: Principal, origin: Origin
    ) -> None:
        self._ingest = ingest
        self._audit = audit
        self._principal = principal
        self._origin = origin
        self._studies: dict[str, _Study] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def origin(self) -> Origin:
        return self._origin

    def store_dataset(
        self,
        dataset: bytes | memoryview,
        *,
        transfer_syntax_uid: str,
        sop_class_uid: str,
        sop_instance_uid: str,
    ) -> StoreOutcome:
        """A bare data set as received over an association (C-STORE)."""
        return self._count(
            self._ingest.store_dataset(
                dataset,
                transfer_syntax_uid=transfer_syntax_uid,
                sop_class_uid=sop_class_uid,
                sop_instance_uid=sop_instance_uid,
                origin=self._origin,
            )
        )

    def store_part10(
        self, data: bytes | memoryview, *, study_instance_uid: str | None = None
    ) -> StoreOutcome:
        """A Part 10 file (STOW-RS, import); see :meth:`IngestService.store_part10`."""
        return self._count(
            self._ingest.store_part10(
                data, origin=self._origin, study_instance_uid=study_instance_uid
            )
        )

    def refused(self, outcome: StoreOutcome) -> StoreOutcome:
        """Count an object the adapter refused before it reached the ingest service
        (a STOW-RS part that is not DICOM, say)."""
        return self._count(outcome)

    def _count(self, outcome: StoreOutcome) -> StoreOutcome:
        with self._lock:
            study = self._studies.setdefault(outcome.study_instance_uid or "", _Study())
            if outcome.status.ok:
                study.stored += 1
            else:
                reason = outcome.reason.name.lower() if outcome.reason else ""
                study.refused[_WHY[outcome.status] + (f": {reason}" if reason else "")] += 1
            if outcome.patient_id:
                study.patients.add((outcome.patient_id, outcome.issuer or ""))
        return outcome

    def close(self) -> None:
        """Audit what was stored and refused, one message per study (once)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            studies = dict(self._studies)
        how = self._origin.describe()
        for uid, counts in studies.items():
            self._audit.record(
                AuditRecord(
                    Event.STORE,
                    self._principal.actor(),
                    outcome=counts.outcome(),
                    purpose=Purpose.TREAT,
                    patients=sorted(counts.patients),
                    study_uids=[uid] if uid else [],
                    detail=f"{counts.detail()} ({how})",
                )
            )


class StoreService:
    """What the adapters store through: audited batches of the ingest service."""

    def __init__(self, ingest: IngestService, audit: AuditService) -> None:
        self._ingest = ingest
        self._audit = audit

    def batch(self, principal: Principal, origin: Origin) -> IngestBatch:
        """A batch the caller closes (an association, closed when it ends)."""
        return IngestBatch(self._ingest, self._audit, principal, origin)

    @contextmanager
    def session(self, principal: Principal, origin: Origin) -> Iterator[IngestBatch]:
        """A batch closed (audited) when the block ends, however it ends (a STOW-RS
        request, an import run)."""
        batch = self.batch(principal, origin)
        try:
            yield batch
        finally:
            batch.close()
