"""Fixtures for the HTTP interfaces: a running netpacs with a CT series sent by storescu."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from netpacs.synthetic import write_ct_series
from tests.conftest import Netpacs, dcmtk


def storescu(server: Netpacs, *paths: Path, aet: str = "EDGH_CT1") -> None:
    """Send files to netpacs with DCMTK storescu, as a modality would; fail the test on error."""
    result = dcmtk(
        "storescu", "-aet", aet, "-aec", "NETPACS", "127.0.0.1", str(server.port), *map(str, paths)
    )
    assert result.returncode == 0 and "Failed" not in result.stderr, result.stderr


@dataclass(frozen=True)
class StoredSeries:
    """A synthetic CT series netpacs holds, and the files it was sent from."""

    paths: list[Path]
    study_uid: str
    series_uid: str
    sop_uids: list[str]


def write_and_send_ct(
    server: Netpacs, folder: Path, n: int = 5, *, rows: int = 64, columns: int = 64, **kw: str
) -> StoredSeries:
    paths = write_ct_series(folder, n, rows=rows, columns=columns, **kw)  # type: ignore[arg-type]
    storescu(server, *paths)
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    sops = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]
    return StoredSeries(paths, str(first.StudyInstanceUID), str(first.SeriesInstanceUID), sops)


@pytest.fixture
def ct_series(netpacs: Netpacs, tmp_path: Path) -> StoredSeries:
    """A 5-slice 64x64 CT series from East Sussex (EDGH_CT1), issuer RXC, sent by storescu."""
    return write_and_send_ct(netpacs, tmp_path / "ct", 5, patient_id="RXC0000001", issuer="RXC")
