"""Outputs of a signed report: the Basic Text SR stored in the study, and the ORU^R01.

The SR goes through the real ingest service into a real index (SQLite and PostgreSQL)
and is read back from the object store with pydicom; the ORU is parsed with python-hl7.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hl7
import pydicom
import pytest
import sqlalchemy as sa
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from netpacs.adapters.hl7.oru import render_oru
from netpacs.app.container import Archive, build_archive
from netpacs.app.settings import Settings
from netpacs.app.startup import prepare
from netpacs.domain.outbox import QueuedResult
from netpacs.domain.outcomes import Origin, Protocol
from netpacs.domain.region import ResultsHeader
from netpacs.index import outbox
from netpacs.index.schema import instance, report, report_event, result_outbox, series, study
from netpacs.services.report_outputs import (
    BASIC_TEXT_SR,
    PersonName,
    ReportOutputError,
    ReportOutputs,
    heading_code,
)
from tests.factories import (
    REPORT_AUTHOR,
    REPORT_NHS_NUMBER,
    REPORT_SIGNED_AT,
    REPORT_STUDY,
    REPORT_TEXT,
    report_with_addendum,
    signed_report,
)

STUDY = REPORT_STUDY
SIGNED_AT = REPORT_SIGNED_AT
AUTHOR = REPORT_AUTHOR
TEXT = REPORT_TEXT
NHS = REPORT_NHS_NUMBER


# -- the archive ----------------------------------------------------------------------


def ct_part10(number: int) -> bytes:
    """An Eastbourne CT slice as a modality sends it: no Issuer of Patient ID."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = f"{STUDY}.3.{number}"
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = f"{STUDY}.2"
    ds.StudyDate, ds.StudyTime = "20261129", "101500"
    ds.AccessionNumber = "RXC-ACC-77"
    ds.StudyID = "77"
    ds.ReferringPhysicianName = "BROWN^DAVID^^DR"
    ds.Modality = "CT"
    ds.StudyDescription = "CT ABDOMEN"
    ds.PatientName, ds.PatientID = "SMITH^JOAN^^MRS", "RXC5001"
    ds.PatientBirthDate, ds.PatientSex = "19550505", "F"
    ds.SeriesNumber, ds.InstanceNumber = 1, number
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(16)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def archive(tmp_path: Path, database_url: str) -> Iterator[Archive]:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    prepare(settings)
    archive = build_archive(settings)
    try:
        yield archive
    finally:
        archive.close()


@pytest.fixture
def outputs(archive: Archive) -> ReportOutputs:
    return ReportOutputs(
        ingest=archive.ingest,
        region=archive.region,
        read_engine=archive.read_engine,
        ae_title="NETPACS",
    )


def store_ct(archive: Archive, slices: int = 2) -> None:
    origin = Origin(Protocol.DIMSE, ae_title="EDGH_CT1", trust="RXC", site="EDGH")
    for n in range(1, slices + 1):
        assert archive.ingest.store_part10(ct_part10(n), origin=origin).status.ok


def stored(archive: Archive, sop_uid: str) -> Dataset:
    """An object as the archive keeps it, read from the object store."""
    with archive.read_engine.connect() as conn:
        key = conn.execute(
            sa.select(instance.c.blob_key).where(instance.c.sop_instance_uid == sop_uid)
        ).scalar_one()
    return pydicom.dcmread(io.BytesIO(archive.blobs.get(key)))


def texts(item: Any) -> list[tuple[str, str]]:
    """(concept code, text) of every TEXT item under ``item``, depth first."""
    out = []
    for child in item.get("ContentSequence", []):
        if child.ValueType == "TEXT":
            out.append((child.ConceptNameCodeSequence[0].CodeValue, child.TextValue))
        out.extend(texts(child))
    return out


def containers(sr: Dataset) -> list[str]:
    return [
        c.ConceptNameCodeSequence[0].CodeValue
        for c in sr.ContentSequence
        if c.ValueType == "CONTAINER"
    ]


# -- the SR ---------------------------------------------------------------------------


def test_signed_report_is_stored_as_a_verified_basic_text_sr_in_its_study(
    archive: Archive, outputs: ReportOutputs
) -> None:
    store_ct(archive)
    sop_uid = outputs.store_sr(signed_report())
    sr = stored(archive, sop_uid)
    assert sr.SOPClassUID == BASIC_TEXT_SR
    assert (sr.StudyInstanceUID, sr.Modality, sr.SeriesDescription) == (
        STUDY,
        "SR",
        "Radiology report",
    )
    # Patient and study modules come from the stored CT; the issuer from the index.
    assert (sr.PatientID, sr.IssuerOfPatientID, str(sr.PatientName)) == (
        "RXC5001",
        "RXC",
        "SMITH^JOAN^^MRS",
    )
    assert (sr.AccessionNumber, sr.StudyDate, str(sr.ReferringPhysicianName)) == (
        "RXC-ACC-77",
        "20261129",
        "BROWN^DAVID^^DR",
    )
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("COMPLETE", "VERIFIED")
    observer = sr.VerifyingObserverSequence[0]
    assert str(observer.VerifyingObserverName) == "Younger^Ruth^^Dr"
    assert observer.VerifyingOrganization == "University Hospitals Sussex NHS Foundation Trust"
    assert observer.VerificationDateTime == "20261129143005+0000"
    # Sections: Clinical Information, Findings, Conclusions by CID 7001; "Other notes"
    # under no standard heading keeps its name in a private code.
    assert containers(sr) == ["55752-0", "59776-5", "55110-1"]
    assert texts(sr) == [
        ("55752-0", "Abdominal pain."),
        ("121071", "No free fluid.\nLiver normal."),
        ("121077", "Normal CT abdomen."),
        ("OTHERNOTES", "Discussed with the ward."),
    ]
    # The evidence is the CT the report is about.
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    referenced = {i.ReferencedSOPInstanceUID for i in evidence.ReferencedSOPSequence}
    assert referenced == {f"{STUDY}.3.1", f"{STUDY}.3.2"}


def test_the_sr_joins_the_study_and_patient_in_the_index(
    archive: Archive, outputs: ReportOutputs
) -> None:
    store_ct(archive)
    sop_uid = outputs.store_sr(signed_report())
    query = (
        sa.select(series.c.modality, study.c.study_instance_uid, study.c.patient_fk)
        .select_from(
            instance.join(series, series.c.id == instance.c.series_fk).join(
                study, study.c.id == series.c.study_fk
            )
        )
        .order_by(instance.c.id)
    )
    with archive.read_engine.connect() as conn:
        rows = conn.execute(query).all()
    assert [r.modality for r in rows] == ["CT", "CT", "SR"]
    assert len({(r.study_instance_uid, r.patient_fk) for r in rows}) == 1
    with archive.read_engine.connect() as conn:
        assert (
            conn.execute(
                sa.select(sa.func.count()).where(instance.c.sop_instance_uid == sop_uid)
            ).scalar_one()
            == 1
        )


def test_an_addendum_is_a_new_sr_version_with_the_report_and_every_addendum(
    archive: Archive, outputs: ReportOutputs
) -> None:
    store_ct(archive)
    first = stored(archive, outputs.store_sr(signed_report()))
    second = stored(archive, outputs.store_sr(report_with_addendum()))
    assert second.SOPInstanceUID != first.SOPInstanceUID
    assert second.SeriesInstanceUID == first.SeriesInstanceUID
    assert (first.InstanceNumber, second.InstanceNumber) == (1, 2)
    assert (second.CompletionFlag, second.VerificationFlag) == ("COMPLETE", "VERIFIED")
    predecessor = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert texts(second)[:4] == texts(first)
    assert texts(second)[4:] == [("55107-7", "Addendum: the appendix is normal.")]
    assert containers(second)[-1] == "55107-7"
    # The report's author verified the report; the addendum's author their addendum.
    assert [
        (str(o.VerifyingObserverName), o.VerificationDateTime)
        for o in second.VerifyingObserverSequence
    ] == [
        ("Younger^Ruth^^Dr", "20261129143005+0000"),
        ("Kay^Anna^^Prof", "20261129163005+0000"),
    ]


def test_an_sr_for_a_study_with_nothing_stored_is_refused_with_the_reason(
    archive: Archive, outputs: ReportOutputs
) -> None:
    with pytest.raises(ReportOutputError, match="has no stored instance"):
        outputs.store_sr(signed_report())


def test_report_headings_map_to_cid_7001() -> None:
    findings, impression = heading_code("FINDINGS"), heading_code("Impression")
    assert findings is not None and findings.code.value == "59776-5"
    assert impression is not None and impression.code.value == "19005-8"
    assert heading_code("Musings") is None


def test_display_names_become_family_given_and_title() -> None:
    assert PersonName.of("Dr Ruth Younger", "u").dicom == "Younger^Ruth^^Dr"
    assert PersonName.of("Mary Ann Jones", "u").dicom == "Jones^Mary Ann"
    assert PersonName.of("", "rxc.radiologist").dicom == "rxc.radiologist"


# -- queueing -------------------------------------------------------------------------


def report_event_pk(archive: Archive) -> int:
    """A signed report and its 'final' event, as the reporting service writes them."""
    with archive.write_engine.begin() as conn:
        report_pk = conn.execute(
            sa.insert(report)
            .values(
                study_instance_uid=STUDY,
                status="final",
                text=TEXT,
                author=AUTHOR.username,
                author_trust=AUTHOR.trust,
                created_at=SIGNED_AT,
                updated_at=SIGNED_AT,
            )
            .returning(report.c.id)
        ).scalar_one()
        return int(
            conn.execute(
                sa.insert(report_event)
                .values(
                    report_fk=report_pk,
                    kind="final",
                    text=TEXT,
                    author=AUTHOR.username,
                    author_trust=AUTHOR.trust,
                    at=SIGNED_AT,
                )
                .returning(report_event.c.id)
            ).scalar_one()
        )


def queued_oru(archive: Archive) -> str:
    """The ORU^R01 that the result queued for East Sussex renders to."""
    with archive.read_engine.connect() as conn:
        pending = outbox.next_result(conn, "RXC")
    assert pending is not None and isinstance(pending.content, QueuedResult)
    return render_oru(pending.content)


def test_a_queued_result_is_the_oru_for_the_requesting_trust(
    archive: Archive, outputs: ReportOutputs
) -> None:
    store_ct(archive, 1)
    event = report_event_pk(archive)
    with archive.write_engine.begin() as conn:
        outputs.queue_result(conn, signed_report(), event)
    with archive.read_engine.connect() as conn:
        row = conn.execute(sa.select(result_outbox)).one()
    assert (row.trust, row.study_instance_uid, row.report_event_fk) == ("RXC", STUDY, event)
    assert (row.attempts, row.sent_at, row.last_error) == (0, None, None)
    assert len(row.control_id) <= 20
    message = hl7.parse(queued_oru(archive))
    assert str(message.segment("MSH")[10]) == row.control_id
    assert str(message.segment("MSH")[6]) == "RXC"
    assert str(message.segment("OBR")[7]) == "20261129101500"  # the study's date and time


def test_a_queued_result_carries_the_msh_names_of_the_trusts_results_feed(
    archive: Archive,
) -> None:
    store_ct(archive, 1)
    event = report_event_pk(archive)
    names = ResultsHeader("PACS", "SSXIN", "CRIS", "RXC01")
    trusts = tuple(
        dataclasses.replace(t, results_header=names) if t.ods_code == "RXC" else t
        for t in archive.region.trusts
    )
    outputs = ReportOutputs(
        ingest=archive.ingest,
        region=dataclasses.replace(archive.region, trusts=trusts),
        read_engine=archive.read_engine,
        ae_title="NETPACS",
    )
    with archive.write_engine.begin() as conn:
        outputs.queue_result(conn, signed_report(), event)
    msh = hl7.parse(queued_oru(archive)).segment("MSH")
    assert [str(msh[n]) for n in (3, 4, 5, 6)] == ["PACS", "SSXIN", "CRIS", "RXC01"]


def test_a_queued_result_rolls_back_with_the_signature(
    archive: Archive, outputs: ReportOutputs
) -> None:
    event = report_event_pk(archive)
    with pytest.raises(RuntimeError), archive.write_engine.begin() as conn:
        outputs.queue_result(conn, signed_report(), event)
        raise RuntimeError("the signature failed")
    with archive.read_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(result_outbox)).scalar() == 0


def test_each_queued_result_has_its_own_control_id(
    archive: Archive, outputs: ReportOutputs
) -> None:
    event = report_event_pk(archive)
    with archive.write_engine.begin() as conn:
        outputs.queue_result(conn, signed_report(), event)
        outputs.queue_result(conn, report_with_addendum(), event)
    with archive.read_engine.connect() as conn:
        ids = conn.execute(sa.select(result_outbox.c.control_id)).scalars().all()
    assert len(set(ids)) == 2
