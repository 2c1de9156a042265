"""Edge benchmark (issue 13): store and forward between a site's edge node and the core.

One run, on the fault tests' set-up (``start_core_and_edge`` in tests/edge/conftest.py:
a core on PostgreSQL, an edge on SQLite, an asyncio TCP proxy between them), with a
synthetic CT data set of N instances (default 1,000 slices of 512x512, 16 bits) sent by
DCMTK ``storescu`` from the site's CT (``EDGH_CT1``) to the edge:

1. **Link up**: the edge's ingest rate (storescu start to exit) and its forwarding rate
   (storescu start until the edge's backlog is empty, every object confirmed by the
   core), and the largest backlog seen meanwhile (the edge's ``/metrics``, every 0.25 s).
2. **Drain after a cut**: the link is cut, another N instances are stored at the edge,
   the link is restored; the time from the restore until the backlog is empty.
3. **Orthanc, same run**: Orthanc (Debian's, no plugins) as the site's node, the same
   core as its C-STORE peer (``DicomModalities``, through a proxy like the edge's); N
   instances stored to Orthanc, then the time of ``POST /modalities/core/store``
   (synchronous) of the studies, which ends
   when the core has answered every C-STORE. Orthanc does not check what the core
   holds afterwards; netpacs' figure includes that check.

Each phase has its own data set (fresh UIDs, RXC patients; ``--studies`` studies, 10 by
default: an outage's backlog is many studies), generated once under
``bench/work/edge/`` and reused. Each transfer is checked at the core: each study's
NumberOfStudyRelatedInstances over QIDO-RS must be its number of files.

    .venv/bin/python bench/edge_bench.py                 # N = 1000
    .venv/bin/python bench/edge_bench.py --instances 200 --size 256

Needs DCMTK, Orthanc (``/usr/sbin/Orthanc``) and PostgreSQL on 127.0.0.1:5432
(``make test-setup``). See bench/README.md for the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the fault tests' set-up code lives in tests/
sys.path.insert(0, str(REPO / "bench"))

import httpx  # noqa: E402
import pydicom  # noqa: E402
import store_bench as sb  # noqa: E402  (the C-STORE benchmark's Orthanc)
from tests.conftest import Netpacs, free_port, postgres_database  # noqa: E402
from tests.edge.conftest import CoreAndEdge, start_core_and_edge  # noqa: E402
from tests.edge.proxy import LinkProxy  # noqa: E402

WORK = REPO / "bench" / "work" / "edge"
CT = "EDGH_CT1"
TIMEOUT = 1800.0
PATIENTS = {"up": "RXC881", "cut": "RXC882", "orthanc": "RXC883"}


def dataset(name: str, n: int, size: int, studies: int) -> Path:
    """``n`` synthetic CT slices of ``size`` x ``size`` in ``studies`` studies of one
    patient each (generated once)."""
    folder = WORK / f"{name}-{n}x{size}-{studies}"
    marker = folder / "COMPLETE"
    if marker.exists():
        return folder
    sys.path.insert(0, str(REPO / "src"))
    from netpacs.synthetic import write_ct_series

    print(f"generating {n} CT slices in {studies} studies into {folder} ...", flush=True)
    for k in range(studies):
        write_ct_series(
            folder / "series" / f"study{k + 1:03d}",
            n // studies + (1 if k < n % studies else 0),
            patient_id=f"{PATIENTS[name]}{k:03d}",
            issuer="RXC",
            rows=size,
            columns=size,
            seed=k,
        )
    marker.write_text("ok\n")
    return folder


def studies_of(folder: Path) -> dict[str, int]:
    """Each study's UID and its number of instances."""
    found: dict[str, int] = {}
    for sub in sorted((folder / "series").iterdir()):
        files = sorted(sub.glob("*.dcm"))
        uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        found[uid] = len(files)
    return found


def storescu(port: int, aec: str, folder: Path, log: Path) -> float:
    """Send the folder over one association; seconds. Fails on any error."""
    cmd = ["storescu", "-aet", CT, "-aec", aec, "+sd", "+r", "127.0.0.1", str(port)]
    started = time.monotonic()
    with log.open("wb") as out:
        code = subprocess.run(
            [*cmd, str(folder / "series")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TCP_NODELAY": "1"},
            timeout=TIMEOUT,
            check=False,
        ).returncode
    seconds = time.monotonic() - started
    errors = [ln for ln in log.read_text(errors="replace").splitlines() if ln[:2] in ("E:", "F:")]
    if code != 0 or errors:
        raise sb.BenchError(f"storescu to {aec}:{port} failed ({code}): {errors[-5:]}")
    return seconds


#: How often the bench looks at the edge's backlog. Each look is an HTTP request the edge
#: answers with a count of its queue: looking every 0.05 s (the tests' wait_until), with
#: a new client (TLS context) each time, took a good part of one of the two cores from
#: the processes measured.
POLL = 0.25
_METRICS = httpx.Client(timeout=60)


def metric(server: Netpacs, name: str) -> float:
    """A gauge of the server's ``/metrics`` (one persistent client)."""
    text = _METRICS.get(f"{server.base_url}/metrics").text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    if not found:
        raise sb.BenchError(f"{name} not in /metrics")
    return float(found.group(1))


def poll_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise sb.BenchError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(POLL)


def core_count(pair: CoreAndEdge, study: str) -> int:
    answer = pair.core.http.get(
        f"{pair.core.dicomweb_url}/studies",
        params={"StudyInstanceUID": study, "includefield": "00201208"},
    )
    found = answer.json() if answer.status_code == 200 else []
    return int(found[0]["00201208"]["Value"][0]) if found else 0


class BacklogWatch:
    """Polls the edge's backlog every 0.25 s: the largest seen, and when it was last 0."""

    def __init__(self, pair: CoreAndEdge) -> None:
        self.pair = pair
        self.largest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            try:
                self.largest = max(
                    self.largest, metric(self.pair.edge, "netpacs_edge_forward_backlog")
                )
            except Exception:  # a missed sample is not a result
                continue

    def __enter__(self) -> BacklogWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def empty_backlog(pair: CoreAndEdge) -> bool:
    return metric(pair.edge, "netpacs_edge_forward_backlog") == 0


@dataclass
class Figures:
    n: int
    ingest_s: float
    forwarded_s: float
    largest_backlog: float
    backlog_at_ingest_end: float
    drain_s: float
    orthanc_s: float

    def rates(self) -> dict[str, float]:
        return {
            "edge_ingest_per_s": self.n / self.ingest_s,
            "edge_forward_per_s": self.n / self.forwarded_s,
            # Confirmed by the core while the site was still storing: the rate the
            # forwarder keeps up with; the rest is the last batches' lag.
            "forward_during_ingest_per_s": (self.n - self.backlog_at_ingest_end) / self.ingest_s,
            "drain_per_s": self.n / self.drain_s,
            "orthanc_forward_per_s": self.n / self.orthanc_s,
        }


def link_up(pair: CoreAndEdge, folder: Path, logs: Path) -> tuple[float, float, float, float]:
    with BacklogWatch(pair) as watch:
        started = time.monotonic()
        ingest = storescu(pair.edge.port, "NETPACS", folder, logs / "storescu-up.log")
        at_end = metric(pair.edge, "netpacs_edge_forward_backlog")
        poll_until(lambda: empty_backlog(pair), "an empty backlog")
        forwarded = time.monotonic() - started
    return ingest, forwarded, max(watch.largest, at_end), at_end


def drain(pair: CoreAndEdge, folder: Path, n: int, logs: Path) -> float:
    pair.link.cut()
    try:
        storescu(pair.edge.port, "NETPACS", folder, logs / "storescu-cut.log")
        poll_until(
            lambda: metric(pair.edge, "netpacs_edge_forward_backlog") == n,
            "the backlog counted",
            timeout=60,
        )
    finally:
        pair.link.restore()
    restored = time.monotonic()
    poll_until(lambda: empty_backlog(pair), "the backlog drained")
    return time.monotonic() - restored


def orthanc_forward(pair: CoreAndEdge, folder: Path, workdir: Path) -> float:
    # Through a proxy like the edge's, so that both cross the same kind of link.
    link = LinkProxy(pair.core.port, free_port()).start()
    orthanc = sb.start_orthanc(
        workdir,
        DicomAet=CT,  # the core knows the site's CT: it may store
        DicomModalities={"core": ["NETPACS", "127.0.0.1", link.port]},
        DicomScuTimeout=120,  # a loaded 2-core machine: the default 10 s ends the transfer
    )
    try:
        sb.wait_for_echo(orthanc)
        storescu(orthanc.port, orthanc.aet, folder, workdir / "storescu-orthanc.log")
        base = f"http://127.0.0.1:{orthanc.http_port}"
        with urllib.request.urlopen(f"{base}/studies", timeout=30) as resp:
            study_ids = json.load(resp)
        body = json.dumps({"Resources": study_ids, "Synchronous": True}).encode()
        request = urllib.request.Request(f"{base}/modalities/core/store", data=body)
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as resp:
                answer = json.load(resp)
        except urllib.error.HTTPError as exc:
            log = orthanc.log_path.read_text(errors="replace").splitlines()[-15:]
            raise sb.BenchError(
                f"Orthanc's transfer failed: {exc} {exc.read()[:500]!r}\n" + "\n".join(log)
            ) from None
        seconds = time.monotonic() - started
        if int(answer.get("FailedInstancesCount", 0)):
            raise sb.BenchError(f"Orthanc's transfer failed: {answer}")
        return seconds
    finally:
        orthanc.stop()
        link.stop()


def check(pair: CoreAndEdge, folder: Path) -> None:
    for study, n in studies_of(folder).items():
        held = core_count(pair, study)
        if held != n:
            raise sb.BenchError(f"the core holds {held} of study {study}'s {n} instances")


def report(f: Figures, size: int, studies: int, lanes: int) -> str:
    r = f.rates()
    host = f"{platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}"
    return "\n".join(
        [
            f"edge bench {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {host}",
            f"{f.n} CT instances of {size}x{size} (16 bits) in {studies} studies per phase; "
            f"{lanes} forwarding lanes",
            "",
            f"link up:  edge ingest {r['edge_ingest_per_s']:.1f}/s ({f.ingest_s:.1f} s); "
            f"forwarded and confirmed {r['edge_forward_per_s']:.1f}/s ({f.forwarded_s:.1f} s "
            "from the first store)",
            "          forwarding / ingest = "
            f"{r['edge_forward_per_s'] / r['edge_ingest_per_s']:.2f}"
            f"; backlog: largest {f.largest_backlog:.0f}, at the end of ingest "
            f"{f.backlog_at_ingest_end:.0f}",
            f"          confirmed while the site stored {r['forward_during_ingest_per_s']:.1f}/s "
            f"({r['forward_during_ingest_per_s'] / r['edge_ingest_per_s']:.2f} of ingest); "
            f"the last object confirmed {f.forwarded_s - f.ingest_s:.1f} s after the last store",
            f"drain:    {f.n} waiting after a cut reach the core {f.drain_s:.1f} s after the "
            f"restore ({r['drain_per_s']:.1f}/s)",
            f"Orthanc:  C-STORE of the same number to the same core {f.orthanc_s:.1f} s "
            f"({r['orthanc_forward_per_s']:.1f}/s)",
            f"ratio:    netpacs drain / Orthanc forward = "
            f"{r['drain_per_s'] / r['orthanc_forward_per_s']:.2f}",
        ]
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", type=int, default=1000, help="instances per phase")
    p.add_argument("--size", type=int, default=512, help="rows and columns of each slice")
    p.add_argument("--studies", type=int, default=10, help="studies the instances are in")
    p.add_argument("--lanes", type=int, default=2, help="NETPACS_FORWARD_LANES of the edge")
    p.add_argument("--json", type=Path, help="write the figures here too")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    n = args.instances
    up, cut, orth = (dataset(name, n, args.size, args.studies) for name in ("up", "cut", "orthanc"))
    WORK.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=WORK) as tmp, postgres_database() as core_db:
        folder = Path(tmp)
        pair = start_core_and_edge(
            folder,
            core_db,
            NETPACS_FORWARD_RETRY_MAX_SECONDS="1",
            NETPACS_HEARTBEAT_SECONDS="2",
            NETPACS_FORWARD_LANES=str(args.lanes),
        )
        try:
            ingest, forwarded, largest, at_end = link_up(pair, up, folder)
            check(pair, up)
            print(f"link up: ingest {ingest:.1f} s, forwarded {forwarded:.1f} s", flush=True)
            drained = drain(pair, cut, n, folder)
            check(pair, cut)
            print(f"drain: {drained:.1f} s", flush=True)
            orthanc_dir = folder / "orthanc"
            orthanc_dir.mkdir()
            orthanc = orthanc_forward(pair, orth, orthanc_dir)
            check(pair, orth)
        finally:
            pair.edge.stop()
            pair.link.stop()
            pair.core.stop()
    figures = Figures(n, ingest, forwarded, largest, at_end, drained, orthanc)
    print(report(figures, args.size, args.studies, args.lanes))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**figures.__dict__, **figures.rates()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
