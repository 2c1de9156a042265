"""Wessex (a real Orthanc over DIMSE, knowing our AE NETPACS) retrieved with C-MOVE to our
AE title (``retrieve = "move"``, issue 14): its C-STOREs reach our DIMSE listener and are
kept in the federation cache, never in our archive; its AE may store nothing else, at
no other time. The cached study is then served as WADO-RS under the network's path."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from playwright.sync_api import Browser
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.browser.conftest import (
    FIRST_IMAGE_PROBE,
    Traffic,
    image_stats,
    signed_in_page,
    wait_for_first_image,
)
from tests.conftest import Netpacs, dcmtk, workstation
from tests.federation.conftest import Networks, cared_for_patient, in_our_index
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


def _empty_cache(netpacs: Netpacs) -> None:
    for folder in (netpacs.data_dir / "federation-cache").glob("*"):
        shutil.rmtree(folder)


def _cached(netpacs: Netpacs) -> list[dict[str, str]]:
    return [
        json.loads(p.read_text())
        for p in (netpacs.data_dir / "federation-cache").glob("*/provenance.json")
    ]


def _ours(netpacs: Netpacs, uid: str) -> bool:
    return in_our_index(netpacs.database_url, uid)


def test_wessex_moves_a_study_to_our_ae_into_the_federation_cache_for_a_workstation(
    moving: Netpacs, networks: Networks, workstation_port: int, tmp_path: Path
) -> None:
    _empty_cache(moving)
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


def test_a_wessex_study_opens_as_wado_rs_from_the_federation_cache_under_its_retrieve_url(
    moving: Netpacs, networks: Networks
) -> None:
    _empty_cache(moving)
    uid = networks.studies["Wessex"][0]
    headers = moving.auth("rtp.clinician")
    with httpx.Client(base_url=moving.base_url, headers=headers, timeout=60) as client:
        search = {"PatientID": NHS, "IssuerOfPatientID": "NHS", "includenetworks": "true"}
        answer = client.get("/dicomweb/studies", params=search)
        assert answer.status_code == 200, answer.text
        match = next(m for m in answer.json() if m["0020000D"]["Value"] == [uid])
        assert match["00080054"]["Value"] == ["WESSEX"]
        url = match["00081190"]["Value"][0].removeprefix(moving.base_url)
        assert url == f"/dicomweb/networks/Wessex/studies/{uid}"
        series = client.get(f"{url}/series")  # retrieved now: C-MOVE to our AE
        assert series.status_code == 200, series.text
        series_uid = series.json()[0]["0020000E"]["Value"][0]
        metadata = client.get(f"{url}/series/{series_uid}/metadata")
        assert metadata.status_code == 200, metadata.text
        items = metadata.json()
        assert len(items) == 2 and {i["0020000D"]["Value"][0] for i in items} == {uid}
        sop = items[0]["00080018"]["Value"][0]
        frames = client.get(
            f"{url}/series/{series_uid}/instances/{sop}/frames/1",
            headers={"Accept": 'multipart/related; type="application/octet-stream"'},
        )
        assert frames.status_code == 200, frames.text
        assert frames.headers["content-type"].startswith("multipart/related")
        assert len(frames.content) >= 64 * 64 * 2
        instance = client.get(f"{url}/series/{series_uid}/instances/{sop}")
        assert instance.status_code == 200, instance.text
        assert 'type="application/dicom"' in instance.headers["content-type"]
        assert instance.content.count(b"DICM") == 1 and sop.encode() in instance.content
        no_frame = client.get(f"{url}/series/{series_uid}/instances/{sop}/frames/9")
        assert no_frame.status_code == 404 and "frames" in no_frame.text
        found = client.get("/dicomweb/studies", params={"StudyInstanceUID": uid})
        assert [m["0020000D"]["Value"] for m in found.json()] == [[uid]]
        # Someone who may not see the patient gets nothing from the cache.
    with httpx.Client(
        base_url=moving.base_url, headers=moving.auth("rtk.clinician"), timeout=60
    ) as other:
        refused = other.get(f"{url}/series/{series_uid}/metadata")
    assert refused.status_code == 403, refused.text
    assert [(p["network"], p["study_instance_uid"]) for p in _cached(moving)] == [("Wessex", uid)]
    assert not _ours(moving, uid)


def test_a_wessex_study_opens_in_the_viewer_with_pixels_and_no_failed_request(
    moving: Netpacs,
    networks: Networks,
    browser: Browser,
    viewer_installed: Path,
    tmp_path: Path,
) -> None:
    _empty_cache(moving)
    uid = networks.studies["Wessex"][0]
    page = signed_in_page(browser, moving, "rtp.clinician", viewport={"width": 1280, "height": 900})
    traffic = Traffic()
    traffic.attach(page)
    page.add_init_script(FIRST_IMAGE_PROBE)
    page.goto(f"{moving.base_url}/studies?patient_id={NHS}&networks=1")
    link = page.locator(f'tr[data-study="{uid}"] a').first
    assert link.get_attribute("href") == f"/viewer?StudyInstanceUIDs={uid}"
    link.click()
    try:
        wait_for_first_image(page, timeout_ms=45_000)
    except PlaywrightTimeoutError:
        page.screenshot(path=str(tmp_path / "page.png"))
        pytest.fail(f"no image drawn in 45 s; {traffic.report()}")
    canvas = page.locator("canvas.cornerstone-canvas").first
    canvas.wait_for(state="visible")
    page.wait_for_load_state("networkidle")
    stats = image_stats(canvas.screenshot())
    assert stats["distinct"] >= 20, f"the viewport looks blank: {stats}"
    assert stats["lit"] >= 0.05, f"the viewport looks blank: {stats}"
    assert not traffic.external, f"requests left the netpacs origin: {traffic.external}"
    assert not traffic.failed, f"requests failed: {traffic.failed}"
    assert not traffic.errors, f"netpacs answered with errors: {traffic.errors}"
    frames = [url for _, url in traffic.responses if uid in url and "/frames/" in url]
    assert frames, traffic.responses
