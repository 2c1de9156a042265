"""ADT rules: register and update local identities, change identifiers, merge, undo a merge.

A local identity is a hospital number at a trust (its ODS code as issuer, REGION.md).
A01/A04/A08 store its demographics and NHS number (``adt_identity``) and show them in
queries by updating the ``patient`` row's columns; stored objects are never rewritten.
A47 (change identifier) and A40 (merge) move studies from one local identity to
another of the same trust and keep a ``patient_merge`` row with the prior state, so
that :meth:`AdtService.undo_merge` restores it exactly.

Every message is applied once: its control id (per sending application and facility)
is stored with its acknowledgement in ``hl7_message`` in the same transaction, and a
resend is answered with that acknowledgement.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import sqlalchemy as sa

from netpacs.domain import nhs_number
from netpacs.domain.region import Region
from netpacs.index.schema import adt_identity, hl7_message, patient, patient_merge, study
from netpacs.index.writer import bump_epoch
from netpacs.services.audit import Actor, AuditRecord, AuditService, Event, Purpose
from netpacs.services.audit import Outcome as AuditOutcome
from netpacs.services.identity import RegionalRecord

log = logging.getLogger(__name__)

_PATIENT_COLUMNS = ("patient_name", "patient_birth_date", "patient_sex", "nhs_number")
# HL7 table 0001 administrative sex -> DICOM Patient's Sex (0010,0040): M, F, O or empty.
_DICOM_SEX = {"M": "M", "F": "F", "O": "O", "A": "O", "N": "O", "U": "", "": ""}


class Trigger(enum.Enum):
    """ADT trigger events (HL7 v2.5 chapter 3) netpacs applies."""

    A01 = "A01"  # admit / visit notification
    A04 = "A04"  # register a patient
    A08 = "A08"  # update patient information
    A40 = "A40"  # merge patient - patient identifier list
    A47 = "A47"  # change patient identifier list


class Outcome(enum.Enum):
    APPLIED = "applied"
    INVALID_CONTENT = "invalid content"
    MISSING_FIELD = "missing field"
    UNKNOWN_TRUST = "unknown trust"
    UNKNOWN_IDENTITY = "unknown identity"
    IDENTIFIER_IN_USE = "identifier in use"
    CROSS_TRUST = "cross-trust merge"
    WRONG_SENDER = "sender not of the identity's trust"
    CONTROL_ID_REUSED = "control id reused"
    CONFLICT = "conflict"


@dataclass(frozen=True, slots=True)
class AdtResult:
    outcome: Outcome
    detail: str = ""


@dataclass(frozen=True, slots=True)
class TypedIdentifier:
    """One CX of PID-3 or MRG-1: ID, assigning authority, identifier type code."""

    value: str
    authority: str
    type_code: str = ""

    @property
    def is_nhs_number(self) -> bool:
        authority = self.authority
        return nhs_number.is_nhs_issuer(authority) or (not authority and self.type_code == "NH")


@dataclass(frozen=True, slots=True)
class Demographics:
    """Values as sent: None when the field was empty (keep), '' for HL7 ``""`` (delete)."""

    name: str | None = None
    birth_date: str | None = None
    sex: str | None = None


@dataclass(frozen=True, slots=True)
class AdtEvent:
    trigger: Trigger
    identifiers: tuple[TypedIdentifier, ...]
    demographics: Demographics
    prior_identifiers: tuple[TypedIdentifier, ...] = ()
    control_id: str = ""


@dataclass(frozen=True, slots=True)
class MessageKey:
    """What makes a message the same message: sender, facility, control id; its digest."""

    sending_application: str
    sending_facility: str
    control_id: str
    message_type: str
    digest: str


class StoredAck(Protocol):
    @property
    def code(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def message(self) -> str: ...


@dataclass(frozen=True, slots=True)
class _Replayed:
    code: str
    text: str
    message: str


class MergeRefused(Exception):
    """A merge a person asked for cannot be made; the message says why."""


class _Refused(Exception):
    def __init__(self, outcome: Outcome, detail: str) -> None:
        super().__init__(detail)
        self.result = AdtResult(outcome, detail)


@dataclass(frozen=True, slots=True)
class _Identity:
    patient_id: str
    issuer: str

    def __str__(self) -> str:
        return f"{self.patient_id} at {self.issuer}"


@dataclass(frozen=True, slots=True)
class _Values:
    """What an event says about one identity, checked and in index form."""

    name: str | None
    birth_date: str | None
    sex: str | None  # as sent (HL7 table 0001)
    nhs_number: str | None  # None: not sent; '' delete
    nhs_number_problem: str | None
    notes: tuple[str, ...]


class AdtService:
    """Applies ADT events to the index in short write transactions of its own."""

    def __init__(
        self, engine: sa.Engine, region: Region, *, audit_source_id: str = "NETPACS"
    ) -> None:
        self._engine = engine
        self._region = region
        self._record = RegionalRecord()
        self._audit_source_id = audit_source_id

    # -- messages ---------------------------------------------------------------------

    def process(
        self,
        key: MessageKey,
        event: AdtEvent,
        acknowledge: Callable[[AdtResult], StoredAck],
    ) -> StoredAck:
        """Apply ``event`` once; a resend of ``key`` gets the first acknowledgement back."""
        for attempt in (1, 2):
            try:
                return self._process_once(key, event, acknowledge)
            except sa.exc.IntegrityError:
                # Another writer applied the same message or created the same patient
                # meanwhile (several core nodes): the second try sees its result.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _process_once(
        self, key: MessageKey, event: AdtEvent, acknowledge: Callable[[AdtResult], StoredAck]
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
                return _Replayed(seen.ack_code, seen.ack_text, seen.ack_message)
            savepoint = conn.begin_nested()
            try:
                result = self._apply(conn, event, now, key.sending_facility)
                savepoint.commit()
            except _Refused as refused:
                savepoint.rollback()
                result = refused.result
            ack = acknowledge(result)
            self._audit(conn, key, event, result, now)
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
        event: AdtEvent,
        result: AdtResult,
        now: dt.datetime,
    ) -> None:
        """A Patient Record audit message, in the transaction that applied the event."""
        patients = [
            (i.value, i.authority)
            for i in (*event.identifiers, *event.prior_identifiers)
            if not i.is_nhs_number and i.value
        ]
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
        self._check_sender(sending_facility, identity)
        source = f"HL7 ADT^{event.trigger.value} {event.control_id}"
        if event.trigger in (Trigger.A40, Trigger.A47):
            prior = self._prior(event, identity)
            merge_id = self._merge(
                conn, event.trigger.value, event.control_id, prior, identity, now=now
            )
            self._store_identity(conn, identity, values, event.control_id, now, source)
            detail = f"studies of {prior} moved to {identity} (merge {merge_id})"
        else:
            self._store_identity(conn, identity, values, event.control_id, now, source)
            detail = ""
        return AdtResult(Outcome.APPLIED, "; ".join(filter(None, [detail, *values.notes])))

    # -- reading an event ---------------------------------------------------------------

    def _trust_identity(self, ids: tuple[TypedIdentifier, ...], where: str) -> _Identity:
        local = [i for i in ids if not i.is_nhs_number]
        known = [i for i in local if self._region.trust(i.authority) is not None]
        if not local:
            raise _Refused(Outcome.MISSING_FIELD, f"{where} has no hospital number")
        if not known:
            authorities = ", ".join(sorted({repr(i.authority) for i in local}))
            raise _Refused(
                Outcome.UNKNOWN_TRUST,
                f"{where}: assigning authority {authorities} is not the ODS code of a trust "
                "of the region",
            )
        if len({i.authority for i in known}) > 1:
            raise _Refused(
                Outcome.INVALID_CONTENT, f"{where} has hospital numbers of more than one trust"
            )
        if len({i.value for i in known}) > 1:
            raise _Refused(
                Outcome.INVALID_CONTENT, f"{where} has two hospital numbers of one trust"
            )
        return _Identity(known[0].value, known[0].authority)

    def _read(self, event: AdtEvent) -> tuple[_Identity, _Values]:
        identity = self._trust_identity(event.identifiers, "PID-3")
        notes: list[str] = []
        nhs = [i for i in event.identifiers if i.is_nhs_number]
        number: str | None = None
        problem: str | None = None
        if len({i.value for i in nhs}) > 1:
            raise _Refused(Outcome.INVALID_CONTENT, "PID-3 has two different NHS numbers")
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
            raise _Refused(
                Outcome.INVALID_CONTENT,
                f"PID-8 administrative sex {demo.sex!r} is not one of M, F, O, U, A, N",
            )
        return identity, _Values(demo.name, birth, sex, number, problem, tuple(notes))

    def _check_sender(self, sending_facility: str, identity: _Identity) -> None:
        """A trust's feed changes only the hospital numbers that trust issues: MSH-4 must
        be the trust's ODS code, a site code of it or one of its ``adt_facilities``, or
        one of the region's ``regional_adt_facilities`` (which speak for every trust)."""
        facility = sending_facility.split("^", 1)[0].strip()
        trust = self._region.trust_of_facility(facility)
        if trust == identity.issuer or facility in self._region.regional_adt_facilities:
            return
        if trust is None:
            raise _Refused(
                Outcome.WRONG_SENDER,
                f"MSH-4 sending facility {facility!r} is not a trust of the region (an ODS "
                "code, a site code or one of a trust's adt_facilities) nor one of its "
                "regional_adt_facilities; nothing applied",
            )
        raise _Refused(
            Outcome.WRONG_SENDER,
            f"MSH-4 sending facility {facility!r} is {trust}'s: it may not change {identity}, "
            f"a hospital number {identity.issuer} issues; nothing applied",
        )

    def _prior(self, event: AdtEvent, identity: _Identity) -> _Identity:
        if not event.prior_identifiers:
            raise _Refused(Outcome.MISSING_FIELD, "MRG-1 prior patient identifier is missing")
        local = [i for i in event.prior_identifiers if not i.is_nhs_number]
        if local and all(i.authority != identity.issuer for i in local):
            other = next((i for i in local if self._region.trust(i.authority)), None)
            if other is not None:
                raise _Refused(
                    Outcome.CROSS_TRUST,
                    f"MRG-1 {other.value} at {other.authority} and PID-3 {identity} are of "
                    "different trusts: a merge across trusts is refused",
                )
        prior = self._trust_identity(event.prior_identifiers, "MRG-1")
        if prior == identity:
            raise _Refused(Outcome.INVALID_CONTENT, f"MRG-1 and PID-3 are both {identity}")
        return prior

    # -- writing ------------------------------------------------------------------------

    def _store_identity(
        self,
        conn: sa.Connection,
        identity: _Identity,
        values: _Values,
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
        pk = self._store_patient(
            conn, identity, {k: v for k, v in shown.items() if v is not None}, now
        )
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

    def _store_patient(
        self, conn: sa.Connection, identity: _Identity, columns: dict[str, str], now: dt.datetime
    ) -> int:
        """The patient row of ``identity``, created when missing, with ``columns`` set."""
        pk = _patient_pk(conn, identity)
        if pk is None:
            return int(
                conn.execute(
                    sa.insert(patient)
                    .values(
                        patient_id=identity.patient_id,
                        issuer=identity.issuer,
                        created_at=now,
                        **columns,
                    )
                    .returning(patient.c.id)
                ).scalar_one()
            )
        if columns:
            conn.execute(sa.update(patient).where(patient.c.id == pk).values(**columns))
        return pk

    def merge_identities(
        self,
        conn: sa.Connection,
        prior: tuple[str, str],
        survivor: tuple[str, str],
        *,
        reference: str,
        now: dt.datetime,
    ) -> int:
        """Merge one hospital number into another of the same trust (a person decided).

        Like an A40: the studies of ``prior`` move to ``survivor``; undone by
        :meth:`undo_merge`. Raises :class:`MergeRefused` with the reason.
        """
        if prior[1] != survivor[1]:
            raise MergeRefused(
                f"{prior[0]} at {prior[1]} and {survivor[0]} at {survivor[1]} "
                "are of different trusts: a merge across trusts is refused"
            )
        try:
            return self._merge(
                conn, "MERGE", reference, _Identity(*prior), _Identity(*survivor), now=now
            )
        except _Refused as refused:
            raise MergeRefused(refused.result.detail) from None

    def _merge(
        self,
        conn: sa.Connection,
        trigger: str,
        control_id: str,
        prior: _Identity,
        survivor: _Identity,
        *,
        now: dt.datetime,
    ) -> int:
        prior_row = _patient_row(conn, prior)
        if prior_row is None:
            raise _Refused(Outcome.UNKNOWN_IDENTITY, f"MRG-1 {prior} is not known to netpacs")
        survivor_row = _patient_row(conn, survivor)
        if trigger != Trigger.A47.value and survivor_row is None:
            raise _Refused(Outcome.UNKNOWN_IDENTITY, f"PID-3 {survivor} is not known to netpacs")
        if trigger == Trigger.A47.value and survivor_row is not None:
            raise _Refused(
                Outcome.IDENTIFIER_IN_USE,
                f"PID-3 {survivor} is already in use: send A40 to merge two identities",
            )
        moved = list(
            conn.execute(
                sa.select(study.c.id)
                .where(study.c.patient_fk == prior_row["id"])
                .order_by(study.c.id)
            ).scalars()
        )
        snapshot: dict[str, Any] = {
            "prior_patient": prior_row,
            "survivor_patient": survivor_row,
            "prior_identity": _identity_row(conn, prior),
            "survivor_identity": _identity_row(conn, survivor),
            "studies": moved,
        }
        if survivor_row is None:  # A47: the new number takes over the old one's record
            copied = {c: prior_row[c] for c in _PATIENT_COLUMNS}
            survivor_pk = self._store_patient(conn, survivor, copied, now)
            old = snapshot["prior_identity"]
            if old is not None:
                conn.execute(
                    sa.insert(adt_identity).values(
                        {
                            **{k: v for k, v in old.items() if k != "id"},
                            "patient_id": survivor.patient_id,
                            "issuer": survivor.issuer,
                        }
                    )
                )
        else:
            survivor_pk = int(survivor_row["id"])
        conn.execute(sa.update(study).where(study.c.id.in_(moved)).values(patient_fk=survivor_pk))
        return int(
            conn.execute(
                sa.insert(patient_merge)
                .values(
                    trigger=trigger,
                    issuer=survivor.issuer,
                    prior_patient_id=prior.patient_id,
                    patient_id=survivor.patient_id,
                    prior_patient_fk=prior_row["id"],
                    patient_fk=survivor_pk,
                    message_control_id=control_id,
                    snapshot_json=orjson.dumps(snapshot, default=str).decode(),
                    created_at=now,
                )
                .returning(patient_merge.c.id)
            ).scalar_one()
        )

    # -- undo ---------------------------------------------------------------------------

    def undo_merge(self, merge_id: int) -> AdtResult:
        """Restore the state before merge ``merge_id``: studies, patient rows, identities.

        Refused when something changed the merged identities since (a later merge not
        undone, or a moved study that is no longer where the merge put it).
        """
        now = dt.datetime.now(dt.UTC)
        with self._engine.begin() as conn:
            row = conn.execute(
                sa.select(patient_merge).where(patient_merge.c.id == merge_id)
            ).first()
            if row is None:
                return AdtResult(Outcome.UNKNOWN_IDENTITY, f"there is no merge {merge_id}")
            if row.undone_at is not None:
                return AdtResult(Outcome.CONFLICT, f"merge {merge_id} was undone already")
            fks = (row.prior_patient_fk, row.patient_fk)
            later = conn.execute(
                sa.select(patient_merge.c.id).where(
                    patient_merge.c.id > merge_id,
                    patient_merge.c.undone_at.is_(None),
                    sa.or_(
                        patient_merge.c.prior_patient_fk.in_(fks),
                        patient_merge.c.patient_fk.in_(fks),
                    ),
                )
            ).first()
            if later is not None:
                return AdtResult(Outcome.CONFLICT, f"undo merge {later.id} first")
            snap = orjson.loads(row.snapshot_json)
            moved: list[int] = snap["studies"]
            still = conn.execute(
                sa.select(sa.func.count())
                .select_from(study)
                .where(study.c.id.in_(moved), study.c.patient_fk == row.patient_fk)
            ).scalar_one()
            if still != len(moved):
                return AdtResult(
                    Outcome.CONFLICT,
                    f"{len(moved) - still} of the studies merge {merge_id} moved have moved since",
                )
            conn.execute(
                sa.update(study)
                .where(study.c.id.in_(moved))
                .values(patient_fk=row.prior_patient_fk)
            )
            _restore_patient(conn, row.prior_patient_fk, snap["prior_patient"])
            _restore_patient(conn, row.patient_fk, snap["survivor_patient"])
            prior = _Identity(row.prior_patient_id, row.issuer)
            survivor = _Identity(row.patient_id, row.issuer)
            _restore_identity(conn, prior, snap["prior_identity"])
            _restore_identity(conn, survivor, snap["survivor_identity"])
            conn.execute(
                sa.update(patient_merge).where(patient_merge.c.id == merge_id).values(undone_at=now)
            )
        log.info("ADT merge %d of %s into %s undone", merge_id, prior, survivor)
        return AdtResult(Outcome.APPLIED, f"merge {merge_id} undone")


def _birth_date(value: str) -> str:
    """PID-7 (TS/DTM) to a DICOM DA: the date part, which must be a real date."""
    digits = value.strip()[:8]
    try:
        dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
        if len(digits) != 8 or not digits.isdigit():
            raise ValueError(digits)
    except ValueError:
        raise _Refused(
            Outcome.INVALID_CONTENT, f"PID-7 date of birth {value!r} is not a date YYYYMMDD"
        ) from None
    return digits


def _patient_pk(conn: sa.Connection, identity: _Identity) -> int | None:
    pk = conn.execute(
        sa.select(patient.c.id).where(
            patient.c.patient_id == identity.patient_id, patient.c.issuer == identity.issuer
        )
    ).scalar()
    return None if pk is None else int(pk)


def _patient_row(conn: sa.Connection, identity: _Identity) -> dict[str, Any] | None:
    row = conn.execute(
        sa.select(patient).where(
            patient.c.patient_id == identity.patient_id, patient.c.issuer == identity.issuer
        )
    ).first()
    return None if row is None else _plain(row)


def _identity_row(conn: sa.Connection, identity: _Identity) -> dict[str, Any] | None:
    row = conn.execute(
        sa.select(adt_identity).where(
            adt_identity.c.patient_id == identity.patient_id,
            adt_identity.c.issuer == identity.issuer,
        )
    ).first()
    return None if row is None else _plain(row)


def _plain(row: sa.Row[Any]) -> dict[str, Any]:
    # Column names are sqlalchemy quoted_name, a str subclass orjson will not take as keys.
    return {str(k): v for k, v in row._mapping.items()}


def _restore_patient(conn: sa.Connection, pk: int, before: dict[str, Any] | None) -> None:
    if before is None:
        # Created by the merge (A47): removed again unless a study arrived for it since.
        has_studies = conn.execute(
            sa.select(study.c.id).where(study.c.patient_fk == pk).limit(1)
        ).first()
        if has_studies is None:
            conn.execute(sa.delete(patient).where(patient.c.id == pk))
            bump_epoch(conn)
        return
    conn.execute(
        sa.update(patient)
        .where(patient.c.id == pk)
        .values({c: before[c] for c in _PATIENT_COLUMNS if c in before})
    )


def _restore_identity(
    conn: sa.Connection, identity: _Identity, before: dict[str, Any] | None
) -> None:
    where = sa.and_(
        adt_identity.c.patient_id == identity.patient_id,
        adt_identity.c.issuer == identity.issuer,
    )
    conn.execute(sa.delete(adt_identity).where(where))
    if before is not None:
        values = {k: v for k, v in before.items() if k != "updated_at"}
        values["updated_at"] = dt.datetime.fromisoformat(before["updated_at"])
        conn.execute(sa.insert(adt_identity).values(values))
