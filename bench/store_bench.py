"""C-STORE ingest benchmark: netpacs against Orthanc, both fed by DCMTK storescu.

Generates a synthetic CT series once (``bench/work/``, gitignored), then for
1 association and for 4 parallel associations times DCMTK ``storescu``
sending every slice to a freshly started Orthanc and to a freshly started
``netpacs serve``, alternately, each with empty storage. Prints instances per
second and the ratio netpacs/Orthanc; exits non-zero if any transfer failed.

    .venv/bin/python bench/store_bench.py                # both, 2,000 slices
    .venv/bin/python bench/store_bench.py --only orthanc --slices 500
    .venv/bin/python bench/store_bench.py --netpacs-cmd \\
        'storescp --fork -od {data_dir} {dimse_port}'    # a stand-in receiver
    .venv/bin/python bench/store_bench.py --cluster     # + two nodes on PostgreSQL and S3
    .venv/bin/python bench/store_bench.py --database-url \
        postgresql://postgres:postgres@127.0.0.1:5432/postgres   # both indexes on PostgreSQL

``--database-url`` names a PostgreSQL server (and a database to connect to there): each
receiver started gets a new, empty database on it, dropped afterwards; netpacs keeps
its index there, and so does Orthanc (its PostgreSQL index plugin, Debian's
``orthanc-postgresql``; files stay on disk for both).

``--cluster`` adds a third receiver: two ``netpacs serve`` nodes on a new database of
the PostgreSQL on 127.0.0.1:5432 and one SeaweedFS (S3) started here, behind HAProxy
running deploy/haproxy/haproxy.cfg (the set-up of tests/cluster/test_node_faults.py,
imported from there), each node with the default worker counts.

See bench/README.md for the figures measured so far.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / "work"
HOST = "127.0.0.1"
CALLING_AE = "ESH_CT1"  # a modality AE of East Surrey Hospital in the demo region
FIND_AE = "RTP_WS1"  # the trust's reporting workstation, to count what was stored
PARTS = 4
ORTHANC_BIN = "/usr/sbin/Orthanc"
ORTHANC_PG_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so"
DEFAULT_NETPACS_CMD = f"{REPO / '.venv' / 'bin' / 'netpacs'} serve"
NODELAY_ENV = {"TCP_NODELAY": "1"}


class BenchError(RuntimeError):
    """A receiver did not start or a transfer failed."""


# --------------------------------------------------------------------------
# data set


def ensure_dataset(slices: int) -> Path:
    """Generate (once) ``slices`` CT slices split over PARTS subdirectories."""
    root = WORK / f"ct{slices}"
    series = root / "series"
    marker = root / "COMPLETE"
    if marker.exists() and marker.read_text().strip() == str(slices):
        return series
    if root.exists():
        shutil.rmtree(root)
    sys.path.insert(0, str(REPO / "src"))
    from netpacs.synthetic import make_ct_series

    print(f"generating {slices} synthetic CT slices into {root} ...", flush=True)
    started = time.monotonic()
    parts = [series / f"part{k + 1}" for k in range(PARTS)]
    for part in parts:
        part.mkdir(parents=True)
    for i, ds in enumerate(make_ct_series(slices, patient_id="RTP9000042", issuer="RTP")):
        part = parts[i * PARTS // slices]
        ds.save_as(part / f"CT{i + 1:06d}.dcm", enforce_file_format=True)
    marker.write_text(f"{slices}\n")
    print(f"  done in {time.monotonic() - started:.1f} s", flush=True)
    return series


def read_study_uid(dataset: Path) -> str:
    import pydicom

    first = next(iter(sorted(dataset.glob("part*/*.dcm"))))
    return str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)


# --------------------------------------------------------------------------
# receivers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Receiver:
    """A running receiver process (its own process group)."""

    name: str
    aet: str
    port: int
    http_port: int
    workdir: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    count_url: str | None = None
    notes: list[str] = field(default_factory=list)
    managed: bool = False  # stopped by the context that started it (the cluster)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stored_count(self, study_uid: str) -> int | None:
        """Instances held after a run: Orthanc's REST statistics, else C-FIND.

        ``None`` when the receiver cannot tell (e.g. a stand-in without C-FIND).
        """
        if self.count_url is not None:
            with urllib.request.urlopen(self.count_url, timeout=10) as resp:
                stats = json.load(resp)
            return int(stats["CountInstances"])
        return count_by_cfind(self, study_uid)

    def stop(self) -> None:
        if self.managed:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # Children of a forking receiver (storescp --fork) share the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def count_by_cfind(receiver: Receiver, study_uid: str) -> int | None:
    """Count the study's instances with an IMAGE-level C-FIND (as RTP's workstation)."""
    out = receiver.workdir / "cfind"
    out.mkdir(exist_ok=True)
    cmd = [
        "findscu",
        "-S",
        "-aet",
        FIND_AE,
        "-aec",
        receiver.aet,
        "-X",
        "-od",
        str(out),
        "-k",
        "QueryRetrieveLevel=IMAGE",
        "-k",
        f"StudyInstanceUID={study_uid}",
        "-k",
        "SeriesInstanceUID",
        "-k",
        "SOPInstanceUID",
        HOST,
        str(receiver.port),
    ]
    result = subprocess.run(cmd, capture_output=True, check=False, timeout=600)
    if result.returncode != 0:
        return None
    return sum(1 for _ in out.glob("rsp*.dcm"))


def _spawn(cmd: Sequence[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(log_path.parent),
            start_new_session=True,
        )


def start_orthanc(workdir: Path, **extra: object) -> Receiver:
    """Orthanc on free ports with empty storage; ``extra`` adds or overrides settings."""
    port, http_port = free_port(), free_port()
    config: dict[str, object] = {
        "Name": "store-bench",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "DicomAet": "ORTHANC",
        "DicomPort": port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowFind": True,
        "UnknownSopClassAccepted": True,
        "Plugins": [],
        **extra,
    }
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = workdir / "orthanc.log"
    env = {**os.environ, **NODELAY_ENV}
    proc = _spawn([ORTHANC_BIN, str(config_path)], env, log_path)
    return Receiver(
        name="Orthanc",
        aet="ORTHANC",
        port=port,
        http_port=http_port,
        workdir=workdir,
        proc=proc,
        log_path=log_path,
        count_url=f"http://{HOST}:{http_port}/statistics",
    )


@contextlib.contextmanager
def fresh_database(server_url: str | None) -> Iterator[str | None]:
    """A new empty database on the PostgreSQL server ``server_url`` names (its URL),
    dropped afterwards; None without a server (each receiver's own SQLite)."""
    if server_url is None:
        yield None
        return
    import sqlalchemy as sa

    admin_url = sa.make_url(server_url).set(drivername="postgresql+psycopg")
    name = f"netpacs_bench_{os.urandom(6).hex()}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield admin_url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


def orthanc_postgresql(database_url: str) -> dict[str, object]:
    """Orthanc settings keeping its index in the PostgreSQL database ``database_url``."""
    import sqlalchemy as sa

    url = sa.make_url(database_url)
    return {
        "Plugins": [ORTHANC_PG_PLUGIN],
        "PostgreSQL": {
            "EnableIndex": True,
            "EnableStorage": False,
            "Host": url.host or HOST,
            "Port": url.port or 5432,
            "Database": url.database,
            "Username": url.username or "postgres",
            "Password": url.password or "",
            "Lock": False,
        },
    }


def start_netpacs(workdir: Path, cmd_template: str, database_url: str | None = None) -> Receiver:
    port, http_port, mllp_port = free_port(), free_port(), free_port()
    data_dir = workdir / "data"
    data_dir.mkdir()
    cmd = [
        part.format(dimse_port=port, http_port=http_port, data_dir=data_dir)
        for part in shlex.split(cmd_template)
    ]
    env = {
        **os.environ,
        **NODELAY_ENV,
        "NETPACS_DATA_DIR": str(data_dir),
        "NETPACS_DIMSE_PORT": str(port),
        "NETPACS_HTTP_PORT": str(http_port),
        "NETPACS_MLLP_PORT": str(mllp_port),
        "NETPACS_AE_TITLE": "NETPACS",
        # Demo users (synthetic data only): the DICOMweb benchmark signs in as one.
        "NETPACS_DEMO": "true",
    }
    if database_url is not None:
        env["NETPACS_DATABASE_URL"] = database_url
    log_path = workdir / "netpacs.log"
    proc = _spawn(cmd, env, log_path)
    return Receiver(
        name="netpacs",
        aet="NETPACS",
        port=port,
        http_port=http_port,
        workdir=workdir,
        proc=proc,
        log_path=log_path,
    )


def wait_for_echo(receiver: Receiver, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    cmd = ["echoscu", "-to", "5", "-aet", CALLING_AE, "-aec", receiver.aet, HOST]
    cmd.append(str(receiver.port))
    while time.monotonic() < deadline:
        if receiver.proc.poll() is not None:
            raise BenchError(
                f"{receiver.name} exited with {receiver.proc.returncode} before answering "
                f"C-ECHO:\n{receiver.log_tail()}"
            )
        result = subprocess.run(cmd, capture_output=True, check=False, timeout=60)
        if result.returncode == 0:
            return
        time.sleep(0.25)
    raise BenchError(
        f"{receiver.name} did not answer C-ECHO within {timeout:.0f} s:\n{receiver.log_tail()}"
    )


@contextlib.contextmanager
def netpacs_cluster(workdir: Path) -> Iterator[Receiver]:
    """Two netpacs nodes (PostgreSQL, S3 on SeaweedFS) behind HAProxy, as the fault
    tests run them; the receiver is HAProxy's DIMSE port."""
    sys.path.insert(0, str(REPO))
    from tests.cluster.test_node_faults import results_cluster as running_cluster
    from tests.conftest import free_port as unused_port
    from tests.s3.conftest import seaweedfs_in

    with seaweedfs_in(workdir / "weed") as weed:
        env = {
            **NODELAY_ENV,
            "NETPACS_AE_TITLE": "NETPACS",
            "NETPACS_BLOB_URL": weed.bucket(),
            **weed.credentials(),
        }
        (workdir / "cluster").mkdir()
        with running_cluster(
            workdir / "cluster", unused_port(), env=env, processes=4, http_processes=2
        ) as cluster:
            assert cluster.haproxy is not None and cluster.nodes[0].log_path is not None
            yield Receiver(
                name=NAMES["cluster"],
                aet="NETPACS",
                port=cluster.dimse_port,
                http_port=cluster.http_port,
                workdir=workdir,
                proc=cluster.haproxy,
                log_path=cluster.nodes[0].log_path,
                managed=True,
            )


@contextlib.contextmanager
def running(
    kind: str, netpacs_cmd: str, keep: bool, database_server: str | None = None
) -> Iterator[Receiver]:
    workdir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=WORK))
    try:
        with contextlib.ExitStack() as stack:
            database = stack.enter_context(
                fresh_database(None if kind == "cluster" else database_server)
            )
            if kind == "cluster":
                receiver = stack.enter_context(netpacs_cluster(workdir))
            elif kind == "orthanc":
                extra = orthanc_postgresql(database) if database else {}
                receiver = start_orthanc(workdir, **extra)
            else:
                receiver = start_netpacs(workdir, netpacs_cmd, database)
            stack.callback(receiver.stop)
            wait_for_echo(receiver)
            yield receiver
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------
# measurement


@dataclass
class Measurement:
    receiver: str
    associations: int
    instances: int
    seconds: float
    ok: bool
    detail: str = ""
    cpu: float | None = None  # the receiver's CPU seconds (its processes) while sending

    @property
    def rate(self) -> float:
        return self.instances / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_ms(self) -> float | None:
        """The receiver's CPU per object, milliseconds (user and system time)."""
        return None if self.cpu is None else self.cpu / self.instances * 1000


def send(
    receiver: Receiver, dataset: Path, associations: int, slices: int, study_uid: str
) -> Measurement:
    """Run storescu over ``associations`` parallel associations; wall-clock time."""
    if associations == 1:
        targets = [[str(dataset)]]
    else:
        parts = sorted(p for p in dataset.iterdir() if p.is_dir())
        if associations != len(parts):
            raise BenchError(f"the data set has {len(parts)} parts, not {associations}")
        targets = [[str(p)] for p in parts]
    env = {**os.environ, **NODELAY_ENV}
    logs: list[Path] = []
    procs: list[subprocess.Popen[bytes]] = []
    cpu_before = None if receiver.managed else cpu_seconds(receiver.proc.pid)
    started = time.monotonic()
    for k, target in enumerate(targets):
        log_path = receiver.workdir / f"storescu-{associations}-{k + 1}.log"
        logs.append(log_path)
        cmd = [
            "storescu",
            "-aet",
            CALLING_AE,
            "-aec",
            receiver.aet,
            "+sd",
            "+r",
            "+sp",
            "*.dcm",
            HOST,
            str(receiver.port),
            *target,
        ]
        with log_path.open("wb") as log:
            procs.append(
                subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
                )
            )
    codes = [p.wait() for p in procs]
    seconds = time.monotonic() - started
    cpu = None if cpu_before is None else cpu_seconds(receiver.proc.pid) - cpu_before

    problems: list[str] = []
    for code, log_path in zip(codes, logs, strict=True):
        text = log_path.read_text(errors="replace")
        errors = [ln for ln in text.splitlines() if ln.startswith(("E:", "F:"))]
        if code != 0 or errors:
            tail = "\n    ".join((errors or text.splitlines())[-10:])
            problems.append(f"{log_path.name}: exit {code}\n    {tail}")
    stored = None
    detail = ""
    try:
        stored = receiver.stored_count(study_uid)
    except (OSError, ValueError, KeyError, subprocess.TimeoutExpired) as exc:
        problems.append(f"could not read the instance count: {exc}")
    if stored is None:
        detail = "instance count not verified (no C-FIND)"
    elif stored != slices:
        problems.append(f"{receiver.name} holds {stored} instances, expected {slices}")
    if receiver.proc.poll() is not None:
        problems.append(f"{receiver.name} exited with {receiver.proc.returncode}")
    return Measurement(
        receiver=receiver.name,
        associations=associations,
        instances=slices,
        seconds=seconds,
        ok=not problems,
        detail="\n".join(problems) or detail,
        cpu=cpu,
    )


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process and its descendants (Linux /proc), seconds: on
    a shared machine the receiver's own work, whatever else runs."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                pending += [int(c) for c in children]
    return total


# --------------------------------------------------------------------------
# report


def _fmt_rate(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.0f}"
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


NAMES = {
    "orthanc": "Orthanc",
    "netpacs": "netpacs",
    "cluster": "netpacs 2 nodes (PostgreSQL, S3, HAProxy)",
}
SHORT = {"orthanc": "Orthanc", "netpacs": "netpacs", "cluster": "2 nodes"}


def report(results: list[Measurement], kinds: list[str], associations: list[int]) -> str:
    names = NAMES
    header = "| receiver | " + " | ".join(f"{a} assoc. (inst/s)" for a in associations) + " |"
    lines = [header, "|---" * (len(associations) + 1) + "|"]
    medians: dict[tuple[str, int], float] = {}

    def runs(kind: str, a: int) -> list[Measurement]:
        return [m for m in results if m.receiver == names[kind] and m.associations == a and m.ok]

    for kind in kinds:
        cells = []
        for a in associations:
            rates = [m.rate for m in runs(kind, a)]
            if rates:
                medians[(kind, a)] = statistics.median(rates)
            cells.append(_fmt_rate(rates))
        lines.append(f"| {names[kind]} | " + " | ".join(cells) + " |")
    for kind in kinds:
        cpus = [[m.cpu_ms for m in runs(kind, a) if m.cpu_ms is not None] for a in associations]
        if any(cpus):
            cells = [f"{statistics.median(c):.2f}" if c else "-" for c in cpus]
            label = f"{SHORT[kind]} CPU ms/object"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    pairs = [("netpacs", "orthanc"), ("cluster", "orthanc"), ("cluster", "netpacs")]
    for top, bottom in pairs:
        if top not in kinds or bottom not in kinds:
            continue
        cells = []
        for a in associations:
            o, n = medians.get((bottom, a)), medians.get((top, a))
            cells.append(f"{n / o:.2f}" if o and n else "-")
        label = f"ratio {SHORT[top]}/{SHORT[bottom]}"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slices", type=int, default=2000, help="CT slices (default 2000)")
    p.add_argument(
        "--only", choices=["orthanc", "netpacs", "cluster"], help="measure one receiver only"
    )
    p.add_argument(
        "--cluster",
        action="store_true",
        help="also measure two netpacs nodes on PostgreSQL and S3 behind HAProxy",
    )
    p.add_argument(
        "--repeat", type=int, default=1, help="measurements per receiver and association count"
    )
    p.add_argument(
        "--associations",
        default="1,4",
        help="comma-separated association counts: 1 and/or 4 (default 1,4)",
    )
    p.add_argument(
        "--netpacs-cmd",
        default=DEFAULT_NETPACS_CMD,
        help=(
            "command starting the netpacs receiver; {dimse_port}, {http_port} and {data_dir} "
            "are substituted (default: .venv/bin/netpacs serve, configured by environment)"
        ),
    )
    p.add_argument(
        "--database-url",
        help=(
            "a PostgreSQL server (URL of a database there to connect to): each receiver "
            "gets a new database on it for its index (default: SQLite files)"
        ),
    )
    p.add_argument("--json", type=Path, help="also write the measurements to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep receivers' work directories")
    args = p.parse_args(argv)
    args.association_counts = sorted({int(a) for a in args.associations.split(",")})
    if not set(args.association_counts) <= {1, PARTS}:
        p.error(f"--associations takes 1 and/or {PARTS}")
    if args.slices < PARTS:
        p.error(f"--slices must be at least {PARTS}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    kinds = [args.only] if args.only else ["orthanc", "netpacs"]
    if args.cluster and not args.only:
        kinds.append("cluster")
    for tool in ("storescu", "echoscu"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: run scripts/ensure-system-packages.sh test", file=sys.stderr)
            return 2
    if "orthanc" in kinds and not os.access(ORTHANC_BIN, os.X_OK):
        print(f"{ORTHANC_BIN} not found: apt-get install orthanc", file=sys.stderr)
        return 2
    if "orthanc" in kinds and args.database_url and not os.path.exists(ORTHANC_PG_PLUGIN):
        print(f"{ORTHANC_PG_PLUGIN} not found: apt-get install orthanc-postgresql")
        return 2

    WORK.mkdir(parents=True, exist_ok=True)
    dataset = ensure_dataset(args.slices)
    study_uid = read_study_uid(dataset)
    results: list[Measurement] = []
    failed = False
    for _ in range(args.repeat):
        for associations in args.association_counts:
            for kind in kinds:
                label = f"{kind}, {associations} association(s)"
                try:
                    with running(kind, args.netpacs_cmd, args.keep, args.database_url) as receiver:
                        m = send(receiver, dataset, associations, args.slices, study_uid)
                except BenchError as exc:
                    print(f"{label}: FAILED\n{exc}", file=sys.stderr, flush=True)
                    failed = True
                    continue
                results.append(m)
                status = "ok" if m.ok else "FAILED"
                print(
                    f"{label}: {m.instances} instances in {m.seconds:.2f} s = "
                    f"{m.rate:.0f} inst/s"
                    + ("" if m.cpu_ms is None else f", receiver CPU {m.cpu_ms:.2f} ms/object")
                    + f" [{status}]",
                    flush=True,
                )
                if not m.ok:
                    print(m.detail, file=sys.stderr, flush=True)
                    failed = True
                elif m.detail:
                    print(f"  note: {m.detail}", flush=True)

    print()
    print(
        f"C-STORE, {args.slices} CT slices 512x512 16-bit, storescu over loopback, "
        f"{dt.date.today().isoformat()}, {platform.node()} ({os.cpu_count()} cores)"
    )
    if "netpacs" in kinds and args.netpacs_cmd != DEFAULT_NETPACS_CMD:
        print(f"netpacs receiver replaced by: {args.netpacs_cmd}")
    index = "PostgreSQL (a new database each)" if args.database_url else "SQLite"
    print(f"index: {index}; files on disk")
    print(report(results, kinds, args.association_counts))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "slices": args.slices,
                    "netpacs_cmd": args.netpacs_cmd,
                    "index": "postgresql" if args.database_url else "sqlite",
                    "results": [
                        {
                            "receiver": m.receiver,
                            "associations": m.associations,
                            "instances": m.instances,
                            "seconds": round(m.seconds, 3),
                            "rate": round(m.rate, 1),
                            "cpu_ms_per_object": None if m.cpu_ms is None else round(m.cpu_ms, 3),
                            "ok": m.ok,
                        }
                        for m in results
                    ],
                },
                indent=2,
            )
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
