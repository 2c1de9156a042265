"""What storing an object may do to patients: who sees them, and which study it joins.

Anyone who may store can type any hospital number or NHS number into a header, so a
store is never evidence that a trust cares for a patient (issue 17):

- **No care relationship from a store.** A trust's care relationship
  (:class:`~netpacs.services.access.AccessRules`) is with the identities it issues (its
  hospital numbers; its ADT registrations are kept under them), the same person's
  identities linked to one of those by NHS number, and an identity a PACS administrator
  granted it here. An object a trust stores under any other identity (another trust's
  hospital number, a bare NHS number, an issuer outside the region) is kept, and
  :meth:`StoredIdentities.stored` raises a ``foreign-identity`` reconciliation item
  (``grant``: the trust does care for this patient; ``reject``) and a Security Alert
  that the auditors of each trust whose patient it is see on their audit page. Until a
  grant, the storing trust's staff see it only through break-glass.
- **No image in another patient's study.** An object whose patient is not the patient
  of the study it names is refused (:class:`StudyPatientRule`, the index writer's hook)
  and raised as a ``patient-contradicts-study`` item, with a Security Alert for the
  study patient's trust. Not a contradiction: the same identity; an object without
  Issuer of Patient ID whose Patient ID is the study's (the issuer ingest assumes is
  only the sender's trust); an identity merged with the study's (ADT A40/A47, a
  reconciliation merge), in either direction; an identity the index links to the same
  verified NHS number (one person).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import sqlalchemy as sa

from netpacs.domain import nhs_number
from netpacs.domain.dicom.header import first_str
from netpacs.domain.outcomes import Origin
from netpacs.domain.region import Region
from netpacs.index.records import InstanceRecord
from netpacs.index.schema import patient, patient_merge, study
from netpacs.services.access import Principal, Role
from netpacs.services.audit import Actor, AuditRecord, AuditService, Event, Outcome
from netpacs.services.identity import Kind, raise_item

_ISSUER_OF_PATIENT_ID = "00100021"
_MERGE_DEPTH = 8  # merge chains followed (A40 of an A40 ...)


def _identity(patient_id: str, issuer: str) -> str:
    return f"{patient_id} at {issuer or 'no issuer'}"


def _holders(conn: sa.Connection, number: str) -> list[tuple[str, str]]:
    """The identities the index links to NHS number ``number`` (or that are it)."""
    rows = conn.execute(
        sa.select(patient.c.patient_id, patient.c.issuer)
        .where(
            sa.or_(
                patient.c.nhs_number == number,
                sa.and_(
                    patient.c.patient_id == number,
                    patient.c.issuer.in_(sorted(nhs_number.NHS_ISSUERS)),
                ),
            )
        )
        .order_by(patient.c.id)
    )
    return [(str(p), str(i)) for p, i in rows]


def _linked_number(conn: sa.Connection, patient_id: str, issuer: str) -> str | None:
    if nhs_number.is_nhs_issuer(issuer):
        return patient_id if nhs_number.is_valid(patient_id) else None
    found = conn.execute(
        sa.select(patient.c.nhs_number).where(
            patient.c.patient_id == patient_id, patient.c.issuer == issuer
        )
    ).scalar()
    return None if found is None else str(found)


class StoredIdentities:
    """The foreign-identity rule, run when a batch of stores ends (services.ingest_batch),
    in the transaction that writes the batch's audit messages."""

    def __init__(self, region: Region) -> None:
        self._trusts = frozenset(t.ods_code for t in region.trusts)

    def stored(
        self,
        conn: sa.Connection,
        principal: Principal,
        origin: Origin,
        study_uid: str,
        identities: Iterable[tuple[str, str]],
        *,
        now: dt.datetime,
    ) -> list[AuditRecord]:
        """Raise an item for each identity of ``identities`` (stored in ``study_uid``)
        that is not the storing trust's own; the alerts for the other trusts' auditors.

        The region's peer archives (replication) store for every trust and raise
        nothing; nor does a principal of no trust (netpacs itself, an AE outside the
        region file), which has no care relationship. An import run for a trust
        (``netpacs import --trust``) is that trust's store.
        """
        trust = principal.trust
        if not trust or principal.role is Role.ARCHIVE:
            return []
        alerts: list[AuditRecord] = []
        for patient_id, issuer in sorted(set(identities)):
            if not patient_id or issuer == trust:
                continue
            if nhs_number.is_nhs_issuer(issuer):
                what = "a bare NHS number"
            elif issuer in self._trusts:
                what = f"a hospital number of {issuer}"
            else:
                what = f"an identity issued outside the region ({issuer or 'no issuer'})"
            number = _linked_number(conn, patient_id, issuer)
            holders = _holders(conn, number) if number else []
            detail = (
                f"{origin.describe()} stored study {study_uid} under {what}, "
                f"{_identity(patient_id, issuer)}: kept, but {trust} gains no care "
                "relationship from it; grant one if it cares for this patient "
                "(until then its staff need break-glass)"
            )
            raise_item(
                conn,
                Kind.FOREIGN_IDENTITY,
                (patient_id, issuer),
                (None, trust),
                detail,
                number=number,
                study_uid=study_uid,
                by_identity=True,
                source=origin.describe(),
                now=now,
            )
            audience = {issuer, *(i for _, i in holders)} & self._trusts - {trust}
            for other in sorted(audience):
                theirs = [h for h in holders if h[1] == other] or [(patient_id, issuer)]
                alerts.append(
                    AuditRecord(
                        Event.SECURITY_ALERT,
                        principal.actor(),
                        patients=[*theirs, (patient_id, issuer)],
                        study_uids=[study_uid],
                        detail=f"{principal.user_id} of {trust} stored study {study_uid} "
                        f"under {what} ({_identity(patient_id, issuer)}), a patient of "
                        f"{other}: no access granted by it; a reconciliation decision "
                        "or break-glass is needed",
                        when=now,
                        audience=other,
                    )
                )
        return alerts


class StudyPatientRule:
    """The index writer's hook for an object naming a study of another patient identity
    (:class:`netpacs.index.writer.OtherPatientHook`): refuse a contradiction."""

    def __init__(self, region: Region, *, source_id: str) -> None:
        self._trusts = frozenset(t.ods_code for t in region.trusts)
        self._source_id = source_id

    def __call__(
        self, conn: sa.Connection, record: InstanceRecord, study_pk: int, now: dt.datetime
    ) -> str | None:
        row = conn.execute(
            sa.select(
                study.c.study_instance_uid,
                patient.c.patient_id,
                patient.c.issuer,
                patient.c.nhs_number,
            )
            .select_from(study.join(patient, patient.c.id == study.c.patient_fk))
            .where(study.c.id == study_pk)
        ).one()
        study_uid = str(row.study_instance_uid)
        theirs = (str(row.patient_id), str(row.issuer))
        mine = (record.patient.patient_id, record.patient.issuer)
        if mine == theirs:
            return None
        if mine[0] == theirs[0] and not first_str(record.header, _ISSUER_OF_PATIENT_ID):
            return None  # no issuer given: only the sender's trust was assumed
        if mine[1] == theirs[1] and _merged(conn, mine, theirs):
            return None
        if _same_person(conn, mine, theirs, row.nhs_number):
            return None
        origin = record.origin
        sop_uid = record.instance.sop_instance_uid
        detail = (
            f"{origin.describe()} sent object {sop_uid} of {_identity(*mine)} naming study "
            f"{study_uid}, which is of {_identity(*theirs)}: refused, nothing added to the "
            "study. Correct the object's patient or study, or merge the identities if they "
            "are one person, and send it again"
        )
        new = raise_item(
            conn,
            Kind.PATIENT_MISMATCH,
            mine,
            theirs,
            detail,
            study_uid=study_uid,
            source=origin.describe(),
            now=now,
        )
        audience = {theirs[1], mine[1], origin.trust or ""} & self._trusts
        if new:
            audit = AuditService(lambda fn: fn(conn), source_id=self._source_id)
            actor = Actor(
                user_id=origin.user or origin.ae_title or "unknown sender",
                trust=origin.trust,
                is_application=origin.user is None,
            )
            for trust in sorted(audience):
                audit.record_in(
                    conn,
                    AuditRecord(
                        Event.SECURITY_ALERT,
                        actor,
                        outcome=Outcome.MINOR_FAILURE,
                        patients=[theirs, mine] if trust == theirs[1] else [mine, theirs],
                        study_uids=[study_uid],
                        detail=f"refused: {detail}",
                        when=now,
                        audience=trust,
                    ),
                )
        return (
            f"Patient ID {mine[0]} is not the patient of study {study_uid}: refused, "
            "raised for reconciliation"
        )


def _merged(conn: sa.Connection, mine: tuple[str, str], theirs: tuple[str, str]) -> bool:
    """Whether two hospital numbers of one trust were merged (not undone), either way."""
    issuer = mine[1]
    seen = {theirs[0]}
    frontier = {theirs[0]}
    for _ in range(_MERGE_DEPTH):
        rows = conn.execute(
            sa.select(patient_merge.c.prior_patient_id, patient_merge.c.patient_id).where(
                patient_merge.c.issuer == issuer,
                patient_merge.c.undone_at.is_(None),
                sa.or_(
                    patient_merge.c.prior_patient_id.in_(sorted(frontier)),
                    patient_merge.c.patient_id.in_(sorted(frontier)),
                ),
            )
        ).all()
        frontier = {str(x) for r in rows for x in r} - seen
        if mine[0] in frontier:
            return True
        if not frontier:
            return False
        seen |= frontier
    return False


def _same_person(
    conn: sa.Connection, mine: tuple[str, str], theirs: tuple[str, str], their_number: str | None
) -> bool:
    """Whether the index links both identities to one verified NHS number."""
    number = their_number or (theirs[0] if nhs_number.is_nhs_issuer(theirs[1]) else None)
    if number is None:
        return False
    if nhs_number.is_nhs_issuer(mine[1]):
        return mine[0] == number
    return _linked_number(conn, *mine) == number
