"""GET /metrics of a real ``netpacs serve``: what DIMSE and HTTP workers did, summed over
the node's processes, the results backlog read from the index, and who may read it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread as read_dataset
from pydicom.uid import generate_uid

from netpacs.index.db import make_engine
from netpacs.index.schema import instance
from tests.conftest import PG_ADMIN_URL, Netpacs, dcmtk, free_port, wait_until, write_region
from tests.factories import ct_dataset, write, write_series
from tests.hl7.test_results import queue

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
BOUNDARY = "netpacs-metrics-test"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def scrape(server: Netpacs, *, source: str = "127.0.0.1") -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=30) as client:
        return client.get(f"{server.base_url}/metrics")


def samples(server: Netpacs) -> Samples:
    """Every sample of a scrape, by name and labels; the text must parse."""
    answer = scrape(server)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    found: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def stored_sizes(database_url: str, sop_uids: list[str]) -> list[int]:
    """The sizes of the objects' blobs, as the index has them."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            query = sa.select(instance.c.blob_size).where(instance.c.sop_instance_uid.in_(sop_uids))
            return list(conn.execute(query).scalars())
    finally:
        engine.dispose()


def stow(server: Netpacs, paths: list[Path], study: str | None = None) -> httpx.Response:
    body = (
        b"".join(
            f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + p.read_bytes()
            + b"\r\n"
            for p in paths
        )
        + f"--{BOUNDARY}--\r\n".encode()
    )
    url = f"{server.dicomweb_url}/studies" + (f"/{study}" if study else "")
    return server.http.post(url, content=body, headers={"Content-Type": STOW_TYPE})


@contextmanager
def running(folder: Path, database_url: str, workstation_port: int) -> Iterator[Netpacs]:
    """Two DIMSE and two HTTP workers; RXC's results listener does not listen; metrics
    for 127.0.0.1 only."""
    region_file = write_region(folder / "region.toml", {"RTP_WS1": workstation_port})
    text, n = re.subn(
        r'(\[trusts.results_mllp\]\nhost = "127.0.0.1"\nport = )12573',
        rf"\g<1>{free_port()}",
        region_file.read_text(),
    )
    assert n == 1
    region_file.write_text(text)
    server = Netpacs(
        data_dir=folder / "data",
        database_url=database_url,
        region_file=region_file,
        processes=2,
        http_processes=2,
        extra_env={"NETPACS_METRICS_ALLOW": "127.0.0.1", "NETPACS_METRICS_CACHE_SECONDS": "0"},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, module_database_url: str, workstation_port: int
) -> Iterator[Netpacs]:
    """One server for the module (each test counts what moved while it ran)."""
    with running(tmp_path_factory.mktemp("metrics"), module_database_url, workstation_port) as s:
        yield s


def test_metrics_count_stores_refusals_queries_and_retrieves_of_every_worker_process(
    server: Netpacs, tmp_path: Path
) -> None:
    before = samples(server)
    # Three over DIMSE (a DIMSE worker), two over STOW-RS and one refused (an HTTP worker).
    dimse = write_series(tmp_path / "dimse", 3, PatientID="H200001")
    server.store(*dimse)
    study = generate_uid()
    web = write_series(tmp_path / "stow", 2, PatientID="H200002", StudyInstanceUID=study)
    assert stow(server, web).status_code == 200
    other = write(ct_dataset(PatientID="H200003"), tmp_path / "other.dcm")
    assert stow(server, [other], study=study).status_code == 409
    # One C-FIND and one QIDO-RS, both at study level; one WADO-RS retrieve of 2 objects.
    found = dcmtk(
        "findscu", "-S", "-aet", "RXC_WS1", "-aec", "NETPACS", "127.0.0.1", str(server.port),
        "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=H200001", "-k", "StudyInstanceUID",
    )  # fmt: skip
    assert found.returncode == 0 and "Unknown Status" not in found.stderr, found.stderr
    qido = server.http.get(f"{server.dicomweb_url}/studies", params={"PatientID": "H200002"})
    assert qido.status_code == 200 and len(qido.json()) == 1
    wado = server.http.get(
        f"{server.dicomweb_url}/studies/{study}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    assert wado.status_code == 200
    # One C-GET of the three stored over DIMSE.
    got = tmp_path / "got"
    got.mkdir()
    dimse_study = str(read_dataset(dimse[0]).StudyInstanceUID)
    fetched = dcmtk(
        "getscu", "-S", "-aet", "RXC_WS1", "-aec", "NETPACS", "-od", str(got),
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={dimse_study}",
        "127.0.0.1", str(server.port),
    )  # fmt: skip
    assert fetched.returncode == 0 and len(list(got.iterdir())) == 3, fetched.stderr

    # Any HTTP worker answers with the same sums (two workers: several scrapes).
    scrapes = [samples(server) for _ in range(6)]
    after = scrapes[0]

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    stores = "netpacs_stores_total"
    assert moved(stores, protocol="dimse", trust="RXC", outcome="stored") == 3
    assert moved(stores, protocol="stow", trust="RXC", outcome="stored") == 2
    refusals = "netpacs_refusals_total"
    assert moved(refusals, protocol="stow", trust="RXC", reason="study_mismatch") == 1
    every = [(n, labels) for (n, labels) in after if n == refusals]
    assert sum(moved(n, **dict(labels)) for n, labels in every) == 1
    latency = "netpacs_query_duration_seconds_count"
    assert moved(latency, interface="c-find", level="STUDY") == 1
    assert moved(latency, interface="qido-rs", level="STUDY") == 1
    bucket = "netpacs_query_duration_seconds_bucket"
    assert moved(bucket, interface="c-find", level="STUDY", le="+Inf") == 1
    assert moved("netpacs_retrieved_objects_total", interface="wado-rs") == 2
    sizes = sum(
        stored_sizes(server.database_url, [str(read_dataset(p).SOPInstanceUID) for p in web])
    )
    assert moved("netpacs_retrieved_bytes_total", interface="wado-rs") == sizes
    assert moved("netpacs_retrieved_objects_total", interface="c-move/c-get") == 3
    sizes = sum(
        stored_sizes(server.database_url, [str(read_dataset(p).SOPInstanceUID) for p in dimse])
    )
    assert moved("netpacs_retrieved_bytes_total", interface="c-move/c-get") == sizes
    # The sums are over the node's processes: both DIMSE and both HTTP workers are live.
    assert value(after, "netpacs_worker_processes", role="dimse") == 2
    assert value(after, "netpacs_worker_processes", role="http") == 2
    assert value(after, "netpacs_worker_processes", role="jobs") == 1
    for other_scrape in scrapes[1:]:
        for key in (
            (stores, frozenset({"protocol": "dimse", "trust": "RXC", "outcome": "stored"}.items())),
            (latency, frozenset({"interface": "c-find", "level": "STUDY"}.items())),
        ):
            assert other_scrape[key] == after[key]


def test_a_result_waiting_for_an_unreachable_listener_shows_in_the_backlog(
    server: Netpacs,
) -> None:
    found = samples(server)
    assert value(found, "netpacs_results_waiting", trust="RXC") == 0
    assert value(found, "netpacs_backlog_read_ok") == 1
    engine = make_engine(server.database_url, writer=True)
    try:
        queue(engine, "RXC", 1)
    finally:
        engine.dispose()

    def waiting() -> Samples | None:
        now = samples(server)
        old = value(now, "netpacs_results_oldest_waiting_seconds", trust="RXC")
        return now if old >= 1 else None

    found = wait_until(waiting, timeout=20, what="an RXC result waiting a second")
    assert value(found, "netpacs_results_waiting", trust="RXC") == 1
    assert value(found, "netpacs_results_waiting", trust="RTK") == 0
    assert value(found, "netpacs_store_tallies_open") == 0


def test_metrics_are_refused_to_an_address_not_allowed_and_need_no_sign_in(
    server: Netpacs,
) -> None:
    refused = scrape(server, source="127.0.0.2")
    assert refused.status_code == 403
    assert "NETPACS_METRICS_ALLOW" in refused.json()["message"]
    assert scrape(server).status_code == 200  # from 127.0.0.1, no credentials


def test_a_failed_object_store_write_is_counted_with_its_refusal(
    server: Netpacs, tmp_path: Path
) -> None:
    before = samples(server)
    spool = server.data_dir / "objects" / "tmp"  # where blobs are written first (storage.fs)
    spool.rmdir()
    spool.write_bytes(b"")  # a file where the directory was: every write fails
    try:
        path = write(ct_dataset(PatientID="H200010"), tmp_path / "one.dcm")
        sent = dcmtk(
            "storescu", "-aet", "EDGH_CT1", "-aec", "NETPACS", "127.0.0.1", str(server.port),
            str(path),
        )  # fmt: skip
        assert "Failed" in sent.stderr or sent.returncode != 0 or "0xa7" in sent.stderr.lower()
    finally:
        spool.unlink()
        spool.mkdir()
    after = samples(server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("netpacs_object_store_errors_total", operation="put") == 1
    assert moved("netpacs_refusals_total", protocol="dimse", trust="RXC", reason="failed") == 1
    assert moved("netpacs_stores_total", protocol="dimse", trust="RXC", outcome="stored") == 0


# PostgreSQL's connections can be cut from outside (SQLite has none).
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_dropped_database_connection_is_counted(
    tmp_path: Path, database_url: str, workstation_port: int
) -> None:
    with running(tmp_path, database_url, workstation_port) as server:
        cut_and_count(server)


def cut_and_count(server: Netpacs) -> None:
    before = samples(server)
    name = server.database_url.rsplit("/", 1)[1]
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            cut = conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            ).scalar_one()
    finally:
        admin.dispose()
    assert cut > 0

    def counted() -> float:
        # Requests check out the pooled connections that were cut (each is found cut
        # as it is handed out and replaced: the request itself succeeds).
        answer = server.http.get(f"{server.dicomweb_url}/studies")
        assert answer.status_code in (200, 204), answer.text
        found = samples(server)
        return value(found, "netpacs_database_errors_total", kind="disconnect") - value(
            before, "netpacs_database_errors_total", kind="disconnect"
        )

    assert wait_until(counted, timeout=20, what="a cut connection counted") >= 1


LIVE = {"dimse": 2, "http": 2, "mllp": 1, "jobs": 1}


def test_a_worker_that_died_keeps_its_counts_and_leaves_the_live_gauge(
    server: Netpacs, tmp_path: Path
) -> None:
    labels = {"protocol": "dimse", "trust": "RXC", "outcome": "stored"}
    before = value(samples(server), "netpacs_stores_total", **labels)
    server.store(*write_series(tmp_path / "series", 2, PatientID="H200020"))
    assert server.proc is not None
    children = subprocess.run(
        ["pgrep", "-P", str(server.proc.pid)], capture_output=True, text=True, check=True
    ).stdout.split()
    for pid in children:  # every worker: the supervisor starts new ones
        os.kill(int(pid), signal.SIGKILL)

    def restarted() -> Samples | None:
        try:
            found = samples(server)
        except httpx.TransportError:
            return None
        roles = {r: value(found, "netpacs_worker_processes", role=r) for r in LIVE}
        return found if roles == LIVE else None

    # Without mark_process_dead the dead workers' gauges would still count (4 DIMSE...).
    found = wait_until(restarted, timeout=30, what="the workers restarted")
    assert value(found, "netpacs_stores_total", **labels) - before == 2


def test_an_import_run_beside_the_node_adds_to_its_counts(server: Netpacs, tmp_path: Path) -> None:
    before = samples(server)
    paths = write_series(tmp_path / "import", 2, PatientID="H200030")
    ran = server.cli("import", "--trust", "RXC", str(tmp_path / "import"))
    assert ran.returncode == 0, ran.stderr
    after = samples(server)
    labels = {"protocol": "import", "trust": "RXC", "outcome": "stored"}
    moved = value(after, "netpacs_stores_total", **labels) - value(
        before, "netpacs_stores_total", **labels
    )
    assert moved == len(paths)
