"""What the edge tests observe: the edge's /metrics, the core's copies of objects."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pydicom
from dicomweb_client import DICOMwebClient
from pydicom.uid import generate_uid

from tests.conftest import Netpacs
from tests.factories import write_series


def metric(server: Netpacs, name: str) -> float:
    """A gauge of ``GET /metrics`` (without labels)."""
    text = httpx.get(f"{server.base_url}/metrics", timeout=60).text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def ct_study(folder: Path, n: int, patient_id: str, **attrs: str) -> list[Path]:
    """A synthetic East Sussex CT study of ``n`` slices (its own UIDs)."""
    return write_series(
        folder,
        n,
        PatientID=patient_id,
        IssuerOfPatientID="RXC",
        StudyInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
        **attrs,
    )


def uids(paths: list[Path]) -> tuple[str, str, list[str]]:
    """Study, series and SOP Instance UIDs of one series' files."""
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    sops = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]
    return str(first.StudyInstanceUID), str(first.SeriesInstanceUID), sops


def core_holds(core: Netpacs, paths: list[Path]) -> bool:
    """Whether the core's QIDO-RS (as East Sussex's admin) lists every instance."""
    study, _, sops = uids(paths)
    answer = core.http.get(
        f"{core.dicomweb_url}/studies/{study}/instances", params={"limit": "1000"}
    )
    if answer.status_code != 200:
        return False
    found = {item["00080018"]["Value"][0] for item in answer.json()}
    return set(sops) <= found


def assert_byte_identical_at_core(core: Netpacs, paths: list[Path]) -> None:
    """The core's copy of each object has the same UIDs and the same pixel data."""
    client = DICOMwebClient(core.dicomweb_url, headers=core.auth())
    for path in paths:
        sent = pydicom.dcmread(path)
        held = client.retrieve_instance(
            str(sent.StudyInstanceUID),
            str(sent.SeriesInstanceUID),
            str(sent.SOPInstanceUID),
            media_types=(("application/dicom", "*"),),
        )
        assert held.SOPInstanceUID == sent.SOPInstanceUID
        assert held.PixelData == sent.PixelData
