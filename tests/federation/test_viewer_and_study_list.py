"""netpacs serving a region with other networks: a clinician at East Surrey in Chromium
sees, with "Include other networks", the patient's studies here and at London, Kent
and Wessex with the network that holds each, and a note naming a network that did not
answer; a Kent study opens in OHIF (pixels drawn, no failed request), passed through
netpacs; East Surrey's workstation finds the same studies with C-FIND (DCMTK)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

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
from tests.federation.peers import NHS, Silent, dicomweb_network


@pytest.fixture(scope="module")
def server(
    networks: Networks, tmp_path_factory: pytest.TempPathFactory, workstation_port: int
) -> Iterator[tuple[Netpacs, str, Silent]]:
    """A real netpacs (SQLite) asking London, Kent, Wessex, and Dover (which hangs)."""
    folder = tmp_path_factory.mktemp("served")
    dover = Silent()
    region = networks.region(
        folder / "region.toml",
        extra=dicomweb_network("Dover", dover.url),
        workstation_port=workstation_port,
    )
    netpacs = Netpacs(
        data_dir=folder / "data",
        database_url=f"sqlite:///{folder / 'index.sqlite'}",
        region_file=region,
        extra_env={"NETPACS_FEDERATION_FIND_AES": "RTP_WS1"},
    )
    netpacs.start()
    try:
        yield netpacs, cared_for_patient(netpacs, folder / "local"), dover
    finally:
        netpacs.stop()
        dover.stop()


def test_the_study_list_includes_other_networks_with_a_network_column_and_a_note(
    server: tuple[Netpacs, str, Silent], networks: Networks, browser: Browser
) -> None:
    netpacs, local, _ = server
    page = signed_in_page(browser, netpacs, "rtp.clinician")
    page.goto(f"{netpacs.base_url}/studies?patient_id={NHS}")
    assert page.locator("tr[data-network]").count() == 0  # not asked unless chosen
    page.get_by_label("Include other networks").check()
    page.get_by_role("button", name="Search").click()
    page.wait_for_url("**/studies?*networks=1*")
    rows = {
        row.get_attribute("data-study"): row.locator("td.network").inner_text()
        for row in page.locator("tbody tr[data-study]").all()
    }
    expected = {local: "this region"} | {
        uid: name for name, uids in networks.studies.items() for uid in uids
    }
    assert rows == expected
    assert page.get_by_role("columnheader", name="Network").is_visible()
    note = page.locator("#network-note").inner_text()
    assert "Dover (no answer" in note
    assert "Kent" not in note and "London" not in note and "Wessex" not in note


def test_a_kent_study_opens_in_the_viewer_with_pixels_and_no_failed_request(
    server: tuple[Netpacs, str, Silent],
    networks: Networks,
    browser: Browser,
    viewer_installed: Path,
    tmp_path: Path,
) -> None:
    netpacs, _, _ = server
    kent_study = networks.studies["Kent"][0]
    page = signed_in_page(
        browser, netpacs, "rtp.clinician", viewport={"width": 1280, "height": 900}
    )
    traffic = Traffic()
    traffic.attach(page)
    page.add_init_script(FIRST_IMAGE_PROBE)
    page.goto(f"{netpacs.base_url}/studies?patient_id={NHS}&networks=1")
    link = page.locator(f'tr[data-study="{kent_study}"] a').first
    assert link.get_attribute("href") == f"/viewer?StudyInstanceUIDs={kent_study}"
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
    frames = [url for _, url in traffic.responses if kent_study in url and "/frames/" in url]
    assert frames, traffic.responses


def test_a_workstation_allowed_to_finds_the_networks_studies_with_c_find(
    server: tuple[Netpacs, str, Silent], networks: Networks, tmp_path: Path
) -> None:
    netpacs, local, _ = server
    result = dcmtk(
        "findscu", "-S", "-d", "-X", "-aet", "RTP_WS1", "-aec", "NETPACS",
        "-od", str(tmp_path), "127.0.0.1", str(netpacs.port),
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={NHS}",
        "-k", "IssuerOfPatientID=NHS", "-k", "StudyInstanceUID", "-k", "StudyDate",
        "-k", "RetrieveAETitle", "-k", "RetrieveURL",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = {}
    for path in sorted(tmp_path.glob("rsp*.dcm")):
        ds = pydicom.dcmread(path)
        found[str(ds.StudyInstanceUID)] = ds
    remote = {uid: name for name, uids in networks.studies.items() for uid in uids}
    assert set(found) == {local, *remote}
    for uid, name in remote.items():
        ds = found[uid]
        if name == "Wessex":
            assert ds.RetrieveAETitle == "WESSEX"
        assert str(ds.RetrieveURL).endswith(f"/dicomweb/networks/{name}/studies/{uid}")
    assert found[local].RetrieveAETitle == "NETPACS"
    output = result.stdout + result.stderr
    # A Warning final status, its Error Comment naming the network that did not answer.
    final = output[output.index("Final Find Response") :]
    assert "0xb000" in final.lower() and "no full answer from Dover" in output, final[:3000]


def test_a_workstation_moves_a_wessex_study_to_itself_through_the_federation_cache(
    server: tuple[Netpacs, str, Silent], networks: Networks, workstation_port: int, tmp_path: Path
) -> None:
    netpacs, _, _ = server
    wessex_study = networks.studies["Wessex"][0]
    found = dcmtk(
        "findscu", "-S", "-aet", "RTP_WS1", "-aec", "NETPACS", "127.0.0.1", str(netpacs.port),
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={NHS}", "-k", "IssuerOfPatientID=NHS",
        "-k", "StudyInstanceUID",
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    with workstation(tmp_path / "ws", workstation_port) as received:
        moved = dcmtk(
            "movescu", "-S", "-aet", "RTP_WS1", "-aec", "NETPACS", "-aem", "RTP_WS1",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={wessex_study}",
            "127.0.0.1", str(netpacs.port),
        )  # fmt: skip
        assert moved.returncode == 0, moved.stderr
        files = sorted(received.iterdir())
    assert len(files) == 2, (files, moved.stderr)
    assert {str(pydicom.dcmread(f).StudyInstanceUID) for f in files} == {wessex_study}
    # Kept apart from our archive, with its provenance; not a study of ours.
    provenance = [
        json.loads(p.read_text())
        for p in (netpacs.data_dir / "federation-cache").glob("*/provenance.json")
    ]
    assert [(p["network"], p["study_instance_uid"]) for p in provenance] == [
        ("Wessex", wessex_study)
    ]
    assert provenance[0]["retrieved_by"] == "RTP_WS1"
    assert not in_our_index(netpacs.database_url, wessex_study)
