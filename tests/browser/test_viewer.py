"""The OHIF Viewer at /viewer: files served right, and a CT series drawn in Chromium."""

from __future__ import annotations

import gzip
import http.client
import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from netpacs.app.settings import BUNDLED_DEMO_REGION
from tests.browser.conftest import (
    FIRST_IMAGE_PROBE,
    Traffic,
    image_stats,
    signed_in_page,
    wait_for_first_image,
)
from tests.conftest import Netpacs
from tests.http.conftest import write_and_send_ct


@pytest.fixture
def netpacs(module_netpacs: Netpacs) -> Netpacs:
    """One server for the module (the test that needs no viewer starts its own)."""
    return module_netpacs


def raw_get(server: Netpacs, path: str) -> tuple[int, bytes]:
    """GET with the path sent exactly as given (no client-side normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_viewer_draws_ct_series_with_no_failed_or_external_request(
    netpacs: Netpacs, tmp_path: Path, browser: Browser, viewer_installed: Path
) -> None:
    ct = write_and_send_ct(
        netpacs, tmp_path / "ct", 20, rows=256, columns=256, patient_id="RXC0000001", issuer="RXC"
    )
    page = signed_in_page(browser, netpacs, viewport={"width": 1280, "height": 900})
    traffic = Traffic()
    traffic.attach(page)
    page.add_init_script(FIRST_IMAGE_PROBE)

    page.goto(f"{netpacs.base_url}/viewer?StudyInstanceUIDs={ct.study_uid}", wait_until="commit")
    try:
        first_image = wait_for_first_image(page, timeout_ms=45_000)
    except PlaywrightTimeoutError:
        page.screenshot(path=str(tmp_path / "page.png"))
        pytest.fail(f"no image drawn in 45 s; {traffic.report()}")
    # The chunks the viewer route needs come with index.html (issue 16): before the
    # first image, no script was asked for that index.html does not list (workers' own
    # scripts are not page scripts), so none waited for an earlier one to run.
    scripts = page.evaluate(
        """() => performance.getEntriesByType('resource')
            .filter(r => r.initiatorType === 'script' && r.startTime <= window.__firstImage)
            .map(r => new URL(r.name).pathname)"""
    )
    index = httpx.get(f"{netpacs.base_url}/viewer", headers=netpacs.auth()).text
    listed = set(re.findall(r'src="(/viewer/[^"]+)"', index))
    assert scripts and not set(scripts) - listed, f"asked for later: {set(scripts) - listed}"

    canvas = page.locator("canvas.cornerstone-canvas").first
    canvas.wait_for(state="visible")
    page.wait_for_load_state("networkidle")
    shot = canvas.screenshot()
    (tmp_path / "viewport.png").write_bytes(shot)
    stats = image_stats(shot)

    print(f"first image drawn {first_image:.2f} s after navigation; viewport {stats}")
    assert stats["distinct"] >= 20, f"the viewport looks blank: {stats}"
    assert stats["lit"] >= 0.05, f"the viewport looks blank: {stats}"
    assert not traffic.external, f"requests left the netpacs origin: {traffic.external}"
    assert not traffic.failed, f"requests failed: {traffic.failed}"
    assert not traffic.errors, f"netpacs answered with errors: {traffic.errors}"
    dicomweb = [url for _, url in traffic.responses if "/dicomweb/" in url]
    assert any("/metadata" in url for url in dicomweb), dicomweb
    assert any(ct.series_uid in url and "/frames/" in url for url in dicomweb), dicomweb


def test_viewer_files_types_caching_and_client_routes(
    netpacs: Netpacs, viewer_installed: Path
) -> None:
    with httpx.Client(base_url=netpacs.base_url, headers=netpacs.auth()) as client:
        for path in ("/viewer", "/viewer/", "/viewer/viewer", "/viewer/dicomweb/whatever"):
            resp = client.get(path, params={"StudyInstanceUIDs": "1.2.3"})
            assert resp.status_code == 200, path
            assert resp.headers["content-type"].startswith("text/html"), path
            assert 'window.PUBLIC_URL="/viewer/"' in resp.text, path
            assert 'src="/viewer/app-config.js"' in resp.text
            assert resp.headers["cache-control"] == "no-cache"

        config = client.get("/viewer/app-config.js")
        assert config.status_code == 200
        assert config.headers["content-type"].startswith("text/javascript")
        assert "window.location.origin + '/dicomweb'" in config.text
        assert "routerBasename: '/'" in config.text
        assert not re.search(r"https?://", config.text)

        bundle = re.search(r'src="/viewer/(app\.bundle\.[0-9a-f]+\.js)"', resp.text)
        assert bundle is not None
        js = client.get(f"/viewer/{bundle.group(1)}", headers={"accept-encoding": "gzip"})
        assert js.status_code == 200
        assert js.headers["content-encoding"] == "gzip"
        assert js.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert js.headers["content-type"].startswith("text/javascript")
        assert '__webpack_require__.p = "/viewer/";' in js.text  # httpx decoded the gzip
        plain = client.get(f"/viewer/{bundle.group(1)}", headers={"accept-encoding": "identity"})
        assert "content-encoding" not in plain.headers
        assert plain.content == js.content
        again = client.get(
            f"/viewer/{bundle.group(1)}",
            headers={"accept-encoding": "gzip", "if-none-match": js.headers["etag"]},
        )
        assert again.status_code == 304

        wasm = next(viewer_installed.glob("*.wasm"))
        resp = client.get(f"/viewer/{wasm.name}", headers={"accept-encoding": "gzip"})
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "application/wasm"
        assert resp.content[:4] == b"\0asm"

        css = client.get("/viewer/app.bundle.css")
        assert css.headers["content-type"].startswith("text/css")
        assert "url(/viewer/" in css.text and not re.search(r"url\(/(?!viewer/)", css.text)

        font = next(viewer_installed.glob("*.woff2"))
        resp = client.get(f"/viewer/{font.name}")
        assert resp.headers["content-type"] == "font/woff2"

        resp = client.get("/viewer/manifest.json")
        assert resp.headers["content-type"] == "application/json"
        assert '"/viewer/assets/' in resp.text

        missing = client.get("/viewer/no-such-chunk.0123456789abcdef.js")
        assert missing.status_code == 404


def test_viewer_paths_cannot_leave_the_viewer_directory(
    netpacs: Netpacs, viewer_installed: Path, tmp_path: Path
) -> None:
    secret = viewer_installed.parent / "secret.txt"
    secret.write_text("NOT-FOR-THE-WEB")
    try:
        attempts = [
            "/viewer/../secret.txt",
            "/viewer/%2e%2e/secret.txt",
            "/viewer/..%2fsecret.txt",
            "/viewer/%2e%2e%2fsecret.txt",
            "/viewer/assets/../../secret.txt",
            "/viewer/..%5csecret.txt",
            "/viewer//etc/passwd",
            "/viewer/%2fetc%2fpasswd",
            "/viewer/.netpacs-viewer",
            "/viewer/%00",
            "/viewer/../../../../../../etc/passwd",
        ]
        for path in attempts:
            status, body = raw_get(netpacs, path)
            assert status < 500, (path, status)
            assert b"NOT-FOR-THE-WEB" not in body, path
            assert b"root:" not in body, path
            assert b"@ohif/app 3." not in body, path  # the install stamp
    finally:
        secret.unlink()


def test_viewer_not_installed_answers_503_saying_how_to_install(tmp_path: Path) -> None:
    empty = tmp_path / "no-viewer"
    empty.mkdir()
    server = Netpacs(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'index.sqlite'}",
        region_file=BUNDLED_DEMO_REGION,
        extra_env={"NETPACS_VIEWER_DIR": str(empty)},
    ).start()
    try:
        for path in ("/viewer", "/viewer/", "/viewer/app-config.js", "/viewer/viewer"):
            resp = server.http.get(server.base_url + path)
            assert resp.status_code == 503, path
            assert "make setup" in resp.text
        assert server.http.get(server.base_url + "/studies").status_code == 200
    finally:
        server.stop()


def test_installed_viewer_fetches_nothing_from_elsewhere(viewer_installed: Path) -> None:
    """No script, style, font or data source in the prepared copy points off our origin."""
    index = (viewer_installed / "index.html").read_text()
    assert not re.search(r'(?:src|href)="(?:https?:)?//', index)
    assert not re.search(r'(?:src|href)="/(?!viewer/)', index)
    for css in viewer_installed.rglob("*.css"):
        assert not re.search(r"url\(['\"]?(?:https?:)?//", css.read_text()), css
    assert "cloudfront" not in (viewer_installed / "app-config.js").read_text()
    assert "cdnjs" not in (viewer_installed / "silent-refresh.html").read_text()
    for js in viewer_installed.glob("*.js"):
        text = js.read_text(errors="replace")
        assert '__webpack_require__.p = "/";' not in text, js
        assert "cdn.jsdelivr.net/npm/@itk-wasm" not in text, js
    gz = next(viewer_installed.glob("app.bundle.*.js.gz"))
    assert gzip.decompress(gz.read_bytes()) == gz.with_suffix("").read_bytes()
