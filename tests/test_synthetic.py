"""The synthetic CT generator makes valid, distinct, readable DICOM."""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from netpacs.synthetic import make_ct_series, write_ct_series


def test_series_shares_study_and_series_and_has_distinct_instances() -> None:
    series = list(make_ct_series(6, rows=64, columns=48))
    assert len(series) == 6
    assert len({ds.SOPInstanceUID for ds in series}) == 6
    assert len({ds.StudyInstanceUID for ds in series}) == 1
    assert len({ds.SeriesInstanceUID for ds in series}) == 1
    assert len({ds.FrameOfReferenceUID for ds in series}) == 1
    assert [int(ds.InstanceNumber) for ds in series] == [1, 2, 3, 4, 5, 6]
    # Slices march along z, one slice thickness apart.
    zs = [float(ds.ImagePositionPatient[2]) for ds in series]
    steps = {round(a - b, 6) for a, b in itertools.pairwise(zs)}
    assert steps == {float(series[0].SliceThickness)}


def test_ct_header_and_pixel_data() -> None:
    ds = next(make_ct_series(1, rows=64, columns=48))
    assert ds.SOPClassUID == CTImageStorage
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.Modality == "CT"
    assert ds.InstitutionName == "East Surrey Hospital"
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert (ds.BitsAllocated, ds.SamplesPerPixel, ds.PixelRepresentation) == (16, 1, 0)
    assert (ds.Rows, ds.Columns) == (64, 48)
    assert len(ds.PixelData) == 64 * 48 * 2
    assert ds["PixelData"].VR == "OW"
    assert ds.AccessionNumber and len(ds.AccessionNumber) <= 16
    for keyword in (
        "PatientName",
        "PatientID",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "BodyPartExamined",
        "PixelSpacing",
        "SliceThickness",
        "ImageOrientationPatient",
        "RescaleSlope",
        "RescaleIntercept",
        "WindowCenter",
        "WindowWidth",
    ):
        assert keyword in ds, keyword
    # Air outside the body, tissue in the middle (stored value = HU + 1024).
    pixels = memoryview(ds.PixelData).cast("H")
    corner = pixels[0]
    centre = pixels[32 * 48 + 24]
    assert corner < 300
    assert 900 < centre < 1400


def test_identity_arguments() -> None:
    study_uid = generate_uid()
    a = next(
        make_ct_series(
            1,
            patient_id="RTP1234567",
            patient_name="TEST^SYNTHETIC",
            issuer="RTP",
            study_uid=study_uid,
            rows=8,
            columns=8,
        )
    )
    b = next(make_ct_series(1, study_uid=study_uid, rows=8, columns=8))
    assert a.PatientID == "RTP1234567"
    assert str(a.PatientName) == "TEST^SYNTHETIC"
    assert a.IssuerOfPatientID == "RTP"
    assert "IssuerOfPatientID" not in b
    assert a.StudyInstanceUID == b.StudyInstanceUID == study_uid
    assert a.SeriesInstanceUID != b.SeriesInstanceUID
    assert a.AccessionNumber == b.AccessionNumber


def test_datasets_do_not_share_elements() -> None:
    first, second = make_ct_series(2, rows=8, columns=8)
    first.PatientID = "CHANGED"
    first.ImageType[0] = "DERIVED"
    assert second.PatientID != "CHANGED"
    assert second.ImageType[0] == "ORIGINAL"


def test_seed_fixes_pixels() -> None:
    a = next(make_ct_series(1, rows=32, columns=32, seed=7))
    b = next(make_ct_series(1, rows=32, columns=32, seed=7))
    c = next(make_ct_series(1, rows=32, columns=32, seed=8))
    assert a.PixelData == b.PixelData
    assert a.PixelData != c.PixelData
    assert a.SOPInstanceUID != b.SOPInstanceUID


def test_write_ct_series_part10(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", 3, rows=32, columns=32, issuer="RTP")
    assert [p.name for p in paths] == ["CT000001.dcm", "CT000002.dcm", "CT000003.dcm"]
    uids = set()
    for path in paths:
        raw = path.read_bytes()
        assert raw[:128] == bytes(128)
        assert raw[128:132] == b"DICM"
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert len(ds.PixelData) == 32 * 32 * 2
        uids.add(ds.SOPInstanceUID)
    assert len(uids) == 3


@pytest.mark.skipif(shutil.which("dcmdump") is None, reason="DCMTK dcmdump not installed")
def test_dcmdump_reads_written_files(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, 2, rows=16, columns=16)
    for path in paths:
        result = subprocess.run(
            ["dcmdump", "-q", str(path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        assert "(0008,0060) CS [CT]" in result.stdout
        assert "MONOCHROME2" in result.stdout
        # dcmdump's "-q" silences warnings; anything on stderr is an error.
        assert result.stderr.strip() == ""
