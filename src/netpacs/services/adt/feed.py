"""ADT rules: register and update local identities, change identifiers, merge, undo a merge.

A local identity is a hospital number at a trust (its ODS code as issuer, REGION.md).
A01/A04/A08 store its demographics and NHS number (``adt_identity``) and show them in
queries by updating the ``patient`` row's columns; stored objects are never rewritten.
A47 (change identifier) and A40 (merge) move studies from one local identity to
another of the same trust and keep a ``patient_merge`` row with the prior state, so
that :meth:`AdtService.undo_merge` restores it exactly.

Every message comes from a caller the region file recognises (:meth:`AdtService.caller`:
an ``adt_feeds`` entry by source address or TLS client certificate), whose feeds must
speak for its MSH-4; otherwise it is refused (AR) before anything is applied or stored,
and audited as a Security Alert.

Every message is applied once: its control id (per sending application and facility) is
stored with its acknowledgement in ``hl7_message`` in the same transaction, and a
resend is answered with that acknowledgement.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from netpacs.domain import nhs_number
from netpacs.domain.changes import ChangeKind
from netpacs.domain.peer import Peer
from netpacs.domain.region import Region
from netpacs.index.changes import record_change
from netpacs.index.schema import adt_identity, hl7_message, patient
from netpacs.services.adt.events import (
    ADMISSIONS,
    AdtCaller,
    AdtEvent,
    AdtResult,
    Identity,
    MessageKey,
    Outcome,
    Refused,
    Replayed,
    StoredAck,
    Trigger,
    TypedIdentifier,
    Values,
)
from netpacs.services.adt.merges import MergeService
from netpacs.services.adt.patients import store_patient
from netpacs.services.audit import Actor, AuditRecord, AuditService, Event, Purpose
from netpacs.services.audit import Outcome as AuditOutcome
from netpacs.services.identity import RegionalRecord

log = logging.getLogger(__name__)

# HL7 table 0001 administrative sex -> DICOM Patient's Sex (0010,0040): M, F, O or empty.
_DICOM_SEX = {"M": "M", "F": "F", "O": "O", "A": "O", "N": "O", "U": "", "": ""}


class AdtService:
    """Applies ADT events to the index in short write transactions of its own."""

    def __init__(
        self, engine: sa.Engine, region: Region, *, audit_source_id: str = "NETPACS"
    ) -> None:
        self._engine = engine
        self._region = region
        self._record = RegionalRecord()
        self._merges = MergeService(engine)
        self._audit_source_id = audit_source_id

    # -- callers ----------------------------------------------------------------------

    def caller(self, peer: Peer) -> AdtCaller:
        """The ADT feeds of the region file a connection from ``peer`` may be (by its
        address and verified TLS client certificate); none: every message is refused."""
        return AdtCaller(peer, self._region.adt_feeds_of(peer))

    def console(self) -> AdtCaller:
        """netpacs's own command line (``netpacs demo-data``): speaks for every facility."""
        return AdtCaller(Peer(None), (), console=True)

    def _caller_refusal(self, caller: AdtCaller, key: MessageKey) -> str | None:
        """Why ``caller`` may not send this message (None: it may). A facility the
        region does not know is left to the ADT rules (:meth:`check_sender`)."""
        facility = key.sending_facility.split("^", 1)[0].strip()
        if not caller.identified:
            return (
                f"connection from {caller.peer} is not an ADT feed of the region file "
                "(adt_feeds: plain MLLP only from a feed's hosts, MLLP over TLS with its "
                "client certificate); nothing applied"
            )
        known = (
            self._region.trust_of_facility(facility) is not None
            or facility in self._region.regional_adt_facilities
        )
        if known and not caller.speaks_for(facility):
            return (
                f"MSH-4 sending facility {facility!r} is not one that {caller} sends for "
                "(adt_feeds facilities in the region file); nothing applied"
            )
        return None

    def _refuse_caller(self, caller: AdtCaller, key: MessageKey, reason: str) -> None:
        """A Security Alert for a message from a caller that is not who MSH-4 says."""
        log.warning("HL7 %s refused: %s", key.control_id, reason)
        audit = AuditService(
            AuditService.in_own_transaction(self._engine), source_id=self._audit_source_id
        )
        audit.record(
            AuditRecord(
                Event.SECURITY_ALERT,
                Actor(
                    user_id=f"{key.sending_application}@{key.sending_facility}"[:64],
                    address=caller.peer.address,
                    is_application=True,
                ),
                AuditOutcome.MINOR_FAILURE,
                detail=f"refused HL7 {key.message_type} {key.control_id}: {reason}",
            )
        )

    # -- messages ---------------------------------------------------------------------

    def process(
        self,
        key: MessageKey,
        event: AdtEvent,
        acknowledge: Callable[[AdtResult], StoredAck],
        *,
        caller: AdtCaller,
    ) -> StoredAck:
        """Apply ``event`` once; a resend of ``key`` gets the first acknowledgement back.
        A caller that may not send it is refused before its control id is looked at (so
        that it cannot use up a real feed's control ids)."""
        return self.apply_once(
            key,
            acknowledge,
            caller=caller,
            apply=lambda conn, now: self._apply(conn, event, now, key.sending_facility),
            patients=[
                (i.value, i.authority)
                for i in (*event.identifiers, *event.prior_identifiers)
                if not i.is_nhs_number and i.value
            ],
        )

    def apply_once(
        self,
        key: MessageKey,
        acknowledge: Callable[[AdtResult], StoredAck],
        *,
        caller: AdtCaller,
        apply: Callable[[sa.Connection, dt.datetime], AdtResult],
        patients: list[tuple[str, str]],
    ) -> StoredAck:
        """The feed rules every HL7 message of a trust's feed follows (ADT, orders): the
        caller must speak for MSH-4; ``apply`` runs once per control id, in a savepoint
        that a :class:`Refused` rolls back; the acknowledgement is stored with the control
        id and a Patient Record audit message names ``patients`` (ID, issuer), in the same
        transaction."""
        reason = self._caller_refusal(caller, key)
        if reason is not None:
            self._refuse_caller(caller, key, reason)
            return acknowledge(AdtResult(Outcome.UNIDENTIFIED_CALLER, reason))
        for attempt in (1, 2):
            try:
                return self._process_once(key, acknowledge, apply, patients)
            except sa.exc.IntegrityError:
                # Another writer applied the same message or created the same patient
                # meanwhile (several core nodes): the second try sees its result.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _process_once(
        self,
        key: MessageKey,
        acknowledge: Callable[[AdtResult], StoredAck],
        apply: Callable[[sa.Connection, dt.datetime], AdtResult],
        patients: list[tuple[str, str]],
    ) -> StoredAck:
        now = dt.datetime.now(dt.UTC)
        with self._engine.begin() as conn:
            seen = conn.execute(
                sa.select(hl7_message).where(
                    hl7_message.c.sending_application == key.sending_application,
                    hl7_message.c.sending_facility == key.sending_facility,
                    hl7_message.c.message_control_id == key.control_id,
                )
            ).first()
            if seen is not None:
                if seen.content_sha256 != key.digest:
                    return acknowledge(
                        AdtResult(
                            Outcome.CONTROL_ID_REUSED,
                            f"control id {key.control_id!r} was used on {seen.received_at:%Y-%m-%d}"
                            " for a different message; nothing applied",
                        )
                    )
                log.info(
                    "HL7 %s from %s: resend, answered as before",
                    key.control_id,
                    key.sending_application,
                )
                return Replayed(seen.ack_code, seen.ack_text, seen.ack_message)
            savepoint = conn.begin_nested()
            try:
                result = apply(conn, now)
                savepoint.commit()
            except Refused as refused:
                savepoint.rollback()
                result = refused.result
            ack = acknowledge(result)
            self._audit(conn, key, patients, result, now)
            conn.execute(
                sa.insert(hl7_message).values(
                    sending_application=key.sending_application,
                    sending_facility=key.sending_facility,
                    message_control_id=key.control_id,
                    message_type=key.message_type,
                    content_sha256=key.digest,
                    ack_code=ack.code,
                    ack_text=ack.text,
                    ack_message=ack.message,
                    received_at=now,
                )
            )
        log.info(
            "HL7 %s %s from %s/%s: %s %s",
            key.message_type,
            key.control_id,
            key.sending_application,
            key.sending_facility,
            ack.code,
            ack.text,
        )
        return ack

    def _audit(
        self,
        conn: sa.Connection,
        key: MessageKey,
        patients: list[tuple[str, str]],
        result: AdtResult,
        now: dt.datetime,
    ) -> None:
        """A Patient Record audit message, in the transaction that applied the message."""
        applied = result.outcome is Outcome.APPLIED
        AuditService(lambda fn: fn(conn), source_id=self._audit_source_id).record(
            AuditRecord(
                Event.PATIENT_RECORD,
                Actor(
                    user_id=f"{key.sending_application}@{key.sending_facility}"[:64],
                    trust=key.sending_facility or None,
                    is_application=True,
                ),
                AuditOutcome.SUCCESS if applied else AuditOutcome.MINOR_FAILURE,
                purpose=Purpose.HOPERAT,
                patients=patients,
                detail=f"HL7 {key.message_type} {key.control_id}: "
                + (result.detail or result.outcome.value),
                when=now,
            )
        )

    def _apply(
        self, conn: sa.Connection, event: AdtEvent, now: dt.datetime, sending_facility: str
    ) -> AdtResult:
        identity, values = self._read(event)
        self.check_sender(sending_facility, identity)
        source = f"HL7 ADT^{event.trigger.value} {event.control_id}"
        if event.trigger in (Trigger.A40, Trigger.A47):
            prior = self._prior(event, identity)
            merge_id = self._merges.merge(
                conn, event.trigger.value, event.control_id, prior, identity, now=now
            )
            self._store_identity(conn, identity, values, event.control_id, now, source)
            detail = f"studies of {prior} moved to {identity} (merge {merge_id})"
        else:
            self._store_identity(conn, identity, values, event.control_id, now, source)
            detail = ""
            number = conn.execute(
                sa.select(patient.c.nhs_number).where(
                    patient.c.patient_id == identity.patient_id,
                    patient.c.issuer == identity.issuer,
                )
            ).scalar()
            record_change(
                conn,
                ChangeKind.ADMIT if event.trigger in ADMISSIONS else ChangeKind.PATIENT,
                patient_id=identity.patient_id,
                issuer=identity.issuer,
                nhs_number=number,
                now=now,
            )
        return AdtResult(Outcome.APPLIED, "; ".join(filter(None, [detail, *values.notes])))

    # -- reading an event ---------------------------------------------------------------

    def _trust_identity(self, ids: tuple[TypedIdentifier, ...], where: str) -> Identity:
        local = [i for i in ids if not i.is_nhs_number]
        known = [i for i in local if self._region.trust(i.authority) is not None]
        if not local:
            raise Refused(Outcome.MISSING_FIELD, f"{where} has no hospital number")
        if not known:
            authorities = ", ".join(sorted({repr(i.authority) for i in local}))
            raise Refused(
                Outcome.UNKNOWN_TRUST,
                f"{where}: assigning authority {authorities} is not the ODS code of a trust "
                "of the region",
            )
        if len({i.authority for i in known}) > 1:
            raise Refused(
                Outcome.INVALID_CONTENT, f"{where} has hospital numbers of more than one trust"
            )
        if len({i.value for i in known}) > 1:
            raise Refused(Outcome.INVALID_CONTENT, f"{where} has two hospital numbers of one trust")
        return Identity(known[0].value, known[0].authority)

    def local_identity(self, identifiers: tuple[TypedIdentifier, ...]) -> Identity:
        """The hospital number PID-3 names at a trust of the region (refused when none,
        or when it names more than one)."""
        return self._trust_identity(identifiers, "PID-3")

    def _read(self, event: AdtEvent) -> tuple[Identity, Values]:
        identity = self._trust_identity(event.identifiers, "PID-3")
        notes: list[str] = []
        nhs = [i for i in event.identifiers if i.is_nhs_number]
        number: str | None = None
        problem: str | None = None
        if len({i.value for i in nhs}) > 1:
            raise Refused(Outcome.INVALID_CONTENT, "PID-3 has two different NHS numbers")
        if nhs:
            number = nhs[0].value
            if number == '""':
                number = ""
            else:
                parsed = nhs_number.parse(number)
                if parsed.valid:
                    number = parsed.digits
                else:
                    assert parsed.problem is not None
                    problem = parsed.problem.value
                    notes.append(
                        f"NHS number {number!r} {problem}: stored as received, flagged, not used"
                    )
        demo = event.demographics
        birth = demo.birth_date
        if birth:
            birth = _birth_date(birth)
        sex = demo.sex.strip().upper() if demo.sex else demo.sex
        if sex and sex not in _DICOM_SEX:
            raise Refused(
                Outcome.INVALID_CONTENT,
                f"PID-8 administrative sex {demo.sex!r} is not one of M, F, O, U, A, N",
            )
        return identity, Values(demo.name, birth, sex, number, problem, tuple(notes))

    def check_sender(self, sending_facility: str, identity: Identity) -> None:
        """A trust's feed changes only the hospital numbers that trust issues: MSH-4 must
        be the trust's ODS code, a site code of it or one of its ``adt_facilities``, or
        one of the region's ``regional_adt_facilities`` (which speak for every trust)."""
        facility = sending_facility.split("^", 1)[0].strip()
        trust = self._region.trust_of_facility(facility)
        if trust == identity.issuer or facility in self._region.regional_adt_facilities:
            return
        if trust is None:
            raise Refused(
                Outcome.WRONG_SENDER,
                f"MSH-4 sending facility {facility!r} is not a trust of the region (an ODS "
                "code, a site code or one of a trust's adt_facilities) nor one of its "
                "regional_adt_facilities; nothing applied",
            )
        raise Refused(
            Outcome.WRONG_SENDER,
            f"MSH-4 sending facility {facility!r} is {trust}'s: it may not change {identity}, "
            f"a hospital number {identity.issuer} issues; nothing applied",
        )

    def _prior(self, event: AdtEvent, identity: Identity) -> Identity:
        if not event.prior_identifiers:
            raise Refused(Outcome.MISSING_FIELD, "MRG-1 prior patient identifier is missing")
        local = [i for i in event.prior_identifiers if not i.is_nhs_number]
        if local and all(i.authority != identity.issuer for i in local):
            other = next((i for i in local if self._region.trust(i.authority)), None)
            if other is not None:
                raise Refused(
                    Outcome.CROSS_TRUST,
                    f"MRG-1 {other.value} at {other.authority} and PID-3 {identity} are of "
                    "different trusts: a merge across trusts is refused",
                )
        prior = self._trust_identity(event.prior_identifiers, "MRG-1")
        if prior == identity:
            raise Refused(Outcome.INVALID_CONTENT, f"MRG-1 and PID-3 are both {identity}")
        return prior

    # -- writing ------------------------------------------------------------------------

    def _store_identity(
        self,
        conn: sa.Connection,
        identity: Identity,
        values: Values,
        control_id: str,
        now: dt.datetime,
        source: str,
    ) -> None:
        where = sa.and_(
            adt_identity.c.patient_id == identity.patient_id,
            adt_identity.c.issuer == identity.issuer,
        )
        current = conn.execute(sa.select(adt_identity).where(where)).first()
        sent: dict[str, Any] = {
            "patient_name": values.name,
            "patient_birth_date": values.birth_date,
            "patient_sex": values.sex,
        }
        if values.nhs_number is not None:
            sent["nhs_number"] = values.nhs_number
            sent["nhs_number_problem"] = values.nhs_number_problem
        changes = {k: v for k, v in sent.items() if v is not None}
        changes.update(updated_at=now, last_control_id=control_id)
        if current is None:
            conn.execute(
                sa.insert(adt_identity).values(
                    patient_id=identity.patient_id, issuer=identity.issuer, **changes
                )
            )
        else:
            conn.execute(sa.update(adt_identity).where(where).values(**changes))
        shown = {
            "patient_name": values.name,
            "patient_birth_date": values.birth_date,
            "patient_sex": None if values.sex is None else _DICOM_SEX[values.sex],
        }
        pk = store_patient(conn, identity, {k: v for k, v in shown.items() if v is not None}, now)
        # The NHS number links this identity to the person's others, unless something
        # contradicts it: then a person decides (services.identity).
        number = values.nhs_number
        if number and values.nhs_number_problem is None:
            self._record.link_nhs_number(conn, pk, number, source=source, now=now)
        elif number and values.nhs_number_problem is not None:
            self._record.flag_invalid(
                conn, pk, number, values.nhs_number_problem, source=source, now=now
            )
        elif number == "":
            self._record.unlink(conn, pk)
        if values.name or values.birth_date:
            self._record.check_studies_of(conn, pk, source=source, now=now)


def _birth_date(value: str) -> str:
    """PID-7 (TS/DTM) to a DICOM DA: the date part, which must be a real date."""
    digits = value.strip()[:8]
    try:
        dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
        if len(digits) != 8 or not digits.isdigit():
            raise ValueError(digits)
    except ValueError:
        raise Refused(
            Outcome.INVALID_CONTENT, f"PID-7 date of birth {value!r} is not a date YYYYMMDD"
        ) from None
    return digits
