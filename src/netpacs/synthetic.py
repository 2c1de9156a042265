"""Synthetic CT series for tests, demos and benchmarks.

Everything here is made up: the patient, the identifiers and the pixels. The
datasets carry a realistic CT Image Storage header (patient, study, series,
frame of reference, geometry, rescale, windowing) from East Surrey Hospital
(Surrey and Sussex Healthcare NHS Trust, ODS code RTP) and 16-bit MONOCHROME2
pixel data showing a crude abdominal phantom: a body outline with a fat layer,
liver, kidneys, aorta, spine and a few bowel-gas bubbles, with noise.

The pixel generator uses only the standard library and is fast enough for
benchmarks (a 2,000-slice 512x512 series in a few seconds): each row of an
image is a handful of runs of one tissue, and each run is a slice of a
pre-computed noisy buffer for that tissue, so no per-pixel Python code runs.

Example: ``write_ct_series(Path("ct"), 10, patient_id="RTP1234567", issuer="RTP")``
writes ten Part 10 files and returns their paths.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import math
import random
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

__all__ = [
    "DEFAULT_PATIENT_ID",
    "DEFAULT_PATIENT_NAME",
    "make_ct_series",
    "write_ct_series",
]

DEFAULT_PATIENT_ID = "RTP9000001"
DEFAULT_PATIENT_NAME = "SYNTHETIC^CT PATIENT"

#: Stored value = HU - intercept; 12 bits stored in 16 allocated.
_INTERCEPT = -1024
_MAX_STORED = 4095
#: Length (pixels) of the repeating part of each tissue's noise buffer; prime
#: so that row offsets do not line up.
_NOISE_PERIOD = 4099
_NOISE_SD_HU = 12.0

# Tissues: name -> Hounsfield units.
_HU: dict[str, int] = {
    "air": -1000,
    "gas": -900,
    "fat": -100,
    "soft": 40,
    "liver": 60,
    "kidney": 150,  # enhancing cortex, contrast phase
    "aorta": 220,  # arterial contrast
    "cancellous": 250,
    "bone": 900,
}
_TISSUES = list(_HU)
_TISSUE_INDEX = {name: i for i, name in enumerate(_TISSUES)}


@dataclass(frozen=True, slots=True)
class _Ellipse:
    """An ellipse in normalised image coordinates ([-1, 1] across the FOV)."""

    cx: float
    cy: float
    a: float
    b: float
    tissue: int


def _phantom(zf: float) -> tuple[_Ellipse, ...]:
    """Phantom cross-section at relative position ``zf`` (0 = top, 1 = bottom)."""
    t = _TISSUE_INDEX
    s = 1.0 + 0.06 * math.sin(zf * math.pi)  # the belly is widest mid-way
    shapes = [
        _Ellipse(0.0, 0.05, 0.82 * s, 0.58 * s, t["fat"]),
        _Ellipse(0.0, 0.05, 0.74 * s, 0.50 * s, t["soft"]),
    ]
    if zf < 0.55:  # liver fades out towards the pelvis
        k = 1.0 - zf / 0.55
        shapes.append(_Ellipse(-0.33, -0.02, 0.12 + 0.24 * k, 0.10 + 0.22 * k, t["liver"]))
    if 0.25 < zf < 0.70:
        k = math.sin((zf - 0.25) / 0.45 * math.pi)
        for cx in (-0.30, 0.30):
            shapes.append(_Ellipse(cx, 0.24, 0.04 + 0.07 * k, 0.06 + 0.09 * k, t["kidney"]))
    shapes.append(_Ellipse(0.05, 0.14, 0.045, 0.045, t["aorta"]))
    shapes.append(_Ellipse(0.0, 0.34, 0.11, 0.10, t["bone"]))
    shapes.append(_Ellipse(0.0, 0.34, 0.08, 0.07, t["cancellous"]))
    # Bowel gas drifting through the slices.
    for i in range(3):
        phase = zf * 6.0 + i * 2.1
        shapes.append(
            _Ellipse(
                0.25 * math.cos(phase) + 0.05 * i,
                -0.25 + 0.08 * math.sin(phase * 1.3),
                0.035 + 0.01 * i,
                0.03,
                t["gas"],
            )
        )
    return tuple(shapes)


def _row_spans(
    shapes: tuple[_Ellipse, ...], rows: int, columns: int
) -> list[tuple[tuple[int, int, int], ...]]:
    """For every image row, the spans ``(start, end, tissue)`` to paint in order.

    Spans are byte offsets into the row (two bytes a pixel); later spans
    overwrite earlier ones, so nested shapes need no splitting.
    """
    out: list[list[tuple[int, int, int]]] = [[] for _ in range(rows)]
    for e in shapes:
        # Only the rows whose centres fall inside the ellipse.
        first = max(0, math.ceil((e.cy - e.b + 1.0) / 2.0 * rows - 0.5))
        last = min(rows - 1, math.floor((e.cy + e.b + 1.0) / 2.0 * rows - 0.5))
        for r in range(first, last + 1):
            dy = ((r + 0.5) / rows * 2.0 - 1.0 - e.cy) / e.b
            if dy <= -1.0 or dy >= 1.0:
                continue
            hw = e.a * math.sqrt(1.0 - dy * dy)
            start = max(0, round((e.cx - hw + 1.0) / 2.0 * columns))
            end = min(columns, round((e.cx + hw + 1.0) / 2.0 * columns))
            if end > start:
                out[r].append((2 * start, 2 * end, e.tissue))
    return [tuple(spans) for spans in out]


def _noise_buffers(columns: int, rng: random.Random) -> list[bytes]:
    """Per tissue, little-endian uint16 noisy stored values, period + columns long."""
    big_endian = sys.byteorder == "big"
    buffers: list[bytes] = []
    n = _NOISE_PERIOD + columns
    for name in _TISSUES:
        base = _HU[name] - _INTERCEPT
        values = array(
            "H",
            (
                min(_MAX_STORED, max(0, round(base + rng.gauss(0.0, _NOISE_SD_HU))))
                for _ in range(n)
            ),
        )
        if big_endian:
            values.byteswap()
        buffers.append(values.tobytes())
    return buffers


class _PixelFactory:
    """Makes the pixel data of successive slices of one phantom.

    The anatomy changes slowly along z, so it is re-derived only at a limited
    number of steps. At each step every image row is rendered in a few noisy
    variants; a slice is the rows' variants picked at random and joined, which
    costs one ``bytes.join`` per slice.
    """

    _VARIANTS = 4

    def __init__(self, rows: int, columns: int, n_slices: int, seed: int) -> None:
        self._rows = rows
        self._columns = columns
        self._n = max(1, n_slices)
        self._rng = random.Random(seed)
        self._noise = _noise_buffers(columns, self._rng)
        self._steps = max(1, min(self._n, 128))
        self._variants = max(1, min(self._VARIANTS, -(-self._n // self._steps)))
        self._cached_step = -1
        self._cached_rows: list[tuple[bytes, ...]] = []

    def _render_rows(self, zf: float) -> list[tuple[bytes, ...]]:
        noise = self._noise
        air = noise[_TISSUE_INDEX["air"]]
        row_bytes = 2 * self._columns
        randrange = self._rng.randrange
        out: list[tuple[bytes, ...]] = []
        for spans in _row_spans(_phantom(zf), self._rows, self._columns):
            variants: list[bytes] = []
            for _ in range(self._variants):
                o = 2 * randrange(_NOISE_PERIOD)
                row = bytearray(air[o : o + row_bytes])
                for start, end, tissue in spans:
                    row[start:end] = noise[tissue][o + start : o + end]
                variants.append(bytes(row))
            out.append(tuple(variants))
        return out

    def slice_bytes(self, index: int) -> bytes:
        step = index * self._steps // self._n
        if step != self._cached_step:
            self._cached_rows = self._render_rows((step + 0.5) / self._steps)
            self._cached_step = step
        k = self._variants
        picks = self._rng.randbytes(self._rows)
        return b"".join([v[p % k] for v, p in zip(self._cached_rows, picks, strict=True)])


def _accession(study_uid: str) -> str:
    """A made-up accession number (SH, at most 16 characters) stable per study."""
    digest = int.from_bytes(hashlib.sha256(study_uid.encode("ascii")).digest()[:8], "big")
    return f"RTPSYN{digest % 10**10:010d}"


def make_ct_series(
    n_slices: int,
    *,
    patient_id: str = DEFAULT_PATIENT_ID,
    patient_name: str = DEFAULT_PATIENT_NAME,
    issuer: str | None = None,
    study_uid: str | None = None,
    rows: int = 512,
    columns: int = 512,
    seed: int = 0,
) -> Iterator[pydicom.Dataset]:
    """Yield ``n_slices`` CT Image Storage datasets forming one axial series.

    Each dataset has file meta information (explicit VR little endian) so it
    can be written as a Part 10 file or sent over DIMSE as it is. Study,
    series, frame of reference and SOP instance UIDs are freshly generated on
    every call (pass ``study_uid`` to add a series to an existing study);
    ``seed`` fixes the pixel noise and the study date. ``issuer`` sets Issuer
    of Patient ID (an ODS code such as ``"RTP"``).
    """
    if n_slices < 0:
        raise ValueError("n_slices must not be negative")
    if rows < 1 or columns < 1:
        raise ValueError("rows and columns must be positive")

    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    frame_uid = generate_uid()
    study_day = _dt.date(2024, 1, 1) + _dt.timedelta(days=seed % 366)
    study_date = study_day.strftime("%Y%m%d")
    study_time = f"{8 + seed % 10:02d}{(seed * 7) % 60:02d}00"
    accession = _accession(study_uid)

    fov_mm = 360.0
    spacing_xy = round(fov_mm / max(rows, columns), 6)
    thickness = 1.0
    x0 = -spacing_xy * (columns - 1) / 2.0
    y0 = -spacing_xy * (rows - 1) / 2.0
    z_top = 0.0
    pixels = _PixelFactory(rows, columns, n_slices, seed)
    pixel_length = rows * columns * 2

    # Elements shared by every slice, built once and copied per slice (setting
    # fifty attributes through pydicom for each of 2,000 slices is slow).
    header = pydicom.Dataset()
    header.SpecificCharacterSet = "ISO_IR 100"
    header.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    header.SOPClassUID = CTImageStorage
    header.StudyDate = study_date
    header.SeriesDate = study_date
    header.AcquisitionDate = study_date
    header.ContentDate = study_date
    header.StudyTime = study_time
    header.SeriesTime = study_time
    header.AccessionNumber = accession
    header.Modality = "CT"
    header.Manufacturer = "netpacs synthetic"
    header.InstitutionName = "East Surrey Hospital"
    header.InstitutionAddress = "Canada Avenue, Redhill, RH1 5RH"
    header.ReferringPhysicianName = "SYNTHETIC^REFERRER^^DR"
    header.StationName = "ESH_CT1"
    header.StudyDescription = "CT ABDOMEN PELVIS WITH CONTRAST"
    header.SeriesDescription = "AXIAL 1.0 SOFT TISSUE"
    header.ManufacturerModelName = "SYNTHETIC PHANTOM"
    header.PatientName = patient_name
    header.PatientID = patient_id
    if issuer is not None:
        header.IssuerOfPatientID = issuer
    header.PatientBirthDate = "19700101"
    header.PatientSex = "O"
    header.PatientAge = f"{study_day.year - 1970:03d}Y"
    header.BodyPartExamined = "ABDOMEN"
    header.SliceThickness = f"{thickness:.1f}"
    header.KVP = "120"
    header.ConvolutionKernel = "STANDARD"
    header.PatientPosition = "HFS"
    header.StudyInstanceUID = study_uid
    header.SeriesInstanceUID = series_uid
    header.StudyID = "1"
    header.SeriesNumber = "2"
    header.AcquisitionNumber = "1"
    header.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    header.FrameOfReferenceUID = frame_uid
    header.PositionReferenceIndicator = ""
    header.SamplesPerPixel = 1
    header.PhotometricInterpretation = "MONOCHROME2"
    header.Rows = rows
    header.Columns = columns
    header.PixelSpacing = [f"{spacing_xy:.6g}", f"{spacing_xy:.6g}"]
    header.BitsAllocated = 16
    header.BitsStored = 12
    header.HighBit = 11
    header.PixelRepresentation = 0
    header.WindowCenter = "40"
    header.WindowWidth = "400"
    header.RescaleIntercept = str(_INTERCEPT)
    header.RescaleSlope = "1"
    header.RescaleType = "HU"
    template = list(header)

    for i in range(n_slices):
        sop_uid = generate_uid()
        z = z_top - i * thickness
        acq_seconds = 8 * 3600 + 30 * 60 + i // 50
        acq_time = (
            f"{acq_seconds // 3600:02d}{acq_seconds // 60 % 60:02d}{acq_seconds % 60:02d}"
            f".{(i % 50) * 20000:06d}"
        )

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian

        # Each slice gets its own element objects (deep copies of multi-valued
        # ones), so changing one dataset never changes another.
        ds = pydicom.Dataset(
            {e.tag: copy.deepcopy(e) if e.VM > 1 else copy.copy(e) for e in template}
        )
        ds.file_meta = meta
        ds.SOPInstanceUID = sop_uid
        ds.AcquisitionTime = acq_time
        ds.ContentTime = acq_time
        ds.InstanceNumber = str(i + 1)
        ds.ImagePositionPatient = [f"{x0:.6g}", f"{y0:.6g}", f"{z:.6g}"]
        ds.SliceLocation = f"{z:.6g}"
        data = pixels.slice_bytes(i)
        if len(data) != pixel_length:  # pragma: no cover - internal consistency
            raise RuntimeError("synthetic pixel data has the wrong length")
        ds.add_new(0x7FE00010, "OW", data)
        yield ds


def write_ct_series(
    directory: Path,
    n_slices: int,
    *,
    patient_id: str = DEFAULT_PATIENT_ID,
    patient_name: str = DEFAULT_PATIENT_NAME,
    issuer: str | None = None,
    study_uid: str | None = None,
    rows: int = 512,
    columns: int = 512,
    seed: int = 0,
) -> list[Path]:
    """Write a synthetic CT series as Part 10 files ``CT000001.dcm``... in ``directory``.

    The directory is created if needed. Returns the paths in slice order.
    Keyword arguments are those of :func:`make_ct_series`.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    series = make_ct_series(
        n_slices,
        patient_id=patient_id,
        patient_name=patient_name,
        issuer=issuer,
        study_uid=study_uid,
        rows=rows,
        columns=columns,
        seed=seed,
    )
    for i, ds in enumerate(series, start=1):
        path = directory / f"CT{i:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
