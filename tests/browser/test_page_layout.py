"""One page layout: every page, for every role of a trust, in headless Chromium.

Each page has the same header: the region's name, the navigation the role may use
(and no link it may not), who is signed in, and Sign out. Pages a role may not use
answer with the same layout; the sign-in page has it without navigation.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Route, expect

from tests.browser.conftest import signed_in_page
from tests.conftest import Netpacs
from tests.http.conftest import write_and_send_ct

# What each role of East Sussex (RXC) finds in the navigation, in order.
NAVIGATION = {
    "radiologist": ["Studies", "Worklist", "Turnaround", "Break-glass"],
    "radiographer": ["Studies", "Break-glass"],
    "clinician": ["Studies", "Break-glass"],
    "admin": [
        "Studies",
        "Worklist",
        "Turnaround",
        "Reconciliation",
        "Rejections",
        "Audit trail",
        "Edge nodes",
    ],
    "auditor": ["Audit trail"],
}
LINKS = {
    "Studies": "/studies",
    "Worklist": "/worklist",
    "Turnaround": "/turnaround",
    "Reconciliation": "/reconciliation",
    "Rejections": "/rejections",
    "Audit trail": "/audit",
    "Break-glass": "/break-glass",
    "Edge nodes": "/edges",
}
REPORTERS = {"radiologist", "admin"}


@pytest.fixture(scope="module")
def study(module_netpacs: Netpacs, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An East Sussex CT on the reporting worklist: the pages of one study have one."""
    folder = tmp_path_factory.mktemp("ct")
    sent = write_and_send_ct(
        module_netpacs, folder, 2, rows=16, columns=16, patient_id="RXC9001", issuer="RXC"
    )
    return sent.study_uid


def expected_status(role: str, path: str) -> int:
    """What the page answers the role: 200, or the page that says why not."""
    if path.startswith(("/worklist", "/turnaround", "/report/")):
        return 200 if role in REPORTERS else 403
    if path in ("/reconciliation", "/rejections", "/edges"):
        return 200 if role == "admin" else 403
    if path.endswith("/delete"):
        # Deleting is for administrators; the auditor does not see the patient at all.
        return {"admin": 200, "auditor": 404}.get(role, 403)
    if path == "/audit":
        return 200 if role in ("admin", "auditor") else 403
    if path == "/studies":
        return 403 if role == "auditor" else 200
    if path == "/no-such-page":
        return 404
    return 200


def region_name(server: Netpacs) -> str:
    return str(tomllib.loads(Path(server.region_file).read_text())["name"])


def no_viewer(route: Route) -> None:
    route.fulfill(body="")  # the report page's viewer frame is not what is tested here


@pytest.mark.parametrize("role", list(NAVIGATION))
def test_every_page_has_the_same_header_with_the_navigation_of_the_role(
    module_netpacs: Netpacs, browser: Browser, study: str, role: str
) -> None:
    server = module_netpacs
    page = signed_in_page(browser, server, f"rxc.{role}")
    page.route(re.compile(r"/viewer"), no_viewer)
    paths = [
        "/studies",
        "/worklist",
        "/turnaround",
        f"/report/{study}",
        "/reconciliation",
        "/rejections",
        "/audit",
        "/break-glass",
        f"/studies/{study}/delete",
        "/no-such-page",
    ]
    headers = set()
    for path in paths:
        response = page.goto(server.base_url + path)
        assert response is not None and response.status == expected_status(role, path), path
        header = page.locator("header.site")
        expect(header.locator(".brand")).to_have_text(f"netpacs {region_name(server)}")
        links = header.get_by_role("navigation", name="Main").get_by_role("link")
        expect(links).to_have_text(NAVIGATION[role])
        who = header.locator(".who")
        expect(who).to_contain_text(f"Demo {role} (RXC)")
        expect(who).to_contain_text("East Sussex Healthcare NHS Trust (RXC)")
        expect(who).to_contain_text(role)
        expect(page.get_by_role("button", name="Sign out")).to_have_count(1)
        if response.status != 200:
            expect(page.get_by_role("alert")).not_to_be_empty()  # says why
        linked = path in {LINKS[label] for label in NAVIGATION[role]}
        expect(header.locator("nav a[aria-current=page]")).to_have_count(1 if linked else 0)
        headers.add(header.inner_text())
    assert len(headers) == 1, headers


def test_sign_in_and_a_page_not_found_before_sign_in_have_the_layout_without_navigation(
    module_netpacs: Netpacs, browser: Browser
) -> None:
    server = module_netpacs
    page: Page = browser.new_page()
    for path, status in (("/reconciliation", 401), ("/signin", 200), ("/no-such-page", 404)):
        response = page.goto(server.base_url + path)
        assert response is not None and response.status == status, path
        header = page.locator("header.site")
        expect(header.locator(".brand")).to_have_text(f"netpacs {region_name(server)}")
        expect(header.get_by_role("navigation")).to_have_count(0)
        expect(header.locator(".who")).to_have_count(0)
        expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
    page.goto(f"{server.base_url}/signin")
    page.get_by_label("User name").fill("rxc.radiographer")
    page.get_by_label("Password").fill("demo")
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{server.base_url}/studies")
    links = page.get_by_role("navigation", name="Main").get_by_role("link")
    expect(links).to_have_text(NAVIGATION["radiographer"])
    expect(page.locator("header.site .who")).to_contain_text("Demo radiographer (RXC)")
