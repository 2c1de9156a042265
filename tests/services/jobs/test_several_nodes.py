"""Jobs of several nodes on one PostgreSQL database: no message sent twice, none lost.

Each "node" is a job runner with engines of its own, as the composition root builds it:
two in this process, or one in a process of its own (``netpacs.app.jobs.run_worker``)
that the test kills. The trusts' results listeners and the audit collector are real
sockets (tests.hl7.test_results, tests.adapters.test_syslog_forwarder).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from netpacs.app.jobs import outbox_jobs
from netpacs.app.settings import Settings
from netpacs.domain.region import Region
from netpacs.index.db import make_engine, migrate
from netpacs.services.jobs.runner import JobRunner
from tests.adapters.test_syslog_forwarder import AuditWriter, FakeCollector
from tests.conftest import free_port, postgres_database, wait_until, write_region
from tests.hl7.test_results import (
    FAST,
    NO_ANSWER,
    Listener,
    all_sent,
    in_order_once,
    queue,
    region,
    rows,
    running,
    sending,
)

FAST_ENV = {
    "NETPACS_RESULTS_POLL_SECONDS": str(FAST.poll),
    "NETPACS_RESULTS_RETRY_FIRST_SECONDS": str(FAST.retry_first),
    "NETPACS_RESULTS_RETRY_MAX_SECONDS": str(FAST.retry_max),
}


@pytest.fixture
def database_url() -> Iterator[str]:
    """A fresh PostgreSQL database: the shared index of several nodes (SQLite is one
    node's own)."""
    with postgres_database() as url:
        yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    migrate(database_url)
    engine = make_engine(database_url, writer=True)
    yield engine
    engine.dispose()


def test_two_nodes_deliver_every_result_once_and_in_order_per_trust(engine: sa.Engine) -> None:
    trusts = ("RXC", "RTP", "RYR")
    listeners = {trust: Listener(free_port()).start() for trust in trusts}
    ids: dict[str, list[str]] = {trust: queue(engine, trust, 5) for trust in trusts}
    both = region(**{trust: listener.port for trust, listener in listeners.items()})
    try:
        with sending(engine, both), sending(engine, both):
            # Results arrive while both nodes run; one at a time, until each node has
            # sent some (a second connection to a listener), so that both took turns.
            for _ in range(100):
                for trust in trusts:
                    ids[trust] += queue(engine, trust, 1)
                for trust in trusts:
                    wait_until(all_sent(engine, trust))
                if any(listener.connections > 1 for listener in listeners.values()):
                    break
            for trust in trusts:
                ids[trust] += queue(engine, trust, 5)
            for trust in trusts:
                wait_until(all_sent(engine, trust))
    finally:
        for listener in listeners.values():
            listener.stop()
    assert any(listener.connections > 1 for listener in listeners.values())
    for trust, listener in listeners.items():
        assert listener.arrivals == ids[trust], trust  # each once, in queue order
        assert listener.accepted == ids[trust], trust


# -- a node that dies ------------------------------------------------------------------------


@contextlib.contextmanager
def job_worker(
    tmp_path: Path, database_url: str, region_file: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``netpacs.app.jobs.run_worker`` in a process of its own: a node's job worker."""
    env = dict(
        os.environ,
        NETPACS_DATA_DIR=str(tmp_path / "node"),
        NETPACS_DATABASE_URL=database_url,
        NETPACS_REGION_FILE=str(region_file),
        NETPACS_RESULTS_ACK_TIMEOUT_SECONDS="60",
        **FAST_ENV,
    )
    code = (
        "from netpacs.app.jobs import run_worker;"
        "from netpacs.app.settings import load_settings;"
        "run_worker(load_settings())"
    )
    with (tmp_path / "node.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=log)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def results_region(tmp_path: Path, port: int) -> Path:
    """The demo region with East Sussex's results listener on ``port``."""
    path = write_region(tmp_path / "region.toml", {})
    text, n = re.subn(
        r'(\[trusts.results_mllp\]\nhost = "127.0.0.1"\nport = )12573',
        rf"\g<1>{port}",
        path.read_text(),
    )
    assert n == 1
    path.write_text(text)
    return path


def lock_holder(engine: sa.Engine) -> int | None:
    """The backend holding an advisory lock (a trust's results) of this database."""
    with engine.connect() as conn:
        return conn.execute(  # type: ignore[no-any-return]
            sa.text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        ).scalar()


def tried_lock_beside(engine: sa.Engine, holder: int) -> bool:
    """Whether another session of this database has tried an advisory lock."""
    with engine.connect() as conn:
        return bool(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> :holder AND query LIKE '%pg_try_advisory_xact_lock%'"
                ),
                {"holder": holder},
            ).scalar()
        )


def test_a_node_killed_mid_send_leaves_its_trust_to_another_that_resends_in_order(
    tmp_path: Path, database_url: str, engine: sa.Engine
) -> None:
    ids = queue(engine, "RXC", 5)
    held, release = threading.Event(), threading.Event()

    def hold_the_first(control_id: str, seen: int) -> tuple[str, str] | None:
        if control_id == ids[0] and seen == 0:
            held.set()
            release.wait(timeout=60)  # the sender dies meanwhile
            return NO_ANSWER
        return ("AA", "")

    listener = Listener(free_port(), policy=hold_the_first).start()
    try:
        with job_worker(tmp_path, database_url, results_region(tmp_path, listener.port)) as node:
            wait_until(held.is_set, timeout=60, what="the first node's first result")
            holder = lock_holder(engine)
            assert holder is not None
            with sending(engine, region(RXC=listener.port)):
                # The second node finds the trust taken and sends nothing...
                wait_until(lambda: tried_lock_beside(engine, holder), what="a second sender")
                assert listener.arrivals == [ids[0]]
                node.send_signal(signal.SIGKILL)
                node.wait(timeout=30)
                release.set()
                # ... until the first is gone: then it sends what was in flight, and on.
                wait_until(all_sent(engine, "RXC"), timeout=60)
    finally:
        release.set()
        listener.stop()
    assert listener.accepted == ids
    assert in_order_once(listener.arrivals) == ids
    assert listener.arrivals.count(ids[0]) == 2  # again, with its control id
    assert [r.attempts for r in rows(engine, "RXC")] == [1] * 5


# -- audit records -----------------------------------------------------------------------------


def test_two_nodes_forward_every_audit_record_once(database_url: str) -> None:
    writer = AuditWriter(database_url)
    collector = FakeCollector()
    settings = Settings(audit_syslog=collector.url)
    nodes = [(make_engine(database_url), make_engine(database_url, writer=True)) for _ in "ab"]
    try:
        runners = [
            JobRunner(outbox_jobs(settings, Region("test", (), ()), reader=r, writer=w))
            for r, w in nodes
        ]
        with running(runners[0]), running(runners[1]):
            writer.write("shared", 700)  # more than a batch: both nodes claim some
            wait_until(lambda: writer.unforwarded() == 0, timeout=60)
        wait_until(lambda: len(collector.details()) >= 700)
        assert sorted(collector.details()) == sorted(f"shared-{n}" for n in range(700))
    finally:
        for reader, node_writer in nodes:
            reader.dispose()
            node_writer.dispose()
        collector.close()
        writer.close()
