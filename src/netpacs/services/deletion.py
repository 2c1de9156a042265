"""Deleting a study: PACS administrators only, with a reason, audited (PS3.15 A.5.3.5).

A study sent to the wrong patient's record, a test acquisition, a duplicate import:
an administrator removes it with a reason that goes into the audit trail. The rules:

- Only a principal that sees everything (a PACS administrator) deletes. A user who
  may see the study but not delete it is told so (403); a user who may not see it gets
  the answer a study that does not exist gets (404), so nothing is revealed.
- A study with an issued report (preliminary or final) is kept: a signed report is
  part of the medical record, and the images it describes with it. So is a study whose
  result message was queued for a trust (``result_outbox``). Draft reports go with it.
- The index rows go in one transaction of the index writer (``run``), with the audit
  message: the record of the deletion commits exactly when the deletion does. The
  instances, series, study, its worklist item and its draft report (and report events)
  are removed; the patient row stays (it may have other studies, ADT identities,
  reconciliation items).
- The blobs are removed only after that commit, one by one. A crash in between leaves
  blobs without an index row: orphans, which ``netpacs verify --sweep-orphans``
  removes (services.maintenance). Never the other way round: an index row without its
  blob would be an acknowledged object that cannot be retrieved.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from netpacs.domain.changes import ChangeKind
from netpacs.domain.outcomes import Problem, Refused
from netpacs.index.changes import record_change
from netpacs.index.schema import (
    instance,
    patient,
    report,
    report_event,
    result_outbox,
    series,
    study,
    worklist_item,
)
from netpacs.index.writer import bump_epoch
from netpacs.services.access import Capability, Principal
from netpacs.services.audit import AuditRecord, AuditService, Event, Outcome, Purpose
from netpacs.services.query import QueryService
from netpacs.storage.blobstore import BlobStore

log = logging.getLogger(__name__)

MIN_REASON = 10
MAX_REASON = 2000
#: Report statuses that make a report part of the medical record (issued to clinicians).
ISSUED = ("preliminary", "final")

Run = Callable[[Callable[[sa.Connection], Any]], Any]


class DeletionError(Refused):
    """Not deleted: not found, not an administrator, part of the medical record
    (CONFLICT: an issued report), or no reason given (MALFORMED)."""


@dataclass(frozen=True, slots=True)
class DeletedStudy:
    study_instance_uid: str
    patient_id: str
    issuer: str
    series: int
    instances: int
    reports: int  # draft reports removed with it
    blobs_removed: int
    blobs_left: int  # blobs that could not be removed now: orphans for the sweeper


@dataclass(frozen=True, slots=True)
class _Removed:
    patient_id: str
    issuer: str
    series: int
    blob_keys: tuple[str, ...]
    reports: int


def normalise_reason(reason: str) -> str:
    """The reason as recorded (white space collapsed); raises INVALID when too short."""
    text = " ".join(reason.split())
    if len(text) < MIN_REASON:
        raise DeletionError(
            Problem.MALFORMED,
            f"say why the study is deleted (at least {MIN_REASON} characters, e.g. "
            '"sent to the wrong patient\'s record"): the reason is audited',
        )
    if len(text) > MAX_REASON:
        raise DeletionError(Problem.MALFORMED, f"the reason is over {MAX_REASON} characters")
    return text


class DeletionService:
    """Deletes studies for one principal (``query.principal``), within what it may see."""

    def __init__(
        self,
        *,
        query: QueryService,
        run: Run,
        blobs: BlobStore,
        audit: AuditService,
        source_id: str,
    ) -> None:
        self._query = query
        self._run = run
        self._blobs = blobs
        self._audit = audit
        self._source_id = source_id

    def for_principal(self, principal: Principal) -> DeletionService:
        """The same index and store, deleting for ``principal`` within what it may see."""
        return DeletionService(
            query=self._query.for_principal(principal),
            run=self._run,
            blobs=self._blobs,
            audit=self._audit,
            source_id=self._source_id,
        )

    @property
    def principal(self) -> Principal:
        return self._query.principal

    def check(self, study_uid: str) -> None:
        """DeletionError unless the principal may delete this study: NOT_FOUND for a study
        it cannot see (as for one that does not exist), FORBIDDEN for one it sees but
        may not delete. For showing the delete form; :meth:`delete_study` checks again."""
        visible, _ = self._query.scope_exists(study_uid)
        if not visible:
            raise DeletionError(Problem.NOT_FOUND, f"study {study_uid} is not stored here")
        if not self.principal.may(Capability.DELETE):
            raise DeletionError(
                Problem.FORBIDDEN, "deleting a study is for PACS administrators only"
            )

    def delete_study(self, study_uid: str, *, reason: str) -> DeletedStudy:
        """Remove the study's index rows (one transaction, audited), then its blobs."""
        try:
            self.check(study_uid)
        except DeletionError as exc:
            if exc.problem is Problem.FORBIDDEN:
                self._refused(study_uid, "only a PACS administrator may delete a study")
            raise
        text = normalise_reason(reason)
        try:
            removed: _Removed = self._run(lambda conn: self._remove_rows(conn, study_uid, text))
        except DeletionError as exc:
            if exc.problem is Problem.CONFLICT:
                self._refused(study_uid, exc.message)
            raise
        left = self._remove_blobs(removed.blob_keys)
        log.warning(
            "study %s of %s at %s deleted by %s: %d instances; reason: %s",
            study_uid,
            removed.patient_id,
            removed.issuer,
            self.principal.user_id,
            len(removed.blob_keys),
            text,
        )
        return DeletedStudy(
            study_instance_uid=study_uid,
            patient_id=removed.patient_id,
            issuer=removed.issuer,
            series=removed.series,
            instances=len(removed.blob_keys),
            reports=removed.reports,
            blobs_removed=len(removed.blob_keys) - len(left),
            blobs_left=len(left),
        )

    # -- in the writer's transaction ----------------------------------------------------------
    def _remove_rows(self, conn: sa.Connection, study_uid: str, reason: str) -> _Removed:
        found = conn.execute(
            sa.select(study.c.id, patient.c.patient_id, patient.c.issuer)
            .select_from(study.join(patient, study.c.patient_fk == patient.c.id))
            .where(study.c.study_instance_uid == study_uid)
            .with_for_update(of=study)
        ).first()
        if found is None:  # deleted by someone else since it was looked up
            raise DeletionError(Problem.NOT_FOUND, f"study {study_uid} is not stored here")
        study_pk, patient_id, issuer = int(found[0]), str(found[1]), str(found[2])
        _check_not_issued(conn, study_uid)
        reports = _remove_drafts(conn, study_uid)
        conn.execute(
            sa.delete(worklist_item).where(worklist_item.c.study_instance_uid == study_uid)
        )
        series_of_study = sa.select(series.c.id).where(series.c.study_fk == study_pk)
        keys = tuple(
            conn.execute(
                sa.delete(instance)
                .where(instance.c.series_fk.in_(series_of_study))
                .returning(instance.c.blob_key)
            ).scalars()
        )
        n_series = conn.execute(sa.delete(series).where(series.c.study_fk == study_pk)).rowcount
        conn.execute(sa.delete(study).where(study.c.id == study_pk))
        bump_epoch(conn)  # every index writer drops the ids it cached
        record_change(
            conn, ChangeKind.DELETE, patient_id=patient_id, issuer=issuer, study_uids=[study_uid]
        )
        drafts = f"; {reports} draft report removed" if reports else ""
        AuditService(lambda fn: fn(conn), source_id=self._source_id).record(
            AuditRecord(
                Event.DELETE,
                self.principal.actor(),
                purpose=Purpose.HOPERAT,
                patients=[(patient_id, issuer)],
                study_uids=[study_uid],
                detail=f"study deleted ({len(keys)} instances in {n_series} series{drafts}); "
                f"reason: {reason}",
            )
        )
        return _Removed(patient_id, issuer, int(n_series), keys, reports)

    # -- after the commit ---------------------------------------------------------------------
    def _remove_blobs(self, keys: Sequence[str]) -> list[str]:
        """Delete the blobs; those that cannot be deleted now are left to the sweeper."""
        left = []
        for key in keys:
            try:
                self._blobs.delete(key)
            except OSError as exc:
                log.error("blob %s of a deleted study not removed (%s): an orphan now", key, exc)
                left.append(key)
        return left

    def _refused(self, study_uid: str, why: str) -> None:
        self._audit.record(
            AuditRecord(
                Event.DELETE,
                self.principal.actor(),
                outcome=Outcome.MINOR_FAILURE,
                purpose=Purpose.HOPERAT,
                study_uids=[study_uid],
                detail=f"study deletion refused: {why}",
            )
        )


def _check_not_issued(conn: sa.Connection, study_uid: str) -> None:
    status = conn.execute(
        sa.select(report.c.status).where(report.c.study_instance_uid == study_uid)
    ).scalar()
    if status in ISSUED:
        raise DeletionError(
            Problem.CONFLICT,
            f"study {study_uid} has a {status} report: a signed report is part of the medical "
            "record, so the images it describes are kept (an addendum can correct the report)",
        )
    queued = conn.execute(
        sa.select(result_outbox.c.id).where(result_outbox.c.study_instance_uid == study_uid)
    ).first()
    if queued is not None:
        raise DeletionError(
            Problem.CONFLICT,
            f"a result of study {study_uid} was sent to a trust: the study is kept",
        )


def _remove_drafts(conn: sa.Connection, study_uid: str) -> int:
    """Remove the study's draft report and its events; the number of reports removed."""
    ids = list(
        conn.execute(
            sa.select(report.c.id).where(report.c.study_instance_uid == study_uid)
        ).scalars()
    )
    if not ids:
        return 0
    conn.execute(sa.delete(report_event).where(report_event.c.report_fk.in_(ids)))
    conn.execute(sa.delete(report).where(report.c.id.in_(ids)))
    return len(ids)
