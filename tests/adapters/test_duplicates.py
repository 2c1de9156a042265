"""A SOP instance sent again in other bytes (another transfer syntax, a lossless
recompression) is the same instance: success, one copy kept; other content under a
stored SOP Instance UID is refused with a status DCMTK names (issue 15)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

from tests.conftest import Netpacs, dcmtk, write_region
from tests.http.test_wado import parts

# MR_small in the encodings pydicom ships it in (one SOP Instance UID), each with the
# storescu option that proposes its transfer syntax (so that it is sent as stored).
MR_SMALL = {
    "MR_small.dcm": "-xe",
    "MR_small_implicit.dcm": "-xi",
    "MR_small_bigendian.dcm": "-xb",
    "MR_small_RLE.dcm": "-xr",
    "MR_small_jpeg_ls_lossless.dcm": "-xt",
    "MR_small_jp2klossless.dcm": "-xv",
    "MR_small_padded.dcm": "-xe",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Netpacs]:
    tmp = tmp_path_factory.mktemp("duplicates")
    srv = Netpacs(
        data_dir=tmp / "data",
        database_url=f"sqlite:///{tmp / 'index.sqlite'}",
        region_file=write_region(tmp / "region.toml", {}),
    )
    srv.start()
    yield srv
    srv.stop()


def _testdata(name: str) -> Path:
    return Path(str(get_testdata_file(name)))


def storescu(server: Netpacs, path: Path, propose: str = "-xe", verbosity: str = "-v") -> str:
    """Send one file from ESH_MR1 proposing the transfer syntax ``propose`` names."""
    result = dcmtk(
        "storescu", verbosity, propose, "-aet", "ESH_MR1", "-aec", "NETPACS", "127.0.0.1",
        str(server.port), str(path),
    )  # fmt: skip
    return result.stdout + result.stderr


def _blobs(server: Netpacs) -> list[Path]:
    return [p for p in (server.data_dir / "objects").glob("???/*") if p.is_file()]


def _retrieved(server: Netpacs, ds: pydicom.Dataset) -> list[bytes]:
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    url = (
        f"{server.dicomweb_url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    return [body for _, body in parts(server.http.get(url, headers={"Accept": accept}))]


def test_mr_small_resent_in_every_transfer_syntax_is_success_and_the_first_copy_kept(
    server: Netpacs, tmp_path: Path
) -> None:
    first = _testdata("MR_small_RLE.dcm")
    out = storescu(server, first, "-xr")
    assert "Success" in out and "Failed" not in out, out
    assert len(_blobs(server)) == 1
    deflated = pydicom.dcmread(_testdata("MR_small.dcm"))
    deflated.save_as(tmp_path / "deflated.dcm", implicit_vr=False, little_endian=True)
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    sends = {_testdata(name): option for name, option in MR_SMALL.items()}
    sends[tmp_path / "deflated.dcm"] = "-xd"
    for path, option in sends.items():
        out = storescu(server, path, option)
        assert "Received Store Response (Success)" in out, f"{path.name}: {out}"
        for source, sent in re.findall(r"Converting transfer syntax: (.+) -> (.+)", out):
            assert source == sent, f"{path.name} sent in another syntax: {out}"
    assert len(_blobs(server)) == 1
    assert "is the stored instance in other bytes" in server.log()
    (body,) = _retrieved(server, pydicom.dcmread(first, stop_before_pixels=True))
    served = pydicom.dcmread(io.BytesIO(body))  # WADO-RS gives the first copy: RLE
    assert served.file_meta.TransferSyntaxUID == RLELossless
    assert served.PixelData == pydicom.dcmread(first).PixelData


def test_other_content_under_a_stored_uid_is_refused_with_a_named_status(
    server: Netpacs, tmp_path: Path
) -> None:
    storescu(server, _testdata("MR_small.dcm"))
    renamed = pydicom.dcmread(_testdata("MR_small.dcm"))
    renamed.PatientName = "Other^Patient"
    renamed.save_as(tmp_path / "renamed.dcm")
    changed = pydicom.dcmread(_testdata("MR_small.dcm"))
    pixels = changed.pixel_array.copy()
    pixels[0, 0] += 1  # one pixel value: not a lossless copy of the stored image
    changed.compress(RLELossless, pixels, generate_instance_uid=False)
    changed.save_as(tmp_path / "one-pixel.dcm")

    out = storescu(server, tmp_path / "renamed.dcm", verbosity="-d")
    assert "DIMSE Status                  : 0xc004: Error: Cannot understand" in out, out
    assert "(0010,0010) differs" in out, out  # the Error Comment says what differs
    out = storescu(server, tmp_path / "one-pixel.dcm", "-xr", verbosity="-d")
    assert "0xc004: Error: Cannot understand" in out, out
    assert "decoded pixel data differs" in out, out
    assert len(_blobs(server)) == 1
    stored = pydicom.dcmread(io.BytesIO(_blobs(server)[0].read_bytes()))
    assert stored.PatientName == pydicom.dcmread(_testdata("MR_small.dcm")).PatientName
