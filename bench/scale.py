"""The index at the region's scale: fill PostgreSQL through the index writer, then time
the requests clinicians and radiologists make, as signed-in users, with 4 clients.

For each size of ``--sizes`` (instances, cumulative) it:

1. fills a new database of the machine's PostgreSQL (127.0.0.1:5432; dropped at the
   end unless ``--keep-db``) through netpacs's own index writer, built by the
   composition root with its production hooks (regional record, worklist), from
   ``--submitters`` threads so that its group commit forms batches; every row is
   committed before its store counts (``synchronous_commit`` as configured). It
   reports instances/s overall, over the first and over the last tenth of the stage.
   Data: bench/scale_data.py (the demo generator's people, identities, procedures and
   headers; about 10 studies per person and 10 instances per study).
2. registers the identities with valid NHS numbers as the trusts' PAS would (rows of
   ``adt_identity``: what ADT A28/A31 leave), marks worklist items of studies older
   than two weeks (by study date) reported, and runs VACUUM ANALYZE;
3. starts ``netpacs serve`` on that database and times each request kind with
   ``--clients`` concurrent clients (p50/p95/p99 in ms): QIDO-RS by Patient ID with
   issuer, by NHS number, by name prefix plus a date range (all matches, and the first
   101 as OHIF's study list asks), by accession number; C-FIND at study level by
   Patient ID (pynetdicom, an open association per client, as the trust's workstation
   AE); series /metadata of a 600-instance series; a radiologist's worklist; the study
   list's first page for a clinician; FHIR ImagingStudy by NHS number. Users are the
   demo users of each trust, signed in with bearer tokens, under the access rules.
4. writes EXPLAIN (ANALYZE, BUFFERS) of the query service's statements to
   ``bench/results/scale-plans-<instances>.txt``.

    .venv/bin/python bench/scale.py --sizes 250000,1000000
    .venv/bin/python bench/scale.py --sizes 20000 --requests 40      # a quick look
    # a long fill, stopped when the time runs out (then measured at what it holds):
    .venv/bin/python bench/scale.py --sizes 10000000 --persons 112000 --keep-db \\
        --stop-file bench/work/stop-fill       # later: touch bench/work/stop-fill
    # the release before, on the same kept database (fills nothing more at that size):
    git archive 526f0bf src | tar -x -C bench/work/base
    .venv/bin/python bench/scale.py --database netpacs_scale_... --sizes 300000 \\
        --netpacs-src bench/work/base/src
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import itertools
import json
import multiprocessing
import os
import platform
import queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale_data  # the synthetic region at scale
import scale_explain  # EXPLAIN ANALYZE of the query service's statements
import store_bench as sb  # receivers, ports, process handling

from netpacs.app.container import build_archive
from netpacs.app.settings import Settings
from netpacs.index.db import make_engine, migrate
from netpacs.index.schema import adt_identity, patient, series, study, worklist_item
from netpacs.index.writer import WriteStatus

ADMIN_URL = os.environ.get(
    "NETPACS_BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/postgres"
)
RESULTS = sb.REPO / "bench" / "results"
INSTANCES_PER_PERSON = 90  # about the mean of scale_data (about 9 studies of 10 instances)


@contextlib.contextmanager
def database(keep: bool, existing: str | None = None) -> Iterator[str]:
    """A new database (or ``existing``, a database kept by an earlier run: filled on)."""
    name = existing or f"netpacs_scale_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    if existing is None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        if keep:
            print(f"kept database {name}")
        else:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


# -- fill -------------------------------------------------------------------------------


@dataclass
class FillStage:
    target: int
    instances: int = 0
    studies: int = 0
    seconds: float = 0.0
    samples: list[tuple[float, int]] = field(default_factory=list)  # (t, instances so far)

    @property
    def rate(self) -> float:
        return self.instances / self.seconds if self.seconds else 0.0

    def rate_between(self, low: float, high: float) -> float:
        """Instances/s over the part of the stage between two fractions of its count."""
        lo, hi = low * self.instances, high * self.instances
        points = [(t, n) for t, n in self.samples if lo <= n <= hi]
        if len(points) < 2:
            return 0.0
        (t0, n0), (t1, n1) = points[0], points[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


# The bench's own bookkeeping in the bench database (not netpacs's schema): where each
# filler process stopped, so that a kept database can be filled on.
_PROGRESS_TABLE = (
    "CREATE TABLE IF NOT EXISTS bench_scale_progress"
    " (part int PRIMARY KEY, next_person int, blobs bigint, total bigint, studies bigint)"
)


class Filler:
    """Feeds the archive's index writer from a generator thread and submitter threads."""

    def __init__(
        self,
        url: str,
        workdir: Path,
        *,
        persons: int,
        submitters: int,
        part: int,
        parts: int,
        stop_file: Path | None = None,
    ) -> None:
        settings = Settings(database_url=url, data_dir=workdir / f"fill{part}")
        self.archive = build_archive(settings)
        self.population = scale_data.Population(persons, seed=16, part=part, parts=parts)
        self.submitters = submitters
        self.part, self.parts = part, parts
        self.next_person = part
        self.blob_counter = itertools.count()
        self.big: scale_data.StudyPlan | None = None
        self.total = 0
        self.stop_file = stop_file

    def stopped(self) -> bool:
        """Whether the operator asked the fill to stop early (``--stop-file``)."""
        return self.stop_file is not None and self.stop_file.exists()

    def close(self) -> None:
        self.archive.close()

    def resume(self) -> None:
        """Go on where this part of an earlier run of a kept database stopped."""
        with self.archive.write_engine.begin() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT next_person, blobs, total, studies FROM bench_scale_progress"
                    " WHERE part = :p"
                ),
                {"p": self.part},
            ).first()
        if row is not None:
            self.next_person, self.total = int(row[0]), int(row[2])
            self.blob_counter = itertools.count(int(row[1]))
            self.big = self.population.big_study() if self.part == 0 else None
            self.population.studies_made = int(row[3])

    def save(self) -> None:
        blobs = next(self.blob_counter)
        self.blob_counter = itertools.count(blobs)
        with self.archive.write_engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO bench_scale_progress VALUES (:p, :n, :b, :t, :s) ON CONFLICT"
                    " (part) DO UPDATE SET next_person = :n, blobs = :b, total = :t, studies = :s"
                ),
                {
                    "p": self.part,
                    "n": self.next_person,
                    "b": blobs,
                    "t": self.total,
                    "s": self.population.studies_made,
                },
            )

    def fill(self, target: int) -> FillStage:
        """Add whole patient histories until the index holds ``target`` instances."""
        stage = FillStage(target)
        work: queue.Queue[Any] = queue.Queue(maxsize=4096)
        errors: list[str] = []
        done = [0]
        lock = threading.Lock()

        def produce() -> None:
            count = self.total

            def emit(plan: scale_data.StudyPlan) -> int:
                stage.studies += 1
                n = 0
                for record in self.population.records(plan, self.blob_counter):
                    work.put(record)
                    n += 1
                return n

            try:
                if self.big is None and self.part == 0:
                    self.big = self.population.big_study()
                    count += emit(self.big)
                persons = len(self.population.identities_of)
                while count < target and self.next_person < persons and not self.stopped():
                    key = self.next_person
                    self.next_person += self.parts
                    for plan in self.population.studies(key, key + 1):
                        count += emit(plan)
            finally:
                for _ in range(self.submitters):
                    work.put(None)

        def submit() -> None:
            writer = self.archive.writer
            while (record := work.get()) is not None:
                try:
                    result = writer.insert(record)
                except Exception as exc:  # counted and reported: the stage fails
                    errors.append(f"{record.instance.sop_instance_uid}: {exc!r:.300}")
                    continue
                if result.status is not WriteStatus.INSERTED:
                    errors.append(f"{record.instance.sop_instance_uid}: {result.status}")
                with lock:
                    done[0] += 1

        threads = [threading.Thread(target=produce, name="produce")]
        threads += [threading.Thread(target=submit) for _ in range(self.submitters)]
        start = time.perf_counter()
        base = self.total
        for t in threads:
            t.start()
        last_print = start
        while any(t.is_alive() for t in threads):
            time.sleep(1.0)
            now = time.perf_counter()
            stage.samples.append((now - start, done[0]))
            if now - last_print > 30:
                last_print = now
                rate = done[0] / (now - start)
                print(f"  {base + done[0]:>10,} instances, {rate:,.0f}/s", flush=True)
        for t in threads:
            t.join()
        stage.seconds = time.perf_counter() - start
        stage.instances = done[0]
        stage.samples.append((stage.seconds, done[0]))
        self.total += done[0]
        if errors:
            raise sb.BenchError(f"{len(errors)} stores not inserted, e.g. {errors[:3]}")
        return stage


def register_and_age(engine: sa.Engine, *, reported_before: str) -> tuple[int, int]:
    """What the region's history would have left: the PAS's registrations (ADT) of the
    identities whose valid NHS number the studies carried, and worklist items of studies
    older than ``reported_before`` (DA) reported. Returns (registered, open items)."""
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        known = sa.select(adt_identity.c.patient_id, adt_identity.c.issuer)
        rows = conn.execute(
            sa.select(
                patient.c.patient_id,
                patient.c.issuer,
                patient.c.patient_name,
                patient.c.patient_birth_date,
                patient.c.patient_sex,
                patient.c.nhs_number,
            ).where(
                patient.c.nhs_number.is_not(None),
                sa.tuple_(patient.c.patient_id, patient.c.issuer).not_in(known),
            )
        ).all()
        if rows:
            conn.execute(
                sa.insert(adt_identity),
                [
                    {
                        "patient_id": r.patient_id,
                        "issuer": r.issuer,
                        "patient_name": r.patient_name,
                        "patient_birth_date": r.patient_birth_date,
                        "patient_sex": r.patient_sex,
                        "nhs_number": r.nhs_number,
                        "updated_at": now,
                        "last_control_id": f"SCALE{i}",
                    }
                    for i, r in enumerate(rows)
                ],
            )
        old = sa.select(study.c.study_instance_uid).where(study.c.study_date < reported_before)
        conn.execute(
            sa.update(worklist_item)
            .where(
                worklist_item.c.status == "unreported", worklist_item.c.study_instance_uid.in_(old)
            )
            .values(status="final", reported_at=now, reported_by="history")
        )
        # A later run with an earlier date models a longer backlog on the same database:
        # what this bench aged (never a real report) from that date is open again.
        # (NOT EXISTS, an anti-join: a NOT IN over hundreds of thousands of UIDs does not
        # fit work_mem as a hash, and PostgreSQL then scans the list once per item.)
        aged = (
            sa.select(1)
            .where(
                study.c.study_instance_uid == worklist_item.c.study_instance_uid,
                study.c.study_date < reported_before,
            )
            .exists()
        )
        conn.execute(
            sa.update(worklist_item)
            .where(worklist_item.c.reported_by == "history", ~aged)
            .values(status="unreported", reported_at=None, reported_by=None)
        )
        open_items = conn.execute(
            sa.select(sa.func.count()).where(worklist_item.c.status != "final")
        ).scalar_one()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # The bulk update above leaves every aged item's old version in the worklist's
        # indexes until autovacuum comes round: vacuum now, as it would shortly.
        conn.exec_driver_sql("VACUUM ANALYZE")
    return len(rows), int(open_items)


# -- requests -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    kind: str
    user: str  # demo user name, or a workstation AE title for C-FIND
    path: str = ""
    params: dict[str, str] = field(default_factory=dict)
    find: dict[str, str] = field(default_factory=dict)


KINDS = (
    "qido_pid_issuer",
    "qido_nhs_number",
    "qido_name_date",
    "qido_name_date_101",
    "qido_accession",
    "cfind_pid",
    "series_metadata",
    "worklist",
    "study_list_page",
    "fhir_nhs_number",
)
TARGET_MS = {
    "qido_pid_issuer": 10,
    "qido_nhs_number": 10,
    "qido_accession": 10,
    "cfind_pid": 10,
    "fhir_nhs_number": 10,
    "qido_name_date": 50,
    "qido_name_date_101": 50,
    "worklist": 100,
    "study_list_page": 100,
}
NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"


def sample_requests(engine: sa.Engine, n: int) -> dict[str, list[Request]]:
    """``n`` requests of each kind, on patients and studies drawn at random."""
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT setseed(0.16)")
        patients = conn.execute(
            sa.text(
                "SELECT patient_id, issuer, patient_name, nhs_number FROM patient "
                "WHERE nhs_number IS NOT NULL ORDER BY random() LIMIT :n"
            ),
            {"n": n},
        ).all()
        accessions = conn.execute(
            sa.text(
                "SELECT s.accession_number, p.issuer FROM study s JOIN patient p "
                "ON p.id = s.patient_fk ORDER BY random() LIMIT :n"
            ),
            {"n": n},
        ).all()
        dates = conn.execute(sa.text("SELECT min(study_date), max(study_date) FROM study")).one()
    first_year, last_year = int(dates[0][:4]), int(dates[1][:4])
    out: dict[str, list[Request]] = {k: [] for k in KINDS}
    for i, (pid, issuer, name, nhs) in enumerate(patients):
        clinician = f"{issuer.lower()}.clinician"
        out["qido_pid_issuer"].append(
            Request(
                "qido_pid_issuer",
                clinician,
                "/dicomweb/studies",
                {"PatientID": pid, "IssuerOfPatientID": issuer},
            )
        )
        out["qido_nhs_number"].append(
            Request(
                "qido_nhs_number",
                clinician,
                "/dicomweb/studies",
                {"PatientID": nhs, "IssuerOfPatientID": "NHS"},
            )
        )
        year = first_year + i % (last_year - first_year + 1)
        quarter = (i % 4) * 3 + 1
        low = dt.date(year, quarter, 1)
        high = (low + dt.timedelta(days=92)).replace(day=1) - dt.timedelta(days=1)
        by_name_and_date = {
            "PatientName": name.split("^")[0][:3] + "*",
            "StudyDate": f"{low:%Y%m%d}-{high:%Y%m%d}",
        }
        out["qido_name_date"].append(
            Request("qido_name_date", clinician, "/dicomweb/studies", by_name_and_date)
        )
        # As OHIF's study list asks: its first 101 studies (docs: "Study List").
        out["qido_name_date_101"].append(
            Request(
                "qido_name_date_101",
                clinician,
                "/dicomweb/studies",
                by_name_and_date | {"limit": "101"},
            )
        )
        out["cfind_pid"].append(Request("cfind_pid", f"{issuer}_WS1", find={"PatientID": pid}))
        out["fhir_nhs_number"].append(
            Request(
                "fhir_nhs_number",
                clinician,
                "/fhir/ImagingStudy",
                {"patient.identifier": f"{NHS_SYSTEM}|{nhs}"},
            )
        )
        out["study_list_page"].append(Request("study_list_page", clinician, "/studies"))
        out["worklist"].append(
            Request("worklist", f"{issuer.lower()}.radiologist", "/api/worklist")
        )
    for accession, issuer in accessions:
        out["qido_accession"].append(
            Request(
                "qido_accession",
                f"{issuer.lower()}.clinician",
                "/dicomweb/studies",
                {"AccessionNumber": accession},
            )
        )
    with engine.connect() as conn:
        study_uid, series_uid, issuer = conn.execute(
            sa.select(study.c.study_instance_uid, series.c.series_instance_uid, patient.c.issuer)
            .select_from(study.join(series).join(patient))
            .where(series.c.series_description == scale_data.BIG_SERIES_DESCRIPTION)
        ).one()
    big_user = f"{issuer.lower()}.clinician"
    path = f"/dicomweb/studies/{study_uid}/series/{series_uid}/metadata"
    out["series_metadata"] = [Request("series_metadata", big_user, path) for _ in range(n)]
    return out


class Server:
    """``netpacs serve`` on the bench database (demo users, default process counts)."""

    def __init__(self, url: str, workdir: Path, src: Path | None = None) -> None:
        """``src``: run the netpacs source tree there instead (e.g. an older release
        unpacked with ``git archive``), on this checkout's virtual environment."""
        self.port, self.http_port, mllp = sb.free_port(), sb.free_port(), sb.free_port()
        data = workdir / "serve"
        data.mkdir(exist_ok=True)
        env = {
            **os.environ,
            **sb.NODELAY_ENV,
            "NETPACS_DATA_DIR": str(data),
            "NETPACS_DATABASE_URL": url,
            "NETPACS_DIMSE_PORT": str(self.port),
            "NETPACS_HTTP_PORT": str(self.http_port),
            "NETPACS_MLLP_PORT": str(mllp),
            "NETPACS_AE_TITLE": "NETPACS",
            "NETPACS_DEMO": "true",  # the demo users (synthetic data only)
        }
        if src is not None:
            env["PYTHONPATH"] = str(src.resolve())  # the server runs in its work directory
        self.log = workdir / "serve.log"
        cmd = [str(sb.REPO / ".venv" / "bin" / "netpacs"), "serve"]
        self.proc = sb._spawn(cmd, env, self.log)
        self.base = f"http://{sb.HOST}:{self.http_port}"
        self.tokens: dict[str, str] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise sb.BenchError(f"netpacs serve exited:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/readyz", timeout=5).status_code == 200:
                    break
            time.sleep(0.5)
        else:
            raise sb.BenchError(f"netpacs serve not ready:\n{self.log.read_text()[-3000:]}")

    def token(self, user: str) -> str:
        if user not in self.tokens:
            resp = httpx.post(
                f"{self.base}/auth/token", data={"username": user, "password": "demo"}
            )
            resp.raise_for_status()
            self.tokens[user] = str(resp.json()["access_token"])
        return self.tokens[user]

    def stop(self) -> None:
        receiver = sb.Receiver(
            "netpacs", "NETPACS", self.port, self.http_port, self.log.parent, self.proc, self.log
        )
        receiver.stop()


def _cfind(assoc: Any, keys: dict[str, str]) -> int:
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore

    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for k, v in keys.items():
        setattr(ds, k, v)
    for k in ("StudyInstanceUID", "StudyDate", "AccessionNumber", "PatientName"):
        setattr(ds, k, "")
    matches = 0
    for status, ident in assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind):
        if status is None or status.Status not in (0xFF00, 0xFF01, 0x0000):
            raise sb.BenchError(f"C-FIND failed: {status}")
        if ident is not None:
            matches += 1
    return matches


def run_kind(server: Server, requests: list[Request], clients: int) -> tuple[list[float], int]:
    """Latencies (ms) of the requests shared out to ``clients`` threads, and how many
    answers were empty (a sign of a wrong request, reported)."""
    latencies: list[float] = []
    empty = [0]
    lock = threading.Lock()
    errors: list[str] = []
    chunks = [requests[i::clients] for i in range(clients)]

    def client(mine: list[Request]) -> None:
        if not mine:
            return
        if mine[0].kind == "cfind_pid":
            _cfind_client(server, mine, latencies, empty, lock, errors)
            return
        # The standard library's client, as qido_bench.py's: httpx cost each request
        # about a millisecond of CPU in this process, on the two cores the server has.
        conn = http.client.HTTPConnection(sb.HOST, server.http_port, timeout=120)
        try:
            for r in mine:
                headers = {"Authorization": f"Bearer {server.token(r.user)}"}
                target = f"{r.path}?{urlencode(r.params)}" if r.params else r.path
                t0 = time.perf_counter()
                conn.request("GET", target, headers=headers)
                resp = conn.getresponse()
                content = resp.read()
                ms = (time.perf_counter() - t0) * 1000
                if resp.status not in (200, 204):
                    errors.append(f"{r.kind} {r.params}: {resp.status} {content[:200]!r}")
                    return
                with lock:
                    latencies.append(ms)
                    if resp.status == 204 or content in (b"[]", b""):
                        empty[0] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise sb.BenchError(errors[0])
    return latencies, empty[0]


def _cfind_client(
    server: Server,
    mine: list[Request],
    latencies: list[float],
    empty: list[int],
    lock: threading.Lock,
    errors: list[str],
) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore

    from netpacs.adapters.dimse.requestor import associate  # TCP_NODELAY, as DCMTK's

    by_ae: dict[str, list[Request]] = {}
    for r in mine:
        by_ae.setdefault(r.user, []).append(r)
    for ae_title, reqs in by_ae.items():
        ae = AE(ae_title=ae_title)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = associate(ae, sb.HOST, server.port, ae_title="NETPACS")
        if not assoc.is_established:
            errors.append(f"association from {ae_title} refused")
            return
        try:
            for r in reqs:
                t0 = time.perf_counter()
                n = _cfind(assoc, r.find)
                ms = (time.perf_counter() - t0) * 1000
                with lock:
                    latencies.append(ms)
                    empty[0] += n == 0
        finally:
            assoc.release()


def percentiles(values: Sequence[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return q[49], q[94], q[98]


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="250000,1000000", help="instances, cumulative")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument(
        "--persons",
        type=int,
        default=25_000,
        help="people of the region (the same for every run on one kept database)",
    )
    p.add_argument("--requests", type=int, default=200, help="per request kind")
    p.add_argument("--writers", type=int, default=4, help="filler processes")
    p.add_argument("--submitters", type=int, default=16, help="threads storing per process")
    p.add_argument(
        "--netpacs-src",
        type=Path,
        help="serve this netpacs source tree (e.g. the release before, from git archive)",
    )
    p.add_argument("--no-plans", action="store_true", help="skip the EXPLAIN ANALYZE pass")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument(
        "--reported-before",
        default="20251205",
        help="studies before this date (DA) have been reported; the later ones are the"
        " open worklist (an earlier date: a longer backlog)",
    )
    p.add_argument("--keep-db", action="store_true", help="keep the database (named at the end)")
    p.add_argument("--database", help="fill on (and keep) a database kept by an earlier run")
    p.add_argument(
        "--stop-file",
        type=Path,
        help="when this file appears, the fill stops adding people (each process finishes"
        " the person it is on) and the stage measures what the index then holds",
    )
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


class Fillers:
    """``parts`` filler processes (each its own index writer, as each netpacs process
    has), every one adding the histories of its share of the people."""

    def __init__(
        self,
        url: str,
        workdir: Path,
        *,
        persons: int,
        submitters: int,
        parts: int,
        stop_file: Path | None = None,
    ):
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Any] = []
        self.procs: list[Any] = []
        for part in range(parts):
            mine, theirs = ctx.Pipe()
            share = {
                "persons": persons,
                "submitters": submitters,
                "part": part,
                "parts": parts,
                "stop_file": stop_file,
            }
            proc = ctx.Process(
                target=_fill_worker,
                args=(theirs, url, workdir, share),
                name=f"fill-{part}",
            )
            proc.start()
            self.pipes.append(mine)
            self.procs.append(proc)
        self.total = sum(int(pipe.recv()) for pipe in self.pipes)  # a kept database's

    def fill(self, target: int) -> dict[str, Any]:
        share = -(-target // len(self.pipes))
        for pipe in self.pipes:
            pipe.send(share)
        stages = [pipe.recv() for pipe in self.pipes]
        for got in stages:
            if isinstance(got, str):
                raise sb.BenchError(got)
        instances = sum(st["instances"] for st in stages)
        seconds = max(st["seconds"] for st in stages)
        self.total += instances
        merged = FillStage(target, instances, seconds=seconds, samples=_merged(stages))
        return {
            "instances": instances,
            "studies": sum(st["studies"] for st in stages),
            "seconds": seconds,
            "rate": instances / seconds if seconds else 0.0,
            "rate_first_tenth": merged.rate_between(0, 0.1),
            "rate_last_tenth": merged.rate_between(0.9, 1.0),
            "processes": len(stages),
        }

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for proc in self.procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.terminate()


def _merged(stages: list[dict[str, Any]]) -> list[tuple[float, int]]:
    """The instances all processes had stored at each second (they start together)."""
    end = max(st["seconds"] for st in stages)
    out = []
    for second in range(int(end) + 1):
        total = 0
        for st in stages:
            done = [n for t, n in st["samples"] if t <= second]
            total += done[-1] if done else 0
        out.append((float(second), total))
    out.append((end, sum(st["instances"] for st in stages)))
    return out


def _fill_worker(pipe: Any, url: str, workdir: Path, share: dict[str, Any]) -> None:
    """A filler process: ``share`` holds the keyword arguments of its :class:`Filler`."""
    filler = Filler(url, workdir, **share)
    try:
        filler.resume()
        pipe.send(filler.total)
        while (target := pipe.recv()) is not None:
            try:
                stage = filler.fill(filler.total + target)
                filler.save()
            except Exception as exc:  # reported to the parent, which stops
                pipe.send(f"filler {filler.part}: {exc!r}")
                return
            pipe.send(
                {
                    "instances": stage.instances,
                    "studies": stage.studies,
                    "seconds": stage.seconds,
                    "samples": stage.samples,
                }
            )
    finally:
        filler.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = [k for k in args.kinds.split(",") if k]
    sb.WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="scale-", dir=sb.WORK))
    persons = args.persons
    if max(sizes) > persons * INSTANCES_PER_PERSON:
        raise SystemExit(f"--persons {persons} hold about {persons * INSTANCES_PER_PERSON:,}")
    report: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "machine": f"{os.cpu_count()} cores, {platform.platform()}",
        "command": " ".join(sys.argv),
        "stages": [],
    }
    print(
        f"bench/scale.py: sizes {sizes}, {persons:,} persons, {args.writers} filler processes"
        f" x {args.submitters} threads, {args.clients} clients"
    )
    try:
        with database(args.keep_db or args.database, args.database) as url:
            migrate(url)
            engine = make_engine(url)
            # Made here, once: four fillers' CREATE TABLE IF NOT EXISTS at the same
            # moment can collide in PostgreSQL's catalogue (a unique violation).
            with engine.begin() as conn:
                conn.exec_driver_sql(_PROGRESS_TABLE)
            fillers = Fillers(
                url,
                workdir,
                persons=persons,
                submitters=args.submitters,
                parts=args.writers,
                stop_file=args.stop_file,
            )
            try:
                for size in sizes:
                    stage = _stage(fillers, engine, url, workdir, size, kinds, args)
                    report["stages"].append(stage)
                    if args.json:
                        args.json.write_text(json.dumps(report, indent=2))
            finally:
                fillers.close()
                engine.dispose()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _stage(
    fillers: Fillers,
    engine: sa.Engine,
    url: str,
    workdir: Path,
    size: int,
    kinds: list[str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    print(f"\n== filling to {size:,} instances", flush=True)
    fill = fillers.fill(max(0, size - fillers.total))
    if fillers.total < size:
        print(f"fill stopped at {fillers.total:,} instances (--stop-file)", flush=True)
    registered, open_items = register_and_age(engine, reported_before=args.reported_before)
    sizes = _table_sizes(engine)
    print(
        f"filled {fill['instances']:,} instances ({fill['studies']:,} studies)"
        f" in {fill['seconds']:,.0f} s: {fill['rate']:,.0f}/s; first tenth"
        f" {fill['rate_first_tenth']:,.0f}/s, last tenth {fill['rate_last_tenth']:,.0f}/s;"
        f" index now {fillers.total:,} instances; {registered:,} identities registered;"
        f" {open_items:,} open worklist items; {sizes}",
        flush=True,
    )
    requests = sample_requests(engine, args.requests)
    server = Server(url, workdir, args.netpacs_src)
    figures: dict[str, Any] = {}
    try:
        for kind in kinds:
            run_kind(server, requests[kind][: max(8, args.clients * 2)], args.clients)  # warm
            latencies, empty = run_kind(server, requests[kind], args.clients)
            p50, p95, p99 = percentiles(latencies)
            target = TARGET_MS.get(kind)
            flag = "" if target is None else (" ok" if p95 <= target else f" OVER {target} ms")
            print(
                f"  {kind:<18} p50 {p50:7.1f}  p95 {p95:7.1f}  p99 {p99:7.1f} ms"
                f"  ({len(latencies)} requests, {empty} empty){flag}",
                flush=True,
            )
            figures[kind] = {"p50": p50, "p95": p95, "p99": p99, "n": len(latencies)}
            figures[kind]["empty"] = empty
    finally:
        server.stop()
    plans_file = RESULTS / f"scale-plans-{fillers.total}.txt"
    if not args.no_plans:
        plans_file.write_text(_plans(url, workdir, requests, kinds, args.netpacs_src))
        print(f"  query plans: {plans_file.relative_to(sb.REPO)}", flush=True)
    return {
        "instances": fillers.total,
        "fill": fill,
        "tables": sizes,
        "registered_identities": registered,
        "open_worklist_items": open_items,
        "latency_ms": figures,
    }


def _plans(
    url: str,
    workdir: Path,
    requests: dict[str, list[Request]],
    kinds: list[str],
    src: Path | None,
) -> str:
    """EXPLAIN ANALYZE of the slowest statements of each kind, from a server run of its
    own with auto_explain on (so that the timed run above had no explain overhead)."""
    name = url.rsplit("/", 1)[1]
    scale_explain.switch(ADMIN_URL, name, True)
    out: list[str] = []
    try:
        server = Server(url, workdir, src)
        try:
            for kind in kinds:
                run_kind(server, requests[kind][:2], 1)
                for r in requests[kind][2:5]:  # signed in before, not in the plans
                    if not r.kind.startswith("cfind"):
                        server.token(r.user)
                offset = scale_explain.log_offset()
                run_kind(server, requests[kind][2:5], 1)
                time.sleep(0.5)  # the server log is written asynchronously
                out.append(f"===== {kind}\n{scale_explain.plans_since(offset, name)}")
        finally:
            server.stop()
    finally:
        scale_explain.switch(ADMIN_URL, name, False)
    return "\n".join(out)


def _table_sizes(engine: sa.Engine) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT relname, pg_size_pretty(pg_total_relation_size(oid)) FROM pg_class "
                "WHERE relname IN ('patient','study','series','instance','worklist_item') "
            )
        ).all()
        total = conn.execute(
            sa.text("SELECT pg_size_pretty(pg_database_size(current_database()))")
        ).scalar_one()
    return {**{r[0]: r[1] for r in rows}, "database": total}


if __name__ == "__main__":
    sys.exit(main())
