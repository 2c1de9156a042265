"""Coercion rules on stored headers, and coerced data sets in every stored transfer syntax."""

from __future__ import annotations

import io
from typing import Any

import orjson
import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from netpacs.domain.dicom.part10 import read_file_meta
from netpacs.services.coercion import (
    Coercion,
    ServedPatient,
    coerce_json,
    coerce_part10,
)

NAME, ID, ISSUER, BIRTH, SEX = "00100010", "00100020", "00100021", "00100030", "00100040"


def header(**values: str) -> dict[str, Any]:
    """A stored DICOM JSON header with the patient module attributes given by tag name."""
    tags = {"name": NAME, "id": ID, "issuer": ISSUER, "birth": BIRTH, "sex": SEX}
    vrs = {NAME: "PN", ID: "LO", ISSUER: "LO", BIRTH: "DA", SEX: "CS"}
    out: dict[str, Any] = {}
    for key, value in values.items():
        tag = tags[key]
        shown: Any = {"Alphabetic": value} if tag == NAME else value
        out[tag] = {"vr": vrs[tag], "Value": [shown]}
    return out


STORED = header(name="SMITH^JOHN", id="RXC0000001", birth="19700101", sex="M")


def test_without_adt_a_matching_patient_needs_no_coercion() -> None:
    served = ServedPatient("RXC0000001", "RXC")
    assert served.coercion(STORED, "RXC") is None


def test_issuer_is_not_added_where_ingest_derived_it_from_the_origin_trust() -> None:
    served = ServedPatient("RXC0000001", "RXC", "SMITH^JOHN", "19700101", "M")
    assert served.coercion(STORED, "RXC") is None
    assert served.coercion(STORED, "RTP") == Coercion(((ISSUER, "RXC"),))


def test_adt_demographics_replace_only_what_differs() -> None:
    served = ServedPatient("RXC0000001", "RXC", "SMITH^JOHN^PAUL", "19700101", "")
    assert served.coercion(STORED, "RXC") == Coercion(((NAME, "SMITH^JOHN^PAUL"), (SEX, "")))


def test_a_changed_patient_id_sets_patient_id_and_issuer() -> None:
    served = ServedPatient("RXC0000002", "RXC")
    stored = {**STORED, **header(issuer="RXC")}
    assert served.coercion(stored, "RXC") == Coercion(((ID, "RXC0000002"), (ISSUER, "RXC")))
    assert served.coercion(STORED, "RXC") == Coercion(((ID, "RXC0000002"), (ISSUER, "RXC")))


def test_coerced_json_has_the_served_values_and_empty_elements_for_deleted_ones() -> None:
    text = orjson.dumps({"00080060": {"vr": "CS", "Value": ["CT"]}, **STORED}).decode()
    coerced = pydicom.Dataset.from_json(
        coerce_json(text, Coercion(((NAME, "NEW^NAME"), (ISSUER, "RXC"), (BIRTH, ""))))
    )
    assert (coerced.PatientName, coerced.IssuerOfPatientID) == ("NEW^NAME", "RXC")
    assert coerced.PatientBirthDate == "" and "PatientBirthDate" in coerced
    assert (coerced.PatientID, coerced.PatientSex, coerced.Modality) == ("RXC0000001", "M", "CT")


def _stored_file(transfer_syntax: str, *, charset: str | None) -> bytes:
    from netpacs.synthetic import make_ct_series

    ds = next(make_ct_series(1, rows=16, columns=16, issuer="RXC"))
    if charset is None:
        del ds.SpecificCharacterSet
    else:
        ds.SpecificCharacterSet = charset
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "X1", "99L", "HEAD"
    ds.ProcedureCodeSequence = [item]
    out = io.BytesIO()
    if transfer_syntax == RLELossless:
        ds.compress(RLELossless)
        ds.save_as(out, enforce_file_format=True)
    else:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        ds.preamble = bytes(128)
        pydicom.dcmwrite(
            out,
            ds,
            implicit_vr=transfer_syntax == ImplicitVRLittleEndian,
            little_endian=transfer_syntax != ExplicitVRBigEndian,
            force_encoding=True,
        )
    return out.getvalue()


@pytest.mark.parametrize(
    "transfer_syntax",
    [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        RLELossless,
    ],
)
def test_coerced_object_keeps_file_meta_syntax_pixels_and_other_elements(
    transfer_syntax: str,
) -> None:
    blob = _stored_file(transfer_syntax, charset="ISO_IR 100")
    offset = read_file_meta(blob).dataset_offset
    coercion = Coercion(((NAME, "BÉRÉNICE^NEW"), (BIRTH, "")))
    out = coerce_part10(blob, offset, transfer_syntax, coercion)
    assert out[:offset] == blob[:offset]
    before, after = pydicom.dcmread(io.BytesIO(blob)), pydicom.dcmread(io.BytesIO(out))
    assert after.file_meta.TransferSyntaxUID == transfer_syntax
    assert (after.PatientName, after.PatientBirthDate) == ("BÉRÉNICE^NEW", "")
    assert after.PixelData == before.PixelData
    for ds in (before, after):
        del ds.PatientName, ds.PatientBirthDate
    assert after == before


def test_non_ascii_value_in_the_default_repertoire_switches_the_object_to_utf8() -> None:
    blob = _stored_file(ExplicitVRLittleEndian, charset=None)
    offset = read_file_meta(blob).dataset_offset
    out = coerce_part10(blob, offset, ExplicitVRLittleEndian, Coercion(((NAME, "ŁUKASZ^NEW"),)))
    after = pydicom.dcmread(io.BytesIO(out))
    assert (after.SpecificCharacterSet, after.PatientName) == ("ISO_IR 192", "ŁUKASZ^NEW")
