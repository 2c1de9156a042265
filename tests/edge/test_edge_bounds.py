"""An edge at its bounds (issue 13), on a core and edge pair of their own.

- A hung core: the core's processes are stopped (SIGSTOP), not killed, so its sockets
  still accept connections and nothing answers. The edge must not wait longer than its
  2 s bound (NETPACS_UPSTREAM_TIMEOUT_SECONDS, here at its default): QIDO-RS answers
  from the cache with the ``Warning`` header, C-FIND with a warning status, and a
  modality's C-STORE to the edge succeeds.
- A full cache: what the core confirmed is evicted least recently read first, and a
  read of a study at the edge counts."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import sqlalchemy as sa

from netpacs.index.schema import study
from tests.conftest import Netpacs, postgres_database, wait_until
from tests.edge.conftest import EDGE_SETTINGS, CoreAndEdge, start_core_and_edge
from tests.edge.helpers import ct_study, metric
from tests.edge.helpers import uids as file_uids
from tests.edge.test_read_through import BANNER, c_find, client, uids
from tests.http.conftest import StoredSeries, write_and_send_ct

#: The edge's bound on the core's answers, as a hospital runs it (the other edge tests
#: give the core 10 s, for a busy 2-core machine).
BOUND = 2.0
#: The cache test's studies: 4 slices of 256 x 256 (16 bits) each; the cache holds 2.5.
SLICE_BYTES = 256 * 256 * 2
CACHE_LIMIT = int(2.5 * 4 * SLICE_BYTES)


@pytest.fixture(scope="module")
def hung_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoreAndEdge]:
    """A core and an edge whose upstream timeout is the real 2 s."""
    folder = tmp_path_factory.mktemp("edge-hung")
    with postgres_database() as core_db:
        pair = start_core_and_edge(
            folder,
            core_db,
            **EDGE_SETTINGS,
            NETPACS_UPSTREAM_TIMEOUT_SECONDS=str(BOUND),
            NETPACS_CACHE_GB=repr(CACHE_LIMIT / 1024**3),
            NETPACS_CACHE_DAYS="0",  # captures are kept only until the core confirms them
            NETPACS_CACHE_CHECK_SECONDS="1",
        )
        try:
            yield pair
        finally:
            pair.edge.stop()
            pair.link.stop()
            pair.core.stop()


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                continue
    return found


@contextmanager
def hung(server: Netpacs) -> Iterator[None]:
    """Every process of ``server`` stopped (SIGSTOP) for the block, continued after."""
    assert server.proc is not None
    pids = process_tree(server.proc.pid)
    assert len(pids) > 1, "the server's worker processes"
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def test_a_hung_core_costs_the_edge_at_most_its_2_s_bound(
    hung_pair: CoreAndEdge, tmp_path: Path
) -> None:
    edge = hung_pair.edge
    held = ct_study(tmp_path / "held", 2, "RXC0000401")
    edge.store(*held)
    held_study, _, _ = file_uids(held)
    wait_until(
        lambda: metric(edge, "netpacs_edge_forward_backlog") == 0,
        timeout=60,
        what="the study forwarded",
    )
    with client(edge) as http:
        with hung(hung_pair.core):
            started = time.monotonic()
            answer = http.get(f"{edge.dicomweb_url}/studies", params={"PatientID": "RXC0000401"})
            took = time.monotonic() - started
            assert answer.status_code == 200, answer.text
            assert took < BOUND + 0.5, f"QIDO-RS took {took:.1f} s with the core hung"
            assert answer.headers["warning"].startswith('299 netpacs "' + BANNER)
            assert uids(answer) == {held_study}

            started = time.monotonic()
            statuses, matches = c_find(edge, "RXC0000401")
            took = time.monotonic() - started
            assert took < BOUND + 0.5, f"C-FIND took {took:.1f} s with the core hung"
            assert [m.StudyInstanceUID for m in matches] == [held_study]
            assert statuses[-1].Status == 0xB000, hex(statuses[-1].Status)

            # A modality's store is the edge's alone: it succeeds, and waits to go.
            new = ct_study(tmp_path / "new", 2, "RXC0000402")
            started = time.monotonic()
            edge.store(*new)
            took = time.monotonic() - started
            assert took < BOUND + 3, f"C-STORE took {took:.1f} s with the core hung"
            assert metric(edge, "netpacs_edge_forward_backlog") == 2
        # The core continued: the new study goes, the answers come from the core again.
        wait_until(
            lambda: metric(edge, "netpacs_edge_forward_backlog") == 0,
            timeout=60,
            what="the backlog forwarded after the core continued",
        )
        wait_until(
            lambda: (
                "warning"
                not in http.get(
                    f"{edge.dicomweb_url}/studies", params={"PatientID": "RXC0000401"}
                ).headers
            ),
            timeout=30,
            what="answers from the core again",
        )


def held_studies(edge: Netpacs) -> set[str]:
    """The studies in the edge's index."""
    engine = sa.create_engine(edge.database_url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(sa.select(study.c.study_instance_uid)).scalars())
    finally:
        engine.dispose()


def test_the_cache_evicts_the_least_recently_read_study_first(
    hung_pair: CoreAndEdge, tmp_path: Path
) -> None:
    edge = hung_pair.edge

    def captured(name: str) -> StoredSeries:
        return write_and_send_ct(
            edge, tmp_path / name, 4, rows=256, columns=256, patient_id=f"RXC000041{name}",
            issuer="RXC",
        )  # fmt: skip

    def forwarded() -> None:
        wait_until(
            lambda: metric(edge, "netpacs_edge_forward_backlog") == 0,
            timeout=60,
            what="the studies forwarded (only what the core confirmed is evicted)",
        )

    first, second = captured("1"), captured("2")
    forwarded()
    time.sleep(1.1)  # the read below is later than the second study's arrival
    with client(edge) as http:  # a clinician at the site reads the first study
        for sop in first.sop_uids:
            path = f"/studies/{first.study_uid}/series/{first.series_uid}/instances/{sop}"
            assert http.get(f"{edge.dicomweb_url}{path}/frames/1").status_code == 200
    time.sleep(1.5)  # a pass of the cache keeper takes the read from the audit trail
    third = captured("3")
    forwarded()
    # Over the limit: the second study is the least recently used; without the read,
    # the first (the oldest) would have gone.
    wait_until(
        lambda: second.study_uid not in held_studies(edge),
        timeout=30,
        what="the least recently read study evicted",
    )
    held = held_studies(edge)
    assert first.study_uid in held and third.study_uid in held
