"""The cluster the fault tests share: two `netpacs serve` nodes behind HAProxy.

Real processes on 127.0.0.1: two nodes sharing one PostgreSQL database, one object
directory (``NETPACS_BLOB_DIR``; each node keeps its own data directory) and one token
signing key, behind HAProxy running ``deploy/haproxy/haproxy.cfg`` itself (its
``${VAR}`` placeholders set in HAProxy's environment).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy as sa

from tests.conftest import Netpacs, free_port, postgres_database, wait_for_port, wait_until

HAPROXY_CFG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "haproxy.cfg"


@dataclass
class Cluster:
    """Two nodes, HAProxy in front, and the shared index."""

    nodes: list[Netpacs]
    engine: sa.Engine
    dimse_port: int = field(default_factory=free_port)
    mllp_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    stats_port: int = field(default_factory=free_port)
    haproxy: subprocess.Popen[bytes] | None = None

    def start_haproxy(self, log: Path) -> None:
        env = dict(
            os.environ,
            NETPACS_LB_DIMSE_BIND=f"127.0.0.1:{self.dimse_port}",
            NETPACS_LB_MLLP_BIND=f"127.0.0.1:{self.mllp_port}",
            NETPACS_LB_HTTP_BIND=f"127.0.0.1:{self.http_port}",
            NETPACS_LB_STATS_BIND=f"127.0.0.1:{self.stats_port}",
        )
        for i, node in enumerate(self.nodes, start=1):
            env[f"NETPACS_NODE{i}_HOST"] = "127.0.0.1"
            env[f"NETPACS_NODE{i}_DIMSE_PORT"] = str(node.port)
            env[f"NETPACS_NODE{i}_MLLP_PORT"] = str(node.mllp_port)
            env[f"NETPACS_NODE{i}_HTTP_PORT"] = str(node.http_port)
        with log.open("ab") as out:
            self.haproxy = subprocess.Popen(
                ["/usr/sbin/haproxy", "-db", "-f", str(HAPROXY_CFG)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        for port in (self.dimse_port, self.mllp_port, self.http_port):
            wait_for_port(port, proc=self.haproxy)

    def stop(self) -> None:
        if self.haproxy is not None and self.haproxy.poll() is None:
            self.haproxy.terminate()
            try:
                self.haproxy.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.haproxy.kill()
                self.haproxy.wait()
        for node in self.nodes:
            node.stop()
        self.engine.dispose()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def all_up(self) -> bool:
        """Every node in every backend, as HAProxy's checks of /readyz found them."""
        with contextlib.suppress(httpx.HTTPError):
            return all(
                set(self.states(backend).values()) == {"UP"}
                for backend in ("dimse_nodes", "mllp_nodes", "http_nodes")
            )
        return False

    def states(self, backend: str) -> dict[str, str]:
        """Each node's state in a backend, from HAProxy's status page: UP, DOWN..."""
        csv = httpx.get(f"http://127.0.0.1:{self.stats_port}/;csv", timeout=5).text
        states = {}
        for line in csv.splitlines()[1:]:
            cells = line.split(",")
            if cells[0] == backend and cells[1].startswith("node"):
                states[cells[1]] = cells[17]
        return states

    def ensure_running(self) -> None:
        """Every node up and ready (a test before may have killed one)."""
        for node in self.nodes:
            if node.proc is None:
                node.start()
        for node in self.nodes:
            wait_until(
                lambda node=node: httpx.get(f"{node.base_url}/readyz").status_code == 200,
                what=f"node on port {node.http_port} ready",
            )

    def serving_association(self) -> Netpacs | None:
        """The node with an established DIMSE connection (HAProxy's, for storescu)."""
        established = _established_local_ports()
        return next((node for node in self.nodes if node.port in established), None)

    def holding_results(self, trust: str = "RXC") -> Netpacs | None:
        """The node whose job worker holds the trust's results lock (is sending them):
        the advisory lock of ``results <trust>`` (index.outbox.try_lock)."""
        digest = hashlib.sha256(f"netpacs results {trust}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True) & 0xFFFFFFFFFFFFFFFF
        with self.engine.connect() as conn:
            name = conn.execute(
                sa.text(
                    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a "
                    "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                    "AND a.datname = current_database() "
                    "AND l.classid::bigint = :high AND l.objid::bigint = :low"
                ),
                {"high": key >> 32, "low": key & 0xFFFFFFFF},
            ).scalar()
        return next((n for n in self.nodes if name and n.database_url.endswith(name)), None)

    def tries_results_lock(self, node: Netpacs) -> bool:
        """Whether ``node``'s job worker has asked for a job's advisory lock (a trust's
        results, the SR sweep): it runs the jobs too, and waits its turn."""
        name = node.database_url.rsplit("application_name=", 1)[1]
        with self.engine.connect() as conn:
            return bool(
                conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = :n "
                        "AND query LIKE '%pg_try_advisory_xact_lock%'"
                    ),
                    {"n": name},
                ).scalar()
            )


def _established_local_ports() -> set[int]:
    """Local ports of established TCP connections on this host (/proc/net/tcp{,6})."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == "01":  # ESTABLISHED
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@contextlib.contextmanager
def running_cluster(
    root: Path,
    region_file: Path,
    extra_env: dict[str, str],
    processes: int = 1,
    http_processes: int = 1,
) -> Iterator[Cluster]:
    """Two nodes on a new PostgreSQL database and HAProxy in front, both nodes UP;
    everything stopped and the database dropped afterwards. ``processes`` and
    ``http_processes``: each node's DIMSE and HTTP workers."""
    shared = root / "shared"
    shared.mkdir()
    with postgres_database() as url:
        env = {
            # What a user or a modality would lose if it lived in one node: the objects
            # and the key that signs sessions are shared; the spool stays per node.
            "NETPACS_BLOB_DIR": str(shared / "objects"),
            "NETPACS_AUTH_SECRET_FILE": str(shared / "auth-secret"),
            **extra_env,
        }
        nodes = [
            Netpacs(
                root / f"node{i}" / "data",
                # The node's name in pg_stat_activity: which node holds a job's lock.
                f"{url}?application_name=netpacs_node{i}",
                region_file,
                processes=processes,
                http_processes=http_processes,
                extra_env=env,
            )
            for i in (1, 2)
        ]
        for node in nodes:
            node.data_dir.parent.mkdir(parents=True)
        the_cluster = Cluster(nodes, sa.create_engine(url))
        try:
            for node in nodes:  # one after the other: the first migrates the index
                node.start()
            the_cluster.start_haproxy(root / "haproxy.log")
            wait_until(the_cluster.all_up, what="HAProxy finding both nodes ready")
            # The checks are HAProxy's and the operators': not served to the public.
            assert httpx.get(f"{the_cluster.url}/readyz").status_code == 404
            yield the_cluster
        finally:
            the_cluster.stop()
