"""Sign-in, the denied page and the auditor's page in headless Chromium."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.browser.conftest import signed_in_page
from tests.conftest import Netpacs
from tests.hl7.test_regional_record import send_study


@pytest.fixture
def netpacs(module_netpacs: Netpacs) -> Netpacs:
    """One server for the module: each test has its own patients and looks at them only."""
    return module_netpacs


def test_signing_in_on_the_page_leads_back_to_the_page_asked_for(
    netpacs: Netpacs, browser: Browser
) -> None:
    page = browser.new_page()
    page.goto(f"{netpacs.base_url}/reconciliation")  # not signed in: the sign-in form
    page.get_by_label("User name").fill("rxc.admin")
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("wrong user name or password")
    page.get_by_label("User name").fill("rxc.admin")
    page.get_by_label("Password").fill("demo")
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{netpacs.base_url}/reconciliation")
    expect(page.get_by_role("heading", name="Patient identity reconciliation")).to_be_visible()


def test_a_clinician_is_denied_the_audit_trail_and_an_auditor_sees_the_break_glass(
    netpacs: Netpacs, browser: Browser
) -> None:
    denied = signed_in_page(browser, netpacs, "rpc.clinician")
    response = denied.goto(f"{netpacs.base_url}/audit")
    assert response is not None and response.status == 403
    expect(denied.get_by_role("alert")).to_contain_text("may not read the audit trail")

    opened = httpx.post(
        f"{netpacs.base_url}/api/break-glass",
        headers=netpacs.auth("rpc.clinician"),
        json={"patient_id": "X1", "issuer": "RXC", "reason": "<b>ED</b> resus, no consent"},
    )
    assert opened.status_code == 200
    page = signed_in_page(browser, netpacs, "rpc.auditor")
    page.goto(f"{netpacs.base_url}/audit")
    alerts = page.locator("#alerts + table tbody tr", has_text="resus, no consent")
    expect(alerts).to_have_count(1)
    expect(alerts).to_contain_text("BREAK-GLASS")
    expect(alerts).to_contain_text("rpc.clinician")
    expect(alerts).to_contain_text("<b>ED</b> resus")  # shown as text
    page.get_by_label("Hospital or NHS number").fill("X1")
    page.get_by_label("Issuer").fill("RXC")
    page.get_by_role("button", name="Who accessed this patient").click()
    expect(page.locator("#patient + table tbody tr").first).to_contain_text("rpc.clinician")
    # Another trust's auditor does not see RPC's alerts.
    other = signed_in_page(browser, netpacs, "rxc.auditor")
    other.goto(f"{netpacs.base_url}/audit")
    expect(other.locator("#alerts + table tbody")).not_to_contain_text("rpc.clinician")


def test_break_glass_form_needs_a_reason_then_opens_the_patient_in_the_study_list(
    netpacs: Netpacs, browser: Browser, tmp_path: Path
) -> None:
    uid = send_study(netpacs, tmp_path / "a", aet="EDGH_CT1", patient_id="BG1", issuer="RXC")
    page = signed_in_page(browser, netpacs, "rpc.clinician")
    page.goto(f"{netpacs.base_url}/studies?patient_id=BG1")
    expect(page.locator(f'a[href*="{uid}"]')).to_have_count(0)  # not QVH's patient
    page.goto(f"{netpacs.base_url}/break-glass")
    page.get_by_label("Hospital number").fill("BG1")
    page.get_by_label("Trust that issued it").fill("RXC")
    page.get_by_label("Reason").fill("urgent")
    page.get_by_role("button", name="Open the patient's imaging").click()
    expect(page.get_by_role("alert")).to_contain_text("at least 10 characters")
    expect(page.get_by_label("Hospital number")).to_have_value("BG1")  # kept
    page.get_by_label("Reason").fill("trauma call, transferred from Eastbourne unconscious")
    page.get_by_role("button", name="Open the patient's imaging").click()
    expect(page).to_have_url(f"{netpacs.base_url}/studies?patient_id=BG1")
    expect(page.locator(f'a[href*="{uid}"]').first).to_be_visible()


def test_every_page_has_a_sign_out_button_that_ends_the_browser_session(
    netpacs: Netpacs, browser: Browser
) -> None:
    page = browser.new_page()
    page.goto(f"{netpacs.base_url}/signin")
    page.get_by_label("User name").fill("rxc.admin")
    page.get_by_label("Password").fill("demo")
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{netpacs.base_url}/studies")
    for path in ("/studies", "/worklist", "/turnaround", "/reconciliation", "/break-glass"):
        page.goto(f"{netpacs.base_url}{path}")
        expect(page.get_by_role("button", name="Sign out")).to_have_count(1)
    (session,) = [c["value"] for c in page.context.cookies() if c["name"] == "netpacs_session"]
    me = f"{netpacs.base_url}/api/me"
    assert httpx.get(me, headers={"Authorization": f"Bearer {session}"}).status_code == 200
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{netpacs.base_url}/signin")
    page.goto(f"{netpacs.base_url}/studies")  # the session is gone: the sign-in form
    expect(page.get_by_label("User name")).to_be_visible()
    # A copy of the session's token is refused from now on, not only when it expires.
    assert httpx.get(me, headers={"Authorization": f"Bearer {session}"}).status_code == 401
    assert httpx.get(me, headers=netpacs.auth("rxc.admin")).status_code == 200  # other tokens
    auditor = signed_in_page(browser, netpacs, "rxc.auditor")
    auditor.goto(f"{netpacs.base_url}/audit")
    expect(auditor.get_by_role("button", name="Sign out")).to_have_count(1)
