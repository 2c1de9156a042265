"""The results sender against real MLLP listeners: store and forward, order, retries.

Each trust's results listener is a small TCP server in the test that reads MLLP frames
and answers each with an ACK it is told to give (or dies without answering). The sender
runs in threads of the test process against a real index (SQLite and PostgreSQL) with
rows queued as the reporting service queues them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hl7
import pytest
import sqlalchemy as sa

from netpacs.adapters.hl7.oru import read_ack
from netpacs.app.jobs import results_jobs, results_tls
from netpacs.app.settings import Settings
from netpacs.domain.outbox import Acceptance, QueuedResult, Receipt
from netpacs.domain.region import Endpoint, Region, ResultsHeader, Trust
from netpacs.domain.report import Reporter, SignedReport
from netpacs.index import outbox
from netpacs.index.db import make_engine, migrate
from netpacs.index.schema import report, report_event, result_outbox
from netpacs.services.jobs.claiming import Claiming
from netpacs.services.jobs.results import DeliveryFailed, Timing
from netpacs.services.jobs.runner import JobRunner
from netpacs.services.report_outputs import new_control_id
from tests.adapters.test_dicom_tls import Pki, pki
from tests.conftest import NETPACS, Netpacs, free_port, wait_until, write_region
from tests.hl7.test_regional_record import send_study
from tests.http.test_reporting import client

__all__ = ["pki"]  # fixture: a CA with server, client and stranger certificates

START, END = b"\x0b", b"\x1c\r"
FAST = Timing(poll=0.05, retry_first=0.1, retry_max=0.4)
ACK_TIMEOUT = 2.0

# What a listener does with a message: an ACK code (and text), NO_ANSWER to close the
# connection without answering, or None to die unanswered.
Policy = Callable[[str, int], tuple[str, str] | None]
NO_ANSWER = ("", "")


def accept_all(_control_id: str, _seen: int) -> tuple[str, str] | None:
    return ("AA", "")


@dataclass
class Listener:
    """A trust's results listener on ``port``; can be stopped and started again."""

    port: int
    policy: Policy = accept_all
    tls: ssl.SSLContext | None = None  # MLLP over TLS with this server context
    arrivals: list[str] = field(default_factory=list)  # control ids in arrival order
    peers: list[str] = field(default_factory=list)  # client certificate CNs, per connection
    refused: list[str] = field(default_factory=list)  # TLS handshakes that failed, why
    messages: list[str] = field(default_factory=list)  # the messages, in arrival order
    accepted: list[str] = field(default_factory=list)  # control ids answered AA
    connections: int = 0  # accepted so far
    _sock: socket.socket | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _conns: list[socket.socket] = field(default_factory=list)

    def start(self) -> Listener:
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._sock.settimeout(0.1)
        thread = threading.Thread(target=self._serve, args=(self._sock, self._stop), daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        """The listener goes away: its port refuses, open connections are reset."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.close()
            self._conns.clear()

    def _serve(self, sock: socket.socket, stop: threading.Event) -> None:
        with sock:
            while not stop.is_set():
                try:
                    conn, _ = sock.accept()
                except TimeoutError:
                    continue
                except OSError:  # closed by a crash
                    return
                with self._lock:
                    self._conns.append(conn)
                    self.connections += 1
                threading.Thread(target=self._connection, args=(conn, stop), daemon=True).start()

    def _connection(self, conn: socket.socket, stop: threading.Event) -> None:
        buffer = b""
        if self.tls is not None:
            conn.settimeout(5)
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except OSError as exc:
                with self._lock:
                    self.refused.append(str(exc))
                conn.close()
                return
            cert = conn.getpeercert() or {}
            names = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
            with self._lock:
                self.peers.extend(names or ["(no client certificate)"])
        conn.settimeout(0.1)
        with conn:
            while not stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except (TimeoutError, ssl.SSLWantReadError):
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                while END in buffer:
                    frame, buffer = buffer.split(END, 1)
                    text = frame.lstrip(START).decode("utf-8")
                    control_id = str(hl7.parse(text).segment("MSH")[10])
                    with self._lock:
                        seen = self.arrivals.count(control_id)
                        self.arrivals.append(control_id)
                        self.messages.append(text)
                    answer = self.policy(control_id, seen)
                    if answer is None:  # the whole listener dies without answering
                        stop.set()
                        if self._sock is not None:
                            self._sock.close()
                        return
                    if answer == NO_ANSWER:
                        return
                    code, text = answer
                    if code == "AA":
                        with self._lock:
                            self.accepted.append(control_id)
                    ack = (
                        "MSH|^~\\&|RIS|RXC|NETPACS|REGION|20261129120000||ACK^R01|"
                        f"A{control_id}|P|2.4\rMSA|{code}|{control_id}|{text}\r"
                    )
                    conn.sendall(START + ack.encode() + END)


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    migrate(database_url)
    engine = make_engine(database_url, writer=True)
    yield engine
    engine.dispose()


def signed_report(trust: str, n: int, now: dt.datetime) -> SignedReport:
    return SignedReport(
        study_instance_uid=f"1.2.826.0.1.3680043.10.543.62.{n}",
        accession_number=f"ACC{n}",
        patient_id=f"{trust}{n}",
        issuer=trust,
        patient_name="DOE^JANE",
        birth_date="19700101",
        sex="F",
        nhs_number=None,
        requesting_trust=trust,
        requesting_site=None,
        modality="CR",
        study_description="CHEST",
        text="FINDINGS:\nNormal.",
        author=Reporter("ryr.radiologist", "Dr Ruth Younger", "RYR"),
        signed_at=now,
        addenda=(),
        event="final",
        event_at=now,
    )


def queue(engine: sa.Engine, trust: str, count: int) -> list[str]:
    """``count`` signed reports for ``trust``, queued as the reporting service does;
    their control ids."""
    ids = []
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        for _ in range(count):
            n = conn.execute(sa.select(sa.func.count()).select_from(report)).scalar_one() + 1
            signed = signed_report(trust, n, now)
            report_pk = conn.execute(
                sa.insert(report)
                .values(
                    study_instance_uid=signed.study_instance_uid,
                    status="final",
                    text=signed.text,
                    author=signed.author.username,
                    author_trust=signed.author.trust,
                    created_at=now,
                    updated_at=now,
                )
                .returning(report.c.id)
            ).scalar_one()
            event_pk = conn.execute(
                sa.insert(report_event)
                .values(
                    report_fk=report_pk,
                    kind="final",
                    author=signed.author.username,
                    author_trust=signed.author.trust,
                    at=now,
                )
                .returning(report_event.c.id)
            ).scalar_one()
            result = QueuedResult(
                control_id=new_control_id(event_pk),
                created_at=now,
                names=ResultsHeader("NETPACS", "REGION", "RIS", trust),
                report=signed,
                study_date="20261129",
                study_time="101500",
            )
            outbox.queue_result(conn, result, trust=trust, report_event_pk=event_pk)
            ids.append(result.control_id)
    return ids


def rows(engine: sa.Engine, trust: str) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(
                    result_outbox.c.control_id,
                    result_outbox.c.attempts,
                    result_outbox.c.last_error,
                    result_outbox.c.sent_at,
                )
                .where(result_outbox.c.trust == trust)
                .order_by(result_outbox.c.id)
            ).all()
        )


def region(**endpoints: int | None) -> Region:
    """A region of the trusts named, each with its listener port (None: no endpoint)."""
    return Region(
        name="test",
        trusts=tuple(
            Trust(
                ods,
                f"{ods} NHS Trust",
                (),
                Endpoint("127.0.0.1", port) if port is not None else None,
            )
            for ods, port in endpoints.items()
        ),
        aes=(),
    )


@contextlib.contextmanager
def running(runner: JobRunner) -> Iterator[JobRunner]:
    """``runner`` in a thread of its own while the block runs."""
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield runner
    finally:
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive()


@contextlib.contextmanager
def sending(
    engine: sa.Engine,
    the_region: Region,
    timing: Timing = FAST,
    settings: Settings | None = None,
) -> Iterator[None]:
    """The results jobs the composition root builds for ``the_region``, running on
    engines of their own (a node of their own) on ``engine``'s database."""
    url = engine.url.render_as_string(hide_password=False)
    reader, writer = make_engine(url), make_engine(url, writer=True)
    jobs = results_jobs(
        the_region,
        claiming=Claiming(reader=reader, writer=writer),
        writer=writer,
        timing=timing,
        ack_timeout=ACK_TIMEOUT,
        tls=results_tls(the_region, settings or Settings()),
    )
    try:
        with running(JobRunner(jobs, after_index_failure=0.1, after_failure=0.1)):
            yield
    finally:
        reader.dispose()
        writer.dispose()


def all_sent(engine: sa.Engine, trust: str) -> Callable[[], bool]:
    return lambda: all(r.sent_at is not None for r in rows(engine, trust))


def in_order_once(arrivals: list[str]) -> list[str]:
    """Arrivals with back-to-back resends of the same message folded into one."""
    return [c for i, c in enumerate(arrivals) if i == 0 or arrivals[i - 1] != c]


# -- behaviour ------------------------------------------------------------------------


def test_results_queued_while_the_listener_is_down_arrive_once_in_order_when_it_starts(
    engine: sa.Engine,
) -> None:
    port = free_port()
    ids = queue(engine, "RXC", 6)
    listener = Listener(port)
    with sending(engine, region(RXC=port)):
        wait_until(lambda: rows(engine, "RXC")[0].attempts >= 2)
        first = rows(engine, "RXC")[0]
        assert first.last_error is not None and "cannot connect" in first.last_error
        assert all(r.attempts == 0 for r in rows(engine, "RXC")[1:])  # none sent past it
        listener.start()
        try:
            wait_until(all_sent(engine, "RXC"))
        finally:
            listener.stop()
    assert listener.arrivals == ids
    assert listener.accepted == ids


def test_a_listener_restarting_mid_stream_loses_nothing_and_keeps_the_order(
    engine: sa.Engine,
) -> None:
    port = free_port()
    ids = queue(engine, "RXC", 8)
    crashed = threading.Event()

    def crash_on_the_fourth(control_id: str, seen: int) -> tuple[str, str] | None:
        if control_id == ids[3] and not crashed.is_set():
            crashed.set()
            return None  # received, then the listener dies before it answers
        return ("AA", "")

    listener = Listener(port, policy=crash_on_the_fourth).start()
    with sending(engine, region(RXC=port)):
        wait_until(crashed.is_set)
        listener.stop()
        # Down for a while: the sender retries into a refused port.
        wait_until(lambda: "cannot connect" in (rows(engine, "RXC")[3].last_error or ""))
        assert [r.sent_at is not None for r in rows(engine, "RXC")] == [True] * 3 + [False] * 5
        listener.start()
        try:
            wait_until(all_sent(engine, "RXC"))
        finally:
            listener.stop()
    # Each message acknowledged exactly once, in the order queued; the one the listener
    # died with was sent again (with its control id), and nothing after it overtook it.
    assert listener.accepted == ids
    assert in_order_once(listener.arrivals) == ids
    assert listener.arrivals.count(ids[3]) == 2


def test_an_ar_answer_is_retried_and_reported_in_last_error(engine: sa.Engine) -> None:
    port = free_port()
    ids = queue(engine, "RXC", 2)

    def reject_twice(control_id: str, seen: int) -> tuple[str, str] | None:
        if control_id == ids[0] and seen < 2:
            return ("AR", "unknown patient RXC1")
        return ("AA", "")

    listener = Listener(port, policy=reject_twice).start()
    try:
        with sending(engine, region(RXC=port)):
            wait_until(lambda: rows(engine, "RXC")[0].attempts >= 1)
            error = rows(engine, "RXC")[0].last_error
            assert error is not None and "AR" in error and "unknown patient RXC1" in error
            wait_until(all_sent(engine, "RXC"))
    finally:
        listener.stop()
    assert listener.arrivals == [ids[0], ids[0], ids[0], ids[1]]
    assert [r.attempts for r in rows(engine, "RXC")] == [3, 1]


def test_one_trust_down_does_not_hold_up_another(engine: sa.Engine) -> None:
    up, down = free_port(), free_port()
    sussex = queue(engine, "RXC", 2)
    queue(engine, "RTP", 2)
    sussex += queue(engine, "RXC", 2)
    listener = Listener(up).start()
    try:
        with sending(engine, region(RXC=up, RTP=down)):
            wait_until(all_sent(engine, "RXC"))
            wait_until(lambda: rows(engine, "RTP")[0].attempts >= 1)
    finally:
        listener.stop()
    assert listener.arrivals == sussex
    surrey = rows(engine, "RTP")
    assert all(r.sent_at is None for r in surrey)
    assert surrey[0].last_error is not None and f"127.0.0.1:{down}" in surrey[0].last_error
    assert surrey[1].attempts == 0


def test_a_trust_without_a_results_endpoint_keeps_its_results_queued_saying_why(
    engine: sa.Engine,
) -> None:
    queue(engine, "RPC", 2)
    with sending(engine, region(RPC=None)):
        wait_until(lambda: all(r.last_error for r in rows(engine, "RPC")))
    for row in rows(engine, "RPC"):
        assert row.sent_at is None and row.attempts == 0
        assert "RPC has no results MLLP endpoint" in (row.last_error or "")


def test_results_for_a_trust_not_in_the_region_stay_queued_saying_why(
    engine: sa.Engine,
) -> None:
    queue(engine, "R99", 1)
    with sending(engine, region(RXC=None)):
        wait_until(lambda: rows(engine, "R99")[0].last_error is not None)
    assert "'R99' is not in the region" in (rows(engine, "R99")[0].last_error or "")


def test_a_restarted_sender_sends_what_is_left_and_nothing_twice(engine: sa.Engine) -> None:
    port = free_port()
    ids = queue(engine, "RXC", 3)
    listener = Listener(port).start()
    try:
        with sending(engine, region(RXC=port)):
            wait_until(all_sent(engine, "RXC"))
        ids += queue(engine, "RXC", 3)
        with sending(engine, region(RXC=port)):
            wait_until(all_sent(engine, "RXC"))
    finally:
        listener.stop()
    assert listener.arrivals == ids


def test_an_ack_for_another_message_is_not_taken_as_delivery() -> None:
    ack = b"MSH|^~\\&|RIS|RXC|NETPACS|REGION|20261129||ACK|A1|P|2.4\rMSA|AA|OTHER\r"
    with pytest.raises(DeliveryFailed, match="acknowledges message 'OTHER'"):
        read_ack(ack, "NPR1")
    with pytest.raises(DeliveryFailed, match="no MSA"):
        read_ack(b"MSH|^~\\&|RIS|RXC\r", "NPR1")
    receipt = read_ack(ack.replace(b"OTHER", b"NPR1|fine"), "NPR1")
    assert receipt == Receipt(Acceptance.ACCEPTED, "AA", "fine")


# -- MLLP over TLS ----------------------------------------------------------------------


def tls_region(port: int, ca_file: Path) -> Region:
    endpoint = Endpoint("localhost", port, tls=True, ca_file=ca_file)
    return Region(name="test", trusts=(Trust("RXC", "RXC NHS Trust", (), endpoint),), aes=())


def listener_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """A trust's TLS listener; with ``client_ca`` it requires a client certificate of it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    return context


def over_tls(
    engine: sa.Engine,
    pki: Pki,
    context: ssl.SSLContext,
    until: Callable[[], bool],
    settings: Settings | None = None,
) -> Listener:
    """Send East Sussex's queued results to a TLS listener with ``context`` until
    ``until()``; the stopped listener, with what it saw."""
    listener = Listener(free_port(), tls=context).start()
    try:
        with sending(engine, tls_region(listener.port, pki.ca), settings=settings):
            wait_until(until)
    finally:
        listener.stop()
    return listener


def test_results_to_a_tls_listener_arrive_over_tls_with_our_client_certificate(
    engine: sa.Engine, pki: Pki
) -> None:
    ids = queue(engine, "RXC", 3)
    context = listener_context(pki.server_cert, pki.server_key, client_ca=pki.ca)
    ours = Settings(results_tls_cert_file=pki.client_cert, results_tls_key_file=pki.client_key)
    listener = over_tls(engine, pki, context, all_sent(engine, "RXC"), ours)
    assert listener.accepted == ids
    assert listener.peers == ["EDGH_CT1"]  # one connection, with our client certificate
    assert listener.refused == []


def test_a_tls_listener_whose_certificate_we_do_not_trust_gets_nothing_and_the_row_says_why(
    engine: sa.Engine, pki: Pki
) -> None:
    queue(engine, "RXC", 2)
    impostor = listener_context(pki.stranger_cert, pki.stranger_key, client_ca=None)
    listener = over_tls(engine, pki, impostor, lambda: rows(engine, "RXC")[0].attempts >= 2)
    first, second = rows(engine, "RXC")
    assert first.sent_at is None and second.sent_at is None
    assert "certificate is not trusted" in first.last_error
    assert second.attempts == 0  # it waits behind the first
    assert listener.arrivals == []


def test_a_tls_listener_that_requires_a_client_certificate_refuses_us_without_one(
    engine: sa.Engine, pki: Pki
) -> None:
    queue(engine, "RXC", 1)
    context = listener_context(pki.server_cert, pki.server_key, client_ca=pki.ca)
    listener = over_tls(engine, pki, context, lambda: rows(engine, "RXC")[0].attempts >= 1)
    (row,) = rows(engine, "RXC")
    assert row.sent_at is None
    assert row.last_error.startswith(f"TLS connection to localhost:{listener.port} failed")
    assert "set NETPACS_RESULTS_TLS_CERT_FILE" in row.last_error
    assert listener.arrivals == []


def test_serve_stops_with_a_message_when_our_results_client_certificate_cannot_be_used(
    tmp_path: Path, region_file: Path, pki: Pki
) -> None:
    database_url = f"sqlite:///{tmp_path / 'index.sqlite'}"  # serve stops before using it
    text = region_file.read_text().replace(
        'receiving_facility = "RXC01"',
        f'receiving_facility = "RXC01"\ntls = true\nca_file = "{pki.ca}"',
    )
    region_file.write_text(text)
    server = Netpacs(
        data_dir=tmp_path / "data",
        database_url=database_url,
        region_file=region_file,
        extra_env={
            "NETPACS_RESULTS_TLS_CERT_FILE": str(pki.client_cert),
            "NETPACS_RESULTS_TLS_KEY_FILE": str(tmp_path / "missing.key"),
        },
    )
    result = subprocess.run(
        [str(NETPACS), "serve"], env=server.env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "results to RXC: NETPACS_RESULTS_TLS_CERT_FILE" in result.stderr


def test_backoff_doubles_up_to_its_cap() -> None:
    timing = Timing(retry_first=1.0, retry_max=60.0)
    assert [timing.backoff(n) for n in (1, 2, 3, 6, 7, 100)] == [1, 2, 4, 32, 60, 60]


# -- through netpacs serve and the reporting API --------------------------------------


@pytest.fixture
def results_port() -> int:
    return free_port()


@pytest.fixture
def region_file(tmp_path: Path, workstation_port: int, results_port: int) -> Path:
    """The demo region with East Sussex's results listener on a test port, expecting
    its own MSH-5 and MSH-6 (``CRIS`` at ``RXC01``)."""
    path = write_region(tmp_path / "region.toml", {"RTP_WS1": workstation_port})
    text, n = re.subn(
        r'(\[trusts.results_mllp\]\nhost = "127.0.0.1"\nport = )12573',
        rf'\g<1>{results_port}\nreceiving_application = "CRIS"\nreceiving_facility = "RXC01"',
        path.read_text(),
    )
    assert n == 1
    path.write_text(text)
    return path


def waiting(server: Netpacs, trust: str, *, refused: bool = False) -> list[Any]:
    """The results waiting for ``trust`` (as GET /api/results shows an admin); with
    ``refused``, only once the first has been tried and refused."""
    with client(server, "rxc.admin") as c:
        answer = c.get("/api/results", params={"trust": trust})
    assert answer.status_code == 200, answer.text
    results: list[Any] = answer.json()["messages"]
    if refused and not (results and "cannot connect" in (results[0]["last_error"] or "")):
        return []
    return results


def test_reports_signed_while_the_trust_listener_is_down_arrive_once_in_order(
    netpacs: Netpacs, tmp_path: Path, results_port: int
) -> None:
    patients = [f"RXC70{n}" for n in range(3)]
    studies = [
        send_study(netpacs, tmp_path / p, aet="EDGH_CT1", patient_id=p, issuer="RXC")
        for p in patients
    ]
    with client(netpacs, "ryr.radiologist") as c:
        for uid in studies:
            assert c.post(f"/api/worklist/{uid}/claim").status_code == 200
            text = f"FINDINGS:\nNo abnormality in study {uid}.\n\nCONCLUSION:\nNormal."
            signed = c.put(f"/api/reports/{uid}", json={"text": text, "status": "final"})
            assert signed.status_code == 200, signed.text
    # East Sussex's listener is down: the sender's attempts are refused.
    wait_until(lambda: waiting(netpacs, "RXC", refused=True), timeout=60)
    listener = Listener(results_port).start()
    try:
        wait_until(lambda: waiting(netpacs, "RXC") == [], timeout=60)
    finally:
        listener.stop()
    # Acknowledged results are never sent again: what arrived is all that ever will.
    assert len(listener.arrivals) == 3
    received = [str(hl7.parse(m).segment("PID")[3][0][0]) for m in listener.messages]
    assert received == patients
    assert all(str(hl7.parse(m).segment("OBR")[25]) == "F" for m in listener.messages)
    headers = {
        tuple(str(hl7.parse(m).segment("MSH")[n]) for n in (4, 5, 6)) for m in listener.messages
    }
    assert headers == {("REGION", "CRIS", "RXC01")}
