"""Reports: drafts, signing final, addenda, second opinions, discrepancies, the priors
shown beside a study, and the published reports that others read.

Saving a draft or a preliminary report claims the item (or renews the claim); signing
final requires holding it under a row lock, so two reporters can never both finalise.
A final report is never edited: later words are addenda. Signing final and adding an
addendum queue an HL7 ORU^R01 for the requesting trust in the same transaction (the
outputs' outbox: sent by the results job, never lost) and then store a Basic Text SR in
the study (services.report_outputs); an SR that could not be stored then is stored by
:meth:`ReportsService.store_missing_srs`.

Reading: a draft is read by its author and the study's reporting colleagues only
(:meth:`ReportingScope.may_read_draft`); preliminary and final reports
(:data:`~.records.PUBLISHED`) by everyone who may see the patient, over the API and
FHIR alike. Every read of a report, of priors and of the reporting page is audited
(Patient Record, Read).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa

from netpacs.domain.outcomes import Problem
from netpacs.domain.report import SignedReport
from netpacs.index.reporting import other_studies_of_person
from netpacs.index.schema import (
    patient,
    report,
    report_event,
    result_outbox,
    study,
    worklist_item,
)
from netpacs.services.access import Principal
from netpacs.services.reporting.common import (
    NO_CLAIM,
    ReportingError,
    ReportingScope,
    aware,
    held_message,
    holder,
    iso,
    item_json,
    not_found,
    report_row,
)
from netpacs.services.reporting.ordered import orders_of_studies
from netpacs.services.reporting.records import (
    MIN_FINAL_TEXT,
    PUBLISHED,
    TEMPLATES,
    clean,
    note,
    report_json,
    signed_report,
)

if TYPE_CHECKING:
    from netpacs.services.report_outputs import ReportOutputs

log = logging.getLogger(__name__)

Status = Literal["draft", "preliminary", "final"]


class ReportsService:
    """The reports of the principal's worklist items, and the published ones."""

    def __init__(self, scope: ReportingScope, *, outputs: ReportOutputs | None = None) -> None:
        self._scope = scope
        self._outputs = outputs

    def for_principal(self, principal: Principal) -> ReportsService:
        return ReportsService(self._scope.for_principal(principal), outputs=self._outputs)

    def templates(self) -> dict[str, str]:
        return dict(TEMPLATES)

    # -- reading -------------------------------------------------------------------------
    def report(self, study_uid: str) -> dict[str, Any]:
        """The report of a study the principal may see (NOT_FOUND when none or hidden);
        a draft only for its author and reporting colleagues (others are answered as if
        there were no report, as FHIR does). Every read is audited."""
        scope = self._scope
        with scope.read_engine.connect() as conn:
            row = self._report_row(conn, study_uid)
            if row is None or (
                row.status not in PUBLISHED
                and not scope.may_read_draft(conn, study_uid, row.author)
            ):
                raise ReportingError(Problem.NOT_FOUND, "no report for this study yet")
            events = self._events(conn, row.id)
        scope.audit_read(
            [(row.report_patient_id, row.report_issuer)], [study_uid], f"{row.status} report read"
        )
        return report_json(row, events)

    def _written(self, study_uid: str) -> dict[str, Any]:
        """The report just written by the principal (a reporter), as the API shows it."""
        with self._scope.read_engine.connect() as conn:
            row = self._report_row(conn, study_uid)
            if row is None:
                raise ReportingError(Problem.NOT_FOUND, "no report for this study yet")
            return report_json(row, self._events(conn, row.id))

    def _report_row(self, conn: sa.Connection, study_uid: str) -> sa.Row[Any] | None:
        """The report of a study whose patient the principal may see, with the patient."""
        q = (
            sa.select(
                report,
                patient.c.patient_id.label("report_patient_id"),
                patient.c.issuer.label("report_issuer"),
            )
            .select_from(
                report.join(study, study.c.study_instance_uid == report.c.study_instance_uid).join(
                    patient, patient.c.id == study.c.patient_fk
                )
            )
            .where(report.c.study_instance_uid == study_uid)
        )
        visible = self._scope.visible_patients()
        if visible is not None:
            q = q.where(visible)
        return conn.execute(q).first()

    @staticmethod
    def _events(conn: sa.Connection, report_pk: int) -> Sequence[sa.Row[Any]]:
        return conn.execute(
            sa.select(report_event)
            .where(report_event.c.report_fk == report_pk)
            .order_by(report_event.c.id)
        ).all()

    def page_opened(self, study_uid: str) -> None:
        """Audit the reporting page of a study opened by the principal (it shows the
        study, its priors and its report)."""
        scope = self._scope
        with scope.read_engine.connect() as conn:
            item = conn.execute(
                scope.items().where(worklist_item.c.study_instance_uid == study_uid)
            ).first()
        if item is None:
            scope.audit_read([], [study_uid], "reporting page opened (not on the worklist)")
        else:
            scope.audit_read([(item.patient_id, item.issuer)], [study_uid], "reporting page opened")

    def published(self, study_uids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Preliminary and final reports (not drafts) of studies the caller has already
        found through the query service (which applied the access rules), by UID."""
        if not study_uids:
            return {}
        with self._scope.read_engine.connect() as conn:
            rows = conn.execute(
                sa.select(report).where(
                    report.c.study_instance_uid.in_(list(study_uids)),
                    report.c.status.in_(PUBLISHED),
                )
            ).all()
            events = conn.execute(
                sa.select(report_event)
                .where(report_event.c.report_fk.in_([r.id for r in rows]))
                .order_by(report_event.c.id)
            ).all()
            orders = orders_of_studies(conn, [r.study_instance_uid for r in rows])
        by_report: dict[int, list[sa.Row[Any]]] = {}
        for e in events:
            by_report.setdefault(e.report_fk, []).append(e)
        return {
            r.study_instance_uid: report_json(r, by_report.get(r.id, []))
            | {"order": orders.get(r.study_instance_uid)}
            for r in rows
        }

    def priors(self, study_uid: str) -> dict[str, Any]:
        """The current study and the person's other studies from every trust, newest
        first (identities linked by NHS number are one person)."""
        scope = self._scope
        scope.require_reporter()
        with scope.read_engine.connect() as conn:
            cur = conn.execute(
                scope.items().where(worklist_item.c.study_instance_uid == study_uid)
            ).first()
            if cur is None:
                raise not_found()
            q = other_studies_of_person(study_uid, cur.nhs_number)
            visible = scope.visible_patients()
            if visible is not None:
                q = q.where(visible)
            rows = conn.execute(q.limit(200)).all()
        scope.audit_read(
            [(cur.patient_id, cur.issuer), *((r.patient_id, r.issuer) for r in rows)],
            [study_uid, *(r.study_instance_uid for r in rows)],
            f"priors read: {len(rows)} studies of the person beside this one",
        )
        current = item_json(cur, dt.datetime.now(dt.UTC))
        return {
            "study": {
                **current,
                "description": current["study_description"],
                "trust": current["requesting_trust"],
            },
            "priors": [
                {
                    "study_instance_uid": r.study_instance_uid,
                    "study_date": r.study_date,
                    "modality": r.modality or "",
                    "description": r.study_description,
                    "trust": r.origin_trust or r.issuer,
                    "patient_id": r.patient_id,
                    "issuer": r.issuer,
                    "report_status": r.status,
                }
                for r in rows
            ],
        }

    # -- writing -------------------------------------------------------------------------
    def save(
        self,
        study_uid: str,
        text: Any,
        status: Any,
        *,
        template: str | None = None,
        version: int | None = None,
    ) -> dict[str, Any]:
        """Save a draft, save a preliminary report or sign final (module doc)."""
        scope = self._scope
        scope.require_reporter()
        if status not in ("draft", "preliminary", "final"):
            raise ReportingError(Problem.INVALID, "status must be draft, preliminary or final")
        text = clean(text)
        now = dt.datetime.now(dt.UTC)
        signed: SignedReport | None = None
        with scope.write_engine.begin() as conn:
            item = scope.locked_item(conn, study_uid)
            held_by = self._check_writable(item, text, status, now)
            existing = report_row(conn, study_uid)
            if version is not None and existing is not None and existing.version != version:
                raise ReportingError(
                    Problem.CONFLICT,
                    f"the report changed since you loaded it (version {existing.version}, "
                    f"by {existing.author}): reload it",
                )
            report_pk = self._write_report(conn, study_uid, existing, text, status, template, now)
            self._update_item(conn, item, status, held_by, now)
            if status != "draft":
                event_pk = self._event(conn, report_pk, status, text, now)
                if status == "final":
                    signed = signed_report(conn, item, text, now, "final", now)
                    if self._outputs is not None:
                        self._outputs.queue_result(conn, signed, event_pk)
        if status != "draft":
            scope.audit_event(item, f"report {status}")
        if signed is not None:
            self._store_sr(signed)
        return self._written(study_uid)

    def _check_writable(
        self, item: sa.Row[Any], text: str, status: Status, now: dt.datetime
    ) -> str | None:
        """Who holds the item, after refusing a save it does not allow."""
        if item.status == "final":
            raise ReportingError(
                Problem.CONFLICT,
                f"already signed final by {item.reported_by}: a final report is never "
                "edited; add an addendum",
            )
        held_by = holder(item, now)
        if held_by is not None and held_by != self._scope.principal.user_id:
            raise ReportingError(Problem.CONFLICT, held_message(item))
        if status == "final" and len(text.strip()) < MIN_FINAL_TEXT:
            raise ReportingError(
                Problem.INVALID,
                f"a final report needs its text (at least {MIN_FINAL_TEXT} characters)",
            )
        return held_by

    def _write_report(
        self,
        conn: sa.Connection,
        study_uid: str,
        existing: Any,
        text: str,
        status: Status,
        template: str | None,
        now: dt.datetime,
    ) -> int:
        """Insert or update the report row (a new report begins with a draft event)."""
        p = self._scope.principal
        values: dict[str, Any] = {
            "status": status,
            "text": text,
            "author": p.user_id,
            "author_name": p.name or "",
            "author_trust": p.trust or "",
            "updated_at": now,
        }
        if template is not None:
            values["template"] = str(template)[:32]
        if status == "preliminary":
            values["preliminary_at"] = now
        if status == "final":
            values["signed_at"] = now
        if existing is not None:
            conn.execute(
                sa.update(report)
                .where(report.c.id == existing.id)
                .values(version=report.c.version + 1, **values)
            )
            return int(existing.id)
        report_pk = int(
            conn.execute(
                sa.insert(report)
                .values(study_instance_uid=study_uid, created_at=now, version=1, **values)
                .returning(report.c.id)
            ).scalar_one()
        )
        self._event(conn, report_pk, "draft", None, now)
        return report_pk

    def _update_item(
        self,
        conn: sa.Connection,
        item: sa.Row[Any],
        status: Status,
        held_by: str | None,
        now: dt.datetime,
    ) -> None:
        """The item follows the report: signing final reports it and ends the claim;
        any other save claims it (or renews the claim)."""
        values: dict[str, Any] = {"status": status}
        if status == "final":
            values |= {"reported_at": now, "reported_by": self._scope.principal.user_id}
            values |= NO_CLAIM
        else:
            values |= self._scope.claim_values(now)
            if held_by is None:
                values["claimed_at"] = now
        conn.execute(sa.update(worklist_item).where(worklist_item.c.id == item.id).values(values))

    def addendum(self, study_uid: str, text: Any) -> dict[str, Any]:
        """Later words on a final report; its ORU and SR go out again with them."""
        scope = self._scope
        scope.require_reporter()
        text = note(text, "an addendum needs its text")
        now = dt.datetime.now(dt.UTC)
        with scope.write_engine.begin() as conn:
            item = scope.locked_item(conn, study_uid)
            existing = report_row(conn, study_uid)
            if existing is None or existing.status != "final":
                raise ReportingError(
                    Problem.CONFLICT,
                    "an addendum is added to a final report; this one is not signed yet",
                )
            event_pk = self._event(conn, existing.id, "addendum", text, now)
            conn.execute(
                sa.update(report)
                .where(report.c.id == existing.id)
                # None until the new version's SR is stored (store_missing_srs retries)
                .values(version=report.c.version + 1, updated_at=now, sr_sop_instance_uid=None)
            )
            signed = signed_report(
                conn, item, existing.text, aware(existing.signed_at), "addendum", now
            )
            if self._outputs is not None:
                self._outputs.queue_result(conn, signed, event_pk)
        scope.audit_event(item, "addendum added")
        self._store_sr(signed)
        return self._written(study_uid)

    def second_opinion(self, study_uid: str, reason: Any) -> dict[str, Any]:
        """Ask a colleague: the request is recorded and the claim released for them."""
        scope = self._scope
        scope.require_reporter()
        reason = note(reason, "say what the second opinion is about")
        now = dt.datetime.now(dt.UTC)
        me = scope.principal.user_id
        with scope.write_engine.begin() as conn:
            item = scope.locked_item(conn, study_uid)
            existing = report_row(conn, study_uid)
            if existing is None:
                raise ReportingError(
                    Problem.CONFLICT, "save a draft before asking for a second opinion"
                )
            self._event(conn, existing.id, "second-opinion", reason, now)
            conn.execute(
                sa.update(report)
                .where(report.c.id == existing.id)
                .values(
                    second_opinion_requested_by=me, second_opinion_reason=reason, updated_at=now
                )
            )
            if item.status != "final" and holder(item, now) == me:
                conn.execute(
                    sa.update(worklist_item).where(worklist_item.c.id == item.id).values(NO_CLAIM)
                )
        scope.audit_event(item, "second opinion requested")
        return self._written(study_uid)

    def discrepancy(self, study_uid: str, text: Any) -> dict[str, Any]:
        """Flag a discrepancy in a final report (peer review, a later reader)."""
        scope = self._scope
        scope.require_reporter()
        text = note(text, "describe the discrepancy")
        now = dt.datetime.now(dt.UTC)
        with scope.write_engine.begin() as conn:
            item = scope.locked_item(conn, study_uid)
            existing = report_row(conn, study_uid)
            if existing is None or existing.status != "final":
                raise ReportingError(Problem.CONFLICT, "a discrepancy is flagged on a final report")
            self._event(conn, existing.id, "discrepancy", text, now)
            conn.execute(
                sa.update(report)
                .where(report.c.id == existing.id)
                .values(discrepancy=text, discrepancy_by=scope.principal.user_id, updated_at=now)
            )
        scope.audit_event(item, "discrepancy flagged")
        return self._written(study_uid)

    def _event(
        self, conn: sa.Connection, report_pk: int, kind: str, text: str | None, now: dt.datetime
    ) -> int:
        """Add an event to the report's history, by the principal; its key."""
        p = self._scope.principal
        return int(
            conn.execute(
                sa.insert(report_event)
                .values(
                    report_fk=report_pk,
                    kind=kind,
                    text=text,
                    author=p.user_id,
                    author_name=p.name or "",
                    author_trust=p.trust or "",
                    at=now,
                )
                .returning(report_event.c.id)
            ).scalar_one()
        )

    # -- the signed report's SR, and its ORU -------------------------------------------
    def _store_sr(self, signed: SignedReport) -> bool:
        """Store the report's SR in its study; False (logged) when that failed: the
        report stays signed, its ORU queued, and store_missing_srs tries again."""
        if self._outputs is None:
            return False
        try:
            sop_uid = self._outputs.store_sr(signed)
        except Exception:
            log.exception("could not store the SR of %s (retried later)", signed.study_instance_uid)
            return False
        with self._scope.write_engine.begin() as conn:
            conn.execute(
                sa.update(report)
                .where(report.c.study_instance_uid == signed.study_instance_uid)
                .values(sr_sop_instance_uid=sop_uid)
            )
        return True

    def store_missing_srs(self, *, older_than: float = 60.0, limit: int = 50) -> int:
        """Store the SR of each final report whose SR is missing (storing failed after
        the signature committed), oldest first; how many. For one process at a time:
        the SR of a version is stored once."""
        if self._outputs is None:
            return 0
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=older_than)
        engine = self._scope.read_engine
        with engine.connect() as conn:
            due = conn.execute(
                sa.select(report.c.study_instance_uid)
                .where(
                    report.c.status == "final",
                    report.c.sr_sop_instance_uid.is_(None),
                    report.c.updated_at < cutoff,
                )
                .order_by(report.c.updated_at)
                .limit(limit)
            ).scalars()
            due_uids = list(due)
        done = 0
        for uid in due_uids:
            with engine.connect() as conn:
                signed = self._signed_again(conn, uid)
            if signed is not None:
                done += int(self._store_sr(signed))
        return done

    def _signed_again(self, conn: sa.Connection, study_uid: str) -> SignedReport | None:
        """The final report of a study as last signed or amended (None: not signed)."""
        item = conn.execute(
            self._scope.items().where(worklist_item.c.study_instance_uid == study_uid)
        ).first()
        rep = report_row(conn, study_uid, required=True)
        if item is None or rep.signed_at is None:
            return None
        addenda = conn.execute(
            sa.select(sa.func.count())
            .select_from(report_event)
            .where(report_event.c.report_fk == rep.id, report_event.c.kind == "addendum")
        ).scalar_one()
        event: Literal["final", "addendum"] = "addendum" if addenda else "final"
        now = dt.datetime.now(dt.UTC)
        return signed_report(conn, item, rep.text, aware(rep.signed_at), event, now)

    def results(
        self, *, waiting: bool = True, trust: str | None = None, limit: int = 200
    ) -> dict[str, Any]:
        """The HL7 results (ORU) queued for the trusts: those waiting for delivery (or
        all), oldest first, with attempts and the last error; for PACS admins."""
        scope = self._scope
        scope.require_admin("see the results outbox")
        q = sa.select(
            result_outbox.c.trust,
            result_outbox.c.study_instance_uid,
            result_outbox.c.control_id,
            result_outbox.c.created_at,
            result_outbox.c.attempts,
            result_outbox.c.next_attempt_at,
            result_outbox.c.last_error,
            result_outbox.c.sent_at,
        )
        if waiting:
            q = q.where(result_outbox.c.sent_at.is_(None))
        if trust:
            q = q.where(result_outbox.c.trust == trust)
        counts_q = (
            sa.select(result_outbox.c.trust, sa.func.count())
            .where(result_outbox.c.sent_at.is_(None))
            .group_by(result_outbox.c.trust)
        )
        with scope.read_engine.connect() as conn:
            rows = conn.execute(q.order_by(result_outbox.c.id).limit(limit)).all()
            counts: dict[str, int] = {t: int(n) for t, n in conn.execute(counts_q).all()}
        endpoints = {t.ods_code: t.results_endpoint for t in scope.region.trusts}
        return {
            "waiting_by_trust": [
                {
                    "trust": t,
                    "waiting": int(counts.get(t, 0)),
                    "endpoint": f"{e.host}:{e.port}" if e else None,
                }
                for t, e in endpoints.items()
            ],
            "messages": [
                {
                    "trust": r.trust,
                    "study_instance_uid": r.study_instance_uid,
                    "control_id": r.control_id,
                    "queued_at": iso(r.created_at),
                    "attempts": r.attempts,
                    "next_attempt_at": None if r.sent_at else iso(r.next_attempt_at),
                    "last_error": r.last_error,
                    "sent_at": iso(r.sent_at),
                }
                for r in rows
            ],
        }
