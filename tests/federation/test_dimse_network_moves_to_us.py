"""Wessex (a real Orthanc over DIMSE, knowing our AE NETPACS) retrieved with C-MOVE to our
AE title (``retrieve = "move"``, issue 14): its C-STOREs reach our DIMSE listener and are
kept in the federation cache, never in our archive; its AE may store nothing else, at
no other time. The cached study is then served as WADO-RS under the network's path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from tests.conftest import Netpacs, dcmtk, workstation
from tests.federation.conftest import Networks, cared_for_patient
from tests.federation.peers import NHS, patient_study
from tests.http.test_partner_access import audit_rows


@pytest.fixture(scope="module")
def moving(
    networks: Networks, tmp_path_factory: pytest.TempPathFactory, workstation_port: int
) -> Iterator[Netpacs]:
    """A real netpacs whose region says Wessex moves to our AE; Wessex told our port."""
    folder = tmp_path_factory.mktemp("moving")
    region = networks.region(
        folder / "region.toml", workstation_port=workstation_port, wessex_retrieve="move"
    )
    netpacs = Netpacs(
        data_dir=folder / "data",
        database_url=f"sqlite:///{folder / 'index.sqlite'}",
        region_file=region,
        extra_env={"NETPACS_FEDERATION_FIND_AES": "RTP_WS1"},
    )
    modality = f"{networks.wessex.rest}/modalities/NETPACS"
    told = httpx.put(modality, json={"AET": "NETPACS", "Host": "127.0.0.1", "Port": netpacs.port})
    assert told.status_code == 200, told.text
    netpacs.start()
    try:
        cared_for_patient(netpacs, folder / "local")
        yield netpacs
    finally:
        netpacs.stop()
        httpx.put(modality, json={"AET": "NETPACS", "Host": "127.0.0.1", "Port": 104})


def _cached(netpacs: Netpacs) -> list[dict[str, str]]:
    return [
        json.loads(p.read_text())
        for p in (netpacs.data_dir / "federation-cache").glob("*/provenance.json")
    ]


def _ours(netpacs: Netpacs, uid: str) -> bool:
    answer = netpacs.http.get(f"{netpacs.dicomweb_url}/studies", params={"StudyInstanceUID": uid})
    assert answer.status_code in (200, 204), answer.text
    return uid in answer.text


def test_wessex_moves_a_study_to_our_ae_into_the_federation_cache_for_a_workstation(
    moving: Netpacs, networks: Networks, workstation_port: int, tmp_path: Path
) -> None:
    wessex_study = networks.studies["Wessex"][0]
    found = dcmtk(
        "findscu", "-S", "-aet", "RTP_WS1", "-aec", "NETPACS", "127.0.0.1", str(moving.port),
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={NHS}", "-k", "IssuerOfPatientID=NHS",
        "-k", "StudyInstanceUID",
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    with workstation(tmp_path / "ws", workstation_port) as received:
        moved = dcmtk(
            "movescu", "-S", "-aet", "RTP_WS1", "-aec", "NETPACS", "-aem", "RTP_WS1",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={wessex_study}",
            "127.0.0.1", str(moving.port),
        )  # fmt: skip
        assert moved.returncode == 0, moved.stderr
        files = sorted(received.iterdir())
    assert len(files) == 2, (files, moved.stderr, moving.log()[-3000:])
    assert {str(pydicom.dcmread(f).StudyInstanceUID) for f in files} == {wessex_study}
    cached = _cached(moving)
    assert [(p["network"], p["study_instance_uid"]) for p in cached] == [("Wessex", wessex_study)]
    assert not list((moving.data_dir / "federation-cache" / "moves").glob("*.json"))
    assert not _ours(moving, wessex_study)


def test_wessex_may_not_store_when_no_retrieval_from_it_is_in_progress(
    moving: Netpacs, tmp_path: Path
) -> None:
    uid = patient_study(tmp_path / "unasked", seed=77)
    before = _cached(moving)
    sent = dcmtk(
        "storescu", "-v", "-aet", "WESSEX", "-aec", "NETPACS", "127.0.0.1", str(moving.port),
        *map(str, sorted((tmp_path / "unasked").glob("*.dcm"))),
    )  # fmt: skip
    output = sent.stdout + sent.stderr
    assert "Received Store Response (Unknown Status: 0x124)" in output, output
    assert _cached(moving) == before
    assert all(
        str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) != uid
        for p in (moving.data_dir / "federation-cache").glob("*/*.dcm")
    )
    assert not _ours(moving, uid)
    refusals = [row.detail for row in audit_rows(moving, "WESSEX", 0)]
    assert any("may store only a study we asked it to move to us" in d for d in refusals)
