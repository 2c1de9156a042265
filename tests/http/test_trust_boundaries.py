"""The HTTP server's trust boundaries (issue 17, items 8, 14, 16): what a running
``netpacs serve`` reads before sign-in, whose forwarded headers it believes, which host
names it answers to, and what it lets browsers and caches keep.

Each test talks to a real server over TCP (raw sockets where the point is what is sent
before an answer); the CSRF and framing checks in a browser are in
tests/browser/test_csrf_and_framing.py.
"""

from __future__ import annotations

import select
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from netpacs.index.schema import audit_event
from tests.conftest import Netpacs, write_region
from tests.http.conftest import StoredSeries, write_and_send_ct

MB = 1 << 20


def _server(folder: Path, **env: str) -> Netpacs:
    region = write_region(folder / "region.toml", {})
    return Netpacs(
        data_dir=folder / "data",
        database_url=f"sqlite:///{folder / 'data' / 'index.sqlite'}",
        region_file=region,
        extra_env=env,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Netpacs]:
    """netpacs as `make run` starts it: no trusted proxy, no public URL."""
    netpacs = _server(tmp_path_factory.mktemp("plain")).start()
    try:
        yield netpacs
    finally:
        netpacs.stop()


@pytest.fixture(scope="module")
def behind_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Netpacs]:
    """netpacs behind a TLS-terminating proxy on 127.0.0.1 that it trusts."""
    netpacs = _server(
        tmp_path_factory.mktemp("proxied"), NETPACS_TRUSTED_PROXIES="127.0.0.1"
    ).start()
    try:
        yield netpacs
    finally:
        netpacs.stop()


@pytest.fixture(scope="module")
def study(server: Netpacs, tmp_path_factory: pytest.TempPathFactory) -> StoredSeries:
    folder = tmp_path_factory.mktemp("ct")
    return write_and_send_ct(server, folder / "ct", 2, patient_id="RXC0000017", issuer="RXC")


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants, in bytes (from /proc)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
        todo += [int(c) for c in children]
    return total


def post_until_answered(
    port: int, head: bytes, *, chunked: bool = False, most: int = 64 * MB, seconds: float = 20
) -> tuple[int, int, bytes]:
    """Send ``head`` then body bytes until the server answers (or ``most`` bytes or
    ``seconds`` have gone by, then wait 3 s more for an answer): the status (0 for
    none), the body bytes sent before the answer, and the answer."""
    block = b"x" * (64 * 1024)
    piece = (b"%x\r\n" % len(block)) + block + b"\r\n" if chunked else block
    sent, answer = 0, b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        deadline = time.monotonic() + seconds
        while sent < most and time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock], [], 1)
            if readable:
                break
            if writable:
                try:
                    sent += sock.send(piece)
                except OSError:
                    break
        sock.settimeout(3)
        try:
            while not _complete(answer):
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except OSError:
            pass
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return status, sent, answer


def _complete(answer: bytes) -> bool:
    head, found, body = answer.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return True


def _head(server: Netpacs, path: str, length: int | None, token: str | None = None) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{server.http_port}",
        "Content-Type: application/json",
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- item 8: request bodies before sign-in ------------------------------------------------


def test_a_400_mb_json_body_without_a_token_is_refused_before_it_is_read(
    server: Netpacs,
) -> None:
    assert server.proc is not None
    before = tree_rss(server.proc.pid)
    for path, length in (
        ("/api/break-glass", 400 * MB),
        ("/api/break-glass", None),  # chunked: no length to judge by
        ("/dicomweb/studies", 400 * MB),  # STOW-RS too signs in first
    ):
        head = _head(server, path, length)
        status, sent, answer = post_until_answered(server.http_port, head, chunked=length is None)
        assert status == 401, (sent, answer[:300])
        assert sent < 32 * MB, f"the server read {sent} bytes before refusing"
        assert b"sign in" in answer
    grown = tree_rss(server.proc.pid) - before
    print(f"netpacs RSS grew {grown / MB:.1f} MB")
    assert grown < 300 * MB


def test_a_signed_in_json_or_form_body_over_one_mebibyte_is_413(server: Netpacs) -> None:
    token = server.token("rpc.clinician")
    status, sent, answer = post_until_answered(
        server.http_port, _head(server, "/api/break-glass", 400 * MB, token)
    )
    assert status == 413 and sent < 32 * MB, answer[:300]
    assert b"larger than the 1048576 bytes" in answer
    status, sent, answer = post_until_answered(
        server.http_port, _head(server, "/api/break-glass", None, token), chunked=True
    )
    assert status == 413, answer[:300]
    assert b"larger than the 1048576 bytes" in answer
    assert MB <= sent < 32 * MB
    # A form too (sign-in takes one before anyone is signed in).
    big = httpx.post(
        f"{server.base_url}/signin",
        data={"username": "rpc.clinician", "password": "x" * (2 * MB)},
    )
    assert big.status_code == 413
    # Bodies under the cap are read as before.
    small = httpx.post(
        f"{server.base_url}/api/break-glass",
        headers={"Authorization": f"Bearer {token}"},
        json={"patient_id": "K777", "issuer": "RYR", "reason": " "},
    )
    assert small.status_code == 400 and "reason" in small.text


# -- item 14: X-Forwarded-For only from trusted proxies ------------------------------------


def _sources(server: Netpacs, user: str) -> list[str | None]:
    engine = sa.create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(audit_event.c.source).where(
                        audit_event.c.user_id == user,
                        audit_event.c.event_id == "110114",  # a failed sign-in
                        audit_event.c.outcome == 4,
                    )
                ).scalars()
            )
    finally:
        engine.dispose()


def test_a_forged_x_forwarded_for_neither_escapes_the_lockout_nor_enters_the_audit(
    server: Netpacs,
) -> None:
    url = f"{server.base_url}/auth/token"
    codes = [
        httpx.post(
            url,
            data={"username": "rtk.admin", "password": f"guess{n}"},
            headers={"X-Forwarded-For": f"203.0.113.{n + 1}"},
        ).status_code
        for n in range(6)
    ]
    assert codes == [400] * 5 + [429]
    assert set(_sources(server, "rtk.admin")) == {"127.0.0.1"}


def test_x_forwarded_for_and_proto_are_believed_from_a_trusted_proxy(
    behind_proxy: Netpacs,
) -> None:
    url = f"{behind_proxy.base_url}/auth/token"
    for n in range(5):
        wrong = httpx.post(
            url,
            data={"username": "rtk.admin", "password": f"guess{n}"},
            headers={"X-Forwarded-For": "198.51.100.7"},
        )
        assert wrong.status_code == 400
    locked = httpx.post(
        url,
        data={"username": "rtk.admin", "password": "demo"},
        headers={"X-Forwarded-For": "198.51.100.7"},
    )
    assert locked.status_code == 429
    # Another client behind the same proxy is not locked out by the first one's guesses.
    other = httpx.post(
        url,
        data={"username": "rtk.admin", "password": "demo"},
        headers={"X-Forwarded-For": "198.51.100.8"},
    )
    assert other.status_code == 200
    assert set(_sources(behind_proxy, "rtk.admin")) == {"198.51.100.7"}
    # TLS ends at the proxy: the session cookie is Secure when it says https.
    signed_in = httpx.post(
        f"{behind_proxy.base_url}/signin",
        data={"username": "rxc.clinician", "password": "demo"},
        headers={"X-Forwarded-Proto": "https"},
    )
    assert signed_in.status_code == 303
    assert "secure" in signed_in.headers["set-cookie"].lower()


def test_x_forwarded_proto_from_an_untrusted_peer_changes_nothing(server: Netpacs) -> None:
    signed_in = httpx.post(
        f"{server.base_url}/signin",
        data={"username": "rxc.clinician", "password": "demo"},
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.50"},
    )
    assert signed_in.status_code == 303
    assert "secure" not in signed_in.headers["set-cookie"].lower()
    qido = server.http.get(
        f"{server.dicomweb_url}/studies",
        params={"PatientID": "RXC0000017"},
        headers={"X-Forwarded-Proto": "https"},
    )
    assert "https://" not in qido.text


# -- item 16: smaller items ---------------------------------------------------------------


def test_a_host_header_not_naming_this_server_is_refused_and_never_redirected_to(
    server: Netpacs, study: StoredSeries
) -> None:
    evil = {"Host": "evil.example"}
    redirect = httpx.get(f"{server.base_url}/signin/", headers=evil)
    assert redirect.status_code == 400 and "location" not in redirect.headers
    assert "evil.example" in redirect.json()["message"]
    qido = server.http.get(f"{server.dicomweb_url}/studies/{study.study_uid}/series", headers=evil)
    assert qido.status_code == 400 and "evil.example" not in qido.headers.get("location", "")
    # The names it does answer to still work, URLs built from them.
    for host in (f"127.0.0.1:{server.http_port}", f"localhost:{server.http_port}"):
        series = server.http.get(
            f"{server.dicomweb_url}/studies/{study.study_uid}/series", headers={"Host": host}
        )
        assert series.status_code == 200
        assert f"http://{host}/dicomweb/studies/" in series.text
    slash = httpx.get(f"{server.base_url}/signin/", follow_redirects=False)
    assert slash.status_code in (307, 308)
    assert slash.headers["location"].startswith(f"http://127.0.0.1:{server.http_port}/")


def test_dicomweb_fhir_and_api_answers_are_not_stored_by_caches(
    server: Netpacs, study: StoredSeries
) -> None:
    web = server.dicomweb_url
    sop = study.sop_uids[0]
    for url in (
        f"{web}/studies?PatientID=RXC0000017",
        f"{web}/studies/{study.study_uid}/metadata",
        f"{web}/studies/{study.study_uid}/series/{study.series_uid}/instances/{sop}",
        f"{web}/studies/{study.study_uid}/series/{study.series_uid}/instances/{sop}/rendered",
        f"{web}/studies/{study.study_uid}/series/{study.series_uid}/instances/{sop}/frames/1",
        f"{server.base_url}/fhir/ImagingStudy/{study.study_uid}",
        f"{server.base_url}/api/me",
    ):
        answer = server.http.get(url, headers={"Accept": "*/*"})
        assert answer.status_code == 200, (url, answer.text[:200])
        assert answer.headers["cache-control"] == "no-store", url
        assert answer.headers["x-content-type-options"] == "nosniff", url


def test_every_answer_has_a_content_security_policy_that_forbids_framing(
    server: Netpacs,
) -> None:
    page = httpx.get(f"{server.base_url}/signin")
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'nonce-" in csp
    nonce = csp.split("'nonce-", 1)[1].split("'", 1)[0]
    assert f'nonce="{nonce}"' in page.text
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "same-origin"
    again = httpx.get(f"{server.base_url}/signin").headers["content-security-policy"]
    assert again != csp  # a nonce per answer
    refused = httpx.get(f"{server.base_url}/api/me")
    assert refused.status_code == 401
    assert "frame-ancestors 'none'" in refused.headers["content-security-policy"]
    viewer = server.http.get(f"{server.base_url}/viewer")
    if viewer.status_code == 200:  # the viewer is framed by the report page only
        assert "frame-ancestors 'self'" in viewer.headers["content-security-policy"]
        assert viewer.headers["x-frame-options"] == "SAMEORIGIN"


def test_cookie_authenticated_changes_need_a_same_origin_request(
    server: Netpacs, study: StoredSeries
) -> None:
    """The rule the browser tests show in Chromium, header by header."""
    own = f"http://127.0.0.1:{server.http_port}"
    cookies = {"netpacs_session": server.token("rpc.clinician")}
    body = {"patient_id": "K777", "issuer": "RYR", "reason": " "}
    url = f"{server.base_url}/api/break-glass"
    for headers in (
        {"Sec-Fetch-Site": "same-site", "Origin": own},  # another port of this host
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "http://127.0.0.1:1"},
        {"Origin": "null"},
        {"Referer": "http://127.0.0.1:1/attack.html"},
        {},  # a cookie with no sign of where the request came from
    ):
        with httpx.Client(cookies=cookies) as browser:
            refused = browser.post(url, json=body, headers=headers)
        assert refused.status_code == 403, headers
        assert "did not come from a page of this site" in refused.text
    for headers in (
        {"Sec-Fetch-Site": "same-origin"},
        {"Origin": own},
        {"Referer": f"{own}/break-glass"},
    ):
        with httpx.Client(cookies=cookies) as browser:
            allowed = browser.post(url, json=body, headers=headers)
        assert allowed.status_code == 400 and "reason" in allowed.text, headers  # read
    # A bearer token is not sent by browsers on their own: no origin needed.
    bearer = httpx.post(
        url, json=body, headers={"Authorization": f"Bearer {cookies['netpacs_session']}"}
    )
    assert bearer.status_code == 400
    cross_signin = httpx.post(
        f"{server.base_url}/signin",
        data={"username": "rxc.admin", "password": "demo"},
        headers={"Origin": "http://127.0.0.1:1"},
    )
    assert cross_signin.status_code == 403 and "set-cookie" not in cross_signin.headers


def test_the_sqlite_index_is_readable_by_its_owner_only(
    server: Netpacs, study: StoredSeries
) -> None:
    files = sorted(server.data_dir.glob("index.sqlite*"))
    assert {f.name for f in files} >= {"index.sqlite", "index.sqlite-wal", "index.sqlite-shm"}
    for file in files:
        mode = stat.S_IMODE(file.stat().st_mode)
        assert mode == 0o600, f"{file.name} is {mode:o}"
