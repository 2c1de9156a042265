"""Small synthetic DICOM objects for tests (never real patient data)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from netpacs.domain.report import Addendum, Reporter, SignedReport


def ct_dataset(**attrs: Any) -> pydicom.Dataset:
    """A tiny 8x8 CT image; keyword arguments set or override attributes."""
    ds = pydicom.Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "TEST^ALICE"
    ds.PatientID = "H100001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = "20261101"
    ds.StudyTime = "093000"
    ds.AccessionNumber = "ACC0001"
    ds.StudyID = "1"
    ds.StudyDescription = "CT HEAD"
    ds.ReferringPhysicianName = "REF^DOCTOR"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BodyPartExamined = "HEAD"
    ds.InstitutionName = "East Surrey Hospital"
    ds.Rows = 8
    ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(128))
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def write(ds: pydicom.Dataset, path: Path, transfer_syntax: str = ExplicitVRLittleEndian) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(folder: Path, n: int, **attrs: Any) -> list[Path]:
    """n instances of one CT series (shared study and series UIDs)."""
    study = attrs.pop("StudyInstanceUID", generate_uid())
    series = attrs.pop("SeriesInstanceUID", generate_uid())
    return [
        write(
            ct_dataset(
                StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=i + 1, **attrs
            ),
            folder / f"{i:04d}.dcm",
        )
        for i in range(n)
    ]


REPORT_STUDY = "1.2.826.0.1.3680043.10.543.61.1"
REPORT_SIGNED_AT = dt.datetime(2026, 11, 29, 14, 30, 5, tzinfo=dt.UTC)
REPORT_AUTHOR = Reporter("ryr.radiologist", "Dr Ruth Younger", "RYR")
REPORT_TEXT = (
    "CLINICAL DETAILS:\nAbdominal pain.\n\nFINDINGS:\nNo free fluid.\nLiver normal.\n\n"
    "CONCLUSION:\nNormal CT abdomen.\n\nOther notes:\nDiscussed with the ward."
)
REPORT_NHS_NUMBER = "9434765919"


def signed_report(**changes: Any) -> SignedReport:
    """A final CT report of an East Sussex patient, signed by a Brighton radiologist;
    keyword arguments replace its fields."""
    report = SignedReport(
        study_instance_uid=REPORT_STUDY,
        accession_number="RXC-ACC-77",
        patient_id="RXC5001",
        issuer="RXC",
        patient_name="SMITH^JOAN^^MRS",
        birth_date="19550505",
        sex="F",
        nhs_number=REPORT_NHS_NUMBER,
        requesting_trust="RXC",
        requesting_site="EDGH",
        modality="CT",
        study_description="CT ABDOMEN",
        text=REPORT_TEXT,
        author=REPORT_AUTHOR,
        signed_at=REPORT_SIGNED_AT,
        addenda=(),
        event="final",
        event_at=REPORT_SIGNED_AT,
    )
    return dataclasses.replace(report, **changes)


def report_with_addendum(text: str = "Addendum: the appendix is normal.") -> SignedReport:
    """:func:`signed_report` with an addendum by an East Sussex radiologist, 2 h later."""
    later = REPORT_SIGNED_AT + dt.timedelta(hours=2)
    by = Reporter("rxc.radiologist", "Prof Anna Kay", "RXC")
    return signed_report(addenda=(Addendum(text, by, later),), event="addendum", event_at=later)
