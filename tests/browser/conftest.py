"""Fixtures for the viewer and page tests: headless Debian Chromium through Playwright.

These tests run on SQLite only (the HTTP answers they rely on are tested on both
databases elsewhere) to keep the suite fast. One Chromium serves a whole test module
(each test's pages are closed after it), and so does one netpacs (``module_netpacs``)
for the tests that do not need an empty archive. Playwright never downloads a browser
here: it drives /usr/bin/chromium.
"""

from __future__ import annotations

import io
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, Request, Response, Route, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
VIEWER_DIR = Path(__file__).resolve().parents[2] / ".venv" / "share" / "netpacs" / "viewer"

# Set before any page script: the time cornerstone first drew an image (ms after
# navigation start). Cornerstone's events do not bubble; a capturing listener on
# window sees them anyway.
FIRST_IMAGE_PROBE = """
    window.__firstImage = null;
    window.addEventListener('CORNERSTONE_IMAGE_RENDERED', () => {
        if (window.__firstImage === null) window.__firstImage = performance.now();
    }, true);
"""


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only (overrides the parametrized fixture of tests/conftest.py)."""
    return f"sqlite:///{tmp_path / 'index.sqlite'}"


@pytest.fixture(scope="module")
def module_database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """SQLite only, for ``module_netpacs`` (overrides tests/conftest.py)."""
    return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'index.sqlite'}"


@pytest.fixture
def viewer_installed() -> Path:
    if not (VIEWER_DIR / "index.html").is_file():
        pytest.fail(f"the OHIF viewer is not installed in {VIEWER_DIR}: run `make setup`")
    return VIEWER_DIR


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test-setup` installs Debian's chromium")
    with sync_playwright() as pw:
        # Chromium's own defaults: forcing SwiftShader WebGL makes the first image
        # about 2 s slower, and OHIF draws without it.
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(autouse=True)
def _close_pages(request: pytest.FixtureRequest) -> Iterator[None]:
    """Close the pages a test opened in the module's Chromium: nothing of one test (a
    worklist refreshing itself, a viewer drawing) runs on into the next."""
    yield
    if "browser" in request.fixturenames:
        browser: Browser = request.getfixturevalue("browser")
        for context in browser.contexts:
            context.close()


def is_local(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    return parts.scheme in ("http", "https", "ws") and parts.hostname == "127.0.0.1"


@dataclass
class Traffic:
    """Every request a page made: failures, answers >= 400, and anything not local."""

    responses: list[tuple[int, str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    # DICOMweb answers (2xx) whose rest the viewer's streaming reader cancelled once it
    # had its part: Chromium reports those as failed (ERR_ABORTED) when the answer may
    # not be cached (Cache-Control: no-store), and it is not a failure.
    cancelled: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[tuple[int, str]]:
        return [(status, url) for status, url in self.responses if status >= 400]

    def report(self) -> str:
        return (
            f"requests that failed: {self.failed}; answered >= 400: {self.errors}; "
            f"not to 127.0.0.1: {self.external}; console errors: {self.console_errors[:10]}"
        )

    def attach(self, page: Page) -> None:
        def route(r: Route) -> None:
            if is_local(r.request.url):
                r.continue_()
            else:  # never let the viewer reach the internet, and remember it tried
                self.external.append(r.request.url)
                r.abort()

        answered: set[str] = set()

        def failed(req: Request) -> None:
            if not is_local(req.url):
                return
            if req.failure == "net::ERR_ABORTED" and req.url in answered:
                self.cancelled.append(req.url)
            else:
                self.failed.append(f"{req.method} {req.url}: {req.failure}")

        def response(resp: Response) -> None:
            self.responses.append((resp.status, resp.url))
            if resp.ok and "/dicomweb/" in resp.url:
                answered.add(resp.url)

        page.route("**/*", route)
        page.on("requestfailed", failed)
        page.on("response", response)
        page.on(
            "console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None
        )


def wait_for_first_image(page: Page, timeout_ms: float = 60_000) -> float:
    """Seconds from navigation start to the first image cornerstone drew."""
    # A function, not an expression: Playwright evaluates an expression with eval(),
    # which the viewer's Content-Security-Policy refuses.
    page.wait_for_function("() => window.__firstImage !== null", timeout=timeout_ms)
    return float(page.evaluate("window.__firstImage")) / 1000


def image_stats(png: bytes) -> dict[str, Any]:
    """Distinct grey levels and the share of clearly lit pixels of a screenshot."""
    img = Image.open(io.BytesIO(png)).convert("L")
    histogram = img.histogram()
    total = img.width * img.height
    return {
        "size": img.size,
        "distinct": sum(1 for n in histogram if n),
        "lit": sum(histogram[40:]) / total,
    }


def signed_in_page(browser: Browser, server: Any, user: str | None = None, **kw: Any) -> Page:
    """A new page whose context holds the session cookie of ``user`` (default: the
    server's test user), as the sign-in page would have set it."""
    context = browser.new_context(**kw)
    context.add_cookies(
        [{"name": "netpacs_session", "value": server.token(user), "url": server.base_url}]
    )
    return context.new_page()
