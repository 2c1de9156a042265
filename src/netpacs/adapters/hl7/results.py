"""Results sender: delivers queued HL7 ORU^R01 messages to the requesting trusts over MLLP.

The reporting service queues one row of ``result_outbox`` per signed report or addendum
(services.report_outputs), in the transaction that signs it. This worker sends each
row to its trust's results listener (``[trusts.results_mllp]`` in the region file) as
one MLLP frame, ``<VT> message <FS><CR>`` (HL7 v2.5 appendix C, MLLP release 1), and
waits for the original-mode acknowledgement on the same connection:

* MSA-1 ``AA`` or ``CA`` naming our MSH-10 in MSA-2: delivered, ``sent_at`` is set;
* ``AE``, ``AR`` (or ``CE``, ``CR``), no answer within ``results_ack_timeout_seconds``,
  a refused or broken connection: ``attempts`` + 1, ``last_error`` says what happened,
  and the row waits until ``next_attempt_at`` (1 s, 2 s, 4 s ... up to
  ``results_retry_max_seconds``) before it is sent again, unchanged.

Order: a trust's rows go strictly in id order, one at a time; row n+1 is not sent
before row n is acknowledged, however long that takes. Trusts are independent: each
has its own thread, so a trust whose listener is down holds up no other. A trust
without a results endpoint keeps its rows queued, with ``last_error`` saying so.

A trust whose ``[trusts.results_mllp]`` says ``tls = true`` gets its messages over
TLS 1.2 or later (MLLP over TLS as IHE ITI TF-2 3.1.2 secures HL7 v2): the listener's
certificate must be signed by the trust's ``ca_file`` (the system's CAs when unset) and
name its host; we present ``NETPACS_RESULTS_TLS_CERT_FILE`` when the listener asks for a
client certificate. A handshake that fails is a failed attempt like a refused
connection: the row stays queued and ``last_error`` says why.

Delivery is at least once: the only state is the table, so a restart resends the row
that was in flight when it stopped, and a message whose ACK was lost is sent again
with the same control id (HL7 v2.5 2.10.2: the receiver recognises a duplicate by
MSH-10). On PostgreSQL the node that sends for a trust holds a transaction-scoped
advisory lock named after the trust for the attempt, so that the workers of several
core nodes never send one trust's rows at the same time; on SQLite there is one node.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from netpacs.app.region_file import load_region
from netpacs.app.settings import Settings
from netpacs.domain.region import Endpoint, Region, Trust
from netpacs.index.db import make_engine
from netpacs.index.schema import result_outbox

log = logging.getLogger(__name__)

START = b"\x0b"  # <VT>
END = b"\x1c\r"  # <FS><CR>
ACCEPTED = frozenset({"AA", "CA"})  # HL7 table 0008: application / commit accept
MAX_ACK = 1 << 20  # bytes: an acknowledgement is a few hundred
CONNECT_TIMEOUT = 10.0
ORPHAN_CHECK = 30.0  # seconds between looks for rows of trusts the region does not name


class DeliveryError(Exception):
    """One attempt failed; the message (for ``last_error``) says how."""


class ResultsTlsError(ValueError):
    """A trust's TLS settings or our client certificate cannot be used; says which."""


@dataclass(frozen=True, slots=True)
class TlsClient:
    """How we connect to one trust's TLS listener."""

    context: ssl.SSLContext
    presents_certificate: bool  # a client certificate is loaded in ``context``

    def failure(self, where: str, exc: OSError) -> str:
        """``last_error`` for a TLS connection that broke: with no client certificate of
        ours, the likeliest cause is a listener that requires one (TLS 1.3 tells only on
        the first read, and sometimes only by closing)."""
        hint = (
            ""
            if self.presents_certificate
            else "; if it requires a client certificate, set NETPACS_RESULTS_TLS_CERT_FILE"
        )
        return f"TLS connection to {where} failed: {_reason(exc)}{hint}"


def tls_context(
    endpoint: Endpoint, cert_file: Path | None, key_file: Path | None
) -> ssl.SSLContext:
    """TLS 1.2+ client context for ``endpoint``: its certificate and name are verified."""
    try:
        context = ssl.create_default_context(
            cafile=str(endpoint.ca_file) if endpoint.ca_file else None
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    except (ssl.SSLError, OSError) as exc:
        raise ResultsTlsError(f"the CA file {endpoint.ca_file} cannot be used: {exc}") from exc
    if cert_file is not None:
        try:
            context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
        except (ssl.SSLError, OSError) as exc:
            raise ResultsTlsError(
                "NETPACS_RESULTS_TLS_CERT_FILE / NETPACS_RESULTS_TLS_KEY_FILE cannot be used: "
                f"{exc}"
            ) from exc
    return context


def tls_contexts(region: Region, settings: Settings) -> dict[str, TlsClient]:
    """The TLS context of every trust whose results go over TLS, by ODS code.

    Raises :class:`ResultsTlsError` for files that cannot be used, so that ``netpacs
    serve`` stops at once instead of every result failing later.
    """
    cert_file, key_file = settings.results_tls_cert_file, settings.results_tls_key_file
    if key_file is not None and cert_file is None:
        raise ResultsTlsError(
            "NETPACS_RESULTS_TLS_KEY_FILE is set without NETPACS_RESULTS_TLS_CERT_FILE"
        )
    contexts: dict[str, TlsClient] = {}
    for trust in region.trusts:
        endpoint = trust.results_endpoint
        if endpoint is not None and endpoint.tls:
            try:
                context = tls_context(endpoint, cert_file, key_file)
                contexts[trust.ods_code] = TlsClient(context, cert_file is not None)
            except ResultsTlsError as exc:
                raise ResultsTlsError(f"results to {trust.ods_code}: {exc}") from exc
    return contexts


@dataclass(frozen=True, slots=True)
class Timing:
    """How often to look, how long to wait for an ACK, how to back off (Settings)."""

    poll: float = 0.5
    retry_first: float = 1.0
    retry_max: float = 60.0
    ack_timeout: float = 30.0

    @classmethod
    def of(cls, settings: Settings) -> Timing:
        return cls(
            poll=settings.results_poll_seconds,
            retry_first=settings.results_retry_first_seconds,
            retry_max=settings.results_retry_max_seconds,
            ack_timeout=settings.results_ack_timeout_seconds,
        )

    def backoff(self, attempts: int) -> float:
        """Seconds before the next attempt after ``attempts`` failed ones (capped doubling)."""
        return float(min(self.retry_first * 2 ** min(max(attempts - 1, 0), 30), self.retry_max))


# -- acknowledgements ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    code: str  # MSA-1
    text: str  # MSA-3 and ERR, for people


def read_answer(payload: bytes, control_id: str) -> Answer:
    """The MSA of an acknowledgement to message ``control_id``; DeliveryError if it is
    not one (no MSA, or the ACK of another message)."""
    text = payload.decode("utf-8", "replace").replace("\r\n", "\r").replace("\n", "\r")
    if not text.startswith("MSH") or len(text) < 8:
        raise DeliveryError(f"the answer is not an HL7 message: {text[:80]!r}")
    fs = text[3]
    msa: list[str] | None = None
    err = ""
    for segment in text.split("\r"):
        fields = segment.split(fs)
        if fields[0] == "MSA" and msa is None:
            msa = fields
        elif fields[0] == "ERR" and not err:
            err = " ".join(f for f in fields[1:] if f).replace(text[4], " ").strip()
    if msa is None or len(msa) < 2 or not msa[1].strip():
        raise DeliveryError("the answer has no MSA segment (not an acknowledgement)")
    acknowledged = msa[2].strip() if len(msa) > 2 else ""
    if acknowledged != control_id:
        raise DeliveryError(
            f"the answer acknowledges message {acknowledged!r}, not {control_id!r} (MSA-2)"
        )
    reason = msa[3].strip() if len(msa) > 3 else ""
    return Answer(msa[1].strip(), "; ".join(t for t in (reason, err) if t))


class MllpConnection:
    """One TCP connection to a results listener: a frame out, a frame back."""

    def __init__(
        self, endpoint: Endpoint, *, ack_timeout: float, tls: TlsClient | None = None
    ) -> None:
        self.endpoint = endpoint
        self._ack_timeout = ack_timeout
        self._tls = tls
        try:
            sock = socket.create_connection(
                (endpoint.host, endpoint.port), timeout=min(CONNECT_TIMEOUT, ack_timeout)
            )
        except OSError as exc:
            raise DeliveryError(f"cannot connect to {self.where}: {_reason(exc)}") from None
        if tls is not None:
            try:
                sock = tls.context.wrap_socket(sock, server_hostname=endpoint.host)
            except ssl.SSLCertVerificationError as exc:
                sock.close()
                raise DeliveryError(
                    f"TLS to {self.where}: its certificate is not trusted ({exc.verify_message})"
                ) from None
            except OSError as exc:  # ssl.SSLError included
                sock.close()
                raise DeliveryError(tls.failure(self.where, exc)) from None
        self._sock = sock
        self.used = False

    @property
    def where(self) -> str:
        return f"{self.endpoint.host}:{self.endpoint.port}"

    def exchange(self, message: str, control_id: str) -> Answer:
        """Send one message and read its acknowledgement."""
        self.used = True
        deadline = time.monotonic() + self._ack_timeout
        try:
            self._sock.settimeout(self._ack_timeout)
            self._sock.sendall(START + message.encode("utf-8") + END)
            buffer = b""
            while END not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                self._sock.settimeout(remaining)
                chunk = self._sock.recv(65536)
                if not chunk:
                    raise ConnectionLost(f"{self.where} closed the connection without an ACK")
                buffer += chunk
                if len(buffer) > MAX_ACK:
                    raise DeliveryError(f"{self.where} answered more than {MAX_ACK} bytes")
        except TimeoutError:
            raise DeliveryError(
                f"no ACK from {self.where} within {self._ack_timeout:g} s"
            ) from None
        except ConnectionLost:
            raise
        except OSError as exc:
            if self._tls is not None and isinstance(exc, ssl.SSLError):
                raise ConnectionLost(self._tls.failure(self.where, exc)) from None
            raise ConnectionLost(f"connection to {self.where} failed: {_reason(exc)}") from None
        frame = buffer.split(END, 1)[0]
        start = frame.find(START)
        return read_answer(frame[start + 1 :] if start >= 0 else frame, control_id)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


class ConnectionLost(DeliveryError):
    """The connection broke before an answer came."""


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


# -- one trust -------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(when: dt.datetime) -> dt.datetime:
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


class TrustSender:
    """Sends one trust's queued results in id order (module docstring)."""

    def __init__(
        self,
        trust: Trust,
        *,
        reader: sa.Engine,
        writer: sa.Engine,
        timing: Timing,
        region_file: str = "the region file",
        tls: TlsClient | None = None,
    ) -> None:
        self.trust = trust
        self._tls = tls
        self._reader = reader
        self._writer = writer
        self._timing = timing
        self._region_file = region_file
        self._shared = writer.dialect.name != "sqlite"
        digest = hashlib.sha256(f"netpacs results {trust.ods_code}".encode()).digest()
        self._lock_key = int.from_bytes(digest[:8], "big", signed=True)
        self._conn: MllpConnection | None = None
        self._outage_since: float | None = None

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    delay = self.step()
                except sa.exc.DBAPIError as exc:
                    log.warning("results for %s: the index failed: %s", self.trust.ods_code, exc)
                    delay = self._timing.retry_first
                except Exception:
                    log.exception("results for %s: unexpected failure", self.trust.ods_code)
                    delay = self._timing.retry_max
                if delay > 0:
                    stop.wait(delay)
        finally:
            self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def step(self) -> float:
        """At most one attempt for the trust's oldest queued row; seconds until the next."""
        with self._transaction() as tx:
            if tx is None:
                return self._timing.poll  # another node is sending for this trust
            row = self._head(tx)
            if row is None:
                return self._timing.poll
            if self.trust.results_endpoint is None:
                self._no_endpoint(tx)
                return self._timing.poll
            wait = (_aware(row.next_attempt_at) - _now()).total_seconds()
            if wait > 0:
                return min(wait, self._timing.poll)
            return self._attempt(tx, row, self.trust.results_endpoint)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sa.Connection | None]:
        """PostgreSQL: one transaction holding the trust's advisory lock for the attempt
        (None when another node holds it). SQLite: None is never given; reads and writes
        take their own short transactions (no write lock held while on the wire)."""
        if not self._shared:
            with self._reader.connect() as conn:
                yield conn
            return
        with self._writer.begin() as tx:
            locked = tx.execute(sa.select(sa.func.pg_try_advisory_xact_lock(self._lock_key)))
            yield tx if locked.scalar_one() else None

    def _write(self, tx: sa.Connection) -> contextlib.AbstractContextManager[sa.Connection]:
        if self._shared:
            return contextlib.nullcontext(tx)
        tx.rollback()  # end the read transaction before SQLite's write lock is taken
        return self._writer.begin()

    def _head(self, conn: sa.Connection) -> Any:
        return conn.execute(
            sa.select(
                result_outbox.c.id,
                result_outbox.c.control_id,
                result_outbox.c.message,
                result_outbox.c.attempts,
                result_outbox.c.next_attempt_at,
            )
            .where(result_outbox.c.trust == self.trust.ods_code, result_outbox.c.sent_at.is_(None))
            .order_by(result_outbox.c.id)
            .limit(1)
        ).first()

    def _attempt(self, tx: sa.Connection, row: Any, endpoint: Endpoint) -> float:
        try:
            answer = self._deliver(row.message, row.control_id, endpoint)
        except DeliveryError as exc:
            self.close()
            return self._failed(tx, row, str(exc), endpoint)
        if answer.code not in ACCEPTED:
            detail = f": {answer.text}" if answer.text else ""
            error = f"{endpoint_name(endpoint)} answered {answer.code}{detail}"
            return self._failed(tx, row, error, endpoint)
        with self._write(tx) as w:
            w.execute(
                sa.update(result_outbox)
                .where(result_outbox.c.id == row.id)
                .values(sent_at=_now(), attempts=row.attempts + 1)
            )
        if self._outage_since is not None:
            log.warning(
                "results listener of %s (%s) accepts results again after %.0f s",
                self.trust.ods_code,
                endpoint_name(endpoint),
                time.monotonic() - self._outage_since,
            )
            self._outage_since = None
        return 0.0

    def _deliver(self, message: str, control_id: str, endpoint: Endpoint) -> Answer:
        """One exchange; a kept connection that turns out dead is replaced once at once
        (a listener restarted since the last message), without counting an attempt."""
        if self._conn is not None and self._conn.endpoint != endpoint:
            self.close()
        if self._conn is not None:
            try:
                return self._conn.exchange(message, control_id)
            except ConnectionLost:
                self.close()
        self._conn = MllpConnection(endpoint, ack_timeout=self._timing.ack_timeout, tls=self._tls)
        return self._conn.exchange(message, control_id)

    def _failed(self, tx: sa.Connection, row: Any, error: str, endpoint: Endpoint) -> float:
        attempts = row.attempts + 1
        delay = self._timing.backoff(attempts)
        with self._write(tx) as w:
            w.execute(
                sa.update(result_outbox)
                .where(result_outbox.c.id == row.id)
                .values(
                    attempts=attempts,
                    last_error=error[:2000],
                    next_attempt_at=_now() + dt.timedelta(seconds=delay),
                )
            )
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning(
                "results for %s (%s) not delivered: %s; the message waits in the outbox and "
                "is sent again (every %.0f s at most); later results wait behind it",
                self.trust.ods_code,
                endpoint_name(endpoint),
                error,
                self._timing.retry_max,
            )
        return min(delay, self._timing.poll)

    def _no_endpoint(self, tx: sa.Connection) -> None:
        error = (
            f"trust {self.trust.ods_code} has no results MLLP endpoint "
            f"([trusts.results_mllp] in {self._region_file}): results wait until one is set"
        )
        with self._write(tx) as w:
            done = w.execute(
                sa.update(result_outbox)
                .where(
                    result_outbox.c.trust == self.trust.ods_code,
                    result_outbox.c.sent_at.is_(None),
                    sa.or_(
                        result_outbox.c.last_error.is_(None), result_outbox.c.last_error != error
                    ),
                )
                .values(last_error=error)
            ).rowcount
        if done:
            log.warning("%d results wait: %s", done, error)


def endpoint_name(endpoint: Endpoint) -> str:
    return f"{endpoint.host}:{endpoint.port}"


# -- the worker ------------------------------------------------------------------------


class ResultsSender:
    """A thread per trust of the region; rows of trusts it does not name are flagged."""

    def __init__(
        self,
        region: Region,
        *,
        reader: sa.Engine,
        writer: sa.Engine,
        timing: Timing,
        region_file: str = "the region file",
        tls: dict[str, TlsClient] | None = None,
    ) -> None:
        self._region = region
        self._reader = reader
        self._writer = writer
        contexts = tls or {}
        self.senders = [
            TrustSender(
                t,
                reader=reader,
                writer=writer,
                timing=timing,
                region_file=region_file,
                tls=contexts.get(t.ods_code),
            )
            for t in region.trusts
        ]
        self._region_file = region_file

    def run(self, stop: threading.Event) -> None:
        threads = [
            threading.Thread(
                target=s.run, args=(stop,), name=f"results-{s.trust.ods_code}", daemon=True
            )
            for s in self.senders
        ]
        for thread in threads:
            thread.start()
        with_endpoint = [s.trust.ods_code for s in self.senders if s.trust.results_endpoint]
        log.info("sending results (HL7 ORU) to the listeners of %s", ", ".join(with_endpoint))
        try:
            while not stop.is_set():
                try:
                    self.flag_unknown_trusts()
                except sa.exc.DBAPIError as exc:
                    log.warning("results: the index failed: %s", exc)
                stop.wait(ORPHAN_CHECK)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)

    def flag_unknown_trusts(self) -> int:
        """Give queued rows of trusts the region does not name a ``last_error``."""
        known = [t.ods_code for t in self._region.trusts]
        flagged = 0
        with self._writer.begin() as tx:
            trusts = tx.execute(
                sa.select(result_outbox.c.trust)
                .where(result_outbox.c.sent_at.is_(None), result_outbox.c.trust.not_in(known))
                .distinct()
            ).scalars()
            for trust in list(trusts):
                error = (
                    f"trust {trust!r} is not in the region ({self._region_file}): add it with "
                    "its [trusts.results_mllp], and the results wait until then"
                )
                flagged += tx.execute(
                    sa.update(result_outbox)
                    .where(
                        result_outbox.c.trust == trust,
                        result_outbox.c.sent_at.is_(None),
                        sa.or_(
                            result_outbox.c.last_error.is_(None),
                            result_outbox.c.last_error != error,
                        ),
                    )
                    .values(last_error=error)
                ).rowcount
        if flagged:
            log.warning("%d results are for trusts not in the region file", flagged)
        return flagged


def _store_missing_srs(settings: Settings, stop: threading.Event) -> None:
    """Once a minute, store the SR of any final report whose SR could not be stored when
    it was signed (one process does this: the SR of a version is stored once)."""
    from netpacs.app.container import build_archive
    from netpacs.services.access import SYSTEM
    from netpacs.services.audit import AuditService
    from netpacs.services.reporting import ReportingScope, ReportsService

    archive = build_archive(settings)
    try:
        audit = AuditService(archive.writer.execute, source_id=settings.ae_title)
        service = ReportsService(
            ReportingScope(
                archive.read_engine, archive.write_engine, archive.region, audit, principal=SYSTEM
            ),
            outputs=archive.report_outputs,
        )
        while not stop.wait(60.0):
            try:
                stored = service.store_missing_srs()
            except Exception:
                log.exception("the SR sweep failed; it runs again in a minute")
                continue
            if stored:
                log.warning("stored %d report SRs that were missing", stored)
    finally:
        archive.close()


def run_worker(settings: Settings) -> None:
    """The ``results`` worker process of ``netpacs serve``: send until SIGTERM or SIGINT."""
    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    url = settings.effective_database_url
    reader = make_engine(url)
    writer = make_engine(url, writer=True)
    sweeper = threading.Thread(
        target=_store_missing_srs, args=(settings, stop), name="sr-sweep", daemon=True
    )
    sweeper.start()
    try:
        region = load_region(settings.effective_region_file)
        ResultsSender(
            region,
            reader=reader,
            writer=writer,
            timing=Timing.of(settings),
            region_file=str(settings.effective_region_file),
            tls=tls_contexts(region, settings),
        ).run(stop)
    finally:
        reader.dispose()
        writer.dispose()
