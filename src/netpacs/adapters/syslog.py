"""Audit forwarder: sends the index's audit records to the audit record repository as syslog.

IHE ATNA (ITI-20 Record Audit Event): each ``audit_event`` row not yet forwarded goes out
as one RFC 5424 syslog message, facility authpriv (10), severity notice (5) or, for a
failure or a security alert, warning (4); TIMESTAMP is the event's time, APP-NAME
``netpacs``, MSGID ``IHE+RFC-3881``, and MSG the PS3.15 A.5 audit message in UTF-8 with a
byte order mark (RFC 5424 6.4). Messages are framed by octet counting, ``LEN SP MSG``
(RFC 5425 4.3, RFC 6587 3.4.1), over TLS 1.2 or later (``tls://host:port``, RFC 5425) or
plain TCP (``tcp://host:port``, for a collector on the same host).

Delivery is at least once. Syslog has no acknowledgement, so a batch (up to
:data:`BATCH` records, in id order) is marked forwarded only after it was written to the
connection *and* the connection was seen still open a moment later
(:data:`CONFIRM_WAIT`): a collector that went away meanwhile leaves an end-of-file or a
reset on our socket, and the whole batch is sent again after reconnecting. A collector
that is down delays records; they wait in the index, and none is lost. Duplicates are
possible after a reconnect (the repository sees the same message twice).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import select
import signal
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from netpacs.app.settings import Settings
from netpacs.index.db import make_engine
from netpacs.index.schema import audit_event

log = logging.getLogger(__name__)

SETTING = "NETPACS_AUDIT_SYSLOG"
FACILITY_AUTHPRIV = 10
SEVERITY_WARNING = 4
SEVERITY_NOTICE = 5
APP_NAME = "netpacs"
MSGID = "IHE+RFC-3881"  # IHE ITI TF-2 3.20.4.2 (ATNA over syslog)
BOM = "\ufeff".encode()
SECURITY_ALERT = "110113"  # DCM EventID: Security Alert

BATCH = 500  # records per batch
CONFIRM_WAIT = 0.3  # seconds between writing a batch and checking the connection
POLL = 0.5  # seconds between looks at the index when nothing waits
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
CONNECT_TIMEOUT = 10.0
SEND_TIMEOUT = 30.0


class AuditSyslogError(ValueError):
    """The audit record repository setting cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class Collector:
    """Where audit records go: ``tls://host:port`` or ``tcp://host:port``."""

    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def is_local(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_collector(url: str) -> Collector:
    """The collector named by ``url``; :class:`AuditSyslogError` naming the setting if bad."""
    example = "e.g. tls://audit.example.nhs.uk:6514"
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise AuditSyslogError(f"{SETTING}={url!r} is not a URL ({exc}); {example}") from None
    if parts.scheme not in ("tls", "tcp"):
        raise AuditSyslogError(
            f"{SETTING}={url!r}: the scheme must be tls:// (syslog over TLS, RFC 5425) or "
            f"tcp:// (plain TCP, for a collector on this host); {example}"
        )
    if not parts.hostname:
        raise AuditSyslogError(f"{SETTING}={url!r} names no host; {example}")
    if port is None or port == 0:
        raise AuditSyslogError(f"{SETTING}={url!r} names no port (1-65535); {example}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise AuditSyslogError(f"{SETTING}={url!r}: give only scheme, host and port; {example}")
    return Collector(parts.scheme, parts.hostname, port)


def check_settings(settings: Settings) -> Collector | None:
    """The collector to forward to (None: audit records stay in the index only).

    Raises :class:`AuditSyslogError` for a URL or certificate file that cannot work, so
    that ``netpacs serve`` stops at once instead of a worker failing later.
    """
    if not settings.audit_syslog:
        return None
    collector = parse_collector(settings.audit_syslog)
    files = {
        "NETPACS_AUDIT_SYSLOG_CA_FILE": settings.audit_syslog_ca_file,
        "NETPACS_AUDIT_SYSLOG_CERT_FILE": settings.audit_syslog_cert_file,
        "NETPACS_AUDIT_SYSLOG_KEY_FILE": settings.audit_syslog_key_file,
    }
    for name, path in files.items():
        if path is not None and not path.is_file():
            raise AuditSyslogError(f"{name}={str(path)!r} is not a file")
    if collector.scheme == "tcp" and any(path is not None for path in files.values()):
        raise AuditSyslogError(
            f"{SETTING}={settings.audit_syslog!r} is plain TCP, but certificate files are "
            "set: use tls:// to send over TLS"
        )
    if settings.audit_syslog_key_file is not None and settings.audit_syslog_cert_file is None:
        raise AuditSyslogError(
            "NETPACS_AUDIT_SYSLOG_KEY_FILE is set without NETPACS_AUDIT_SYSLOG_CERT_FILE"
        )
    if collector.scheme == "tls":
        tls_context(settings)  # a CA or key file that does not load fails here, now
    return collector


def tls_context(settings: Settings) -> ssl.SSLContext:
    """TLS 1.2+ client context: the collector's certificate and name are verified."""
    ca_file = settings.audit_syslog_ca_file
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if settings.audit_syslog_cert_file is not None:
            key_file = settings.audit_syslog_key_file
            context.load_cert_chain(
                str(settings.audit_syslog_cert_file), str(key_file) if key_file else None
            )
    except (ssl.SSLError, OSError) as exc:
        raise AuditSyslogError(f"the audit syslog certificate files cannot be used: {exc}") from exc
    return context


# -- RFC 5424 messages -------------------------------------------------------------------


def severity(*, outcome: int, event_id: str) -> int:
    """Warning for failures and security alerts, notice for the rest."""
    return SEVERITY_WARNING if outcome != 0 or event_id == SECURITY_ALERT else SEVERITY_NOTICE


def timestamp(when: dt.datetime) -> str:
    """RFC 5424 TIMESTAMP in UTC; the index keeps UTC, SQLite without its offset."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def header_field(value: str, max_length: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, or the NILVALUE."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:max_length]
    return cleaned or "-"


def syslog_frame(
    *, when: dt.datetime, outcome: int, event_id: str, xml: str, hostname: str
) -> bytes:
    """One audit record as an octet-counted RFC 5424 message (``LEN SP MSG``)."""
    pri = FACILITY_AUTHPRIV * 8 + severity(outcome=outcome, event_id=event_id)
    header = f"<{pri}>1 {timestamp(when)} {hostname} {APP_NAME} - {MSGID} - "
    message = header.encode("ascii") + BOM + xml.encode("utf-8")
    return b"%d " % len(message) + message


def local_hostname() -> str:
    """HOSTNAME: this node's fully qualified name (RFC 5424 6.2.4 order of preference)."""
    return header_field(socket.getfqdn(), 255)


# -- the connection ----------------------------------------------------------------------


class Connection:
    """A stream to the collector: write frames, tell whether the peer is still there."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def still_open(self) -> bool:
        """False when the collector closed or reset the connection.

        A syslog collector never writes to us, so anything readable is an end of file, a
        reset, or (TLS 1.3) session tickets, which reading consumes.
        """
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
        except (OSError, ValueError):
            return False
        if not readable:
            return True
        if isinstance(self._sock, ssl.SSLSocket):
            return self._tls_still_open(self._sock)
        try:
            return bool(self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except BlockingIOError:
            return True
        except OSError:
            return False

    @staticmethod
    def _tls_still_open(sock: ssl.SSLSocket) -> bool:
        sock.setblocking(False)
        try:
            return bool(sock.recv(4096))  # b"": close_notify or end of file
        except ssl.SSLWantReadError:
            return True  # only handshake records (session tickets) were waiting
        except OSError:
            return False
        finally:
            sock.settimeout(SEND_TIMEOUT)

    def close(self) -> None:
        if isinstance(self._sock, ssl.SSLSocket):
            # Send close_notify, so that the collector logs a clean close; do not wait
            # for its answer.
            self._sock.setblocking(False)
            with contextlib.suppress(OSError, ValueError):
                self._sock.unwrap()
        with contextlib.suppress(OSError):
            self._sock.close()


def connect(collector: Collector, context: ssl.SSLContext | None) -> Connection:
    """Open a connection (TLS handshake included); OSError when the collector is not there."""
    sock = socket.create_connection((collector.host, collector.port), timeout=CONNECT_TIMEOUT)
    try:
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=collector.host)
        sock.settimeout(SEND_TIMEOUT)
    except BaseException:
        sock.close()
        raise
    return Connection(sock)


# -- the forwarder -----------------------------------------------------------------------


class ConnectionLost(OSError):
    """The collector went away while a batch was in flight; the batch is sent again."""


class Backoff:
    """Delays between reconnection attempts: 1 s, 2 s, 4 s ... up to 30 s."""

    def __init__(self) -> None:
        self._next = BACKOFF_FIRST

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, BACKOFF_MAX)
        return delay

    def reset(self) -> None:
        self._next = BACKOFF_FIRST


# id, event_time, event_id, outcome, message_xml
_AuditRow = sa.Row[int, dt.datetime, str, int, str]
_PENDING = (
    sa.select(
        audit_event.c.id,
        audit_event.c.event_time,
        audit_event.c.event_id,
        audit_event.c.outcome,
        audit_event.c.message_xml,
    )
    .where(audit_event.c.forwarded_at.is_(None))
    .order_by(audit_event.c.id)
    .limit(BATCH)
)


class AuditForwarder:
    """Moves audit records from the index to the collector, batch by batch."""

    def __init__(
        self,
        *,
        reader: sa.Engine,
        writer: sa.Engine,
        collector: Collector,
        open_connection: Callable[[], Connection],
        hostname: str,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._collector = collector
        self._open = open_connection
        self._hostname = hostname
        # PostgreSQL: rows claimed with SKIP LOCKED, so that the forwarders of several
        # core nodes share the records instead of each sending all of them.
        self._claim = writer.dialect.name != "sqlite"
        self._conn: Connection | None = None
        self._backoff = Backoff()
        self._outage_since: float | None = None

    def run(self, stop: threading.Event) -> None:
        log.info("forwarding audit records to %s", self._collector.url)
        try:
            while not stop.is_set():
                stop.wait(self.step())
        finally:
            self._disconnect()

    def step(self) -> float:
        """Forward one batch if records wait; the seconds to wait before the next step."""
        try:
            if not self._waiting():
                return POLL
        except sa.exc.DBAPIError as exc:
            log.warning("audit forwarder cannot read the index: %s", exc.orig)
            return self._backoff.next()
        if (self._conn is None or not self._conn.still_open()) and not self._reconnect():
            return self._backoff.next()
        try:
            sent = self.forward_batch()
        except sa.exc.DBAPIError as exc:
            # Sent but not marked: the batch goes again (at least once).
            log.warning("audit forwarder cannot mark records forwarded: %s", exc.orig)
            return self._backoff.next()
        except OSError as exc:
            self._disconnect()
            log.info("connection to %s lost (%s); resending the batch", self._collector.url, exc)
            return self._backoff.next()
        if sent:
            self._backoff.reset()
            return 0.0
        return POLL  # every waiting record is claimed by another node's forwarder

    def forward_batch(self) -> int:
        """Send the oldest waiting records and mark them forwarded; how many were sent."""
        assert self._conn is not None
        if self._claim:
            with self._writer.begin() as tx:
                rows = tx.execute(_PENDING.with_for_update(skip_locked=True)).all()
                if rows:
                    self._deliver(self._conn, rows)
                    self._mark(tx, rows)
            return len(rows)
        # SQLite: a single node; no write lock is held while the batch is on the wire.
        with self._reader.connect() as conn:
            rows = conn.execute(_PENDING).all()
        if rows:
            self._deliver(self._conn, rows)
            with self._writer.begin() as tx:
                self._mark(tx, rows)
        return len(rows)

    def _deliver(self, conn: Connection, rows: Sequence[_AuditRow]) -> None:
        data = b"".join(
            syslog_frame(
                when=row.event_time,
                outcome=row.outcome,
                event_id=row.event_id,
                xml=row.message_xml,
                hostname=self._hostname,
            )
            for row in rows
        )
        conn.send(data)
        time.sleep(CONFIRM_WAIT)
        if not conn.still_open():
            raise ConnectionLost(f"the collector closed the connection after {len(rows)} records")

    @staticmethod
    def _mark(tx: sa.Connection, rows: Sequence[_AuditRow]) -> None:
        tx.execute(
            sa.update(audit_event)
            .where(audit_event.c.id.in_([row.id for row in rows]))
            .values(forwarded_at=dt.datetime.now(dt.UTC))
        )

    def _waiting(self) -> bool:
        query = sa.select(audit_event.c.id).where(audit_event.c.forwarded_at.is_(None)).limit(1)
        with self._reader.connect() as conn:
            return conn.execute(query).first() is not None

    def _reconnect(self) -> bool:
        self._disconnect()
        try:
            self._conn = self._open()
        except OSError as exc:
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                log.warning(
                    "audit record repository %s (%s) cannot be reached: %s; audit records "
                    "wait in the index and are sent when it is back (retrying every %.0f s "
                    "at most)",
                    self._collector.url,
                    SETTING,
                    exc,
                    BACKOFF_MAX,
                )
            return False
        if self._outage_since is not None:
            log.warning(
                "audit record repository %s reachable again after %.0f s; sending the "
                "records that waited",
                self._collector.url,
                time.monotonic() - self._outage_since,
            )
            self._outage_since = None
        return True

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def run_worker(settings: Settings) -> None:
    """The ``audit`` worker process of ``netpacs serve``: forward until SIGTERM or SIGINT."""
    collector = check_settings(settings)
    if collector is None:
        return
    if collector.scheme == "tcp" and not collector.is_local:
        log.warning(
            "%s=%s sends audit records unencrypted over the network: use tls:// for a "
            "collector on another host",
            SETTING,
            collector.url,
        )
    context = tls_context(settings) if collector.scheme == "tls" else None
    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    url = settings.effective_database_url
    reader = make_engine(url)
    writer = make_engine(url, writer=True)
    try:
        AuditForwarder(
            reader=reader,
            writer=writer,
            collector=collector,
            open_connection=lambda: connect(collector, context),
            hostname=local_hostname(),
        ).run(stop)
    finally:
        reader.dispose()
        writer.dispose()
