"""The stores of one association, STOW-RS request or import run, audited as they end.

Every way an object arrives stores through an :class:`IngestBatch`: it calls the ingest
service for each object and counts the outcomes per study; :meth:`IngestBatch.close`
writes one DICOM Instances Transferred message (PS3.15 A.5.3.5) per study with the real
counts of stored and refused instances and why they were refused. Objects refused
before their study was known (unparsable, no Study Instance UID) are counted in one
message of their own, without a study.

The counts do not live only in the process's memory: a batch saves its tally in the
index (``store_tally``) when it meets a new study and at least every
:data:`SAVE_EVERY` seconds while it stores, and deletes it in the transaction that
writes its audit messages. A process killed in the middle of an association leaves its
tally behind; :class:`~netpacs.services.jobs.store_audits.StaleStoreAudits` audits it
from there (counts as last saved).

In the same transaction, an object stored under an identity that is not the storing
trust's own raises a reconciliation item and alerts the trusts whose patient it is
(:class:`~netpacs.services.care.StoredIdentities`): once per study of the batch.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from netpacs.domain.outcomes import Origin, StoreOutcome, StoreStatus
from netpacs.index.tally import TallyRow, delete_batch, save_tallies
from netpacs.services import metrics
from netpacs.services.access import Principal
from netpacs.services.audit import Actor, AuditRecord, AuditService, Event, Outcome, Purpose
from netpacs.services.care import StoredIdentities
from netpacs.services.ingest import IngestService
from netpacs.services.spool import Spool

Run = Callable[[Callable[[sa.Connection], Any]], Any]
SAVE_EVERY = 30.0  # seconds: at most this much of a batch's counts dies with its process

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
    kept: set[tuple[str, str]] = field(default_factory=set)  # identities of stored objects
    in_index: bool = False  # a tally row of the study is in the index
    dirty: bool = True  # counts the index does not have yet


def store_record(
    actor: Actor,
    origin: str,
    study_uid: str,
    *,
    stored: int,
    refused: dict[str, int],
    patients: list[tuple[str, str]],
    note: str = "",
) -> AuditRecord:
    """The DICOM Instances Transferred message of one study of a batch."""
    detail = f"{stored} instances stored"
    if refused:
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(refused.items()))
        detail += f", {sum(refused.values())} refused ({why})"
    if not refused:
        outcome = Outcome.SUCCESS
    else:
        outcome = Outcome.MINOR_FAILURE if stored else Outcome.SERIOUS_FAILURE
    return AuditRecord(
        Event.STORE,
        actor,
        outcome=outcome,
        purpose=Purpose.TREAT,
        patients=sorted(patients),
        study_uids=[study_uid] if study_uid else [],
        detail=f"{detail} ({origin}){note}",
    )


class IngestBatch:
    """Stores for one principal and origin; thread-safe; audited by :meth:`close`."""

    def __init__(
        self,
        ingest: IngestService,
        audit: AuditService,
        run: Run,
        principal: Principal,
        origin: Origin,
        *,
        save_every: float = SAVE_EVERY,
        identities: StoredIdentities | None = None,
    ) -> None:
        self._ingest = ingest
        self._audit = audit
        self._run = run
        self._principal = principal
        self._identities = identities
        self._actor = principal.actor()
        self._origin = origin
        self._batch = uuid.uuid4().hex
        self._save_every = save_every
        self._saved_at = time.monotonic()
        self._studies: dict[str, _Study] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def origin(self) -> Origin:
        return self._origin

    def spool(self) -> Spool:
        """A spool for one object on its way in (see :meth:`IngestService.spool`)."""
        return self._ingest.spool()

    def dataset_spool(
        self, *, transfer_syntax_uid: str, sop_class_uid: str, sop_instance_uid: str
    ) -> Spool:
        """A spool for a C-STORE data set (see :meth:`IngestService.dataset_spool`)."""
        return self._ingest.dataset_spool(
            transfer_syntax_uid=transfer_syntax_uid,
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            origin=self._origin,
        )

    def store_dataset(
        self,
        dataset: bytes | memoryview | Spool,
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
        self, data: bytes | memoryview | Spool, *, study_instance_uid: str | None = None
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
        metrics.stored(self._origin, outcome)
        with self._lock:
            uid = outcome.study_instance_uid or ""
            study = self._studies.get(uid)
            if study is None:
                study = self._studies[uid] = _Study()
            if outcome.status.ok:
                study.stored += 1
            else:
                reason = outcome.reason.name.lower() if outcome.reason else ""
                study.refused[_WHY[outcome.status] + (f": {reason}" if reason else "")] += 1
            if outcome.patient_id:
                study.patients.add((outcome.patient_id, outcome.issuer or ""))
                if outcome.status.ok:
                    study.kept.add((outcome.patient_id, outcome.issuer or ""))
            study.dirty = True
            due = not study.in_index or time.monotonic() - self._saved_at >= self._save_every
            if due and not self._closed:
                self._save()
        return outcome

    def _save(self) -> None:
        """Save the tally of every study changed since the last save (lock held)."""
        now = dt.datetime.now(dt.UTC)
        rows = [self._row(uid, s, now) for uid, s in self._studies.items() if s.dirty]
        self._run(lambda conn: save_tallies(conn, rows))
        for study in self._studies.values():
            study.in_index, study.dirty = True, False
        self._saved_at = time.monotonic()

    def _row(self, uid: str, study: _Study, now: dt.datetime) -> TallyRow:
        return TallyRow(
            batch=self._batch,
            study_instance_uid=uid,
            actor=dataclasses.asdict(self._actor),
            origin=self._origin.describe(),
            patients=tuple(sorted(study.patients)),
            stored=study.stored,
            refused=dict(study.refused),
            touched_at=now,
        )

    def close(self) -> None:
        """Audit what was stored and refused, one message per study, and forget the
        tally, in one transaction (once)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            records = [
                store_record(
                    self._actor,
                    self._origin.describe(),
                    uid,
                    stored=s.stored,
                    refused=dict(s.refused),
                    patients=list(s.patients),
                )
                for uid, s in self._studies.items()
            ]
            kept = [(uid, set(s.kept)) for uid, s in self._studies.items() if uid and s.kept]
        identities = self._identities

        def write(conn: sa.Connection) -> None:
            alerts: list[AuditRecord] = []
            if identities is not None:
                now = dt.datetime.now(dt.UTC)
                for uid, stored in kept:
                    alerts += identities.stored(
                        conn, self._principal, self._origin, uid, stored, now=now
                    )
            for record in [*records, *alerts]:
                self._audit.record_in(conn, record)
            delete_batch(conn, self._batch)

        self._run(write)


class StoreService:
    """What the adapters store through: audited batches of the ingest service."""

    def __init__(
        self,
        ingest: IngestService,
        audit: AuditService,
        run: Run,
        *,
        identities: StoredIdentities | None = None,
    ) -> None:
        self._ingest = ingest
        self._audit = audit
        self._run = run
        self._identities = identities

    def spool(self) -> Spool:
        """A spool for one object on its way in (see :meth:`IngestService.spool`)."""
        return self._ingest.spool()

    @property
    def max_object_size(self) -> int:
        return self._ingest.max_object_size

    def batch(self, principal: Principal, origin: Origin) -> IngestBatch:
        """A batch the caller closes (an association, closed when it ends)."""
        return IngestBatch(
            self._ingest, self._audit, self._run, principal, origin, identities=self._identities
        )

    @contextmanager
    def session(self, principal: Principal, origin: Origin) -> Iterator[IngestBatch]:
        """A batch closed (audited) when the block ends, however it ends (a STOW-RS
        request, an import run)."""
        batch = self.batch(principal, origin)
        try:
            yield batch
        finally:
            batch.close()
