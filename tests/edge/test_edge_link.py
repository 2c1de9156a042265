"""The edge's link to the core (issue 13): the edge signs in with client credentials,
acts for users of its trust only, and starts as an edge."""

from __future__ import annotations

import subprocess

import httpx

from tests.conftest import NETPACS, Netpacs
from tests.edge.conftest import EDGE_CLIENT, TIMEOUT, CoreAndEdge


def client_token(
    core: Netpacs, client_id: str = EDGE_CLIENT, secret: str = "demo"
) -> httpx.Response:
    return httpx.post(
        f"{core.base_url}/auth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
        timeout=TIMEOUT,
    )


def test_an_edge_signs_in_to_the_core_with_client_credentials(
    core_and_edge: CoreAndEdge,
) -> None:
    core = core_and_edge.core
    answer = client_token(core)
    assert answer.status_code == 200, answer.text
    token = answer.json()["access_token"]
    me = httpx.get(
        f"{core.base_url}/api/me", headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT
    )
    assert me.status_code == 200, me.text
    assert me.json()["role"] == "edge" and me.json()["trust"] == "RXC"
    # HTTP Basic (RFC 6749 2.3.1) works too; a wrong secret or client is refused.
    basic = httpx.post(
        f"{core.base_url}/auth/token",
        data={"grant_type": "client_credentials"},
        auth=(EDGE_CLIENT, "demo"),
        timeout=TIMEOUT,
    )
    assert basic.status_code == 200, basic.text
    wrong = client_token(core, secret="not the secret")
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_client"
    unknown = client_token(core, client_id="edge.nowhere")
    assert unknown.status_code == 400 and unknown.json()["error"] == "invalid_client"


def test_an_edge_acts_for_a_user_of_its_trust_and_not_for_another_trusts(
    core_and_edge: CoreAndEdge,
) -> None:
    core = core_and_edge.core
    token = client_token(core).json()["access_token"]

    def me(on_behalf: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        if on_behalf is not None:
            headers["X-Netpacs-On-Behalf-Of"] = on_behalf
        return httpx.get(f"{core.base_url}/api/me", headers=headers, timeout=TIMEOUT)

    own = me("rxc.clinician")
    assert own.status_code == 200, own.text
    assert own.json()["username"] == "rxc.clinician" and own.json()["role"] == "clinician"
    other = me("rtp.clinician")
    assert other.status_code == 403
    assert "not a user of RXC" in other.json()["message"]
    nobody = me("no.such.user")
    assert nobody.status_code == 403 and "not an active user" in nobody.json()["message"]
    # A user's own token cannot claim to act for someone else.
    user = httpx.get(
        f"{core.base_url}/api/me",
        headers={**core.auth("rxc.clinician"), "X-Netpacs-On-Behalf-Of": "rxc.admin"},
        timeout=TIMEOUT,
    )
    assert user.status_code == 403 and "only an edge node" in user.json()["message"]


def test_an_edge_started_with_role_edge_signs_in_to_the_core_and_says_so(
    core_and_edge: CoreAndEdge,
) -> None:
    edge = core_and_edge.edge
    assert "edge node of RXC (site EDGH)" in edge.log()
    assert edge.http.get(f"{edge.base_url}/healthz").status_code == 200


def test_an_edge_without_its_core_or_site_does_not_start_and_says_what_is_missing(
    core_and_edge: CoreAndEdge,
) -> None:
    edge = core_and_edge.edge
    env = {k: v for k, v in edge.env.items() if k != "NETPACS_UPSTREAM_URL"}
    no_core = subprocess.run(
        [str(NETPACS), "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert no_core.returncode != 0 and "NETPACS_UPSTREAM_URL" in no_core.stderr
    env = {**edge.env, "NETPACS_EDGE_SITE": "ESH"}  # a site of another trust
    wrong_site = subprocess.run(
        [str(NETPACS), "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert wrong_site.returncode != 0
    assert "NETPACS_EDGE_SITE='ESH' is not a site of RXC" in wrong_site.stderr
