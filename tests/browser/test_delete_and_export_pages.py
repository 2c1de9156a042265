"""The study list's Download (ZIP) link and the delete page, in headless Chromium."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from tests.browser.conftest import Traffic, signed_in_page
from tests.conftest import Netpacs
from tests.http.conftest import StoredSeries, write_and_send_ct


@pytest.fixture
def netpacs(module_netpacs: Netpacs) -> Netpacs:
    """One server for the module: each test sends and looks at its own study."""
    return module_netpacs


@pytest.fixture
def ct_series(netpacs: Netpacs, tmp_path: Path) -> StoredSeries:
    """A 5-slice CT from East Sussex (EDGH_CT1), issuer RXC."""
    return write_and_send_ct(
        netpacs, tmp_path / "ct", 5, rows=32, columns=32, patient_id="RXC0000001", issuer="RXC"
    )


def test_download_link_gives_the_study_as_a_zip(
    netpacs: Netpacs, ct_series: StoredSeries, browser: Browser
) -> None:
    page = signed_in_page(browser, netpacs, "rxc.clinician", accept_downloads=True)
    page.goto(f"{netpacs.base_url}/studies")
    row = page.locator(f'tr[data-study="{ct_series.study_uid}"]')
    assert row.get_by_role("link", name="Delete").count() == 0  # clinicians do not delete
    with page.expect_download() as info:
        row.get_by_role("link", name="Download (ZIP)").click()
    download = info.value
    assert download.suggested_filename == f"study-{ct_series.study_uid}.zip"
    with zipfile.ZipFile(download.path()) as zf:
        assert sorted(zf.namelist()) == sorted(
            f"{ct_series.series_uid}/{sop}.dcm" for sop in ct_series.sop_uids
        )
    page.close()


def test_an_admin_deletes_a_study_from_the_list_saying_why(
    netpacs: Netpacs, ct_series: StoredSeries, browser: Browser
) -> None:
    uid = ct_series.study_uid
    page = signed_in_page(browser, netpacs, "rxc.admin")
    traffic = Traffic()
    traffic.attach(page)
    page.goto(f"{netpacs.base_url}/studies")
    page.locator(f'tr[data-study="{uid}"]').get_by_role("link", name="Delete").click()
    assert page.url == f"{netpacs.base_url}/studies/{uid}/delete"
    assert "RXC0000001" in page.locator("#study").inner_text()

    # The browser itself asks for a reason (required); the server refuses a short one.
    page.locator("#delete").click()
    assert page.url.endswith("/delete") and page.locator("[role=alert]").count() == 0
    page.fill("#reason", "oops")
    page.evaluate("document.querySelector('#reason').removeAttribute('minlength')")
    page.locator("#delete").click()
    assert "at least 10 characters" in page.locator("[role=alert]").inner_text()
    assert page.input_value("#reason") == "oops"  # kept for correcting

    page.fill("#reason", "sent to the wrong patient's record")
    page.locator("#delete").click()
    assert "deleted: 5 instances in 1 series" in page.locator("[role=status]").inner_text()
    page.get_by_role("link", name="Back to the studies").click()
    assert page.locator(f'tr[data-study="{uid}"]').count() == 0
    assert not traffic.external, traffic.report()
    page.close()
