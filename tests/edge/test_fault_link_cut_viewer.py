"""Fault test 2 of issue 13: the link to the core cut, the hospital keeps scanning and
seeing the scan, and the patient's prior, in OHIF through the edge (Chromium)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.browser import conftest as browser_fixtures
from tests.browser.conftest import (
    FIRST_IMAGE_PROBE,
    Traffic,
    image_stats,
    wait_for_first_image,
)
from tests.conftest import Netpacs
from tests.edge.conftest import CoreAndEdge
from tests.http.conftest import write_and_send_ct

BANNER = "Regional archive unreachable since"
# The browser fixtures of tests/browser: one Chromium for the module, the viewer.
browser = browser_fixtures.browser
viewer_installed = browser_fixtures.viewer_installed
_close_pages = browser_fixtures._close_pages
PATIENT = "RXC0000501"


def sign_in_page(browser: Browser, edge: Netpacs, user: str) -> Page:
    """Sign in through the edge's sign-in page, as a person would."""
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(f"{edge.base_url}/signin?next=/studies")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", "demo")
    page.click('form[action="/signin"] button')
    page.wait_for_url("**/studies**")
    return page


def see_first_image(page: Page, edge: Netpacs, study_uid: str, folder: Path) -> dict[str, object]:
    traffic = Traffic()
    traffic.attach(page)
    page.add_init_script(FIRST_IMAGE_PROBE)
    page.goto(f"{edge.base_url}/viewer?StudyInstanceUIDs={study_uid}", wait_until="commit")
    try:
        wait_for_first_image(page, timeout_ms=45_000)
    except PlaywrightTimeoutError:
        page.screenshot(path=str(folder / "page.png"))
        pytest.fail(f"no image of {study_uid} drawn in 45 s; {traffic.report()}")
    canvas = page.locator("canvas.cornerstone-canvas").first
    canvas.wait_for(state="visible")
    stats = image_stats(canvas.screenshot())
    assert not traffic.external, traffic.external
    return stats


def test_link_cut_the_scan_and_the_prior_open_in_ohif_through_the_edge_with_the_banner(
    core_and_edge: CoreAndEdge, browser: Browser, viewer_installed: Path, tmp_path: Path
) -> None:
    edge, core = core_and_edge.edge, core_and_edge.core
    # Link up: a prior of the patient reached the core by another way, and reaches the
    # edge's cache when opened there (as a prefetch would bring it).
    prior = write_and_send_ct(core, tmp_path / "prior", 4, patient_id=PATIENT, issuer="RXC")
    signed = httpx.post(
        f"{edge.base_url}/auth/token", data={"username": "rxc.clinician", "password": "demo"}
    )
    assert signed.status_code == 200, signed.text
    auth = {"Authorization": f"Bearer {signed.json()['access_token']}"}
    fetched = httpx.get(
        f"{edge.dicomweb_url}/studies/{prior.study_uid}",
        headers={**auth, "Accept": 'multipart/related; type="application/dicom"'},
        timeout=60,
    )
    assert fetched.status_code == 200, fetched.text

    core_and_edge.link.cut()
    try:
        # storescu to the edge: success (the edge's own durable store).
        scan = write_and_send_ct(edge, tmp_path / "scan", 8, patient_id=PATIENT, issuer="RXC")
        # QIDO-RS answers from the cache, and says so.
        qido = httpx.get(
            f"{edge.dicomweb_url}/studies", params={"PatientID": PATIENT}, headers=auth, timeout=30
        )
        assert qido.status_code == 200, qido.text
        assert qido.headers["warning"].startswith('299 netpacs "' + BANNER)
        found = {m["0020000D"]["Value"][0] for m in qido.json()}
        assert found == {scan.study_uid, prior.study_uid}

        # The clinician signs in at the edge while it is cut off (the core confirmed
        # them here before), sees the banner, and opens both studies in OHIF.
        page = sign_in_page(browser, edge, "rxc.clinician")
        assert BANNER in page.locator(".link-down").inner_text()
        for study_uid in (scan.study_uid, prior.study_uid):
            stats = see_first_image(page, edge, study_uid, tmp_path)
            assert stats["distinct"] >= 2, f"the viewport looks blank: {stats}"  # type: ignore[operator]
            banner = page.locator("#netpacs-link-banner")
            assert banner.is_visible() and BANNER in banner.inner_text()
    finally:
        core_and_edge.heal()
