"""Fixtures for the HTTP interfaces: netpacs's HTTP app in this process (``http_app``)
holding a CT series stored as a modality would send it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pydicom
import pytest

from netpacs.synthetic import write_ct_series
from tests.conftest import HttpApp, Netpacs
from tests.hl7.conftest import Ack


class Archive(Protocol):
    """Where a modality sends: a real server (storescu) or the app in this process."""

    def store(self, *paths: Path, aet: str = "EDGH_CT1") -> None: ...


def storescu(server: Netpacs, *paths: Path, aet: str = "EDGH_CT1") -> None:
    """Send files to netpacs with DCMTK storescu, as a modality would; fail the test on error."""
    server.store(*paths, aet=aet)


@dataclass(frozen=True)
class StoredSeries:
    """A synthetic CT series netpacs holds, and the files it was sent from."""

    paths: list[Path]
    study_uid: str
    series_uid: str
    sop_uids: list[str]


def write_and_send_ct(
    server: Archive,
    folder: Path,
    n: int = 5,
    *,
    rows: int = 64,
    columns: int = 64,
    aet: str = "EDGH_CT1",
    **kw: str,
) -> StoredSeries:
    """A synthetic CT series written to ``folder`` and sent from modality ``aet``."""
    paths = write_ct_series(folder, n, rows=rows, columns=columns, **kw)  # type: ignore[arg-type]
    server.store(*paths, aet=aet)
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    sops = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]
    return StoredSeries(paths, str(first.StudyInstanceUID), str(first.SeriesInstanceUID), sops)


@pytest.fixture
def ct_series(http_app: HttpApp, tmp_path: Path) -> StoredSeries:
    """A 5-slice 64x64 CT series from East Sussex (EDGH_CT1), issuer RXC."""
    return write_and_send_ct(http_app, tmp_path / "ct", 5, patient_id="RXC0000001", issuer="RXC")


@dataclass(frozen=True)
class AdtFeed:
    """A trust's ADT feed into the app's archive: each message applied as the MLLP worker
    applies it (the MLLP wire itself is tested in tests/hl7)."""

    app: HttpApp

    def send(self, message: str) -> Ack:
        return Ack(self.app.adt(message))


@pytest.fixture
def adt_feed(http_app: HttpApp) -> AdtFeed:
    return AdtFeed(http_app)
