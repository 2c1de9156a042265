"""Two equal `netpacs serve` nodes behind HAProxy lose a node (issue 12, faults 1 and 5).

Real processes on 127.0.0.1: two nodes sharing one PostgreSQL database, one object
directory (``NETPACS_BLOB_DIR``; each node keeps its own data directory) and one token
signing key, behind HAProxy running ``deploy/haproxy/haproxy.cfg`` itself (its
``${VAR}`` placeholders set in HAProxy's environment). A node is lost by SIGKILL of
its whole process tree (a crash, not a shutdown).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
import sqlalchemy as sa

from netpacs.index.schema import instance, series
from tests.cluster.conftest import Cluster, running_cluster
from tests.conftest import Netpacs, dcmtk, free_port, wait_until, write_region
from tests.factories import write_series
from tests.hl7.test_results import NO_ANSWER, Listener, all_sent, in_order_once, queue, rows

RTO_TARGET = 5.0  # seconds until stores through HAProxy succeed again after a node dies
JOB_TAKEOVER = 30.0  # seconds within which another node sends the waiting results

pytestmark = pytest.mark.skipif(
    not Path("/usr/sbin/haproxy").exists(), reason="HAProxy (make test-setup installs it)"
)


def results_region(path: Path, port: int) -> Path:
    """The demo region with East Sussex's (RXC) results listener on ``port``."""
    write_region(path, {})
    text, n = re.subn(
        r'(\[trusts.results_mllp\]\nhost = "127.0.0.1"\nport = )12573', rf"\g<1>{port}",
        path.read_text(),
    )  # fmt: skip
    assert n == 1
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def results_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, results_port: int) -> Iterator[Cluster]:
    with results_cluster(tmp_path_factory.mktemp("cluster"), results_port) as the_cluster:
        yield the_cluster


@contextlib.contextmanager
def results_cluster(
    root: Path,
    results_port: int,
    env: dict[str, str] | None = None,
    processes: int = 1,
    http_processes: int = 1,
) -> Iterator[Cluster]:
    """Two nodes behind HAProxy whose region sends RXC's results to ``results_port``
    (also used by bench/faults.py and bench/store_bench.py). ``env``, when given,
    replaces the fast results retries below (e.g. with an object store)."""
    root.mkdir(parents=True, exist_ok=True)
    region_file = results_region(root / "region.toml", results_port)
    settings = (
        env
        if env is not None
        else {
            "NETPACS_RESULTS_POLL_SECONDS": "0.2",
            "NETPACS_RESULTS_RETRY_FIRST_SECONDS": "0.2",
            "NETPACS_RESULTS_RETRY_MAX_SECONDS": "1",
            "NETPACS_RESULTS_ACK_TIMEOUT_SECONDS": "60",
        }
    )
    with running_cluster(
        root, region_file, settings, processes=processes, http_processes=http_processes
    ) as the_cluster:
        yield the_cluster


# -- fault 1: a node killed in the middle of a storescu run ------------------------------


SENDING = re.compile(r"Sending file: (.+)$")
SUCCESS = "Received Store Response (Success)"


def acknowledged(output: str) -> set[str]:
    """The files storescu -v saw a Success response for."""
    done: set[str] = set()
    current: str | None = None
    for line in output.splitlines():
        sent = SENDING.search(line)
        if sent:
            current = sent.group(1).strip()
        elif SUCCESS in line and current is not None:
            done.add(current)
            current = None
    return done


def stored(cluster: Cluster, series_uid: str) -> list[str]:
    """The SOP Instance UIDs of the series in the shared index (one row each)."""
    with cluster.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(instance.c.sop_instance_uid)
                .join(series, series.c.id == instance.c.series_fk)
                .where(series.c.series_instance_uid == series_uid)
            ).scalars()
        )


def store_once(port: int, file: Path) -> bool:
    result = dcmtk(
        "storescu", "-to", "5", "-aet", "EDGH_CT1", "-aec", "NETPACS", "127.0.0.1", str(port),
        str(file), timeout=30,
    )  # fmt: skip
    return result.returncode == 0 and "Failed" not in result.stderr


def test_a_node_killed_mid_series_loses_nothing_acknowledged_and_the_retry_completes_it(
    cluster: Cluster, tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    cluster.ensure_running()
    # A signed-in user of each node: tokens are signed with the shared key, so a session
    # outlives the node that issued it.
    tokens = {id(node): node.token() for node in cluster.nodes}
    files = write_series(tmp_path / "series", 150, Rows=128, Columns=128, PixelData=bytes(32768))
    series_uid = _series_uid(files[0])
    probes = write_series(tmp_path / "probes", 40)
    log = tmp_path / "storescu.log"
    with log.open("w") as out:
        sender = subprocess.Popen(
            ["storescu", "-v", "-aet", "EDGH_CT1", "-aec", "NETPACS", "127.0.0.1",
             str(cluster.dimse_port), *map(str, files)],
            stdout=out, stderr=subprocess.STDOUT, text=True,
            env=dict(os.environ, TCP_NODELAY="1"),
        )  # fmt: skip
    try:
        wait_until(lambda: len(stored(cluster, series_uid)) >= 20, what="20 of 150 stored")
        victim = cluster.serving_association()
        assert victim is not None, "no node holds the storescu association"
        killed_at = time.monotonic()
        victim.kill()
        kill_took = time.monotonic() - killed_at
        sender.wait(timeout=60)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
    first_run = acknowledged(log.read_text())
    assert 20 <= len(first_run) < len(files), log.read_text()[-2000:]
    # RTO: how long until a store through HAProxy succeeds again (a modality retrying).
    rto, tries = None, 0
    for probe in probes:
        tries += 1
        if store_once(cluster.dimse_port, probe):
            rto = time.monotonic() - killed_at
            break
        time.sleep(0.1)
    assert rto is not None, "no store through HAProxy succeeded after the node died"
    # The modality sends again what was not acknowledged (the whole association failed).
    left = [f for f in files if str(f) not in first_run]
    retry = dcmtk(
        "storescu", "-v", "-aet", "EDGH_CT1", "-aec", "NETPACS", "127.0.0.1",
        str(cluster.dimse_port), *map(str, left),
    )  # fmt: skip
    assert retry.returncode == 0, retry.stderr[-2000:]
    assert acknowledged(retry.stdout + retry.stderr) == {str(f) for f in left}
    # Every instance stored once: each acknowledged SOP Instance UID has one row.
    uids = stored(cluster, series_uid)
    assert len(uids) == len(set(uids)) == len(files)
    survivor = next(node for node in cluster.nodes if node is not victim)
    verify = survivor.cli("verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "0 missing, 0 damaged or unreadable" in verify.stdout, verify.stdout
    orphans = _orphans(verify.stdout)
    # At most the one object in flight on the killed association is left without a row.
    assert orphans <= 1, verify.stdout
    # The session the killed node issued is good on the other node, through HAProxy.
    found = httpx.get(
        f"{cluster.url}/dicomweb/studies",
        params={"SeriesInstanceUID": series_uid},
        headers={"Authorization": f"Bearer {tokens[id(victim)]}"},
    )
    assert found.status_code == 200 and len(found.json()) == 1, found.text
    record_property("rto_seconds", round(rto, 2))
    print(
        f"\nRTO after SIGKILL of a node (stores through HAProxy succeed again): {rto:.2f} s "
        f"(the node's processes took {kill_took:.2f} s to be gone; {tries} stores tried)"
    )
    assert rto <= RTO_TARGET


def _series_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


# -- fault 5: the node sending results killed while results wait --------------------------


def test_results_waiting_when_their_sender_node_dies_are_sent_by_the_other_once_in_order(
    cluster: Cluster, results_port: int
) -> None:
    cluster.ensure_running()
    held, release = threading.Event(), threading.Event()
    ids: list[str] = []

    def hold_the_first(control_id: str, seen: int) -> tuple[str, str] | None:
        """The listener takes the first message and answers only after the kill."""
        if control_id == ids[0] and seen == 0:
            held.set()
            release.wait(timeout=60)
            return NO_ANSWER
        return ("AA", "")

    listener = Listener(results_port, policy=hold_the_first).start()
    try:
        ids += queue(cluster.engine, "RXC", 6)
        wait_until(held.is_set, what="the first result on the wire")
        sender = cluster.holding_results()
        assert sender is not None, "no node holds the results lock"
        # Every node runs the job worker by default: the other one asks for the trust.
        other = next(node for node in cluster.nodes if node is not sender)
        wait_until(lambda: cluster.tries_results_lock(other), what="the other node's jobs")
        assert listener.arrivals == [ids[0]]  # and sends nothing while the trust is held
        killed_at = time.monotonic()
        sender.kill()  # returns once every process of the node is gone
        release.set()
        wait_until(all_sent(cluster.engine, "RXC"), timeout=JOB_TAKEOVER, what="every result sent")
        took = time.monotonic() - killed_at
        survivor = cluster.holding_results()
    finally:
        release.set()
        listener.stop()
    assert took <= JOB_TAKEOVER
    assert survivor is None or survivor is not sender
    assert listener.accepted == ids  # each accepted exactly once, in queue order
    assert in_order_once(listener.arrivals) == ids  # the one in flight sent again, same id
    assert all(r.sent_at is not None for r in rows(cluster.engine, "RXC"))
    print(f"\nresults moved to the other node and were all sent {took:.1f} s after the kill")


# -- a node that hangs: only the readiness checks can take it out ---------------------------


def _tree(node: Netpacs) -> list[int]:
    assert node.proc is not None
    found = subprocess.run(
        ["pgrep", "-P", str(node.proc.pid)], capture_output=True, text=True, check=False
    )
    return [node.proc.pid, *map(int, found.stdout.split())]


def test_a_hung_node_is_taken_out_by_its_failing_readiness_check_and_stores_go_on(
    cluster: Cluster, tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    """A node whose processes are stopped still accepts TCP connections (the kernel
    does), so HAProxy's redispatch cannot help: its /readyz check must time out."""
    cluster.ensure_running()
    wait_until(lambda: set(cluster.states("dimse_nodes").values()) == {"UP"}, what="both nodes UP")
    probes = write_series(tmp_path / "probes", 6)
    victim = cluster.nodes[0]
    pids = _tree(victim)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        for backend in ("dimse_nodes", "mllp_nodes", "http_nodes"):
            wait_until(
                lambda backend=backend: cluster.states(backend)["node1"].startswith("DOWN"),
                timeout=15,
                what=f"the hung node DOWN in {backend}",
            )
        out_after = time.monotonic() - stopped_at
        # Stores and queries go on through HAProxy, every one to the other node.
        for probe in probes:
            assert store_once(cluster.dimse_port, probe)
        assert cluster.states("http_nodes")["node2"] == "UP"
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    record_property("hung_node_out_seconds", round(out_after, 2))
    print(f"\na hung node was out of HAProxy's rotation {out_after:.1f} s after it stopped")
    assert out_after <= 10
    # Back in rotation once it answers again (two good checks).
    wait_until(lambda: cluster.states("dimse_nodes")["node1"] == "UP", what="node1 UP again")


# -- one object directory shared by the nodes -----------------------------------------------


def test_nodes_share_one_object_directory_while_one_restarts_beside_the_others_stores(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A node's start finishes or removes interrupted writes in the shared directory
    (startup.recover_pending_writes): it must leave the other node's writes in progress
    alone. Node 1 stores batch after batch while node 2 restarts, then both store."""
    cluster.ensure_running()
    node1, node2 = cluster.nodes
    orphans_before = _orphans(node1.cli("verify").stdout)  # fault 1 may leave one
    batches = [write_series(tmp_path / f"a{i}", 20) for i in range(40)]
    sent: list[list[Path]] = []
    stop = threading.Event()

    def keep_storing() -> None:
        for batch in batches:
            if stop.is_set():
                return
            node1.store(*batch)
            sent.append(batch)

    storing = threading.Thread(target=keep_storing, daemon=True)
    storing.start()
    try:
        wait_until(lambda: len(sent) >= 1, what="node 1 storing")
        node2.stop()
        during = len(sent)
        node2.start()  # recovers pending writes while node 1 writes
        assert storing.is_alive(), "node 1 finished before node 2's start: no overlap"
        other = write_series(tmp_path / "b", 30)
        node2.store(*other)
    finally:
        stop.set()
        storing.join(timeout=120)
    assert len(sent) > during  # node 1 stored on while node 2 started
    for batch in [*sent, other]:
        uids = stored(cluster, _series_uid(batch[0]))
        assert len(uids) == len(set(uids)) == len(batch)
    verify = node2.cli("verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "0 missing, 0 damaged or unreadable" in verify.stdout, verify.stdout
    assert _orphans(verify.stdout) == orphans_before, verify.stdout


def _orphans(verify_output: str) -> int:
    found = re.search(r"orphan blobs \(no index row\): (\d+)", verify_output)
    assert found is not None, verify_output
    return int(found[1])
