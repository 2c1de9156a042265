"""Syslog client: audit records as RFC 5424 messages to an audit record repository.

IHE ATNA (ITI-20 Record Audit Event): each record is one RFC 5424 message, facility
authpriv (10), severity notice (5) or, for a failure or a security alert, warning (4);
TIMESTAMP is the event's time, APP-NAME ``netpacs``, MSGID ``IHE+RFC-3881``, and MSG
the PS3.15 A.5 audit message in UTF-8 with a byte order mark (RFC 5424 6.4). Messages
are framed by octet counting, ``LEN SP MSG`` (RFC 5425 4.3, RFC 6587 3.4.1), over TLS
1.2 or later (``tls://host:port``, RFC 5425) or plain TCP (``tcp://host:port``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import select
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from netpacs.domain.outbox import AuditEntry
from netpacs.services.jobs.audit_forwarding import ForwardingFailed

FACILITY_AUTHPRIV = 10
SEVERITY_WARNING = 4
SEVERITY_NOTICE = 5
APP_NAME = "netpacs"
MSGID = "IHE+RFC-3881"  # IHE ITI TF-2 3.20.4.2 (ATNA over syslog)
BOM = "\ufeff".encode()
SECURITY_ALERT = "110113"  # DCM EventID: Security Alert

CONNECT_TIMEOUT = 10.0
SEND_TIMEOUT = 30.0


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


def syslog_frame(entry: AuditEntry, *, hostname: str) -> bytes:
    """One audit record as an octet-counted RFC 5424 message (``LEN SP MSG``)."""
    pri = FACILITY_AUTHPRIV * 8 + severity(outcome=entry.outcome, event_id=entry.event_id)
    header = f"<{pri}>1 {timestamp(entry.event_time)} {hostname} {APP_NAME} - {MSGID} - "
    message = header.encode("ascii") + BOM + entry.message_xml.encode("utf-8")
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


class SyslogClient:
    """The audit forwarder's transport: one connection to the collector at a time."""

    def __init__(
        self, collector: Collector, *, context: ssl.SSLContext | None, hostname: str
    ) -> None:
        self.collector = collector
        self._context = context
        self._hostname = hostname
        self._conn: Connection | None = None

    def connect(self) -> None:
        self.close()
        try:
            self._conn = connect(self.collector, self._context)
        except OSError as exc:
            raise ForwardingFailed(str(exc)) from None

    def still_open(self) -> bool:
        return self._conn is not None and self._conn.still_open()

    def send(self, entries: Sequence[AuditEntry]) -> None:
        if self._conn is None:
            raise ForwardingFailed("not connected")
        data = b"".join(syslog_frame(entry, hostname=self._hostname) for entry in entries)
        try:
            self._conn.send(data)
        except OSError as exc:
            raise ForwardingFailed(str(exc)) from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
