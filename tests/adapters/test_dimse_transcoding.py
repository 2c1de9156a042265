"""DIMSE retrieve of compressed objects: as stored to peers that take the compression,
decompressed (losslessly) for workstations that accept only uncompressed syntaxes.
One server per module and backend; each test has its own study."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from tests.adapters.test_dimse import dataset_bytes, store
from tests.conftest import Netpacs, dcmtk, workstation
from tests.factories import ct_dataset, write


def rle_series(folder: Path, n: int) -> list[Path]:
    """``n`` RLE Lossless CT images of one series with distinct, known pixels."""
    study, series = generate_uid(), generate_uid()
    paths = []
    for i in range(n):
        ds = ct_dataset(StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=i + 1)
        write(ds, folder / f"{i}.dcm")  # gives it file meta
        pixels = (np.arange(64, dtype=np.uint16).reshape(8, 8) * (i + 3)) % 4096
        ds.PixelData = pixels.tobytes()
        ds.compress(RLELossless)
        ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
        paths.append(folder / f"{i}.dcm")
    return paths


def store_as_rle(server: Netpacs, paths: list[Path]) -> None:
    # -xr: propose RLE Lossless, so that the objects are stored compressed as made
    out = dcmtk(
        "storescu", "-xr", "-aet", "EDGH_CT1", "-aec", "NETPACS",
        "127.0.0.1", str(server.port), *map(str, paths),
    )  # fmt: skip
    assert out.returncode == 0 and "Failed" not in out.stderr, out.stderr


@pytest.fixture(scope="module")
def netpacs(module_netpacs: Netpacs) -> Netpacs:
    return module_netpacs


@pytest.fixture
def plain_workstation(tmp_path: Path, workstation_port: int) -> Iterator[Path]:
    """Workstation RTP_WS1 as a DCMTK storescp that accepts uncompressed syntaxes only
    (its default): the kind of peer that cannot take a compressed object as stored."""
    with workstation(tmp_path / "plain-ws1", workstation_port) as out:
        yield out


def move_study(server: Netpacs, study_uid: str) -> subprocess.CompletedProcess[str]:
    return dcmtk(
        "movescu", "-S", "-aet", "RXC_WS1", "-aec", "NETPACS", "-aem", "RTP_WS1",
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
        "127.0.0.1", str(server.port),
    )  # fmt: skip


def pixels_by_uid(paths: list[Path]) -> dict[str, bytes]:
    out = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        out[str(ds.SOPInstanceUID)] = ds.pixel_array.tobytes()
    return out


def test_c_move_decompresses_for_a_workstation_that_accepts_no_compression(
    netpacs: Netpacs, plain_workstation: Path, tmp_path: Path
) -> None:
    files = rle_series(tmp_path / "in", 3)
    store_as_rle(netpacs, files)
    result = move_study(netpacs, str(pydicom.dcmread(files[0]).StudyInstanceUID))
    assert result.returncode == 0, result.stderr
    received = sorted(plain_workstation.iterdir())
    assert len(received) == 3, result.stdout + result.stderr
    for path in received:
        ds = pydicom.dcmread(path)
        assert not ds.file_meta.TransferSyntaxUID.is_compressed
        assert ds.PatientID == "H100001" and ds.Modality == "CT"
    assert pixels_by_uid(received) == pixels_by_uid(files)  # lossless


def test_c_move_sends_compressed_objects_as_stored_to_a_workstation_that_takes_them(
    netpacs: Netpacs, storescp: Path, tmp_path: Path
) -> None:
    files = rle_series(tmp_path / "in", 2)
    store_as_rle(netpacs, files)
    result = move_study(netpacs, str(pydicom.dcmread(files[0]).StudyInstanceUID))
    assert result.returncode == 0, result.stderr
    received = sorted(storescp.iterdir())
    assert [pydicom.dcmread(p).file_meta.TransferSyntaxUID for p in received] == [RLELossless] * 2
    assert {dataset_bytes(p) for p in received} == {dataset_bytes(p) for p in files}


def test_c_get_of_compressed_objects_by_a_peer_taking_only_uncompressed_decompresses_them(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    files = rle_series(tmp_path / "in", 2)
    store_as_rle(netpacs, files)
    out = tmp_path / "got"
    out.mkdir()
    # getscu proposes the uncompressed syntaxes for the objects it receives (+x=)
    result = dcmtk(
        "getscu", "-S", "-aet", "RXC_WS1", "-aec", "NETPACS", "-od", str(out),
        "-k", "QueryRetrieveLevel=STUDY",
        "-k", f"StudyInstanceUID={pydicom.dcmread(files[0]).StudyInstanceUID}",
        "127.0.0.1", str(netpacs.port),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    received = sorted(out.iterdir())
    assert len(received) == 2, result.stdout + result.stderr
    assert {pydicom.dcmread(p).file_meta.TransferSyntaxUID for p in received} <= {
        ExplicitVRLittleEndian,
        pydicom.uid.ImplicitVRLittleEndian,
    }
    assert pixels_by_uid(received) == pixels_by_uid(files)


def test_uncompressed_objects_still_move_byte_identical_beside_compressed_ones(
    netpacs: Netpacs, plain_workstation: Path, tmp_path: Path
) -> None:
    compressed = rle_series(tmp_path / "rle", 1)
    study = str(pydicom.dcmread(compressed[0]).StudyInstanceUID)
    plain = write(ct_dataset(StudyInstanceUID=study), tmp_path / "plain.dcm")
    store_as_rle(netpacs, compressed)
    assert "Failed" not in store(netpacs, plain)
    result = move_study(netpacs, study)
    assert result.returncode == 0, result.stderr
    received = sorted(plain_workstation.iterdir())
    assert len(received) == 2
    assert dataset_bytes(plain) in {dataset_bytes(p) for p in received}
