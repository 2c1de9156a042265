"""Attribute coercion on retrieve: objects are served with the patient the index holds.

Stored objects are never rewritten (ARCHITECTURE.md invariant 2), yet demographic
updates and merges from the trusts' patient administration systems (HL7 ADT,
:mod:`netpacs.services.adt`) must show in what we serve, not only in queries. So the
header of an object is coerced when it is served (PS3.4 C.4.2.1.4.2 and B.4.1.3
allow an SCP to coerce attributes; IHE PAM / PIR: the PAS is the authority), and
the stored original is kept.

The rule, for a study:

- its *served patient* is its ``patient`` row (``study.patient_fk``): Patient ID
  (0010,0020) and Issuer of Patient ID (0010,0021) from it; Patient's Name
  (0010,0010), Birth Date (0010,0030) and Sex (0010,0040) from it only when an
  ``adt_identity`` row exists for that hospital number at that trust (without ADT,
  names are left as the modality wrote them). A value ADT deleted is served empty.
- an instance is coerced when one of those served values differs from its stored
  header (``instance.metadata_json``). A header without an issuer is not given one
  when the served issuer is the trust the object came from (ingest derives the
  issuer from the origin trust, :func:`netpacs.services.ingest_record.build_record`): adding
  it would re-encode every object. When the Patient ID differs (a merge, A40, or a
  changed identifier, A47), both Patient ID and Issuer are set.

The common case costs one small query per study: a study whose patient has neither
an ADT identity nor a merge that moved studies to it needs nothing, and its
instances are served as stored, byte for byte. Only for the others are the stored
headers compared, instance by instance.

Coercion of a Part 10 object re-encodes its data set with pydicom in its stored
transfer syntax: elements not coerced are written back as read, pixel data is not
decoded, the file meta group is kept as stored. Retired group length elements
(gggg,0000) are not written (PS3.5 7.2).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from pydicom import Dataset
from pydicom.dataelem import DataElement

from netpacs.domain.dicom.encoding import read_encoded, write_encoded
from netpacs.domain.dicom.header import JsonDataset, first_str
from netpacs.domain.query import RetrieveItem
from netpacs.index.schema import adt_identity, instance, patient, patient_merge, series, study

PATIENT_NAME = "00100010"
PATIENT_ID = "00100020"
ISSUER_OF_PATIENT_ID = "00100021"
PATIENT_BIRTH_DATE = "00100030"
PATIENT_SEX = "00100040"
_VR = {
    PATIENT_NAME: "PN",
    PATIENT_ID: "LO",
    ISSUER_OF_PATIENT_ID: "LO",
    PATIENT_BIRTH_DATE: "DA",
    PATIENT_SEX: "CS",
}
_SPECIFIC_CHARACTER_SET = 0x00080005
_UID_BATCH = 500  # SOP Instance UIDs per IN list


@dataclass(frozen=True, slots=True)
class Coercion:
    """The attributes one instance is served with instead of its stored values.

    ``values``: (tag ``GGGGEEEE``, value) in tag order; '' is served as an empty element.
    """

    values: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class ServedPatient:
    """The patient a study's objects are served with (see the module docstring).

    ``name``, ``birth_date`` and ``sex`` (DICOM values) are None without an ADT
    identity: then the stored values are served.
    """

    patient_id: str
    issuer: str
    name: str | None = None
    birth_date: str | None = None
    sex: str | None = None

    def coercion(self, header: JsonDataset, origin_trust: str | None) -> Coercion | None:
        """What to change in an instance stored with ``header``; None when nothing."""
        values: list[tuple[str, str]] = []
        stored_issuer = first_str(header, ISSUER_OF_PATIENT_ID)
        if first_str(header, PATIENT_ID) != self.patient_id:
            values += [(PATIENT_ID, self.patient_id), (ISSUER_OF_PATIENT_ID, self.issuer)]
        elif stored_issuer != self.issuer and not (
            stored_issuer == "" and self.issuer == (origin_trust or "")
        ):
            values.append((ISSUER_OF_PATIENT_ID, self.issuer))
        for tag, served in (
            (PATIENT_NAME, self.name),
            (PATIENT_BIRTH_DATE, self.birth_date),
            (PATIENT_SEX, self.sex),
        ):
            if served is not None and first_str(header, tag) != served:
                values.append((tag, served))
        return Coercion(tuple(sorted(values))) if values else None


class CoercionService:
    """Decides which instances are served coerced, from the index (reads only)."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    def served_patient(self, study_uid: str) -> ServedPatient | None:
        """The served patient of a study; None when no instance of it can need coercion."""
        stmt = _study_patients().where(study.c.study_instance_uid == study_uid)
        with self._engine.connect() as conn:
            row = conn.execute(stmt).first()
        return _served(row) if row is not None else None

    def for_scope(
        self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> dict[str, Coercion]:
        """The coercion of each instance in scope that needs one, by SOP Instance UID."""
        served = self.served_patient(study_uid)
        if served is None:
            return {}
        conds = [study.c.study_instance_uid == study_uid]
        if series_uid is not None:
            conds.append(series.c.series_instance_uid == series_uid)
        if sop_instance_uid is not None:
            conds.append(instance.c.sop_instance_uid == sop_instance_uid)
        stmt = (
            sa.select(
                instance.c.sop_instance_uid, instance.c.origin_trust, instance.c.metadata_json
            )
            .select_from(_INSTANCE_STUDY)
            .where(*conds)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(stmt)
            return _coercions((served, sop, trust, text) for sop, trust, text in rows)

    def for_items(self, items: Sequence[RetrieveItem]) -> dict[str, Coercion]:
        """The coercion of each item that needs one (C-MOVE, C-GET), by SOP Instance UID."""
        uids = [item.sop_instance_uid for item in items]
        out: dict[str, Coercion] = {}
        with self._engine.connect() as conn:
            for start in range(0, len(uids), _UID_BATCH):
                out.update(_batch_coercions(conn, uids[start : start + _UID_BATCH]))
        return out


def _batch_coercions(conn: sa.Connection, sop_instance_uids: list[str]) -> dict[str, Coercion]:
    """As :meth:`CoercionService.for_items`: the studies of the instances first, then the
    instances of those studies that may need coercion."""
    in_batch = instance.c.sop_instance_uid.in_(sop_instance_uids)
    studies = _study_patients(by_instance=True).add_columns(study.c.id).distinct()
    served = {
        row.id: found
        for row in conn.execute(studies.where(in_batch))
        if (found := _served(row)) is not None
    }
    if not served:
        return {}
    stmt = (
        sa.select(
            series.c.study_fk,
            instance.c.sop_instance_uid,
            instance.c.origin_trust,
            instance.c.metadata_json,
        )
        .join_from(instance, series, instance.c.series_fk == series.c.id)
        .where(in_batch, series.c.study_fk.in_(list(served)))
    )
    rows = conn.execute(stmt)
    return _coercions((served[fk], sop, trust, text) for fk, sop, trust, text in rows)


_INSTANCE_STUDY = instance.join(series, instance.c.series_fk == series.c.id).join(
    study, series.c.study_fk == study.c.id
)


def _study_patients(*, by_instance: bool = False) -> sa.Select[Any]:
    """Per study: its patient row, whether ADT knows it, whether a merge moved studies to it.

    ``by_instance``: joined from ``instance`` (to select studies by their instances).
    """
    merged = (
        sa.select(patient_merge.c.id)
        .where(patient_merge.c.patient_fk == patient.c.id, patient_merge.c.undone_at.is_(None))
        .exists()
    )
    studies = _INSTANCE_STUDY if by_instance else study
    joined = studies.join(patient, study.c.patient_fk == patient.c.id).outerjoin(
        adt_identity,
        sa.and_(
            adt_identity.c.patient_id == patient.c.patient_id,
            adt_identity.c.issuer == patient.c.issuer,
        ),
    )
    return sa.select(
        patient.c.patient_id,
        patient.c.issuer,
        patient.c.patient_name,
        patient.c.patient_birth_date,
        patient.c.patient_sex,
        adt_identity.c.id.is_not(None).label("has_adt"),
        merged.label("merged"),
    ).select_from(joined)


def _served(row: sa.Row[Any]) -> ServedPatient | None:
    if row.has_adt:
        return ServedPatient(
            row.patient_id,
            row.issuer,
            row.patient_name,
            row.patient_birth_date,
            row.patient_sex,
        )
    if row.merged:
        return ServedPatient(row.patient_id, row.issuer)
    return None


def _coercions(rows: Iterable[tuple[ServedPatient, str, str | None, str]]) -> dict[str, Coercion]:
    """From (served patient, SOP Instance UID, origin trust, stored header) per instance."""
    out: dict[str, Coercion] = {}
    for served, sop_instance_uid, origin_trust, metadata_json in rows:
        coercion = served.coercion(orjson.loads(metadata_json), origin_trust)
        if coercion is not None:
            out[sop_instance_uid] = coercion
    return out


# -- applying a coercion -------------------------------------------------------------------


def _json_element(tag: str, value: str) -> JsonDataset:
    vr = _VR[tag]
    if not value:
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": value}]}
    return {"vr": vr, "Value": [value]}


def coerce_json(text: str, coercion: Coercion) -> str:
    """A stored DICOM JSON text (``instance.metadata_json``) with the coerced elements."""
    header: JsonDataset = orjson.loads(text)
    for tag, value in coercion.values:
        header[tag] = _json_element(tag, value)
    return orjson.dumps(dict(sorted(header.items()))).decode()


def apply_to_dataset(ds: Dataset, coercion: Coercion) -> None:
    """Set the coerced elements in a pydicom data set (strict: a non-ASCII value in a
    data set in the default repertoire switches it to UTF-8, PS3.5 6.1.2.3)."""
    if not ds.get("SpecificCharacterSet") and any(not v.isascii() for _, v in coercion.values):
        ds[_SPECIFIC_CHARACTER_SET] = DataElement(_SPECIFIC_CHARACTER_SET, "CS", "ISO_IR 192")
    for tag, value in coercion.values:
        number = int(tag, 16)
        ds[number] = DataElement(number, _VR[tag], value)


def coerce_dataset(data: bytes, transfer_syntax_uid: str, coercion: Coercion) -> bytes:
    """An encoded data set (no file meta) with the coerced elements, in the same syntax."""
    ds = read_encoded(data, transfer_syntax_uid)
    apply_to_dataset(ds, coercion)
    return write_encoded(ds, transfer_syntax_uid)


def coerce_part10(
    blob: bytes, dataset_offset: int, transfer_syntax_uid: str, coercion: Coercion
) -> bytes:
    """A stored Part 10 file with its data set coerced; preamble and file meta as stored."""
    return blob[:dataset_offset] + coerce_dataset(
        blob[dataset_offset:], transfer_syntax_uid, coercion
    )
