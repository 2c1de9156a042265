"""The regional patient record: linking local identities by NHS number, and reconciliation.

A local identity is a hospital number at a trust (patient row keyed by patient_id and
issuer, the trust's ODS code). Local identities that share a verified NHS number are
one person: the link is ``patient.nhs_number``, set here and only here. A query by
NHS number finds every identity linked to it (services.query).

Two people must never be joined by accident, so a number links an identity only when
nothing contradicts it. Whatever does becomes a reconciliation item for a PACS
administrator instead of a change:

- ``nhs-number-conflict``: the number is linked to an identity whose birth date or sex
  disagrees; the identity is not linked (or, if it was linked before its demographics
  changed, stays linked until a person decides).
- ``two-nhs-numbers``: a linked identity arrives with a second, different number; the
  first link stands.
- ``duplicate-registration``: two hospital numbers of one trust carry the same number;
  they are linked (same person) and a person may merge them.
- ``study-mismatch``: a study's patient name or birth date disagrees with the trust's
  ADT record for its hospital number (queries and served headers show the ADT record).
- ``invalid-nhs-number``: an NHS number failed the modulus 11 check; it is never used.
- ``foreign-identity``: a trust stored objects under an identity that is not its own
  (another trust's hospital number, a bare NHS number): they are kept, but the trust
  gains no care relationship from them until a person grants it (``grant``)
  (services.care).
- ``patient-contradicts-study``: an object named a study the index holds under another
  patient; it was refused and nothing was added to the study (services.care).

A person resolves an item with ``link``, ``unlink``, ``merge`` or ``reject`` (which
ones depends on the kind, :data:`ACTIONS`); the decision is kept, so an automatic
link the person refused is not made again when the same number arrives again. A
merge is an ordinary patient merge (services.adt) and can be undone exactly.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from netpacs.domain import nhs_number
from netpacs.domain.dicom.header import JsonDataset, first_str
from netpacs.index.records import InstanceRecord
from netpacs.index.schema import adt_identity, instance, patient, reconciliation, series, study

log = logging.getLogger(__name__)

_PATIENT_ID = "00100020"
_ISSUER = "00100021"
_OTHER_PATIENT_IDS = "00101002"


class Kind(enum.Enum):
    NHS_NUMBER_CONFLICT = "nhs-number-conflict"
    TWO_NHS_NUMBERS = "two-nhs-numbers"
    DUPLICATE_REGISTRATION = "duplicate-registration"
    STUDY_MISMATCH = "study-mismatch"
    INVALID_NHS_NUMBER = "invalid-nhs-number"
    FOREIGN_IDENTITY = "foreign-identity"
    PATIENT_MISMATCH = "patient-contradicts-study"


class Action(enum.Enum):
    LINK = "link"  # the identity is this NHS number's person
    UNLINK = "unlink"  # it is not: remove the link, and never make it automatically again
    MERGE = "merge"  # two hospital numbers of one trust are one record (undoable)
    REJECT = "reject"  # leave things as they are, close the item
    GRANT = "grant"  # the storing trust cares for this patient: its staff may see them


#: What a person may do with each kind of item, first the usual answer.
ACTIONS: dict[Kind, tuple[Action, ...]] = {
    Kind.NHS_NUMBER_CONFLICT: (Action.LINK, Action.UNLINK, Action.REJECT),
    Kind.TWO_NHS_NUMBERS: (Action.LINK, Action.REJECT),
    Kind.DUPLICATE_REGISTRATION: (Action.MERGE, Action.UNLINK, Action.REJECT),
    Kind.STUDY_MISMATCH: (Action.REJECT,),
    Kind.INVALID_NHS_NUMBER: (Action.REJECT,),
    Kind.FOREIGN_IDENTITY: (Action.GRANT, Action.REJECT),
    Kind.PATIENT_MISMATCH: (Action.REJECT,),
}

OPEN = "open"
RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class NhsNumberInHeader:
    """What a DICOM header says about the NHS number of its patient."""

    number: str | None = None  # 10 valid digits
    invalid: str | None = None  # as received, when it failed the check
    problem: str | None = None


def nhs_number_in_header(header: JsonDataset) -> NhsNumberInHeader:
    """The NHS number of a header: Patient ID issued by NHS, or one in Other Patient IDs."""
    candidates = [(first_str(header, _PATIENT_ID), first_str(header, _ISSUER))]
    element = header.get(_OTHER_PATIENT_IDS) or {}
    for item in element.get("Value") or []:
        if isinstance(item, dict):
            candidates.append((first_str(item, _PATIENT_ID), first_str(item, _ISSUER)))
    invalid: NhsNumberInHeader | None = None
    for value, issuer in candidates:
        if not value or not nhs_number.is_nhs_issuer(issuer):
            continue
        parsed = nhs_number.parse(value)
        if parsed.valid:
            return NhsNumberInHeader(number=parsed.digits)
        if invalid is None and parsed.problem is not None:
            invalid = NhsNumberInHeader(invalid=value, problem=parsed.problem.value)
    return invalid or NhsNumberInHeader()


@dataclass(frozen=True, slots=True)
class _Row:
    pk: int
    patient_id: str
    issuer: str
    birth_date: str
    sex: str
    nhs_number: str | None

    def __str__(self) -> str:
        return f"{self.patient_id} at {self.issuer or 'no issuer'}"


_ROW_COLUMNS = (
    patient.c.id,
    patient.c.patient_id,
    patient.c.issuer,
    patient.c.patient_birth_date,
    patient.c.patient_sex,
    patient.c.nhs_number,
)


def _row(conn: sa.Connection, pk: int) -> _Row | None:
    found = conn.execute(sa.select(*_ROW_COLUMNS).where(patient.c.id == pk)).first()
    return None if found is None else _Row(*found)


def _holders(conn: sa.Connection, number: str, *, besides: int) -> list[_Row]:
    """Identities linked to ``number``, or that are the number (Patient ID issued by NHS)."""
    rows = conn.execute(
        sa.select(*_ROW_COLUMNS)
        .where(
            sa.or_(
                patient.c.nhs_number == number,
                sa.and_(
                    patient.c.patient_id == number,
                    patient.c.issuer.in_(sorted(nhs_number.NHS_ISSUERS)),
                ),
            ),
            patient.c.id != besides,
        )
        .order_by(patient.c.id)
    )
    return [_Row(*r) for r in rows]


def _disagreement(a: _Row, b: _Row) -> str | None:
    if a.birth_date and b.birth_date and a.birth_date != b.birth_date:
        return f"birth date {_date(a.birth_date)} differs from {_date(b.birth_date)} of {b}"
    if a.sex in ("M", "F") and b.sex in ("M", "F") and a.sex != b.sex:
        return f"sex {a.sex} differs from {b.sex} of {b}"
    return None


def _date(da: str) -> str:
    return f"{da[:4]}-{da[4:6]}-{da[6:8]}" if len(da) == 8 else da


class RegionalRecord:
    """Links and reconciliation rules, run inside the caller's write transaction."""

    def link_nhs_number(
        self, conn: sa.Connection, patient_pk: int, number: str, *, source: str, now: dt.datetime
    ) -> None:
        """Link the identity to a verified NHS number, unless something contradicts it."""
        me = _row(conn, patient_pk)
        if me is None:
            return
        decided = _decision(conn, me, number)
        if decided is Action.UNLINK or (decided is Action.REJECT and me.nhs_number != number):
            return  # a person said no to this link
        holders = _holders(conn, number, besides=me.pk)
        if me.nhs_number is not None and me.nhs_number != number and decided is not Action.LINK:
            self._raise(
                conn,
                Kind.TWO_NHS_NUMBERS,
                me,
                number,
                f"{me} is linked to NHS number {nhs_number.format_for_people(me.nhs_number)}"
                f" and now arrived with {nhs_number.format_for_people(number)}",
                source=source,
                now=now,
            )
            return
        conflict = next(
            ((h, why) for h in holders if (why := _disagreement(me, h)) is not None), None
        )
        if conflict is not None and decided is not Action.LINK:
            other, why = conflict
            self._raise(
                conn,
                Kind.NHS_NUMBER_CONFLICT,
                me,
                number,
                f"NHS number {nhs_number.format_for_people(number)} of {me}: {why}"
                + ("; still linked" if me.nhs_number == number else "; not linked"),
                other=other,
                source=source,
                now=now,
            )
            if me.nhs_number != number:
                return
        if me.nhs_number != number:
            conn.execute(sa.update(patient).where(patient.c.id == me.pk).values(nhs_number=number))
            log.debug("%s linked to NHS number %s (%s)", me, number, source)
        same_trust = next((h for h in holders if h.issuer == me.issuer and h.issuer), None)
        if same_trust is not None:
            self._raise(
                conn,
                Kind.DUPLICATE_REGISTRATION,
                me,
                number,
                f"{me} and {same_trust} are two hospital numbers of one trust with NHS number "
                f"{nhs_number.format_for_people(number)}: merge them if they are one record",
                other=same_trust,
                source=source,
                now=now,
            )

    def unlink(self, conn: sa.Connection, patient_pk: int) -> None:
        conn.execute(sa.update(patient).where(patient.c.id == patient_pk).values(nhs_number=None))

    def flag_invalid(
        self,
        conn: sa.Connection,
        patient_pk: int,
        value: str,
        problem: str,
        *,
        source: str,
        now: dt.datetime,
    ) -> None:
        me = _row(conn, patient_pk)
        if me is not None:
            self._raise(
                conn,
                Kind.INVALID_NHS_NUMBER,
                me,
                value,
                f"NHS number {value!r} of {me} {problem}: not used to link",
                source=source,
                now=now,
            )

    def check_study(
        self,
        conn: sa.Connection,
        patient_pk: int,
        study_uid: str,
        header_patient: dict[str, Any],
        *,
        source: str,
        now: dt.datetime,
    ) -> None:
        """A new study's patient name and birth date against the trust's ADT record."""
        me = _row(conn, patient_pk)
        if me is None or not me.issuer:
            return
        adt = conn.execute(
            sa.select(adt_identity.c.patient_name, adt_identity.c.patient_birth_date).where(
                adt_identity.c.patient_id == me.patient_id, adt_identity.c.issuer == me.issuer
            )
        ).first()
        if adt is None:
            return
        problems: list[str] = []
        name = header_patient.get("patient_name") or ""
        if name and adt.patient_name and _name_key(name) != _name_key(adt.patient_name):
            problems.append(f"name {name!r} (ADT: {adt.patient_name!r})")
        birth = header_patient.get("patient_birth_date") or ""
        if birth and adt.patient_birth_date and birth != adt.patient_birth_date:
            problems.append(f"birth date {_date(birth)} (ADT: {_date(adt.patient_birth_date)})")
        if problems:
            self._raise(
                conn,
                Kind.STUDY_MISMATCH,
                me,
                None,
                f"study {study_uid} of {me} has patient "
                + " and ".join(problems)
                + "; queries and retrieved headers show the ADT record",
                study_uid=study_uid,
                source=source,
                now=now,
            )

    def check_studies_of(
        self, conn: sa.Connection, patient_pk: int, *, source: str, now: dt.datetime
    ) -> None:
        """Every study of the identity against its (just updated) ADT record."""
        first = (
            sa.select(sa.func.min(instance.c.id))
            .select_from(series.join(instance, instance.c.series_fk == series.c.id))
            .where(series.c.study_fk == study.c.id)
            .scalar_subquery()
        )
        rows = conn.execute(
            sa.select(study.c.study_instance_uid, instance.c.metadata_json)
            .select_from(study.join(instance, instance.c.id == first))
            .where(study.c.patient_fk == patient_pk)
        )
        for uid, text in rows:
            header = orjson.loads(text)
            values = {
                "patient_name": first_str(header, "00100010"),
                "patient_birth_date": first_str(header, "00100030"),
            }
            self.check_study(conn, patient_pk, uid, values, source=source, now=now)

    def on_new_study(
        self,
        conn: sa.Connection,
        patient_pk: int,
        study_uid: str,
        header_patient: dict[str, Any],
        in_header: NhsNumberInHeader,
        *,
        source: str,
        now: dt.datetime,
    ) -> None:
        """The rules for a study the index has not seen before (ingest, reindex)."""
        if in_header.number is not None:
            self.link_nhs_number(conn, patient_pk, in_header.number, source=source, now=now)
        elif in_header.invalid is not None and in_header.problem is not None:
            self.flag_invalid(
                conn, patient_pk, in_header.invalid, in_header.problem, source=source, now=now
            )
        self.check_study(conn, patient_pk, study_uid, header_patient, source=source, now=now)

    def __call__(
        self, conn: sa.Connection, record: InstanceRecord, patient_pk: int, now: dt.datetime
    ) -> None:
        """The index writer's hook for a new study (index.writer.NewStudyHook)."""
        self.on_new_study(
            conn,
            patient_pk,
            record.study.study_instance_uid,
            record.patient.values(),
            nhs_number_in_header(record.header),
            source=record.origin.describe(),
            now=now,
        )

    def _raise(
        self,
        conn: sa.Connection,
        kind: Kind,
        me: _Row,
        number: str | None,
        detail: str,
        *,
        source: str,
        now: dt.datetime,
        other: _Row | None = None,
        study_uid: str | None = None,
    ) -> None:
        raise_item(
            conn,
            kind,
            (me.patient_id, me.issuer),
            None if other is None else (other.patient_id, other.issuer),
            detail,
            number=number,
            study_uid=study_uid,
            source=source,
            now=now,
        )


def raise_item(
    conn: sa.Connection,
    kind: Kind,
    me: tuple[str, str],
    other: tuple[str | None, str] | None,
    detail: str,
    *,
    number: str | None = None,
    study_uid: str | None = None,
    by_identity: bool = False,
    source: str,
    now: dt.datetime,
) -> bool:
    """Raise an item for a person unless the same question was raised before (open or
    decided); True when it is new. ``other`` is the other identity, or (None, trust)
    for a trust (the storing trust of a ``foreign-identity`` item). ``by_identity``:
    the question is about the two parties only; the study and number it names are
    shown, but another study or number does not make another question."""
    # One item per question: the same conflict seen from either identity is one.
    pair = sorted([me, (other[0] or "", other[1])]) if other else [me]
    named = ("", "") if by_identity else (number or "", study_uid or "")
    key = "|".join([kind.value, *named, *(f"{p}\x1f{i}" for p, i in pair)])
    exists = conn.execute(
        sa.select(reconciliation.c.id).where(reconciliation.c.dedup_key == key)
    ).first()
    if exists is not None:
        return False
    conn.execute(
        sa.insert(reconciliation).values(
            kind=kind.value,
            status=OPEN,
            patient_id=me[0],
            issuer=me[1],
            nhs_number=number,
            other_patient_id=other[0] if other else None,
            other_issuer=other[1] if other else None,
            study_instance_uid=study_uid,
            detail=detail,
            source=source,
            dedup_key=key,
            created_at=now,
        )
    )
    log.warning("reconciliation needed (%s): %s", kind.value, detail)
    return True


def _decision(conn: sa.Connection, me: _Row, number: str) -> Action | None:
    """The last decision a person made about linking this identity to this number."""
    found = conn.execute(
        sa.select(reconciliation.c.resolution)
        .where(
            reconciliation.c.patient_id == me.patient_id,
            reconciliation.c.issuer == me.issuer,
            reconciliation.c.nhs_number == number,
            reconciliation.c.status == RESOLVED,
            reconciliation.c.kind.in_(
                [
                    Kind.NHS_NUMBER_CONFLICT.value,
                    Kind.TWO_NHS_NUMBERS.value,
                    Kind.DUPLICATE_REGISTRATION.value,
                ]
            ),
        )
        .order_by(reconciliation.c.resolved_at.desc(), reconciliation.c.id.desc())
        .limit(1)
    ).scalar()
    return None if found is None else Action(found)


def _name_key(pn: str) -> str:
    """A person name compared as people would: alphabetic group, case and spacing folded."""
    alphabetic = pn.split("=")[0]
    parts = [" ".join(p.split()).upper() for p in alphabetic.split("^")]
    while parts and not parts[-1]:
        parts.pop()
    return "^".join(parts[:2])  # family and given names; middle, prefix, suffix vary
