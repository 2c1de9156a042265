"""What netpacs counts and measures, for Prometheus: the metric objects and the scrape.

The services record here as they work (a counter increment or a histogram observation:
no database query on a hot path); the HTTP adapter only exposes the text
(``GET /metrics``, adapters/http/metrics.py). Every metric is documented in
docs/operations.md.

Several processes (``netpacs serve`` forks DIMSE, HTTP, MLLP and job workers) record
through prometheus_client's multiprocess mode: :func:`use_directory`, called by the
composition root before it forks, points every process at one folder where each keeps
its values in files of its own; a scrape of any HTTP worker sums them
(``MultiProcessCollector``). :func:`process_started` and :func:`process_ended` keep
the gauge of live worker processes (``mark_process_dead``). A process that never
called :func:`use_directory` (the CLI, the tests' in-process app) keeps its values in
memory and exposes those.

Backlogs (results waiting per trust, audit records waiting to be forwarded, store
tallies left open) are read from the index when scraped, by :class:`Backlogs`: a few
COUNT/MIN queries, kept for a few seconds so that several scrapers cost one reading.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from typing import Protocol as Interface

import sqlalchemy as sa
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from netpacs.domain.outcomes import Origin, Protocol, StoreOutcome
from netpacs.index.backlog import BacklogReading, read_backlog

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# -- the metric objects (every one has labels: values are made per process, lazily) ------

#: How each protocol is named in the ``protocol`` label.
PROTOCOLS: dict[Protocol, str] = {
    Protocol.DIMSE: "dimse",
    Protocol.DICOMWEB: "stow",
    Protocol.IMPORT: "import",
    Protocol.REINDEX: "reindex",
    Protocol.REPORT: "report",
    Protocol.UPSTREAM: "upstream",
}
NO_TRUST = "none"

STORES = Counter(
    "netpacs_stores",
    "Objects accepted (stored, already stored, replaced), by protocol, sender's trust and outcome",
    ["protocol", "trust", "outcome"],
)
REFUSALS = Counter(
    "netpacs_refusals",
    "Objects refused, by protocol, sender's trust and reason",
    ["protocol", "trust", "reason"],
)
QUERY_SECONDS = Histogram(
    "netpacs_query_duration_seconds",
    "Seconds from asking the index to the last answer read, by interface and level",
    ["interface", "level"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RETRIEVED = Counter(
    "netpacs_retrieved_objects",
    "Objects selected to be sent, by interface",
    ["interface"],
)
RETRIEVED_BYTES = Counter(
    "netpacs_retrieved_bytes",
    "Stored bytes of the objects selected to be sent, by interface",
    ["interface"],
)
DATABASE_ERRORS = Counter(
    "netpacs_database_errors",
    "Errors the index database raised (the driver's), by kind",
    ["kind"],
)
OBJECT_STORE_ERRORS = Counter(
    "netpacs_object_store_errors",
    "Errors of the object store (blob writes and reads), by operation",
    ["operation"],
)
JOB_FAILURES = Counter(
    "netpacs_job_failures",
    "Steps of a job that failed (retried later), by job",
    ["job"],
)
WORKERS = Gauge(
    "netpacs_worker_processes",
    "Live worker processes of this node, by role",
    ["role"],
    multiprocess_mode="livesum",
)


# -- recording (cheap: called on hot paths) -------------------------------------------------


def stored(origin: Origin, outcome: StoreOutcome) -> None:
    """Count one object offered for storage: accepted by outcome, refused by reason."""
    protocol = PROTOCOLS.get(origin.protocol, origin.protocol.value)
    trust = origin.trust or NO_TRUST
    status = outcome.status
    if status.ok:
        STORES.labels(protocol, trust, status.value).inc()
    else:
        reason = outcome.reason.name.lower() if outcome.reason else status.value
        REFUSALS.labels(protocol, trust, reason).inc()


def query_done(interface: str, level: str, seconds: float) -> None:
    QUERY_SECONDS.labels(interface, level).observe(seconds)


def retrieved(interface: str, objects: int, size: int) -> None:
    if objects:
        RETRIEVED.labels(interface).inc(objects)
        RETRIEVED_BYTES.labels(interface).inc(size)


def object_store_error(operation: str) -> None:
    OBJECT_STORE_ERRORS.labels(operation).inc()


@contextlib.contextmanager
def object_store(operation: str) -> Iterator[None]:
    """Count an ``OSError`` of the object store raised in the block (and re-raise it)."""
    try:
        yield
    except OSError:
        object_store_error(operation)
        raise


def job_failed(job: str) -> None:
    JOB_FAILURES.labels(job).inc()


def watch_engine(engine: sa.Engine) -> None:
    """Count every error ``engine``'s driver raises (SQLAlchemy's ``handle_error``),
    and every pooled connection found cut as it was handed out and replaced
    (``index.db``'s check on checkout raises ``DisconnectionError``, which the pool
    handles itself)."""

    def on_error(context: sa.engine.ExceptionContext) -> None:
        if context.is_disconnect:
            kind = "disconnect"
        else:
            error = context.sqlalchemy_exception or context.original_exception
            kind = type(error).__name__
        DATABASE_ERRORS.labels(kind).inc()

    def on_invalidate(_dbapi_conn: Any, _record: Any, exception: BaseException | None) -> None:
        if isinstance(exception, sa.exc.DisconnectionError):
            DATABASE_ERRORS.labels("disconnect").inc()

    sa.event.listen(engine, "handle_error", on_error)
    sa.event.listen(engine, "invalidate", on_invalidate)


# -- processes -------------------------------------------------------------------------------


def use_directory(path: Path, *, empty: bool = True) -> None:
    """Record in multiprocess mode in ``path``, emptied first (values of a previous run
    are gone: counters restart at zero with the node, as Prometheus expects). Call
    before forking the workers, before any value is recorded. ``empty=False``: join
    the folder of a running node (a command's counts then add to the node's sums)."""
    if empty:
        shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(path)
    # prometheus_client chose its value class when imported (the variable was not set
    # then); every metric here has labels, so its values are made from this class later.
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def process_started(role: str) -> None:
    """In a worker process, once: it counts in ``netpacs_worker_processes``."""
    WORKERS.labels(role.lower()).set(1)


def process_ended(pid: int) -> None:
    """In the supervisor, for a worker that exited: its live gauges are dropped."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


# -- backlogs --------------------------------------------------------------------------------


class Backlogs:
    """The job backlogs read from the index at scrape time, kept ``cache_seconds``."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        trusts: Sequence[str],
        audit_forwarding: bool,
        cache_seconds: float = 5.0,
    ) -> None:
        self._engine = engine
        self._trusts = tuple(trusts)
        self._audit_forwarding = audit_forwarding
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._reading: BacklogReading | None = None
        self._read_at = 0.0

    def reading(self) -> BacklogReading | None:
        """The latest reading, or None when the index cannot be read now."""
        with self._lock:
            now = time.monotonic()
            if self._reading is None or now - self._read_at >= self._cache_seconds:
                try:
                    with self._engine.connect() as conn:
                        self._reading = read_backlog(conn, audit_forwarding=self._audit_forwarding)
                except sa.exc.SQLAlchemyError as exc:
                    log.warning("metrics: the backlogs could not be read (%s)", exc)
                    self._reading = None
                self._read_at = now
            return self._reading

    def metrics(self) -> Iterator[Metric]:
        reading = self.reading()
        up = GaugeMetricFamily(
            "netpacs_backlog_read_ok", "1 when the backlogs below could be read from the index"
        )
        up.add_metric([], 0 if reading is None else 1)
        yield up
        if reading is None:
            return
        now = reading.at
        waiting = GaugeMetricFamily(
            "netpacs_results_waiting",
            "Results (HL7 ORU) waiting to be sent, by trust",
            labels=["trust"],
        )
        oldest = GaugeMetricFamily(
            "netpacs_results_oldest_waiting_seconds",
            "Age of the oldest result waiting to be sent, by trust (0: none waits)",
            labels=["trust"],
        )
        for trust in sorted({*self._trusts, *reading.results}):
            count, first = reading.results.get(trust, (0, None))
            waiting.add_metric([trust], count)
            oldest.add_metric([trust], _age(now, first))
        yield waiting
        yield oldest
        if reading.audit is not None:
            count, first = reading.audit
            yield GaugeMetricFamily(
                "netpacs_audit_forwarding_waiting",
                "Audit records waiting to be forwarded to the audit record repository",
                value=count,
            )
            yield GaugeMetricFamily(
                "netpacs_audit_forwarding_oldest_waiting_seconds",
                "Age of the oldest audit record waiting to be forwarded (0: none waits)",
                value=_age(now, first),
            )
        count, first = reading.tallies
        yield GaugeMetricFamily(
            "netpacs_store_tallies_open",
            "Store batches' tallies not yet audited (running associations and requests, "
            "and those of processes that died, until their job audits them)",
            value=count,
        )
        yield GaugeMetricFamily(
            "netpacs_store_tally_oldest_seconds",
            "Seconds since the least recently saved open store tally was saved (0: none)",
            value=_age(now, first),
        )


def _age(now: dt.datetime, first: dt.datetime | None) -> float:
    return 0.0 if first is None else max(0.0, (now - first).total_seconds())


# -- the scrape ------------------------------------------------------------------------------


class _Forward(Collector):
    """This process's own values (no multiprocess folder)."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


class MetricSource(Interface):
    """Figures read at scrape time (e.g. from the index)."""

    def metrics(self) -> Iterator[Metric]: ...


class _BacklogCollector(Collector):
    def __init__(self, backlogs: MetricSource) -> None:
        self._backlogs = backlogs

    def collect(self) -> Iterable[Metric]:
        return self._backlogs.metrics()


class Scrape:
    """``GET /metrics``: who may read it (by address) and the text in the Prometheus
    format. The addresses: counts per trust tell how much each trust stores and asks,
    which is not for anyone who can reach the port."""

    def __init__(
        self,
        *,
        allow: Sequence[str],
        backlogs: Backlogs | None,
        more: Sequence[MetricSource] = (),
    ) -> None:
        self._allow = tuple(ipaddress.ip_network(a.strip(), strict=False) for a in allow)
        self._backlogs = backlogs
        self._more = tuple(more)

    def allows(self, address: str | None) -> bool:
        """Whether the client at ``address`` may read the metrics."""
        if address is None:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self._allow)

    def text(self) -> tuple[bytes, str]:
        """The exposition and its media type (the classic text format, 0.0.4: every
        Prometheus version reads it)."""
        registry = CollectorRegistry(auto_describe=False)
        directory = os.environ.get(MULTIPROC_ENV)
        if directory:
            MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        else:
            registry.register(_Forward())
        if self._backlogs is not None:
            registry.register(_BacklogCollector(self._backlogs))
        for source in self._more:  # e.g. an edge node's figures (services.edge.status)
            registry.register(_BacklogCollector(source))
        return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4
