"""Cross-site requests and framing in Chromium (issue 17, item 13).

An attacker's page is served on another port of 127.0.0.1: the same *site* as netpacs
(SameSite=Strict cookies go with its requests) but another *origin*. It must not be
able to open break-glass as a signed-in clinician, delete a study as an
administrator, or frame netpacs's pages; netpacs's own pages and the OHIF viewer must
still run under their Content-Security-Policy.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from playwright.sync_api import Browser, Page
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from netpacs.index.schema import break_glass
from tests.browser.conftest import (
    FIRST_IMAGE_PROBE,
    Traffic,
    signed_in_page,
    wait_for_first_image,
)
from tests.conftest import Netpacs, free_port
from tests.http.conftest import StoredSeries, write_and_send_ct

# Every violation of a page's policy, as the browser reports it to the page.
CSP_PROBE = """
    window.__csp = [];
    document.addEventListener('securitypolicyviolation', (e) => {
        window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`);
    }, true);
"""


@dataclass
class Attacker:
    """A web server on another port of 127.0.0.1 serving the attacker's pages."""

    folder: Path
    port: int

    def page(self, name: str, html: str) -> str:
        (self.folder / name).write_text(f"<!doctype html><html><body>{html}</body></html>")
        return f"http://127.0.0.1:{self.port}/{name}"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def attacker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Attacker]:
    folder = tmp_path_factory.mktemp("attacker")
    port = free_port()
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Attacker(folder, port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def study(module_netpacs: Netpacs, tmp_path_factory: pytest.TempPathFactory) -> StoredSeries:
    folder = tmp_path_factory.mktemp("ct")
    return write_and_send_ct(
        module_netpacs, folder / "ct", 4, rows=128, columns=128, patient_id="RXC0001713",
        issuer="RXC",
    )  # fmt: skip


def auto_submit(action: str, fields: dict[str, str]) -> str:
    inputs = "".join(f'<input name="{k}" value="{v}">' for k, v in fields.items())
    return (
        f'<form id="f" method="post" action="{action}">{inputs}</form>'
        '<script>document.getElementById("f").submit()</script>'
    )


def posted(page: Page, url: str, path: str) -> int:
    """Open ``url`` (an attacker's auto-submitting form); the status netpacs answered
    the form's POST to ``path`` with."""
    with page.expect_response(
        lambda r: r.request.method == "POST" and r.url.endswith(path), timeout=15_000
    ) as answer:
        page.goto(url)
    return answer.value.status


def grants(server: Netpacs, user: str) -> int:
    engine = sa.create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                sa.select(sa.func.count()).where(break_glass.c.username == user)
            ).scalar()
            return int(found or 0)
    finally:
        engine.dispose()


def test_a_page_on_another_port_cannot_open_break_glass_or_delete_a_study(
    module_netpacs: Netpacs, browser: Browser, attacker: Attacker, study: StoredSeries
) -> None:
    netpacs = module_netpacs
    target = netpacs.base_url
    clinician = signed_in_page(browser, netpacs, "rpc.clinician")
    glass = attacker.page(
        "glass.html",
        auto_submit(
            f"{target}/break-glass",
            {"patient_id": "K777", "issuer": "RYR", "reason": "a page on another port"},
        ),
    )
    assert posted(clinician, glass, "/break-glass") == 403
    assert "did not come from a page of this site" in clinician.content()
    assert grants(netpacs, "rpc.clinician") == 0

    admin = signed_in_page(browser, netpacs, "rxc.admin")
    delete = attacker.page(
        "delete.html",
        auto_submit(
            f"{target}/studies/{study.study_uid}/delete",
            {"reason": "deleted by a page on another port"},
        ),
    )
    assert posted(admin, delete, "/delete") == 403
    still = netpacs.http.get(f"{netpacs.dicomweb_url}/studies/{study.study_uid}/metadata")
    assert still.status_code == 200 and len(still.json()) == 4

    # The same forms on netpacs's own pages still work.
    clinician.goto(f"{target}/break-glass")
    clinician.fill('input[name="patient_id"]', "K777")
    clinician.fill('input[name="issuer"]', "RYR")
    clinician.fill('textarea[name="reason"]', "unconscious in ED, imaging from Brighton needed")
    clinician.click("form[action='/break-glass'] button")
    clinician.wait_for_url(f"{target}/studies?patient_id=K777")
    assert grants(netpacs, "rpc.clinician") == 1


def test_a_page_on_another_port_cannot_frame_netpacs(
    module_netpacs: Netpacs, browser: Browser, attacker: Attacker
) -> None:
    netpacs = module_netpacs
    page = signed_in_page(browser, netpacs, "rpc.clinician")
    framing = attacker.page(
        "frame.html",
        f'<iframe id="glass" src="{netpacs.base_url}/break-glass"></iframe>'
        f'<iframe id="studies" src="{netpacs.base_url}/studies"></iframe>',
    )
    with page.expect_response(lambda r: r.url.endswith("/break-glass")) as answer:
        page.goto(framing)
    assert answer.value.status == 200  # netpacs answered; the browser refused to show it
    page.wait_for_load_state("load")
    frames = [f for f in page.frames if f is not page.main_frame]
    assert len(frames) == 2
    for frame in frames:
        try:
            shown = frame.locator("header.site").count()
        except PlaywrightTimeoutError:
            shown = 0
        assert shown == 0, f"{frame.url} was shown in another site's frame"


def test_pages_and_the_viewer_run_under_their_content_security_policy(
    module_netpacs: Netpacs, browser: Browser, study: StoredSeries, tmp_path: Path
) -> None:
    netpacs = module_netpacs
    for user, paths in (
        ("rxc.radiologist", ["/worklist", "/turnaround", f"/report/{study.study_uid}"]),
        ("rxc.admin", ["/studies", "/audit", "/reconciliation"]),
        ("rpc.clinician", ["/break-glass"]),
    ):
        page = signed_in_page(browser, netpacs, user)
        page.add_init_script(CSP_PROBE)
        errors: list[str] = []
        page.on("console", lambda m, e=errors: e.append(m.text) if m.type == "error" else None)
        for path in paths:
            response = page.goto(f"{netpacs.base_url}{path}")
            assert response is not None and response.status == 200, path
            page.wait_for_load_state("networkidle")
            assert page.evaluate("window.__csp") == [], path
        assert not [e for e in errors if "Content Security Policy" in e], errors

    page = signed_in_page(browser, netpacs, viewport={"width": 1280, "height": 900})
    traffic = Traffic()
    traffic.attach(page)
    page.add_init_script(FIRST_IMAGE_PROBE)
    page.add_init_script(CSP_PROBE)
    response = page.goto(f"{netpacs.base_url}/viewer?StudyInstanceUIDs={study.study_uid}")
    assert response is not None
    assert "frame-ancestors 'self'" in response.headers["content-security-policy"]
    try:
        wait_for_first_image(page, timeout_ms=45_000)
    except PlaywrightTimeoutError:
        page.screenshot(path=str(tmp_path / "viewer.png"))
        pytest.fail(f"no image drawn in 45 s under the CSP; {traffic.report()}")
    page.wait_for_load_state("networkidle")
    assert page.evaluate("window.__csp") == []
    csp_errors = [e for e in traffic.console_errors if "Content Security Policy" in e]
    assert not csp_errors, csp_errors
    assert not traffic.failed and not traffic.errors, traffic.report()
