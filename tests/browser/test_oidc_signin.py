"""OpenID Connect sign-in in headless Chromium against a real OpenID provider.

The provider is panva's oidc-provider (OpenID Certified, npm; tests/oidc/provider.mjs)
run by Node.js on 127.0.0.1 with its development login and consent pages, which
accept any password for the test accounts it knows. One provider and one netpacs
(trust and role from claims) serve the whole module; every test signs in from a new
browser context and looks only at the audit records it caused. Two tests need a
netpacs configured otherwise and start their own.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import sqlalchemy as sa
from playwright.sync_api import Browser, Page, Route, expect

from netpacs.index.schema import audit_event
from netpacs.services.audit import Event, Outcome
from tests.browser.conftest import is_local
from tests.conftest import ROOT, Netpacs, free_port, wait_for_port, write_region
from tests.hl7.test_regional_record import send_study

PROVIDER_DIR = ROOT / "tests" / "oidc"
CLIENT_ID = "netpacs"


@dataclass
class OpenIdProvider:
    """A running tests/oidc/provider.mjs with netpacs registered as a client (the
    callbacks of netpacs servers on each of ``http_ports``)."""

    http_ports: tuple[int, ...]
    log_path: Path
    port: int = field(default_factory=free_port)
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def issuer(self) -> str:
        return f"http://localhost:{self.port}"  # another site than netpacs (127.0.0.1)

    def start(self) -> OpenIdProvider:
        """Start (again): every start signs with a new key, as a key rotation would."""
        if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
            pytest.fail("the test OpenID provider is not installed: run `make test-setup`")
        self.proc = subprocess.Popen(
            [
                "node",
                str(PROVIDER_DIR / "provider.mjs"),
                str(self.port),
                CLIENT_ID,
                self.client_secret,
                *(f"http://127.0.0.1:{p}/auth/oidc/callback" for p in self.http_ports),
            ],
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


def oidc_netpacs(
    folder: Path, *, http_port: int, issuer: str, client_secret: str, claims_decide: bool = True
) -> Netpacs:
    """netpacs in demo mode (SQLite) signing in through ``issuer`` as client netpacs."""
    folder.mkdir(parents=True, exist_ok=True)
    secret_file = folder / "oidc-client-secret"
    secret_file.write_text(client_secret + "\n")
    env = {
        "NETPACS_OIDC_ISSUER": issuer,
        "NETPACS_OIDC_CLIENT_ID": CLIENT_ID,
        "NETPACS_OIDC_CLIENT_SECRET_FILE": str(secret_file),
        "NETPACS_OIDC_DISPLAY_NAME": "NHS Identity",
        "NETPACS_OIDC_SCOPES": "openid profile netpacs",
    }
    if claims_decide:
        env |= {
            "NETPACS_OIDC_TRUST_CLAIM": "org_ods_code",
            "NETPACS_OIDC_ROLE_CLAIM": "netpacs_role",
        }
    return Netpacs(
        data_dir=folder / "data",
        database_url=f"sqlite:///{folder / 'index.sqlite'}",
        region_file=write_region(folder / "region.toml", {"RTP_WS1": free_port()}),
        http_port=http_port,
        extra_env=env,
    )


@pytest.fixture(scope="module")
def http_ports() -> tuple[int, int]:
    """The module's netpacs, and one netpacs a test starts for itself."""
    return free_port(), free_port()


@pytest.fixture(scope="module")
def provider(
    tmp_path_factory: pytest.TempPathFactory, http_ports: tuple[int, int]
) -> Iterator[OpenIdProvider]:
    idp = OpenIdProvider(
        http_ports=http_ports, log_path=tmp_path_factory.mktemp("idp") / "provider.log"
    ).start()
    try:
        yield idp
    finally:
        idp.stop()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    http_ports: tuple[int, int],
    provider: OpenIdProvider,
) -> Iterator[Netpacs]:
    """netpacs in demo mode whose IdP users get their trust and role from claims."""
    np = oidc_netpacs(
        tmp_path_factory.mktemp("netpacs"),
        http_port=http_ports[0],
        issuer=provider.issuer,
        client_secret=provider.client_secret,
    ).start()
    try:
        yield np
    finally:
        np.stop()


def local_page(browser: Browser) -> Page:
    """A page that reaches nothing but this machine (the provider's page asks for a web font)."""
    page = browser.new_context().new_page()

    def route(r: Route) -> None:
        if is_local(r.request.url) or urlsplit(r.request.url).hostname == "localhost":
            r.continue_()
        else:
            r.abort()

    page.route("**/*", route)
    return page


def sign_in_at_provider(page: Page, login: str) -> None:
    """The provider's development login page, then its consent page."""
    page.locator("input[name=login]").fill(login)
    page.locator("input[name=password]").fill("any password will do")
    page.get_by_role("button", name="Sign-in").click()
    page.get_by_role("button", name="Continue").click()


def _audit(server: Netpacs, query: Any) -> list[Any]:
    engine = sa.create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(query).all())
    finally:
        engine.dispose()


def last_audit_id(server: Netpacs) -> int:
    """Where the audit trail ends now: a test's own records come after it."""
    return int(_audit(server, sa.select(sa.func.coalesce(sa.func.max(audit_event.c.id), 0)))[0][0])


def failed_sign_ins(server: Netpacs, *, after: int = 0) -> list[str]:
    """The details of the failed sign-ins in the audit trail (index table) after the
    record ``after``."""
    rows = _audit(
        server,
        sa.select(audit_event.c.user_id, audit_event.c.detail)
        .where(
            audit_event.c.id > after,
            audit_event.c.event_id == Event.LOGIN.event_id.code,
            audit_event.c.outcome != int(Outcome.SUCCESS),
        )
        .order_by(audit_event.c.id),
    )
    return [f"{user}: {detail}" for user, detail in rows]


def test_user_signs_in_through_the_provider_and_sees_their_trusts_patients_only(
    server: Netpacs, provider: OpenIdProvider, browser: Browser, tmp_path: Path
) -> None:
    ours = send_study(server, tmp_path / "a", aet="EDGH_CT1", patient_id="OI1", issuer="RXC")
    theirs = send_study(server, tmp_path / "b", aet="ESH_CT1", patient_id="OI2", issuer="RTP")
    page = local_page(browser)
    page.goto(f"{server.base_url}/studies?patient_id=OI*")  # not signed in: the sign-in form
    page.get_by_role("link", name="Sign in with NHS Identity").click()
    assert page.url.startswith(provider.issuer)  # the provider's own login page
    sign_in_at_provider(page, "rxc.oidcuser")
    expect(page).to_have_url(f"{server.base_url}/studies?patient_id=OI*")
    expect(page.locator(f'a[href*="{ours}"]').first).to_be_visible()
    expect(page.locator(f'a[href*="{theirs}"]')).to_have_count(0)
    me = page.request.get(f"{server.base_url}/api/me").json()
    assert me == {
        "username": "rxc.oidcuser",
        "name": "Olive Idris",
        "trust": "RXC",
        "role": "clinician",
    }


def test_signing_out_also_ends_the_session_at_the_provider(
    server: Netpacs, provider: OpenIdProvider, browser: Browser
) -> None:
    page = local_page(browser)
    page.goto(f"{server.base_url}/signin")
    page.get_by_role("link", name="Sign in with NHS Identity").click()
    sign_in_at_provider(page, "rxc.oidcuser")
    expect(page).to_have_url(f"{server.base_url}/studies")
    page.get_by_role("button", name="Sign out").click()
    # The provider's own sign-out (RP-initiated logout) asks to confirm ...
    expect(page.get_by_role("button", name="Yes, sign me out")).to_be_visible()
    assert page.url.startswith(f"{provider.issuer}/session/end")
    page.get_by_role("button", name="Yes, sign me out").click()
    # ... and sends the browser back to netpacs's sign-in page.
    expect(page).to_have_url(f"{server.base_url}/signin")
    page.goto(f"{server.base_url}/studies")
    expect(page.get_by_label("User name")).to_be_visible()  # netpacs: signed out
    page.get_by_role("link", name="Sign in with NHS Identity").click()
    expect(page.locator("input[name=login]")).to_be_visible()  # provider: signed out too


def callback_urls(page: Page) -> list[str]:
    """Every URL of netpacs's callback the page is sent to, as they happen."""
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url) if "/auth/oidc/callback" in r.url else None)
    return seen


def test_a_replayed_callback_and_a_forged_state_are_refused_and_audited(
    server: Netpacs, browser: Browser
) -> None:
    before = last_audit_id(server)
    page = local_page(browser)
    callbacks = callback_urls(page)
    page.goto(f"{server.base_url}/signin")
    page.get_by_role("link", name="Sign in with NHS Identity").click()
    sign_in_at_provider(page, "rxc.oidcuser")
    expect(page).to_have_url(f"{server.base_url}/studies")
    assert len(callbacks) == 1 and "code=" in callbacks[0]

    replayed = page.goto(callbacks[0])
    assert replayed is not None and replayed.status == 400
    expect(page.get_by_role("alert")).to_contain_text("no sign-in is in progress")

    # Another browser starts a sign-in and gets an answer that is not for it (login CSRF).
    page = local_page(browser)
    page.goto(f"{server.base_url}/auth/oidc/login")
    expect(page.locator("input[name=login]")).to_be_visible()  # at the provider
    forged = page.goto(f"{server.base_url}/auth/oidc/callback?code=stolen&state=forged")
    assert forged is not None and forged.status == 400
    expect(page.get_by_role("heading")).to_have_text("Sign-in with NHS Identity did not work")
    expect(page.get_by_role("alert")).to_contain_text("state does not match")

    failures = failed_sign_ins(server, after=before)
    assert len(failures) == 2, failures
    assert "no sign-in in progress" in failures[0]
    assert "state does not match" in failures[1]


def test_provider_users_with_no_known_trust_or_role_or_a_local_name_are_refused(
    server: Netpacs, browser: Browser
) -> None:
    before = last_audit_id(server)
    for login, reason in [
        ("nowhere.oidcuser", "no trust and role netpacs knows"),
        ("rxc.admin", "local account"),  # the demo admin's name: never taken over
    ]:
        page = local_page(browser)
        response = page.goto(f"{server.base_url}/auth/oidc/login?next=/studies")
        assert response is not None and response.ok
        with page.expect_response(lambda r: "/auth/oidc/callback" in r.url) as answer:
            sign_in_at_provider(page, login)
        assert answer.value.status == 403
        expect(page.get_by_role("alert")).to_contain_text(reason)
        assert page.request.get(f"{server.base_url}/api/me").status == 401
        page.context.close()
    failures = failed_sign_ins(server, after=before)
    assert [f.split(":")[0] for f in failures] == ["nowhere.oidcuser", "rxc.admin"], failures


def test_provider_down_gives_a_page_that_says_so(
    tmp_path: Path, http_ports: tuple[int, int], browser: Browser
) -> None:
    # A netpacs of its own: the module's has the provider's discovery document cached.
    down = OpenIdProvider(http_ports=(), log_path=tmp_path / "down.log")  # never started
    server = oidc_netpacs(
        tmp_path, http_port=http_ports[1], issuer=down.issuer, client_secret="never used"
    ).start()
    try:
        page = local_page(browser)
        page.goto(f"{server.base_url}/signin")
        with page.expect_response(lambda r: "/auth/oidc/login" in r.url) as answer:
            page.get_by_role("link", name="Sign in with NHS Identity").click()
        assert answer.value.status == 502
        expect(page.get_by_role("heading")).to_have_text("NHS Identity cannot be reached")
        expect(page.get_by_role("alert")).to_contain_text("could not be fetched")
        expect(page.get_by_role("link", name="Sign in with a netpacs user name")).to_be_visible()
        assert "provider unreachable" in failed_sign_ins(server)[0]
    finally:
        server.stop()


def test_sign_in_still_works_after_the_provider_rotates_its_signing_key(
    server: Netpacs, provider: OpenIdProvider, browser: Browser
) -> None:
    for _ in range(2):
        page = local_page(browser)
        page.goto(f"{server.base_url}/auth/oidc/login")
        sign_in_at_provider(page, "rxc.oidcuser")
        expect(page).to_have_url(f"{server.base_url}/studies")
        assert page.request.get(f"{server.base_url}/api/me").json()["username"] == "rxc.oidcuser"
        page.context.close()
        provider.stop()
        provider.start()  # a new key with a new key id; netpacs has the old JWKS cached


def test_without_claims_only_a_pre_provisioned_external_account_is_admitted(
    tmp_path: Path, http_ports: tuple[int, int], provider: OpenIdProvider, browser: Browser
) -> None:
    server = oidc_netpacs(
        tmp_path,
        http_port=http_ports[1],
        issuer=provider.issuer,
        client_secret=provider.client_secret,
        claims_decide=False,
    )
    made = server.cli(
        "user", "add", "rtp.provisioned", "--trust", "RTP", "--role", "radiologist", "--external"
    )
    assert made.returncode == 0, made.stderr
    server.start()
    try:
        page = local_page(browser)
        page.goto(f"{server.base_url}/auth/oidc/login")
        sign_in_at_provider(page, "rtp.provisioned")
        expect(page).to_have_url(f"{server.base_url}/studies")
        me = page.request.get(f"{server.base_url}/api/me").json()
        assert (me["username"], me["trust"], me["role"]) == (
            "rtp.provisioned",
            "RTP",
            "radiologist",
        )
        # Its claims would make a clinician of RXC, but without an account: refused.
        other = local_page(browser)
        other.goto(f"{server.base_url}/auth/oidc/login")
        with other.expect_response(lambda r: "/auth/oidc/callback" in r.url) as answer:
            sign_in_at_provider(other, "rxc.oidcuser")
        assert answer.value.status == 403
        expect(other.get_by_role("alert")).to_contain_text("has no netpacs account")
        # An external account has no password to sign in with.
        refused = httpx.post(
            f"{server.base_url}/auth/token", data={"username": "rtp.provisioned", "password": ""}
        )
        assert refused.status_code == 400
    finally:
        server.stop()
