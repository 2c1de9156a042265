"""Served headers follow ADT (issue 4): WADO-RS and WADO-URI coerce, stored objects stay.

ADT is applied as the MLLP worker applies it, objects come in as a modality sends them,
answers are read through netpacs's HTTP app as a DICOMweb client would.
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path
from typing import Any

import pydicom
import sqlalchemy as sa

from netpacs.index.schema import instance
from netpacs.services.adt import MergeService, Outcome
from tests.conftest import HttpApp, Netpacs
from tests.hl7.conftest import adt
from tests.http.conftest import AdtFeed, StoredSeries, write_and_send_ct
from tests.http.test_wado import parts

MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
NAME, ID, ISSUER, BIRTH, SEX = "00100010", "00100020", "00100021", "00100030", "00100040"


def stored_objects(server: Netpacs | HttpApp) -> dict[str, bytes]:
    """Each stored blob by SOP Instance UID, checked against the CRC-32 ingest recorded."""
    engine = sa.create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(instance.c.sop_instance_uid, instance.c.blob_key, instance.c.blob_crc32)
            ).all()
    finally:
        engine.dispose()
    out = {}
    for sop, key, crc in rows:
        blob = (server.data_dir / "objects" / key[:3] / key).read_bytes()
        assert zlib.crc32(blob) == crc, f"stored blob of {sop} changed"
        out[sop] = blob
    return out


def metadata(server: HttpApp, study: str, *path: str) -> list[dict[str, Any]]:
    url = "/".join([f"{server.dicomweb_url}/studies/{study}", *path, "metadata"])
    response = server.http.get(url, headers={"Accept": "application/dicom+json"})
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


def value(element: dict[str, Any] | None) -> Any:
    if element is None or "Value" not in element:
        return None
    first = element["Value"][0]
    return first["Alphabetic"] if isinstance(first, dict) else first


def retrieved(server: HttpApp, url: str, accept: str = MULTIPART_DICOM) -> list[bytes]:
    response = server.http.get(
        f"{server.dicomweb_url}/{url}", headers={"Accept": accept}, timeout=60
    )
    if accept.startswith("multipart/"):
        return [body for _, body in parts(response)]
    assert response.status_code == 200, response.text
    return [response.content]


def read(part10: bytes) -> pydicom.FileDataset:
    return pydicom.dcmread(io.BytesIO(part10))


def test_a08_demographics_are_served_coerced_and_the_stored_objects_stay_as_they_were(
    http_app: HttpApp, adt_feed: AdtFeed, tmp_path: Path
) -> None:
    # No Issuer of Patient ID in the header: ingest takes the sending modality's trust.
    ct = write_and_send_ct(http_app, tmp_path / "ct", 2, patient_id="RXC0000042")
    before = stored_objects(http_app)
    ack = adt_feed.send(
        adt(
            "A08",
            "CTRL0100",
            "RXC0000042^^^RXC^MR",
            name="PARKER^MARY^JANE",
            birth_date="19811224",
            sex="F",
        )
    )
    assert ack.code == "AA", ack.text

    for header in metadata(http_app, ct.study_uid):
        assert value(header[NAME]) == "PARKER^MARY^JANE"
        assert (value(header[BIRTH]), value(header[SEX])) == ("19811224", "F")
        assert value(header[ID]) == "RXC0000042"
        assert ISSUER not in header  # derived from the origin trust: not added
        assert header["7FE00010"]["BulkDataURI"].startswith(http_app.dicomweb_url)

    served = [read(p) for p in retrieved(http_app, f"studies/{ct.study_uid}")]
    assert sorted(str(ds.SOPInstanceUID) for ds in served) == sorted(ct.sop_uids)
    for ds in served:
        stored = read(before[ds.SOPInstanceUID])
        assert (ds.PatientName, ds.PatientBirthDate, ds.PatientSex) == (
            "PARKER^MARY^JANE",
            "19811224",
            "F",
        )
        assert "IssuerOfPatientID" not in ds
        assert ds.file_meta == stored.file_meta
        assert ds.PixelData == stored.PixelData
        for patient_module in (ds, stored):
            del patient_module.PatientName, patient_module.PatientBirthDate
            del patient_module.PatientSex
        assert ds == stored

    sop = ct.sop_uids[0]
    instance_url = f"studies/{ct.study_uid}/series/{ct.series_uid}/instances/{sop}"
    implicit = "application/dicom; transfer-syntax=1.2.840.10008.1.2"
    for part10 in (
        retrieved(http_app, instance_url, "application/dicom")[0],
        retrieved(http_app, instance_url, implicit)[0],  # transcoded, then coerced
        wado_uri(http_app, ct, sop),
    ):
        assert read(part10).PatientName == "PARKER^MARY^JANE"
    assert stored_objects(http_app) == before


def wado_uri(server: HttpApp, ct: StoredSeries, sop: str) -> bytes:
    response = server.http.get(
        f"{server.base_url}/wado",
        params={
            "requestType": "WADO",
            "studyUID": ct.study_uid,
            "seriesUID": ct.series_uid,
            "objectUID": sop,
            "contentType": "application/dicom",
        },
    )
    assert response.status_code == 200, response.text
    return response.content


def test_a_demographic_adt_deleted_is_served_as_an_empty_element(
    http_app: HttpApp, adt_feed: AdtFeed, tmp_path: Path
) -> None:
    ct = write_and_send_ct(http_app, tmp_path / "ct", 1, patient_id="RXC0000043", issuer="RXC")
    assert (
        adt_feed.send(adt("A08", "CTRL0150", "RXC0000043^^^RXC^MR", birth_date='""')).code == "AA"
    )
    (header,) = metadata(http_app, ct.study_uid)
    assert header[BIRTH] == {"vr": "DA"}
    (part10,) = retrieved(http_app, f"studies/{ct.study_uid}/series/{ct.series_uid}")
    served = read(part10)
    assert "PatientBirthDate" in served and served.PatientBirthDate == ""
    assert served.PatientName == "SYNTHETIC^CT PATIENT"


def test_after_a40_the_merged_study_is_served_with_the_survivors_patient_id(
    http_app: HttpApp, adt_feed: AdtFeed, tmp_path: Path
) -> None:
    survivor = write_and_send_ct(http_app, tmp_path / "a", 1, patient_id="RXC0000050")
    prior = write_and_send_ct(http_app, tmp_path / "b", 2, patient_id="RXC0000051")
    before = stored_objects(http_app)
    ack = adt_feed.send(adt("A40", "CTRL0300", "RXC0000050^^^RXC^MR", mrg1="RXC0000051^^^RXC^MR"))
    assert ack.code == "AA", ack.text

    for header in metadata(http_app, prior.study_uid, "series", prior.series_uid):
        assert (value(header[ID]), value(header[ISSUER])) == ("RXC0000050", "RXC")
    for part10 in retrieved(http_app, f"studies/{prior.study_uid}/series/{prior.series_uid}"):
        served = read(part10)
        assert (served.PatientID, served.IssuerOfPatientID) == ("RXC0000050", "RXC")
        assert served.PixelData == read(before[served.SOPInstanceUID]).PixelData
    assert read(wado_uri(http_app, prior, prior.sop_uids[1])).PatientID == "RXC0000050"
    # The survivor's own study carries its number already: served as stored.
    (own,) = retrieved(http_app, f"studies/{survivor.study_uid}")
    assert own == before[survivor.sop_uids[0]]
    assert stored_objects(http_app) == before

    merge_id = int(ack.field("MSA", 3).rsplit("merge ", 1)[1].rstrip(")"))
    engine = sa.create_engine(http_app.database_url)
    try:
        undone = MergeService(engine).undo_merge(merge_id)
    finally:
        engine.dispose()
    assert undone.outcome is Outcome.APPLIED, undone.detail
    served_again = retrieved(http_app, f"studies/{prior.study_uid}")
    assert sorted(served_again) == sorted(before[sop] for sop in prior.sop_uids)


def test_after_a47_the_study_is_served_with_the_new_hospital_number(
    http_app: HttpApp, adt_feed: AdtFeed, tmp_path: Path
) -> None:
    ct = write_and_send_ct(http_app, tmp_path / "ct", 1, patient_id="RXC0000080", issuer="RXC")
    ack = adt_feed.send(adt("A47", "CTRL0600", "RXC0000081^^^RXC^MR", mrg1="RXC0000080^^^RXC"))
    assert ack.code == "AA", ack.text
    (header,) = metadata(http_app, ct.study_uid)
    assert (value(header[ID]), value(header[ISSUER])) == ("RXC0000081", "RXC")
    (part10,) = retrieved(http_app, f"studies/{ct.study_uid}")
    assert read(part10).PatientID == "RXC0000081"


def test_studies_whose_patient_adt_did_not_change_are_served_byte_identical(
    http_app: HttpApp, adt_feed: AdtFeed, tmp_path: Path
) -> None:
    ct = write_and_send_ct(http_app, tmp_path / "ct", 3, patient_id="RXC0000060", issuer="RXC")
    other = write_and_send_ct(http_app, tmp_path / "other", 1, patient_id="RXC0000061")
    meta_before = metadata(http_app, ct.study_uid)
    # ADT for another patient, and ADT agreeing with what the modality wrote.
    assert (
        adt_feed.send(adt("A08", "CTRL0400", "RXC0000061^^^RXC^MR", name="OTHER^ONE")).code == "AA"
    )
    header = read(ct.paths[0].read_bytes())
    agreeing = adt(
        "A04",
        "CTRL0401",
        "RXC0000060^^^RXC^MR",
        name=str(header.PatientName),
        birth_date=header.PatientBirthDate,
        sex=header.PatientSex,
    )
    assert adt_feed.send(agreeing).code == "AA"

    stored = stored_objects(http_app)
    response = http_app.http.get(
        f"{http_app.dicomweb_url}/studies/{ct.study_uid}", headers={"Accept": MULTIPART_DICOM}
    )
    assert "content-length" in response.headers  # the as-stored path
    bodies = [body for _, body in parts(response)]
    assert sorted(bodies) == sorted(stored[sop] for sop in ct.sop_uids)
    assert metadata(http_app, ct.study_uid) == meta_before
    (coerced,) = metadata(http_app, other.study_uid)
    assert value(coerced[NAME]) == "OTHER^ONE"
