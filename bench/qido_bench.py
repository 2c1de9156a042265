"""QIDO-RS study search: netpacs against Orthanc's DICOMweb plugin, same data, same run.

Generates (once) small synthetic studies (``bench/work/``, gitignored): ``--patients``
patients with ``--studies`` studies each, every study two series of a few 64x64 CT
slices. Starts Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``, SQLite index) and
``netpacs serve`` (SQLite index, files, default worker counts) with empty storage,
sends the same files to both with DCMTK ``storescu`` and checks that both find every
study. Then, in rounds that alternate the two servers (so that the shared machine's
load falls on both alike), it sends ``GET /studies?PatientID=<id>`` with 1 and with 8
concurrent clients (threads, one keep-alive connection each, every client cycling
through the patients) and times each request from its first byte sent to the last
byte of the answer read. netpacs is asked as a signed-in user (``--user``, default
the clinician of East Surrey's trust, so the access rules apply), every request with
its bearer token; each of its answers is audited before it is sent. Orthanc answers
without authentication or audit.

Prints p50 and p95 (milliseconds) and the requests per second for each server and
client count, and the ratios netpacs/Orthanc; exits non-zero on any failed request,
a wrong answer, or a server that holds other studies than were sent.

    .venv/bin/python bench/qido_bench.py
    .venv/bin/python bench/qido_bench.py --rounds 5 --requests 400 --json bench/results/qido.json
    .venv/bin/python bench/qido_bench.py --only netpacs --py-spy bench/work/qido.txt
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dicomweb_bench as wb  # Orthanc with its DICOMweb plugin
import store_bench as sb  # receivers, storescu

ISSUER = "RTP"
ROWS = 64
SERIES_PER_STUDY = 2
PY_SPY = sb.REPO / ".venv" / "bin" / "py-spy"


# -- the data set -------------------------------------------------------------------------


def patient_ids(patients: int) -> list[str]:
    return [f"RTP8{k:06d}" for k in range(patients)]


def ensure_studies(patients: int, studies: int, slices: int) -> Path:
    """Generate (once) the studies as Part 10 files in sb.PARTS folders."""
    root = sb.WORK / f"qido-{patients}x{studies}x{SERIES_PER_STUDY}x{slices}"
    series_dir = root / "files"
    marker = root / "COMPLETE"
    if marker.exists():
        return series_dir
    if root.exists():
        shutil.rmtree(root)
    sys.path.insert(0, str(sb.REPO / "src"))
    from pydicom.uid import generate_uid

    from netpacs.synthetic import make_ct_series

    print(f"generating {patients * studies} synthetic studies into {root} ...", flush=True)
    parts = [series_dir / f"part{k + 1}" for k in range(sb.PARTS)]
    for part in parts:
        part.mkdir(parents=True)
    n = 0
    for p, pid in enumerate(patient_ids(patients)):
        for s in range(studies):
            study_uid = generate_uid()
            for k in range(SERIES_PER_STUDY):
                for ds in make_ct_series(
                    slices,
                    patient_id=pid,
                    patient_name=f"SYNTHETIC^QIDO {p:06d}",
                    issuer=ISSUER,
                    study_uid=study_uid,
                    rows=ROWS,
                    columns=ROWS,
                    seed=p * 1000 + s * 10 + k,
                ):
                    ds.SeriesNumber = k + 1
                    ds.save_as(parts[n % sb.PARTS] / f"CT{n:07d}.dcm", enforce_file_format=True)
                    n += 1
    marker.write_text(f"{n}\n")
    return series_dir


def send_all(receiver: sb.Receiver, files: Path) -> None:
    """storescu over sb.PARTS associations; BenchError when any transfer failed."""
    env = {**os.environ, **sb.NODELAY_ENV}
    procs = []
    for part in sorted(p for p in files.iterdir() if p.is_dir()):
        cmd = ["storescu", "-aet", sb.CALLING_AE, "-aec", receiver.aet, "+sd", "+r"]
        cmd += ["+sp", "*.dcm", sb.HOST, str(receiver.port), str(part)]
        procs.append(subprocess.run(cmd, capture_output=True, check=False, env=env, timeout=900))
    for result in procs:
        errors = [
            ln
            for ln in result.stdout.decode(errors="replace").splitlines()
            if ln[:2] in ("E:", "F:")
        ]
        if result.returncode != 0 or errors:
            raise sb.BenchError(f"{receiver.name}: storescu exit {result.returncode}: {errors[:5]}")


# -- the servers --------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    receiver: sb.Receiver
    path: str  # QIDO root path, e.g. /dicomweb
    token: str | None = None
    latencies: dict[int, list[float]] = field(default_factory=dict)  # clients -> ms
    rates: dict[int, list[float]] = field(default_factory=dict)  # clients -> requests/s
    cpu: dict[int, list[float]] = field(default_factory=dict)  # clients -> CPU ms/request

    @property
    def headers(self) -> dict[str, str]:
        base = {"Accept": "application/dicom+json"}
        return {**base, "Authorization": f"Bearer {self.token}"} if self.token else base


@contextlib.contextmanager
def running(
    kind: str,
    keep: bool,
    user: str,
    baseline: Path | None = None,
    database_server: str | None = None,
) -> Iterator[Server]:
    """``kind`` orthanc, netpacs, or baseline: netpacs run from the sources ``baseline``
    (e.g. an older commit's ``src``, exported with ``git archive``) for a before/after.
    ``database_server``: each server's index in a new database there (PostgreSQL)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"qido-{kind}-", dir=sb.WORK))
    stack = contextlib.ExitStack()
    database = stack.enter_context(sb.fresh_database(database_server))
    if kind == "orthanc":
        if database is None:
            receiver = wb.start_orthanc_dicomweb(workdir)
        else:
            settings = sb.orthanc_postgresql(database)
            receiver = sb.start_orthanc(
                workdir,
                **{
                    **settings,
                    "Name": "dicomweb-bench",
                    "Plugins": [wb.DICOMWEB_PLUGIN, sb.ORTHANC_PG_PLUGIN],
                    "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
                },
            )
        path = "/dicom-web"
    else:
        saved = os.environ.get("PYTHONPATH")
        if kind == "baseline":
            assert baseline is not None
            os.environ["PYTHONPATH"] = str(baseline.resolve())  # ahead of the editable install
        try:
            receiver = sb.start_netpacs(workdir, sb.DEFAULT_NETPACS_CMD, database)
        finally:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved
        if kind == "baseline":
            receiver.name = "netpacs before"
        path = "/dicomweb"
    try:
        sb.wait_for_echo(receiver)
        wb.wait_for_http(f"http://{sb.HOST}:{receiver.http_port}{path}", receiver)
        token = None
        if kind != "orthanc":
            conn = http.client.HTTPConnection(sb.HOST, receiver.http_port, timeout=30)
            body = urlencode({"username": user, "password": "demo"})
            conn.request(
                "POST",
                "/auth/token",
                body,
                {"Content-Type": "application/x-www-form-urlencoded"},
            )
            resp = conn.getresponse()
            answer = resp.read()
            if resp.status != 200:
                raise sb.BenchError(f"sign-in as {user}: {resp.status} {answer[:200]!r}")
            token = str(json.loads(answer)["access_token"])
            conn.close()
        yield Server(receiver.name, receiver, path, token)
    finally:
        receiver.stop()
        stack.close()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def count_studies(server: Server) -> int:
    conn = http.client.HTTPConnection(sb.HOST, server.receiver.http_port, timeout=60)
    conn.request("GET", f"{server.path}/studies?limit=100000", headers=server.headers)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    if resp.status != 200:
        raise sb.BenchError(f"{server.name}: /studies {resp.status} {body[:200]!r}")
    return len(json.loads(body))


# -- the measurement ----------------------------------------------------------------------


def run_clients(
    server: Server, ids: list[str], clients: int, requests: int, studies: int
) -> tuple[list[float], float]:
    """``requests`` searches spread over ``clients`` threads; (latencies in ms, req/s)."""
    per_client = max(1, requests // clients)
    results: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    start = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(sb.HOST, server.receiver.http_port, timeout=60)
        headers = server.headers
        mine = results[k]
        try:
            conn.connect()
            start.wait(timeout=60)
            for i in range(per_client):
                pid = ids[(k * 7919 + i) % len(ids)]
                t0 = time.perf_counter()
                conn.request("GET", f"{server.path}/studies?PatientID={pid}", headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                mine.append((time.perf_counter() - t0) * 1000)
                if resp.status != 200:
                    errors.append(f"{resp.status} {body[:200]!r}")
                    return
                if i % 16 == 0 and len(json.loads(body)) != studies:
                    errors.append(f"PatientID={pid}: {len(json.loads(body))} studies")
                    return
        except (OSError, http.client.HTTPException, threading.BrokenBarrierError) as exc:
            errors.append(repr(exc))
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait(timeout=60)
    t0 = time.perf_counter()
    for t in threads:
        t.join(timeout=600)
    seconds = time.perf_counter() - t0
    if errors or any(t.is_alive() for t in threads):
        raise sb.BenchError(f"{server.name}, {clients} clients: {errors[:3] or 'timed out'}")
    latencies = [ms for mine in results for ms in mine]
    return latencies, len(latencies) / seconds


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@contextlib.contextmanager
def py_spy(server: Server, out: Path | None) -> Iterator[None]:
    """py-spy record of the server's processes (netpacs's workers) while measuring: only
    the threads holding the GIL (``--gil``), so that waits (a lock, a queue, an fsync
    in C) are not counted as work."""
    if out is None or server.name != "netpacs":
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(PY_SPY), "record", "--subprocesses", "--format", "raw", "--rate", "200", "--gil"]
    cmd += ["--output", str(out), "--pid", str(server.receiver.proc.pid)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    try:
        yield
    finally:
        proc.send_signal(2)  # SIGINT: py-spy writes what it has
        proc.wait(timeout=60)


# -- report -------------------------------------------------------------------------------


def report(servers: list[Server], counts: list[int]) -> str:
    lines = [
        "| clients | measure | "
        + " | ".join(s.name for s in servers)
        + " | ratio netpacs/Orthanc |"
    ]
    lines.append("|---" * (len(servers) + 3) + "|")
    for clients in counts:
        for title, pct in (("p50 ms", 50.0), ("p95 ms", 95.0)):
            values = {
                s.name: percentile(s.latencies[clients], pct)
                for s in servers
                if s.latencies.get(clients)
            }
            cells = [f"{values[s.name]:.2f}" if s.name in values else "-" for s in servers]
            o, n = values.get("Orthanc"), values.get("netpacs")
            ratio = f"**{n / o:.2f}**" if o and n else "-"
            lines.append(f"| {clients} | {title} | " + " | ".join(cells) + f" | {ratio} |")
        rates = {
            s.name: statistics.median(s.rates[clients]) for s in servers if s.rates.get(clients)
        }
        cells = [f"{rates[s.name]:.0f}" if s.name in rates else "-" for s in servers]
        o, n = rates.get("Orthanc"), rates.get("netpacs")
        ratio = f"{n / o:.2f}" if o and n else "-"
        lines.append(f"| {clients} | requests/s | " + " | ".join(cells) + f" | {ratio} |")
        cpus = {s.name: statistics.median(s.cpu[clients]) for s in servers if s.cpu.get(clients)}
        cells = [f"{cpus[s.name]:.2f}" if s.name in cpus else "-" for s in servers]
        o, n = cpus.get("Orthanc"), cpus.get("netpacs")
        ratio = f"{n / o:.2f}" if o and n else "-"
        lines.append(
            f"| {clients} | server CPU ms/request | " + " | ".join(cells) + f" | {ratio} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--patients", type=int, default=100, help="patients (default 100)")
    p.add_argument("--studies", type=int, default=2, help="studies per patient (default 2)")
    p.add_argument("--slices", type=int, default=3, help="slices per series (default 3)")
    p.add_argument("--clients", default="1,8", help="concurrent clients (default 1,8)")
    p.add_argument("--requests", type=int, default=300, help="requests per round (default 300)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per server (default 3)")
    p.add_argument("--user", default="rtp.clinician", help="netpacs demo user to sign in as")
    p.add_argument("--only", choices=["orthanc", "netpacs"], help="measure one server only")
    p.add_argument("--py-spy", type=Path, help="record netpacs with py-spy (raw) into this file")
    p.add_argument(
        "--baseline",
        type=Path,
        help="also measure netpacs run from these sources (a src directory) for a before/after",
    )
    p.add_argument(
        "--database-url",
        help="a PostgreSQL server (URL): each server's index in a new database there"
        " (Orthanc through its PostgreSQL index plugin), dropped afterwards",
    )
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the servers' work directories")
    args = p.parse_args(argv)
    args.client_counts = [int(c) for c in args.clients.split(",") if c.strip()]
    if not args.client_counts or min(args.client_counts) < 1 or args.patients < 1:
        p.error("--clients and --patients must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    kinds = [args.only] if args.only else ["orthanc", "netpacs"]
    if args.baseline:
        kinds.append("baseline")
    if "orthanc" in kinds and not Path(wb.DICOMWEB_PLUGIN).exists():
        print(
            "Orthanc's DICOMweb plugin is missing: apt-get install orthanc-dicomweb",
            file=sys.stderr,
        )
        return 2
    sb.WORK.mkdir(parents=True, exist_ok=True)
    files = ensure_studies(args.patients, args.studies, args.slices)
    ids = patient_ids(args.patients)
    expected = args.patients * args.studies
    try:
        with contextlib.ExitStack() as stack:
            servers = [
                stack.enter_context(
                    running(kind, args.keep, args.user, args.baseline, args.database_url)
                )
                for kind in kinds
            ]
            for server in servers:
                send_all(server.receiver, files)
                held = count_studies(server)
                if held != expected:
                    raise sb.BenchError(f"{server.name} holds {held} studies, not {expected}")
                run_clients(server, ids, 2, 40, args.studies)  # warm-up: connections, caches
            for r in range(args.rounds):
                for clients in args.client_counts:
                    order = servers if r % 2 == 0 else servers[::-1]
                    for server in order:
                        with py_spy(
                            server,
                            args.py_spy if r == 0 and clients == args.client_counts[-1] else None,
                        ):
                            cpu0 = sb.cpu_seconds(server.receiver.proc.pid)
                            ms, rate = run_clients(
                                server, ids, clients, args.requests, args.studies
                            )
                            cpu = (sb.cpu_seconds(server.receiver.proc.pid) - cpu0) / len(ms)
                        server.latencies.setdefault(clients, []).extend(ms)
                        server.rates.setdefault(clients, []).append(rate)
                        server.cpu.setdefault(clients, []).append(cpu * 1000)
                        print(
                            f"round {r + 1}, {clients} clients, {server.name}: "
                            f"p50 {percentile(ms, 50):.2f} ms, p95 {percentile(ms, 95):.2f} ms, "
                            f"{rate:.0f}/s, server CPU {cpu * 1000:.2f} ms/request",
                            flush=True,
                        )
    except (sb.BenchError, OSError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    print()
    print(
        f"QIDO-RS GET /studies?PatientID=..., {expected} studies of {args.patients} patients, "
        f"{dt.date.today().isoformat()}, {platform.node()} ({os.cpu_count()} cores), "
        f"netpacs as {args.user}; index {'PostgreSQL' if args.database_url else 'SQLite'};"
        f" {args.rounds} rounds of {args.requests} requests per "
        f"client count; load average {os.getloadavg()[0]:.2f}"
    )
    print(report(servers, args.client_counts))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "studies": expected,
                    "user": args.user,
                    "index": "postgresql" if args.database_url else "sqlite",
                    "servers": {
                        s.name: {
                            "latencies_ms": s.latencies,
                            "requests_per_s": s.rates,
                            "cpu_ms_per_request": s.cpu,
                        }
                        for s in servers
                    },
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
