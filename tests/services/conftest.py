"""Shared fixtures for service tests: a small regional archive on SQLite and PostgreSQL.

The archive is built through the real ingest service from Part 10 files made with
pydicom: several patients over several trusts (the same PatientID at two issuers,
one patient without an issuer), studies with different dates, times of different
precision, modalities and descriptions, and names in mixed case.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import Dataset, dcmwrite
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from netpacs.app.container import Archive, build_archive
from netpacs.app.settings import Settings
from netpacs.app.startup import prepare
from netpacs.domain.outcomes import Origin, Protocol

UID_ROOT = "1.2.826.0.1.3680043.10.543"

SOP_CLASS = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "PR": "1.2.840.10008.5.1.4.1.1.11.1",
    "OT": "1.2.840.10008.5.1.4.1.1.7",
}


@dataclass(frozen=True)
class FxPatient:
    name: str  # short name used by tests
    patient_id: str
    issuer: str  # '' : unknown
    patient_name: str
    birth_date: str
    sex: str
    issuer_in_file: bool = True  # False: the issuer comes from the sending trust


@dataclass(frozen=True)
class FxSeries:
    name: str
    modality: str
    number: int | None
    description: str
    body_part: str
    time: str
    institution: str
    station: str
    instances: int
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")


@dataclass(frozen=True)
class FxStudy:
    name: str
    patient: str
    date: str
    time: str
    accession: str
    study_id: str
    description: str
    referring: str
    series: tuple[FxSeries, ...] = field(default_factory=tuple)
    patient_age: str = ""


PATIENTS = (
    FxPatient("pA", "100001", "RTP", "Smith^John", "19600101", "M"),
    FxPatient("pB", "100001", "RYR", "JONES^Mary", "19751231", "F"),
    FxPatient("pC", "200002", "RTP", "smith^anne", "19800515", "F"),
    FxPatient("pD", "300003", "RTK", "Mac_Donald^Ann", "20000229", "F", issuer_in_file=False),
    FxPatient("pE", "300004", "RTK", "MacXDonald^Bob", "19991231", "M", issuer_in_file=False),
    FxPatient("pF", "400004", "", "Nobody^Known", "", ""),
)

ESH = "East Surrey Hospital"
STUDIES = (
    FxStudy(
        "stA1",
        "pA",
        "20230115",
        "093000",
        "ACC1001",
        "1",
        "CT Chest",
        "House^Gregory",
        (
            FxSeries("seA1a", "CT", 1, "Axial 5mm", "CHEST", "093500", ESH, "ESH_CT1", 3),
            FxSeries(
                "seA1b",
                "CT",
                2,
                "Coronal",
                "CHEST",
                "094000.250",
                ESH,
                "ESH_CT1",
                2,
                ("DERIVED", "SECONDARY", "REFORMATTED"),
            ),
        ),
        patient_age="063Y",
    ),
    FxStudy(
        "stA2",
        "pA",
        "20230620",
        "1430",
        "ACC1002",
        "2",
        "MR Brain",
        "house^gregory",
        (
            FxSeries("seA2a", "MR", 1, "T1 SAG", "HEAD", "1431", ESH, "ESH_MR1", 1),
            FxSeries("seA2b", "MR", 2, "T2 AX", "HEAD", "143500", ESH, "ESH_MR1", 2),
            FxSeries("seA2c", "PR", None, "", "", "150000", ESH, "ESH_WS1", 1),
        ),
        patient_age="063Y",
    ),
    FxStudy(
        "stB1",
        "pB",
        "20230115",
        "100000.5",
        "ACC2001",
        "1",
        "Dose 100% CT",
        "Who^Doctor",
        (
            FxSeries("seB1a", "CT", 1, "Head", "HEAD", "100100", "York Hospital", "YH_CT1", 2),
            FxSeries("seB1b", "MR", 2, "Head MR", "HEAD", "101000", "York Hospital", "YH_MR1", 1),
        ),
        patient_age="047Y",
    ),
    FxStudy(
        "stC1",
        "pC",
        "20221231",
        "235959",
        "ACC3001",
        "7",
        "Dose 1000 CT",
        "",
        (FxSeries("seC1a", "CT", 1, "Abdomen", "ABDOMEN", "235959.999", ESH, "ESH_CT1", 1),),
    ),
    FxStudy(
        "stC2",
        "pC",
        "20240301",
        "",
        "",
        "",
        "US Abdomen",
        "",
        (FxSeries("seC2a", "US", 1, "Liver", "ABDOMEN", "", ESH, "ESH_US1", 2),),
    ),
    FxStudy(
        "stD1",
        "pD",
        "20230116",
        "080000",
        "ACC4001",
        "1",
        "XR Hand [left]",
        "Quinn^Mike",
        (FxSeries("seD1a", "CR", 1, "PA", "HAND", "080100", "St Peter's", "SPHXCR1", 1),),
    ),
    FxStudy(
        "stE1",
        "pE",
        "20230117",
        "120000",
        "acc4002",
        "1",
        "xr hand",
        "QUINN^MIKE",
        (FxSeries("seE1a", "CR", 1, "PA", "HAND", "120100", "St Peter's", "SPH_CR1", 1),),
    ),
    FxStudy(
        "stF1",
        "pF",
        "20200101",
        "000000",
        "ACC9",
        "1",
        "Old",
        "",
        (FxSeries("seF1a", "OT", 1, "Scan", "", "000100", "", "", 1),),
    ),
)


def _uids(names: list[str], branch: int) -> dict[str, str]:
    return {name: f"{UID_ROOT}.{branch}.{i + 1}" for i, name in enumerate(names)}


STUDY_UID = _uids([s.name for s in STUDIES], 1)
SERIES_UID = _uids([se.name for s in STUDIES for se in s.series], 2)
INSTANCE_NAMES = [
    f"{se.name}_{n + 1}" for s in STUDIES for se in s.series for n in range(se.instances)
]
SOP_UID = _uids(INSTANCE_NAMES, 3)
PATIENT_BY_NAME = {p.name: p for p in PATIENTS}


def part10(study: FxStudy, ser: FxSeries, number: int) -> bytes:
    """One Part 10 file for instance ``number`` (1-based) of a series."""
    pat = PATIENT_BY_NAME[study.patient]
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = SOP_CLASS[ser.modality]
    ds.SOPInstanceUID = SOP_UID[f"{ser.name}_{number}"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study.date
    ds.StudyTime = study.time
    ds.SeriesTime = ser.time
    ds.ContentTime = ser.time
    ds.AccessionNumber = study.accession
    ds.Modality = ser.modality
    ds.InstitutionName = ser.institution
    ds.StationName = ser.station
    ds.ReferringPhysicianName = study.referring
    ds.StudyDescription = study.description
    ds.SeriesDescription = ser.description
    ds.PatientName = pat.patient_name
    ds.PatientID = pat.patient_id
    if pat.issuer and pat.issuer_in_file:
        ds.IssuerOfPatientID = pat.issuer
    ds.PatientBirthDate = pat.birth_date
    ds.PatientSex = pat.sex
    if study.patient_age:
        ds.PatientAge = study.patient_age
    ds.BodyPartExamined = ser.body_part
    ds.StudyInstanceUID = STUDY_UID[study.name]
    ds.SeriesInstanceUID = SERIES_UID[ser.name]
    ds.StudyID = study.study_id
    if ser.number is not None:
        ds.SeriesNumber = ser.number
    ds.InstanceNumber = number
    ds.ImageType = list(ser.image_type)
    ds.AcquisitionDateTime = study.date + ser.time
    ds.ImageComments = f"{ser.name} image {number} \\ with a backslash"
    ds.SliceThickness = "2.5" if ser.modality == "CT" else "5"
    ds.ReferencedStudySequence = [Dataset()]
    ds.ReferencedStudySequence[0].ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID = f"{STUDY_UID[study.name]}.9"
    if ser.modality != "PR":
        rows = 8 if ser.modality == "MR" else 16
        ds.Rows = ds.Columns = rows
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        frames = 3 if ser.modality == "US" else 1
        if ser.modality == "US":
            ds.NumberOfFrames = frames
        ds.PixelData = bytes(range(256))[: rows * rows] * frames
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def populate(archive: Archive) -> None:
    for study in STUDIES:
        pat = PATIENT_BY_NAME[study.patient]
        origin = Origin(Protocol.IMPORT, trust=pat.issuer or None, user="fixture")
        for ser in study.series:
            for number in range(1, ser.instances + 1):
                outcome = archive.ingest.store_part10(part10(study, ser, number), origin=origin)
                assert outcome.status.ok, outcome


@pytest.fixture(scope="module")
def populated_archive(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Archive]:
    """The fixture archive, built once per module and backend through real ingest."""
    data_dir: Path = tmp_path_factory.mktemp("archive")
    settings = Settings(data_dir=data_dir, database_url=module_database_url)
    prepare(settings)
    arch = build_archive(settings)
    try:
        populate(arch)
        yield arch
    finally:
        arch.close()
