"""What must survive making QIDO-RS fast (issue 16), through a real server with two
HTTP worker processes: every search is on the audit trail before its answer reaches the
client, also when many arrive at once (their audit messages are committed together),
and a disabled account or a revoked token is refused by every worker once the account
cache's window (NETPACS_ACCOUNT_CACHE_SECONDS) has passed."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from netpacs.index.schema import audit_event
from netpacs.synthetic import write_ct_series
from tests.conftest import NETPACS, Netpacs

WINDOW = 1.0  # NETPACS_ACCOUNT_CACHE_SECONDS of the server under test
PATIENT = "RTP7700001"
# Eight users who each search one after another, all eight at once.
SEARCHERS = (
    "rtp.clinician",
    "rtp.radiologist",
    "rtp.admin",
    "rtk.clinician",
    "rxc.clinician",
    "ryr.clinician",
    "ra2.radiologist",
    "rpc.admin",
)
QUERY_EVENT = "110112"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, module_database_url: str, module_region_file: Path
) -> Iterator[Netpacs]:
    folder = tmp_path_factory.mktemp("qido-load")
    netpacs = Netpacs(
        data_dir=folder / "data",
        database_url=module_database_url,
        region_file=module_region_file,
        processes=1,
        http_processes=2,
        extra_env={"NETPACS_ACCOUNT_CACHE_SECONDS": str(WINDOW)},
    )
    netpacs.start()
    try:
        netpacs.store(
            *write_ct_series(
                folder / "ct", 1, rows=16, columns=16, patient_id=PATIENT, issuer="RTP"
            )
        )
        yield netpacs
    finally:
        netpacs.stop()


@pytest.fixture(scope="module")
def index(server: Netpacs) -> Iterator[sa.Engine]:
    engine = sa.create_engine(server.database_url)
    try:
        yield engine
    finally:
        engine.dispose()


def queries_audited(index: sa.Engine, user: str) -> int:
    with index.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(audit_event)
                .where(audit_event.c.user_id == user, audit_event.c.event_id == QUERY_EVENT)
            ).scalar_one()
        )


def test_every_search_is_on_the_audit_trail_when_its_answer_arrives_also_eight_at_once(
    server: Netpacs, index: sa.Engine
) -> None:
    tokens = {user: server.token(user) for user in SEARCHERS}
    before = {user: queries_audited(index, user) for user in SEARCHERS}
    problems: list[str] = []
    start = threading.Barrier(len(SEARCHERS), timeout=60)

    def search(user: str) -> None:
        headers = {"Authorization": f"Bearer {tokens[user]}"}
        with httpx.Client(headers=headers, timeout=60) as client:
            start.wait()
            for i in range(6):
                answer = client.get(f"{server.dicomweb_url}/studies", params={"PatientID": PATIENT})
                # Read the trail as soon as the answer is in: it must hold this search.
                audited = queries_audited(index, user) - before[user]
                if answer.status_code != 200 or audited != i + 1:
                    problems.append(
                        f"{user}, search {i + 1}: {answer.status_code}, {audited} audited"
                    )
                    return

    threads = [threading.Thread(target=search, args=(user,)) for user in SEARCHERS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert problems == []
    # The searches found the study for those who may see it (the trust's own staff).
    rtp = httpx.get(
        f"{server.dicomweb_url}/studies",
        params={"PatientID": PATIENT},
        headers=server.auth("rtp.clinician"),
    )
    assert len(rtp.json()) == 1


def refused_by_every_worker(server: Netpacs, token: str) -> bool:
    """Ten requests on new connections (the two workers take turns accepting them)."""
    headers = {"Authorization": f"Bearer {token}"}
    no_keepalive = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(headers=headers, limits=no_keepalive, timeout=60) as client:
        codes = {client.get(f"{server.base_url}/api/me").status_code for _ in range(10)}
    return codes == {401}


def switch_account(server: Netpacs, action: str, user: str) -> None:
    """``netpacs user disable|enable``, as a PACS administrator does it."""
    done = subprocess.run(
        [str(NETPACS), "user", action, user], env=server.env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert f"user {user} {action}d" in done.stdout


def test_a_disabled_account_is_refused_by_every_worker_once_the_window_has_passed(
    server: Netpacs, index: sa.Engine
) -> None:
    user = "rpc.clinician"
    token = server.token(user)
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(10):  # both workers now believe the account is enabled
        assert httpx.get(f"{server.dicomweb_url}/studies", headers=headers).status_code == 200
    switch_account(server, "disable", user)
    disabled = time.monotonic()
    time.sleep(max(0.0, disabled + WINDOW + 0.05 - time.monotonic()))
    assert refused_by_every_worker(server, token)
    switch_account(server, "enable", user)
    time.sleep(WINDOW + 0.05)
    assert httpx.get(f"{server.dicomweb_url}/studies", headers=headers).status_code == 200


def test_a_revoked_token_is_refused_by_every_worker_once_the_window_has_passed(
    server: Netpacs,
) -> None:
    token = httpx.post(
        f"{server.base_url}/auth/token", data={"username": "rtk.radiologist", "password": "demo"}
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(10):
        assert httpx.get(f"{server.base_url}/api/me", headers=headers).status_code == 200
    assert httpx.post(f"{server.base_url}/auth/revoke", data={"token": token}).status_code == 200
    revoked = time.monotonic()
    time.sleep(max(0.0, revoked + WINDOW + 0.05 - time.monotonic()))
    assert refused_by_every_worker(server, token)
