"""The query service: the one place C-FIND, QIDO-RS, FHIR search and the UI ask the index.

Query/Retrieve information models and levels follow PS3.4 C.6 (Patient Root, Study
Root; PATIENT, STUDY, SERIES, IMAGE); matching follows PS3.4 C.2.2.2. The index layer
compiles identifiers and reads the answers (netpacs.index.query); this service holds
the rules of asking.

Patients (issue 4, services.identity): a Patient ID with Issuer of Patient ID ``NHS``
is an NHS number and matches every local identity linked to it, each answered with
its own hospital number and issuer. A hospital number with its issuer matches that
identity only, unless the caller asks for linked identities (``linked=True``): then
every identity sharing its verified NHS number too. Other Patient IDs Sequence
(0010,1002) is answered from the regional record: the NHS number and the linked
hospital numbers at other trusts.

Access (services.access): a query service serves one principal; every statement it
runs carries the condition on patients that principal may see, so an unseen patient
is answered as one that does not exist. Every query and every selection of objects
is audited (services.audit) with the patients and studies it reached. A partner
network (issue 14) asks within its agreement (services.partners): what it may ask is
checked before the query runs (a refusal is audited), what its searches find is
recorded, and everything else it asks is answered from those studies only.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import orjson
import sqlalchemy as sa

from netpacs.domain.dicom.header import JsonDataset
from netpacs.domain.query import (
    QueryLevel,
    QueryModel,
    QueryUnavailable,
    RetrieveItem,
    StoredInstance,
)
from netpacs.index.db import lost_primary
from netpacs.index.query import FindPlan, PatientKeys, QueryIndex, Reached
from netpacs.services import metrics, partners
from netpacs.services.access import CLINICAL, AccessRules, Principal, Role
from netpacs.services.audit import AuditRecord, AuditService, Event, Outcome, Purpose


class QueryService:
    """Answers C-FIND-style identifiers from the index (PS3.4 C.2.2.2, C.6), for one
    principal, within what it may see, auditing what it reached."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        principal: Principal,
        audit: AuditService | None = None,
        rules: AccessRules | None = None,
        retrieve_ae_title: str = "",
        time_limit: float | None = None,
        partner_finds: partners.PartnerFinds | None = None,
    ) -> None:
        """``retrieve_ae_title``: this archive's AE title, answered as the Retrieve AE
        Title of every match; empty: left empty. ``time_limit``: the seconds of work
        one query may take (None: no limit); a query that takes longer is stopped with
        :class:`~netpacs.domain.query.QueryTimeout`."""
        self._engine = engine
        self._index = QueryIndex(engine, time_limit=time_limit)
        self._principal = principal
        self._audit = audit
        self._rules = rules or AccessRules()
        self._retrieve_ae_title = retrieve_ae_title
        self._partner_finds = partner_finds

    @property
    def principal(self) -> Principal:
        return self._principal

    def for_principal(self, principal: Principal) -> QueryService:
        """The same index and audit trail, answering for ``principal`` (a shallow copy:
        every request and association makes one)."""
        scoped = copy.copy(self)
        scoped._principal = principal
        return scoped

    def _visible(self, *, search: bool = False) -> list[sa.ColumnElement[bool]]:
        """The conditions of what the principal may see; a partner's are on studies:
        of its shared trusts, and unless ``search``, found with its token."""
        partner = self._principal.partner
        if partner is not None:
            return [partners.visible(partner, search=search, now=dt.datetime.now(dt.UTC))]
        cond = self._rules.visible_patients(self._principal)
        return [] if cond is None else [cond]

    def _through_break_glass(self) -> sa.ColumnElement[bool] | None:
        """For a search's statement: whether a row's patient is reached through the
        principal's break-glass access (None: not a question for this principal)."""
        if self._audit is None or self._principal.partner is not None:
            return None
        return self._rules.through_break_glass(self._principal)

    def _record(
        self,
        event: Event,
        *,
        patients: PatientKeys,
        studies: list[str],
        query: str | None = None,
        detail: str = "",
        purpose: Purpose | None = None,
    ) -> None:
        """Audit what the principal reached; ``purpose``: as the statement that reached
        it decided (else looked up: :meth:`purpose_of_use`)."""
        if self._audit is None:
            return
        self._audit.record(
            AuditRecord(
                event=event,
                actor=self._principal.actor(),
                purpose=purpose if purpose is not None else self.purpose_of_use(patients),
                patients=list(patients),
                study_uids=studies,
                query=query,
                detail=detail,
            )
        )

    def purpose_of_use(self, patients: PatientKeys) -> Purpose | None:
        """Why the principal reaches these patients (patient ID, issuer -> NHS number):
        emergency treatment when through their break-glass access, for the audit."""
        role = self._principal.role
        if role is Role.PARTNER:  # as the partner states it (services.audit)
            return None
        if role is Role.ADMIN:
            return Purpose.HOPERAT
        if role not in CLINICAL or not patients:
            return Purpose.TREAT
        now = dt.datetime.now(dt.UTC)
        grants = self._index.break_glass_grants(self._principal.user_id, now)
        ids = {(pid, issuer) for pid, issuer, _ in grants}
        numbers = {number for _, _, number in grants if number}
        emergency = any(k in ids or v in numbers for k, v in patients.items())
        return Purpose.ETREAT if emergency else Purpose.TREAT

    # -- public API -----------------------------------------------------------------------
    def audited_together(self) -> contextlib.AbstractContextManager[None]:
        """The questions asked inside are audited together when the block ends (one commit
        to wait for, not one each: services.audit ``held``), still before the caller
        answers: for an answer made of several questions."""
        return self._audit.held() if self._audit is not None else contextlib.nullcontext()

    def find(
        self,
        identifier: dict[str, Any],
        *,
        level: QueryLevel,
        model: QueryModel,
        limit: int | None = None,
        offset: int = 0,
        linked: bool = False,
        newest_first: bool = False,
        interface: str = "other",
    ) -> Iterator[JsonDataset]:
        """One DICOM JSON data set per matching entity, streamed in a stable order:
        studies by date and time, oldest first, or newest first with ``newest_first``
        (people browsing; a page of them is then a LIMIT, not a sort of every match).

        ``linked``: a hospital number also matches the identities linked to it by
        NHS number. The identifier is checked before this returns: a bad one raises
        :class:`~netpacs.domain.query.QueryError` here, not while iterating.
        ``interface`` names the asker in the latency histogram (``c-find``,
        ``qido-rs``, ``fhir``, ``pages``; services.metrics).
        """
        started = time.perf_counter()
        query = orjson.dumps(identifier, default=str).decode()
        search = False
        if self._principal.partner is not None:
            search = self._partner_check(identifier, level, query)
        plan = self._index.compile_find(
            identifier,
            level=level,
            model=model,
            limit=limit,
            offset=offset,
            linked=linked,
            visible=self._visible(search=search),
            retrieve_ae_title=self._retrieve_ae_title,
            newest_first=newest_first,
            emergency=self._through_break_glass(),
        )
        return self._audited(plan, query, level, interface, started, search=search)

    def _partner_check(self, identifier: dict[str, Any], level: QueryLevel, query: str) -> bool:
        """services.partners.check_find; a refusal is audited, then raised."""
        try:
            return partners.check_find(identifier, level)
        except partners.PartnerRefused as exc:
            if self._audit is not None:
                self._audit.record(
                    AuditRecord(
                        Event.SECURITY_ALERT,
                        self._principal.actor(),
                        outcome=Outcome.MINOR_FAILURE,
                        query=query,
                        detail=f"refused: {exc}",
                    )
                )
            raise

    def _audited(
        self,
        plan: FindPlan,
        query: str,
        level: QueryLevel,
        interface: str,
        started: float,
        *,
        search: bool = False,
    ) -> Iterator[JsonDataset]:
        reached = Reached()
        count = 0
        partner = self._principal.partner is not None
        try:
            for answer in self._index.answers(plan, reached):
                count += 1
                yield partners.redact(answer) if partner else answer
        except sa.exc.DBAPIError as exc:
            if lost_primary(exc):
                raise QueryUnavailable(
                    "query stopped: the index database is failing over; ask again"
                ) from exc
            raise
        finally:
            metrics.query_done(interface, level.value, time.perf_counter() - started)
            if search and self._partner_finds is not None:
                self._partner_finds.record(self._principal, reached.studies)
            self._record(
                Event.QUERY,
                patients=reached.patients,
                studies=reached.studies,
                query=query,
                detail=f"{level.value} level query: {count} answers",
                purpose=self._reached_purpose(plan, reached),
            )

    @staticmethod
    def _reached_purpose(plan: FindPlan, reached: Reached) -> Purpose | None:
        """Emergency treatment when a row came through a break-glass grant, as the
        search's own statement said (its plan selected :data:`EMERGENCY`); None when
        it did not ask."""
        if not plan.emergency:
            return None
        return Purpose.ETREAT if reached.emergency else Purpose.TREAT

    def instances_for_retrieve(
        self, identifier: dict[str, Any], *, level: QueryLevel, model: QueryModel
    ) -> list[RetrieveItem]:
        """The stored instances a C-MOVE / C-GET identifier selects (PS3.4 C.4.2, C.4.3).

        The unique key of the level is required (list of UID matching allowed); other
        keys with a column in the index are matched too, relationally, on each instance.
        Keys answered from ``metadata_json`` are matched only at IMAGE level.
        """
        reached = Reached()
        items = self._index.retrieve_items(
            identifier, level=level, model=model, visible=self._visible(), reached=reached
        )
        self._record(
            Event.RETRIEVE,
            patients=reached.patients,
            studies=reached.studies,
            detail=f"{len(items)} instances selected for {level.value} level retrieve",
        )
        return items

    def metadata_texts(
        self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> list[tuple[str, str, str]]:
        """(Series UID, SOP Instance UID, stored DICOM JSON text) of each instance in scope.

        One query, in series and instance number order. The JSON is as stored (bulk data
        as ``bulk:`` references), so WADO-RS /metadata is answered without parsing it
        and without reading a file (ARCHITECTURE.md invariant 7).
        """
        rows = self._index.metadata_texts(
            study_uid, series_uid, sop_instance_uid, visible=self._visible()
        )
        if rows:
            self._accessed(study_uid, f"metadata of {len(rows)} instances")
        else:
            self._partner_miss(study_uid)
        return rows

    def _partner_miss(self, study_uid: str) -> None:
        """A partner asked for a study it did not find with its token (or one not
        stored: the same answer): audited as a refusal."""
        partner = self._principal.partner
        if partner is None or self._audit is None:
            return
        self._audit.record(
            AuditRecord(
                Event.SECURITY_ALERT,
                self._principal.actor(),
                outcome=Outcome.MINOR_FAILURE,
                study_uids=[study_uid],
                detail=f"refused: study {study_uid[:64]} is not one {partner.network} found "
                "with this token (or it is not stored)",
            )
        )

    def _accessed(self, study_uid: str, detail: str, event: Event = Event.ACCESS) -> None:
        if self._audit is None:
            return
        patients = self._index.study_patient(study_uid)
        self._record(event, patients=patients, studies=[study_uid], detail=detail)

    def stored_instances(
        self,
        study_uid: str,
        series_uid: str | None = None,
        sop_instance_uid: str | None = None,
        *,
        with_metadata: bool = False,
    ) -> list[StoredInstance]:
        """The stored instances of a study, a series of it, or one instance of that series."""
        found = self._stored(study_uid, series_uid, sop_instance_uid, with_metadata)
        if found:
            self._accessed(study_uid, f"{len(found)} instances")
        else:
            self._partner_miss(study_uid)
        return found

    def exported_instances(
        self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> list[StoredInstance]:
        """As :meth:`stored_instances`, audited as an export (PS3.15 A.5.3.7)."""
        found = self._stored(study_uid, series_uid, sop_instance_uid, False)
        if found:
            where = f" (series {series_uid})" if series_uid else ""
            detail = f"{len(found)} instances exported as a ZIP of Part 10 files{where}"
            self._accessed(study_uid, detail, Event.EXPORT)
        return found

    def _stored(
        self,
        study_uid: str,
        series_uid: str | None,
        sop_instance_uid: str | None,
        with_metadata: bool,
    ) -> list[StoredInstance]:
        return self._index.stored_instances(
            study_uid,
            series_uid,
            sop_instance_uid,
            with_metadata=with_metadata,
            visible=self._visible(),
        )

    def scope_exists(self, study_uid: str, series_uid: str | None = None) -> tuple[bool, bool]:
        """Whether the study is stored, and whether the series (if given) is one of its."""
        return self._index.scope_exists(study_uid, series_uid, visible=self._visible())
