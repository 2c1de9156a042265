"""The demo studies' objects: synthetic pixels and the DICOM data sets around them."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    UltrasoundImageStorage,
)

from netpacs.demo.model import MANUFACTURER, DemoSeries, DemoStudy, Modality, demo_uid
from netpacs.synthetic import make_ct_series

_Image = npt.NDArray[np.float64]


def _pixel_rng(sop_instance_uid: str) -> np.random.Generator:
    return np.random.default_rng(
        int.from_bytes(hashlib.sha256(sop_instance_uid.encode()).digest()[:8])
    )


def _canvas(rows: int, columns: int) -> tuple[_Image, _Image]:
    y, x = np.mgrid[-1.0 : 1.0 : rows * 1j, -1.0 : 1.0 : columns * 1j]
    return x, y


def _paint(
    image: _Image, x: _Image, y: _Image, shapes: Sequence[tuple[float, float, float, float, float]]
) -> None:
    """Paint ellipses (cx, cy, a, b, value) in order; later ones cover earlier ones."""
    for cx, cy, a, b, value in shapes:
        image[((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0] = value


def _mr_pixels(body_part: str, weighting: str, zf: float, gen: np.random.Generator) -> _Image:
    x, y = _canvas(128, 128)
    t2 = weighting.startswith(("T2", "PD"))
    fat, fluid, soft, dark = 900.0, (1800.0 if t2 else 250.0), 600.0, 80.0
    s = 0.75 + 0.25 * np.sin(np.pi * zf)
    image = np.zeros_like(x)
    if body_part == "HEAD":
        shapes = [
            (0.0, 0.0, 0.80 * s, 0.92 * s, fat),
            (0.0, 0.0, 0.74 * s, 0.86 * s, dark),
            (0.0, 0.0, 0.70 * s, 0.82 * s, fluid * 0.6 + 300),
            (0.0, 0.0, 0.64 * s, 0.76 * s, soft + (150 if not t2 else 0)),
            (-0.12, -0.05, 0.07, 0.25 * s, fluid),
            (0.12, -0.05, 0.07, 0.25 * s, fluid),
        ]
    else:
        shapes = [
            (0.0, 0.0, 0.85, 0.62, fat),
            (0.0, 0.0, 0.78, 0.55, soft),
            (0.0, 0.35, 0.12, 0.10, dark),
            (0.0, 0.35, 0.09, 0.07, fluid * 0.5),
            (-0.35 * s, -0.05, 0.22, 0.18, soft * 1.2),
            (0.30, 0.05, 0.10 * s, 0.12, fluid),
        ]
    _paint(image, x, y, shapes)
    return image + gen.normal(0.0, 25.0, image.shape)


def _xray_pixels(body_part: str, view: str, rows: int, gen: np.random.Generator) -> _Image:
    """A projection radiograph: air dark, bone bright (MONOCHROME2)."""
    x, y = _canvas(rows, rows)
    image = np.full_like(x, 300.0)
    if body_part == "CHEST":
        shapes = [
            (0.0, 0.1, 0.92, 0.95, 2000.0),
            (-0.42, -0.05, 0.30, 0.62, 900.0),
            (0.42, -0.05, 0.30, 0.62, 900.0),
            (0.0, 0.05, 0.14, 0.85, 2600.0),
            (0.12, 0.30, 0.28, 0.22, 2300.0),
        ]
    elif body_part == "BREAST":
        side = -1.0 if view.startswith("R") else 1.0
        shapes = [(side * 1.0, 0.0, 0.95, 0.85, 1500.0), (side * 0.75, -0.1, 0.35, 0.35, 2200.0)]
    else:
        tilt = 0.25 if view in ("LAT", "OBL") else 0.0
        shapes = [
            (tilt, 0.0, 0.45, 1.1, 1600.0),
            (tilt, 0.0, 0.16, 1.1, 3200.0),
            (tilt, 0.0, 0.09, 1.1, 2500.0),
        ]
    _paint(image, x, y, shapes)
    return image + gen.normal(0.0, 40.0, image.shape)


def _us_pixels(gen: np.random.Generator) -> _Image:
    """A B-mode sector: speckle in a fan from the probe at the top, a dark cystic organ."""
    x, y = _canvas(128, 128)
    depth = y + 1.0
    inside = (np.abs(x) <= depth * 0.7) & (x**2 + depth**2 <= 3.6)
    speckle = gen.rayleigh(45.0, x.shape) * (1.0 + 0.6 * (np.abs(y - 0.1) < 0.08))
    cx, cy = gen.uniform(-0.3, 0.3), gen.uniform(0.1, 0.5)
    organ = ((x - cx) / 0.3) ** 2 + ((y - cy) / 0.2) ** 2 <= 1.0
    speckle[organ] *= 0.15
    return np.where(inside, speckle, 0.0)


def _uint(image: _Image, bits: int) -> bytes:
    """Little-endian unsigned pixel data of ``bits`` stored bits."""
    dtype = np.dtype("<u1") if bits <= 8 else np.dtype("<u2")
    return np.clip(np.rint(image), 0, (1 << bits) - 1).astype(dtype).tobytes()


# -- data sets -----------------------------------------------------------------------------


def _base(study: DemoStudy, series: DemoSeries) -> Dataset:
    """Patient, study, series and equipment attributes shared by a series' instances."""
    person = study.identity.person
    day = study.study_date.strftime("%Y%m%d")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = person.patient_name
    ds.PatientID = study.identity.hospital_number
    ds.IssuerOfPatientID = study.identity.trust
    ds.PatientBirthDate = person.birth_date.strftime("%Y%m%d")
    ds.PatientSex = person.sex
    age = (study.study_date - person.birth_date).days // 365
    ds.PatientAge = f"{age:03d}Y"
    if person.nhs_number is not None:
        item = Dataset()
        item.PatientID = person.nhs_number
        item.IssuerOfPatientID = "NHS"
        item.TypeOfPatientID = "TEXT"
        ds.OtherPatientIDsSequence = DicomSequence([item])
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = day
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = study.study_time
    ds.AccessionNumber = study.accession_number
    ds.StudyID = study.accession_number[-6:].lstrip("0") or "1"
    ds.StudyDescription = study.description
    ds.ReferringPhysicianName = study.referring_physician_name
    ds.Modality = study.modality.value
    ds.SeriesInstanceUID = series.series_instance_uid
    ds.SeriesNumber = str(series.series_number)
    ds.SeriesDescription = series.description
    ds.BodyPartExamined = study.body_part
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = f"SYNTHETIC {study.modality.value}"
    ds.InstitutionName = study.institution_name
    ds.StationName = study.ae_title
    return ds


def _with_meta(ds: Dataset, sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    return ds


def _grey(ds: Dataset, *, rows: int, columns: int, bits: int, pixels: bytes) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.add_new(0x7FE00010, "OB" if bits <= 8 else "OW", pixels)


def _ct(study: DemoStudy, series: DemoSeries) -> Iterator[Dataset]:
    base = _base(study, series)
    frame_uid = demo_uid(study.study_instance_uid, "frame", series.series_number)
    slices = make_ct_series(
        len(series.sop_instance_uids),
        study_uid=study.study_instance_uid,
        rows=128,
        columns=128,
        seed=int(hashlib.sha256(series.series_instance_uid.encode()).hexdigest()[:8], 16),
    )
    for ds, sop_uid in zip(slices, series.sop_instance_uids, strict=True):
        del ds.InstitutionAddress
        ds.update(base)
        ds.FrameOfReferenceUID = frame_uid
        yield _with_meta(ds, ds.SOPClassUID, sop_uid)


def _mr(study: DemoStudy, series: DemoSeries) -> Iterator[Dataset]:
    base = _base(study, series)
    frame_uid = demo_uid(study.study_instance_uid, "frame")
    sagittal = "SAGITTAL" in series.description
    n = len(series.sop_instance_uids)
    for i, sop_uid in enumerate(series.sop_instance_uids):
        ds = Dataset()
        ds.update(base)
        t2 = series.description.startswith(("T2", "PD"))
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "SK"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = "4000" if t2 else "550"
        ds.EchoTime = "100" if t2 else "12"
        ds.EchoTrainLength = "16" if t2 else "3"
        ds.MagneticFieldStrength = "1.5"
        ds.SliceThickness = "5"
        ds.SpacingBetweenSlices = "6"
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = str(i + 1)
        offset = (i - (n - 1) / 2) * 6.0
        if sagittal:
            ds.ImageOrientationPatient = ["0", "1", "0", "0", "0", "-1"]
            ds.ImagePositionPatient = [f"{offset:.1f}", "-120", "120"]
        else:
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
            ds.ImagePositionPatient = ["-120", "-120", f"{offset:.1f}"]
        ds.SliceLocation = f"{offset:.1f}"
        ds.PixelSpacing = ["1.875", "1.875"]
        ds.WindowCenter = "900" if t2 else "500"
        ds.WindowWidth = "1800" if t2 else "1000"
        zf = (i + 0.5) / n
        pixels = _mr_pixels(study.body_part, series.description, zf, _pixel_rng(sop_uid))
        _grey(ds, rows=128, columns=128, bits=12, pixels=_uint(pixels, 12))
        yield _with_meta(ds, MRImageStorage, sop_uid)


def _projection(study: DemoStudy, series: DemoSeries) -> Iterator[Dataset]:
    base = _base(study, series)
    classes = {
        Modality.CR: ComputedRadiographyImageStorage,
        Modality.DX: DigitalXRayImageStorageForPresentation,
        Modality.MG: DigitalMammographyXRayImageStorageForPresentation,
    }
    for i, (sop_uid, view) in enumerate(zip(series.sop_instance_uids, series.views, strict=True)):
        ds = Dataset()
        ds.update(base)
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.InstanceNumber = str(i + 1)
        laterality, _, position = view.rpartition(" ")
        ds.ViewPosition = position
        if study.modality is Modality.CR:
            ds.PatientOrientation = ["L", "F"]
        else:
            ds.PresentationIntentType = "FOR PRESENTATION"
            ds.PixelIntensityRelationship = "LOG"
            ds.PixelIntensityRelationshipSign = 1
            ds.RescaleIntercept = "0"
            ds.RescaleSlope = "1"
            ds.RescaleType = "US"
            ds.LossyImageCompression = "00"
            ds.ImageLaterality = laterality or "U"
            ds.PatientOrientation = ["A", "R" if laterality == "L" else "L"]
            if study.modality is Modality.MG:
                ds.BreastImplantPresent = "NO"
                ds.PartialView = "NO"
        ds.ImagerPixelSpacing = (
            ["0.5", "0.5"] if study.modality is not Modality.MG else ["0.4", "0.4"]
        )
        ds.WindowCenter = "2048"
        ds.WindowWidth = "4096"
        pixels = _xray_pixels(study.body_part, view, 256, _pixel_rng(sop_uid))
        _grey(ds, rows=256, columns=256, bits=12, pixels=_uint(pixels, 12))
        yield _with_meta(ds, classes[study.modality], sop_uid)


def _us(study: DemoStudy, series: DemoSeries) -> Iterator[Dataset]:
    base = _base(study, series)
    for i, sop_uid in enumerate(series.sop_instance_uids):
        ds = Dataset()
        ds.update(base)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0001"]
        ds.InstanceNumber = str(i + 1)
        ds.PatientOrientation = ""
        _grey(ds, rows=128, columns=128, bits=8, pixels=_uint(_us_pixels(_pixel_rng(sop_uid)), 8))
        yield _with_meta(ds, UltrasoundImageStorage, sop_uid)


def datasets(study: DemoStudy) -> Iterator[Dataset]:
    """The instances of one demo study, each with file meta (explicit VR little endian)."""
    make = {Modality.CT: _ct, Modality.MR: _mr, Modality.US: _us}.get(study.modality, _projection)
    for series in study.series:
        yield from make(study, series)


def part10(ds: Dataset) -> bytes:
    """``ds`` as a DICOM Part 10 file (preamble, file meta, data set)."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()
