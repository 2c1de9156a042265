"""The core's side of its edge nodes (issue 13): the change feed is trimmed (what every
edge has read, and what is older than the retention: an edge that asks from before it
is told to resync), and an administrator can disable an edge's client account (its
tokens stop working within the account-state cache window)."""

from __future__ import annotations

import datetime as dt
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from netpacs.domain.changes import ChangeKind
from netpacs.index import changes
from netpacs.index.db import make_engine, migrate
from tests.conftest import NETPACS, Netpacs, postgres_database, wait_until, write_region
from tests.edge.conftest import EDGE_CLIENT, TIMEOUT
from tests.edge.test_edge_link import client_token
from tests.edge.test_prefetch import send_adt
from tests.hl7.conftest import adt

#: NETPACS_CHANGE_FEED_DAYS of the core here: 4.3 s.
RETENTION_DAYS = 0.00005
#: NETPACS_ACCOUNT_CACHE_SECONDS of the core here.
WINDOW = 1.0


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Netpacs]:
    """A core (PostgreSQL, two HTTP workers) that trims its feed every second."""
    folder = tmp_path_factory.mktemp("core-for-edges")
    with postgres_database() as url:
        server = Netpacs(
            data_dir=folder / "core",
            database_url=url,
            region_file=write_region(folder / "region.toml", {}),
            processes=1,
            http_processes=2,
            extra_env={
                "NETPACS_CHANGE_FEED_DAYS": str(RETENTION_DAYS),
                "NETPACS_CHANGE_FEED_TRIM_SECONDS": "1",
                "NETPACS_ACCOUNT_CACHE_SECONDS": str(WINDOW),
            },
        )
        server.start()
        try:
            yield server
        finally:
            server.stop()


def edge_token(core: Netpacs, client_id: str = EDGE_CLIENT) -> str:
    answer = client_token(core, client_id)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def feed(core: Netpacs, token: str, after: int | None = None) -> dict[str, Any]:
    params = {} if after is None else {"after": after}
    answer = httpx.get(
        f"{core.base_url}/edge/changes",
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_feed_entries_older_than_the_retention_are_trimmed_and_a_late_edge_told_to_resync(
    core: Netpacs,
) -> None:
    token = edge_token(core)
    start = feed(core, token)["cursor"]  # an edge starting to follow the feed
    send_adt(core, adt("A04", "TRIM-1", "RXC0000901^^^RXC^MR", facility="RXC"))
    fresh = feed(core, token, after=start)
    assert [c["patient_id"] for c in fresh["changes"]] == ["RXC0000901"]
    assert fresh["resync"] is False
    # Past the retention the entry is gone, read or not: asking from before it, the
    # edge gets no entries but resync, and the cursor of the feed's end.
    late = wait_until(
        lambda: (page := feed(core, token, after=start))["resync"] and page,
        timeout=30,
        what="the entry trimmed",
    )
    assert late["changes"] == []
    assert late["cursor"] > start
    # From the cursor it was given, the edge follows the feed as before.
    send_adt(core, adt("A04", "TRIM-2", "RXC0000902^^^RXC^MR", facility="RXC"))
    again = feed(core, token, after=late["cursor"])
    assert again["resync"] is False
    assert [c["patient_id"] for c in again["changes"]] == ["RXC0000902"]


def test_entries_every_edge_has_read_are_trimmed_and_no_others(database_url: str) -> None:
    migrate(database_url)
    engine = make_engine(database_url, writer=True, pool_size=1)
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=365)
    try:
        with engine.begin() as conn:
            for k in range(6):
                changes.record_change(conn, ChangeKind.PATIENT, patient_id=f"P{k}", issuer="RXC")
            ids = [r for r in conn.execute(sa.text("SELECT id FROM change_feed")).scalars()]
            changes.note_read(conn, "edge.rxc", ids[3])
            changes.note_read(conn, "edge.rtp", ids[1])
            # edge.rtk never read the feed: it starts at its end, and holds nothing back.
            gone = changes.trim(
                conn, readers=["edge.rxc", "edge.rtp", "edge.rtk"], retain_since=long_ago
            )
            assert gone == 2
            assert changes.trimmed_through(conn) == ids[1]
            changes.note_read(conn, "edge.rtp", ids[4])
            assert changes.trim(conn, readers=["edge.rxc", "edge.rtp"], retain_since=long_ago) == 2
            left = list(conn.execute(sa.text("SELECT id FROM change_feed ORDER BY id")).scalars())
            assert left == ids[4:]
            # The feed's end survives trimming all of it (an edge starting now asks after it).
            assert changes.trim(conn, readers=[], retain_since=dt.datetime.now(dt.UTC)) == 2
            assert changes.top(conn) == ids[-1]
    finally:
        engine.dispose()


def switch(core: Netpacs, action: str, name: str) -> None:
    """``netpacs user disable|enable NAME``, as a PACS administrator does it."""
    done = subprocess.run(
        [str(NETPACS), "user", action, name],
        env=core.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"user {name} {action}d" in done.stdout


def refused_everywhere(core: Netpacs, token: str) -> bool:
    """Ten requests on new connections (the two HTTP workers take turns)."""
    headers = {"Authorization": f"Bearer {token}"}
    no_keepalive = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(headers=headers, limits=no_keepalive, timeout=TIMEOUT) as http:
        codes = {http.get(f"{core.base_url}/edge/changes").status_code for _ in range(10)}
    return codes == {401}


def test_a_disabled_edge_client_is_refused_within_the_window_and_admitted_when_enabled(
    core: Netpacs,
) -> None:
    client = "edge.rtp"  # another trust's demo edge: this module has no edge running
    token = edge_token(core, client)
    for _ in range(10):  # both workers now believe the edge enabled
        feed(core, token)
    switch(core, "disable", client)
    disabled = time.monotonic()
    time.sleep(max(0.0, disabled + WINDOW + 0.05 - time.monotonic()))
    assert refused_everywhere(core, token)
    refused = client_token(core, client)
    assert refused.status_code == 400, refused.text
    assert "disabled" in refused.json()["error_description"]
    # Nothing else signs in with the edge's name meanwhile (the row has no password).
    password = httpx.post(
        f"{core.base_url}/auth/token",
        data={"username": client, "password": "demo"},
        timeout=TIMEOUT,
    )
    assert password.status_code == 400
    switch(core, "enable", client)
    time.sleep(WINDOW + 0.05)
    assert feed(core, token)["resync"] is False
    assert feed(core, edge_token(core, client))["cursor"] >= 0
