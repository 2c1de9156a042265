"""The audit forwarder against a real audit record repository: rsyslog over TLS and TCP.

rsyslog (Debian ``rsyslog`` with ``rsyslog-gnutls``) runs in the foreground with its own
configuration, work directory and port, receiving RFC 5425 syslog over TLS with a
throwaway CA and server certificate made here, and writing every message whole to a file.
The forwarding job runs in this process as the composition root builds it from the
settings (NETPACS_AUDIT_SYSLOG and its files); the tests write audit records through the
AuditService into the same index, as the interfaces do, and read what rsyslog received:
the collector down, killed and restarted, none lost.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from lxml import etree

from netpacs.adapters.transports import syslog
from netpacs.app import jobs
from netpacs.app.settings import Settings
from netpacs.domain.outbox import AuditEntry
from netpacs.domain.region import Region
from netpacs.index.db import make_engine, migrate
from netpacs.index.schema import audit_event
from netpacs.services.audit import (
    SCHEMA_FILE,
    Actor,
    AuditRecord,
    AuditService,
    Event,
    Outcome,
    Purpose,
)
from netpacs.services.jobs.audit_forwarding import BACKOFF_FIRST, AuditForwarding, Backoff
from netpacs.services.jobs.runner import Job, JobRunner
from tests.conftest import Netpacs, free_port, wait_for_port, wait_until
from tests.hl7.test_results import running

RSYSLOGD = Path("/usr/sbin/rsyslogd")
# One line per message: the RFC 5424 header fields, then the whole MSG (control characters
# are escaped by rsyslog, e.g. #012 for a line feed).
LINE = "%pri% %timereported:::date-rfc3339% %hostname% %app-name% %procid% %msgid% %msg%\\n"
GTLS_DRIVER = Path("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so")

pytestmark = pytest.mark.skipif(
    not RSYSLOGD.exists(), reason="rsyslog missing: scripts/ensure-system-packages.sh test"
)


# -- a throwaway certificate authority ---------------------------------------------------


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certs(folder: Path) -> Certs:
    """A CA and a certificate for localhost / 127.0.0.1 signed by it (valid one day)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("netpacs test audit CA"))
        .issuer_name(_name("netpacs test audit CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    certs = Certs(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    certs.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    certs.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    certs.server_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


# -- rsyslog, the audit record repository ------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One message as rsyslog parsed and wrote it."""

    pri: int
    timestamp: dt.datetime
    hostname: str
    app_name: str
    procid: str
    msgid: str
    msg: str

    @property
    def xml(self) -> str:
        assert self.msg.startswith("\ufeff"), "MSG must start with the UTF-8 BOM"
        return self.msg[1:]


@dataclass
class Rsyslog:
    """rsyslogd in the foreground: imtcp (gtls when ``certs``) on ``port``, one file out."""

    folder: Path
    certs: Certs | None
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def out(self) -> Path:
        return self.folder / "received.log"

    @property
    def url(self) -> str:
        return f"{'tls' if self.certs else 'tcp'}://localhost:{self.port}"

    def config(self) -> str:
        work = self.folder / "work"
        work.mkdir(parents=True, exist_ok=True)
        tls_global = tls_module = ""
        if self.certs is not None:
            tls_global = f"""
  DefaultNetstreamDriver="gtls"
  DefaultNetstreamDriverCAFile="{self.certs.ca}"
  DefaultNetstreamDriverCertFile="{self.certs.server_cert}"
  DefaultNetstreamDriverKeyFile="{self.certs.server_key}\""""
            tls_module = ' StreamDriver.Name="gtls" StreamDriver.Mode="1"'
            tls_module += ' StreamDriver.AuthMode="anon"'
        # A Direct main queue writes each message before the next is read, as an audit
        # record repository should; messages keep their whole MSG (maxMessageSize).
        return f"""
global(workDirectory="{work}" maxMessageSize="1m"{tls_global})
main_queue(queue.type="Direct")
module(load="imtcp"{tls_module})
template(name="audit" type="string" string="{LINE}")
ruleset(name="audit") {{
  action(type="omfile" file="{self.out}" template="audit")
}}
input(type="imtcp" address="127.0.0.1" port="{self.port}" ruleset="audit")
"""

    def start(self) -> Rsyslog:
        conf = self.folder / "rsyslog.conf"
        conf.write_text(self.config())
        pidfile = self.folder / "rsyslogd.pid"
        pidfile.unlink(missing_ok=True)
        stderr = (self.folder / "rsyslogd.stderr").open("ab")
        self.proc = subprocess.Popen(
            [str(RSYSLOGD), "-n", "-f", str(conf), "-i", str(pidfile)],
            stdout=stderr,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, proc=self.proc)
        return self

    def kill(self) -> None:
        """SIGKILL: the collector crashes, connections are reset."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def received(self) -> list[Received]:
        if not self.out.exists():
            return []
        messages = []
        for line in self.out.read_text(encoding="utf-8").splitlines():
            fields = line.split(" ", 6)
            if len(fields) < 7:
                continue  # rsyslog's own lines, were there any
            pri, stamp, hostname, app_name, procid, msgid, msg = fields
            messages.append(
                Received(
                    int(pri),
                    dt.datetime.fromisoformat(stamp),
                    hostname,
                    app_name,
                    procid,
                    msgid,
                    msg,
                )
            )
        return messages


@pytest.fixture
def collectors(tmp_path: Path) -> Iterator[list[Rsyslog]]:
    """Every rsyslog a test makes, stopped afterwards."""
    made: list[Rsyslog] = []
    yield made
    for collector in made:
        collector.stop()


def rsyslog(collectors: list[Rsyslog], folder: Path, certs: Certs | None) -> Rsyslog:
    if certs is not None and not GTLS_DRIVER.exists():
        pytest.skip("rsyslog-gnutls missing: scripts/ensure-system-packages.sh test")
    folder.mkdir(parents=True, exist_ok=True)
    collector = Rsyslog(folder, certs)
    collectors.append(collector)
    return collector


class AuditWriter:
    """Writes audit records into the server's index as the interfaces do."""

    def __init__(self, database_url: str) -> None:
        migrate(database_url)
        self.engine = make_engine(database_url, writer=True)
        self.service = AuditService(
            AuditService.in_own_transaction(self.engine), source_id="NETPACS"
        )

    def write(self, tag: str, count: int, *, pause: float = 0.0) -> list[AuditRecord]:
        """``count`` records whose detail is ``tag-n``: the marker looked for at the far end."""
        events = list(Event)
        records = []
        for n in range(count):
            event = events[n % len(events)]
            record = AuditRecord(
                event,
                Actor("rxc.radiologist", trust="RXC", role="radiologist", address="10.0.0.9"),
                outcome=Outcome.MINOR_FAILURE if n % 5 == 4 else Outcome.SUCCESS,
                purpose=Purpose.TREAT,
                patients=[(f"P{n}", "RXC")],
                study_uids=[f"1.2.826.0.1.3680043.10.543.9.{n}"],
                query="PatientID=P*" if event is Event.QUERY else None,
                detail=f"{tag}-{n}",
                when=dt.datetime.now(dt.UTC),
            )
            self.service.record(record)
            records.append(record)
            if pause:
                time.sleep(pause)
        return records

    def unforwarded(self) -> int:
        with self.engine.connect() as conn:
            query = sa.select(sa.func.count()).where(audit_event.c.forwarded_at.is_(None))
            return int(conn.execute(query).scalar_one())

    def close(self) -> None:
        self.engine.dispose()


@pytest.fixture
def writer(database_url: str) -> Iterator[AuditWriter]:
    w = AuditWriter(database_url)
    yield w
    w.close()


@cache
def schema() -> etree.RelaxNG:
    return etree.RelaxNG(etree.parse(str(SCHEMA_FILE)))


def details(messages: list[Received]) -> list[str]:
    """The EventOutcomeDescription of each message, each validated against PS3.15 A.5.1."""
    found = []
    for message in messages:
        doc = etree.fromstring(message.xml.encode("utf-8"))
        assert schema().validate(doc), f"{schema().error_log}\n{message.xml}"
        found.append(doc.findtext("EventIdentification/EventOutcomeDescription") or "")
    return found


def wait_for_markers(
    collector: Rsyslog, tag: str, count: int, timeout: float = 90.0
) -> list[Received]:
    wanted = {f"{tag}-{n}" for n in range(count)}
    deadline = time.monotonic() + timeout
    while True:
        messages = [m for m in collector.received() if f">{tag}-" in m.msg]
        missing = wanted - set(details(messages))
        if not missing:
            return messages
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(missing)} of {count} records never arrived")
        time.sleep(0.2)


# -- netpacs's forwarding job ---------------------------------------------------------------


def tls_settings(collector: Rsyslog, certs: Certs) -> Settings:
    return Settings(audit_syslog=collector.url, audit_syslog_ca_file=certs.ca)


@contextlib.contextmanager
def outbox_jobs(database_url: str, settings: Settings) -> Iterator[list[Job]]:
    """The outbox jobs the composition root builds from ``settings`` (a region without
    trusts: no results to send), on engines of their own."""
    reader, writer = make_engine(database_url), make_engine(database_url, writer=True)
    try:
        yield jobs.outbox_jobs(settings, Region("test", (), ()), reader=reader, writer=writer)
    finally:
        reader.dispose()
        writer.dispose()


@contextlib.contextmanager
def forwarding(database_url: str, settings: Settings) -> Iterator[None]:
    with outbox_jobs(database_url, settings) as built, running(JobRunner(built)):
        yield


def forwarder(built: list[Job]) -> AuditForwarding:
    (job,) = [job for job in built if isinstance(job, AuditForwarding)]
    return job


# -- behaviour ---------------------------------------------------------------------------


def test_records_arrive_over_tls_as_valid_rfc5424_audit_messages(
    tmp_path: Path,
    database_url: str,
    certs: Certs,
    collectors: list[Rsyslog],
    writer: AuditWriter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    collector = rsyslog(collectors, tmp_path / "rsyslog", certs).start()
    with forwarding(database_url, tls_settings(collector, certs)):
        records = writer.write("tls", 25)
        messages = wait_for_markers(collector, "tls", 25)
        wait_until(lambda: writer.unforwarded() == 0)
    assert f"forwarding audit records to {collector.url}" in caplog.text
    by_detail = dict(zip(details(messages), messages, strict=True))
    for record in records:
        message = by_detail[record.detail]
        failure = record.outcome is not Outcome.SUCCESS
        alert = record.event in (Event.BREAK_GLASS, Event.SECURITY_ALERT)
        assert message.pri == 10 * 8 + (4 if failure or alert else 5), record
        assert message.timestamp == record.when
        assert (message.app_name, message.procid, message.msgid) == (
            "netpacs",
            "-",
            "IHE+RFC-3881",
        )
        assert message.hostname == syslog.local_hostname()


def test_records_written_while_the_collector_is_down_all_arrive_when_it_starts(
    tmp_path: Path,
    database_url: str,
    certs: Certs,
    collectors: list[Rsyslog],
    writer: AuditWriter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector = rsyslog(collectors, tmp_path / "rsyslog", certs)  # not started
    with outbox_jobs(database_url, tls_settings(collector, certs)) as built:
        job = forwarder(built)
        writer.write("down", 600)  # more than one batch
        assert [job.step() for _ in range(4)] == [1, 2, 4, 8]  # each attempt backs off
        assert writer.unforwarded() >= 600
        assert caplog.text.count("cannot be reached") == 1, caplog.text  # one per outage
        collector.start()
        for _ in range(10):
            if writer.unforwarded() == 0:
                break
            job.step()
        job.close()
    assert writer.unforwarded() == 0
    assert "reachable again" in caplog.text
    assert len(wait_for_markers(collector, "down", 600)) >= 600


def test_collector_killed_and_restarted_mid_stream_loses_nothing(
    tmp_path: Path,
    database_url: str,
    certs: Certs,
    collectors: list[Rsyslog],
    writer: AuditWriter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector = rsyslog(collectors, tmp_path / "rsyslog", certs).start()
    with forwarding(database_url, tls_settings(collector, certs)):
        stream = threading.Thread(target=writer.write, args=("stream", 400), kwargs={"pause": 0.01})
        stream.start()
        wait_until(lambda: len(collector.received()) >= 20)
        collector.kill()
        wait_until(lambda: "cannot be reached" in caplog.text)  # it noticed, and waits
        collector.start()
        arrived = len(collector.received())
        wait_until(lambda: len(collector.received()) > arrived)  # forwarding again
        collector.kill()
        collector.start()
        stream.join()
        messages = wait_for_markers(collector, "stream", 400)
        wait_until(lambda: writer.unforwarded() == 0)
    assert len(messages) >= 400  # at least once: a resent batch may arrive twice


def test_plain_tcp_collector_receives_the_records(
    tmp_path: Path, database_url: str, collectors: list[Rsyslog], writer: AuditWriter
) -> None:
    collector = rsyslog(collectors, tmp_path / "rsyslog", None).start()
    assert collector.url.startswith("tcp://")
    with forwarding(database_url, Settings(audit_syslog=collector.url)):
        writer.write("tcp", 30)
        messages = wait_for_markers(collector, "tcp", 30)
    assert {m.msgid for m in messages} == {"IHE+RFC-3881"}


def test_without_a_collector_records_stay_in_the_index(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    writer = AuditWriter(database_url)
    try:
        with outbox_jobs(database_url, Settings()) as built:
            assert not [job for job in built if isinstance(job, AuditForwarding)]
            writer.write("kept", 5)
            for job in built:
                job.step()
        assert writer.unforwarded() == 5
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("udp://audit.example:514", "scheme must be tls://"),
        ("syslog.example:6514", "scheme must be tls://"),
        ("tls://audit.example", "names no port"),
        ("tls://audit.example:99999", "not a URL"),
        ("tls://:6514", "names no host"),
        ("tcp://127.0.0.1:notaport", "not a URL"),
    ],
)
def test_a_bad_audit_syslog_setting_is_refused_with_a_message(value: str, says: str) -> None:
    with pytest.raises(jobs.JobSettingsError) as refused:
        jobs.audit_collector(Settings(audit_syslog=value))
    assert "NETPACS_AUDIT_SYSLOG" in str(refused.value) and says in str(refused.value)


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"NETPACS_AUDIT_SYSLOG": "udp://audit.example:514"}, "scheme must be tls://"),
        (
            {
                "NETPACS_AUDIT_SYSLOG": "tls://localhost:6514",
                "NETPACS_AUDIT_SYSLOG_CA_FILE": "/nowhere/ca.pem",
            },
            "NETPACS_AUDIT_SYSLOG_CA_FILE",
        ),
    ],
)
def test_a_bad_audit_syslog_setting_stops_serve_with_a_message(
    tmp_path: Path, region_file: Path, env: dict[str, str], says: str
) -> None:
    server = Netpacs(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'index.sqlite'}",
        region_file=region_file,
        extra_env=env,
    )
    done = server.cli("serve", timeout=60)
    assert done.returncode == 2, done
    assert "NETPACS_AUDIT_SYSLOG" in done.stderr and says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


# -- the pieces --------------------------------------------------------------------------


def entry(*, when: dt.datetime, outcome: int, event_id: str, xml: str) -> AuditEntry:
    return AuditEntry(id=1, event_time=when, event_id=event_id, outcome=outcome, message_xml=xml)


def test_frame_is_octet_counted_rfc5424_with_bom() -> None:
    when = dt.datetime(2026, 3, 1, 9, 30, 15, 250_000, tzinfo=dt.UTC)
    frame = syslog.syslog_frame(
        entry(when=when, outcome=0, event_id="110112", xml="<AuditMessage>é</AuditMessage>"),
        hostname="h",
    )
    length, message = frame.split(b" ", 1)
    assert int(length) == len(message)
    assert message == (
        b"<85>1 2026-03-01T09:30:15.250000Z h netpacs - IHE+RFC-3881 - "
        + b"\xef\xbb\xbf<AuditMessage>\xc3\xa9</AuditMessage>"
    )
    naive = syslog.syslog_frame(
        entry(when=when.replace(tzinfo=None), outcome=4, event_id="110112", xml=""), hostname="h"
    )
    assert naive.split(b" ", 2)[1] == b"<84>1"


def test_security_alerts_and_failures_are_warnings() -> None:
    assert syslog.severity(outcome=0, event_id="110113") == 4
    assert syslog.severity(outcome=8, event_id="110112") == 4
    assert syslog.severity(outcome=0, event_id="110112") == 5


def test_connection_sees_the_peer_go_away() -> None:
    ours, theirs = socket.socketpair()
    conn = syslog.Connection(ours)
    conn.send(b"3 abc")
    assert conn.still_open()
    theirs.close()
    assert not conn.still_open()
    conn.close()


def test_backoff_doubles_to_thirty_seconds_and_resets() -> None:
    backoff = Backoff()
    assert [backoff.next() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    backoff.reset()
    assert backoff.next() == 1


def test_settings_name_the_collector(tmp_path: Path) -> None:
    settings = Settings(audit_syslog="tls://audit.example.nhs.uk:6514")
    assert jobs.audit_collector(settings) == syslog.Collector("tls", "audit.example.nhs.uk", 6514)
    assert jobs.audit_collector(Settings()) is None
    assert jobs.parse_collector("tcp://[::1]:514").url == "tcp://[::1]:514"
    assert jobs.parse_collector("tcp://[::1]:514").is_local
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("")
    with pytest.raises(jobs.JobSettingsError, match="plain TCP"):
        jobs.audit_collector(
            Settings(audit_syslog="tcp://127.0.0.1:514", audit_syslog_ca_file=ca_file)
        )
    with pytest.raises(jobs.JobSettingsError, match="certificate files cannot be used"):
        jobs.audit_collector(
            Settings(audit_syslog="tls://localhost:6514", audit_syslog_ca_file=ca_file)
        )


class FakeCollector:
    """A TCP collector on a free port that keeps what it reads; with ``dies_first`` its
    first connection dies on the first bytes, unread (a crash mid-batch)."""

    def __init__(self, *, dies_first: bool = False) -> None:
        self.dies_first = dies_first
        # What each connection brought, apart: the frames of two senders (two nodes)
        # arrive interleaved on the wire's timeline, whole on each connection.
        self.streams: list[bytearray] = []
        self.connections = 0
        self._lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", free_port()))
        self.port = int(self.listener.getsockname()[1])
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                self.connections += 1
                dies = self.dies_first and self.connections == 1
            threading.Thread(target=self._read, args=(conn, dies), daemon=True).start()

    def _read(self, conn: socket.socket, dies: bool) -> None:
        stream = bytearray()
        with self._lock:
            self.streams.append(stream)
        with conn:
            while chunk := conn.recv(65536):
                if dies:
                    # A crash with the batch unread: the kernel answers with a reset.
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                    return
                with self._lock:
                    stream += chunk

    def details(self) -> list[str]:
        """The EventOutcomeDescription of every whole message received, in order on
        each connection, connection after connection."""
        with self._lock:
            streams = [bytes(s) for s in self.streams]
        return [d for stream in streams for d in self._frames(stream)]

    @staticmethod
    def _frames(rest: bytes) -> list[str]:
        found = []
        while rest:
            length, _, after = rest.partition(b" ")
            if len(after) < int(length):
                break
            frame, rest = after[: int(length)], after[int(length) :]
            assert frame.split(b" ", 6)[5] == b"IHE+RFC-3881"
            xml = frame.split(b"\xef\xbb\xbf", 1)[1]
            found.append(
                etree.fromstring(xml).findtext("EventIdentification/EventOutcomeDescription") or ""
            )
        return found

    def close(self) -> None:
        self.listener.close()


def test_a_batch_the_collector_dies_with_is_sent_again(database_url: str) -> None:
    """The check after sending, not the one before, catches a collector dying mid-batch."""
    writer = AuditWriter(database_url)
    collector = FakeCollector(dies_first=True)
    try:
        with outbox_jobs(database_url, Settings(audit_syslog=collector.url)) as built:
            job = forwarder(built)
            writer.write("batch", 3)
            assert job.step() == BACKOFF_FIRST  # lost: back off, then resend
            assert writer.unforwarded() == 3
            assert job.step() == 0.0
            assert writer.unforwarded() == 0
            job.close()
        wait_until(lambda: len(collector.details()) == 3)
        assert collector.details() == [f"batch-{n}" for n in range(3)]
        assert collector.connections == 2
    finally:
        collector.close()
        writer.close()
