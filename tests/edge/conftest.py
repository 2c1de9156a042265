"""A regional core and a site's edge node, as real processes, with a link the tests
cut and restore (issue 13).

The core is a ``netpacs serve`` on PostgreSQL; the edge is another with
``NETPACS_ROLE=edge`` for East Sussex (RXC) at Eastbourne (EDGH) on SQLite, reaching the
core's HTTP port through a :class:`~tests.edge.proxy.LinkProxy`. Demo mode on both: the
edge signs in with the demo edge account ``edge.rxc``. One pair per test module; tests
that cut the link, stop the core or kill the edge put it back before they end.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import Netpacs, free_port, postgres_database, wait_until, write_region
from tests.edge.helpers import metric
from tests.edge.proxy import LinkProxy

EDGE_TRUST = "RXC"
EDGE_SITE = "EDGH"
EDGE_CLIENT = "edge.rxc"
#: Seconds an HTTP request of a test may take (a sign-in on a busy 2-core machine).
TIMEOUT = 60.0


@dataclass
class CoreAndEdge:
    core: Netpacs
    edge: Netpacs
    link: LinkProxy
    edge_env: dict[str, str] = field(default_factory=dict)

    def restart_edge(self, *, kill: bool = False) -> None:
        """Stop the edge (SIGKILL with ``kill``, else SIGTERM) and start it again on the
        same data directory and ports."""
        if kill:
            self.edge.kill()
        else:
            self.edge.stop()
        self.edge.start()

    def heal(self) -> None:
        """Link restored, core and edge running, and the edge knows the link is up
        (what each test may assume: a process that failed to reach the core a moment
        ago does not try again while the edge's link state still says down)."""
        self.link.restore()
        if self.core.proc is None or self.core.proc.poll() is not None:
            self.core.start()
        if self.edge.proc is None or self.edge.proc.poll() is not None:
            self.edge.start()
        wait_until(
            lambda: metric(self.edge, "netpacs_edge_link_up") == 1,
            timeout=30,
            what="the edge to see the link up",
        )


def edge_env(upstream_url: str, **extra: str) -> dict[str, str]:
    return {
        "NETPACS_ROLE": "edge",
        "NETPACS_UPSTREAM_URL": upstream_url,
        "NETPACS_EDGE_TRUST": EDGE_TRUST,
        "NETPACS_EDGE_SITE": EDGE_SITE,
        # The core's answers, where a test expects them: a busy 2-core machine can take
        # longer than the 2 s bound of a hospital. A cut link refuses connections, so
        # the fallback to the cache is immediate either way.
        "NETPACS_UPSTREAM_TIMEOUT_SECONDS": "10",
        **extra,
    }


def start_core_and_edge(
    folder: Path, core_db: str, core_env: dict[str, str] | None = None, **edge_extra: str
) -> CoreAndEdge:
    region = write_region(folder / "region.toml", {})
    core = Netpacs(
        data_dir=folder / "core",
        database_url=core_db,
        region_file=region,
        processes=1,
        http_processes=2,
        extra_env=dict(core_env or {}),
    )
    core.start()
    link = LinkProxy(core.http_port, free_port()).start()
    env = edge_env(link.url, **edge_extra)
    edge = Netpacs(
        data_dir=folder / "edge",
        database_url=f"sqlite:///{folder / 'edge' / 'index.sqlite'}",
        region_file=region,
        processes=1,
        http_processes=1,
        extra_env=env,
        user="rxc.clinician",
    )
    try:
        edge.start()
    except Exception:
        link.stop()
        core.stop()
        raise
    return CoreAndEdge(core=core, edge=edge, link=link, edge_env=env)


@pytest.fixture(scope="module")
def core_and_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoreAndEdge]:
    """A core (PostgreSQL) and an edge (SQLite) for the module, link up."""
    folder = tmp_path_factory.mktemp("edge")
    with postgres_database() as core_db:
        pair = start_core_and_edge(folder, core_db, **EDGE_SETTINGS)
        try:
            yield pair
        finally:
            pair.edge.stop()
            pair.link.stop()
            pair.core.stop()


#: Edge settings for the tests: quick retries and heartbeats.
EDGE_SETTINGS = {
    "NETPACS_FORWARD_RETRY_MAX_SECONDS": "1",
    "NETPACS_HEARTBEAT_SECONDS": "1",
    "NETPACS_EDGE_ORDERS_SECONDS": "2",
}
