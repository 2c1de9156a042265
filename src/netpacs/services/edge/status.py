"""An edge node's figures (issue 13): its link, its forward backlog, its cache.

Reported to the core in a periodic heartbeat (:class:`Heartbeat`, a job, which also
probes the link while nothing else calls the core) and shown on the edge's own
``GET /metrics`` (:meth:`EdgeFigures.metrics`).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from netpacs import __version__
from netpacs.index import edge_queue
from netpacs.index.schema import instance
from netpacs.services.edge.link import Link, LinkState
from netpacs.services.edge.ports import UpstreamPort, UpstreamUnavailable

log = logging.getLogger(__name__)

#: When the edge last prefetched (edge-prefetch may provide it); None: never.
LastPrefetch = Callable[[sa.Connection], dt.datetime | None]


@dataclass(frozen=True, slots=True)
class Figures:
    at: dt.datetime
    link: Link
    backlog: edge_queue.Backlog
    cache_bytes: int
    cache_limit_bytes: int
    last_prefetch: dt.datetime | None

    def report(self) -> dict[str, Any]:
        """The heartbeat's body (services.edge.nodes.REPORT_FIELDS)."""
        oldest = self.backlog.oldest
        return {
            "link_up": self.link.up,
            "down_since": self.link.down_since.isoformat() if self.link.down_since else None,
            "backlog": self.backlog.count,
            "backlog_oldest_seconds": _age(self.at, oldest),
            "forwarded": self.backlog.forwarded,
            "failing": self.backlog.failing,
            "cache_bytes": self.cache_bytes,
            "cache_limit_bytes": self.cache_limit_bytes,
            "last_prefetch": self.last_prefetch.isoformat() if self.last_prefetch else None,
            "version": __version__,
        }


def _age(now: dt.datetime, then: dt.datetime | None) -> float:
    return 0.0 if then is None else round(max(0.0, (now - then).total_seconds()), 1)


class EdgeFigures:
    def __init__(
        self,
        engine: sa.Engine,
        link: LinkState,
        *,
        cache_limit_bytes: int,
        last_prefetch: LastPrefetch | None = None,
        cache_seconds: float = 0.25,
    ) -> None:
        self._engine = engine
        self._link = link
        self._limit = cache_limit_bytes
        self._last_prefetch = last_prefetch
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._figures: Figures | None = None
        self._read_at = 0.0

    def read(self) -> Figures:
        with self._lock:
            if self._figures is not None and time.monotonic() - self._read_at < self._cache_seconds:
                return self._figures
        with self._engine.connect() as conn:
            backlog = edge_queue.backlog(conn)
            cache = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(instance.c.blob_size), 0)))
            cache_bytes = int(cache.scalar() or 0)
            last = self._last_prefetch(conn) if self._last_prefetch else None
        figures = Figures(
            at=dt.datetime.now(dt.UTC),
            link=self._link.current(),
            backlog=backlog,
            cache_bytes=cache_bytes,
            cache_limit_bytes=self._limit,
            last_prefetch=last,
        )
        with self._lock:
            self._figures, self._read_at = figures, time.monotonic()
        return figures

    def metrics(self) -> Iterator[Metric]:
        """The figures for ``GET /metrics`` (read from the index at scrape time)."""
        try:
            f = self.read()
        except sa.exc.SQLAlchemyError as exc:
            log.warning("metrics: the edge's figures could not be read (%s)", exc)
            return
        link = f.link
        yield GaugeMetricFamily(
            "netpacs_edge_link_up", "1 while the regional core answers the edge", value=link.up
        )
        yield GaugeMetricFamily(
            "netpacs_edge_link_down_seconds",
            "Seconds since the link to the core went down (0: up)",
            value=_age(f.at, link.down_since),
        )
        yield GaugeMetricFamily(
            "netpacs_edge_last_contact_seconds",
            "Seconds since the core last answered (-1: never)",
            value=_age(f.at, link.last_contact) if link.last_contact else -1,
        )
        yield GaugeMetricFamily(
            "netpacs_edge_forward_backlog",
            "Objects stored here that the core has not yet confirmed",
            value=f.backlog.count,
        )
        yield GaugeMetricFamily(
            "netpacs_edge_forward_oldest_seconds",
            "Age of the oldest object waiting to go to the core (0: none waits)",
            value=_age(f.at, f.backlog.oldest),
        )
        yield GaugeMetricFamily(
            "netpacs_edge_forward_failing",
            "Waiting objects the core refused or did not confirm at least once",
            value=f.backlog.failing,
        )
        yield GaugeMetricFamily(
            "netpacs_edge_forwarded", "Objects the core has confirmed", value=f.backlog.forwarded
        )
        yield GaugeMetricFamily(
            "netpacs_edge_cache_bytes", "Bytes of objects held here", value=f.cache_bytes
        )
        yield GaugeMetricFamily(
            "netpacs_edge_cache_limit_bytes", "NETPACS_CACHE_GB in bytes", value=f.cache_limit_bytes
        )
        if f.last_prefetch is not None:
            yield GaugeMetricFamily(
                "netpacs_edge_last_prefetch_timestamp_seconds",
                "When the edge last fetched priors into its cache (POSIX seconds)",
                value=f.last_prefetch.timestamp(),
            )


class Heartbeat:
    """The job that reports the edge's figures to the core every ``seconds``."""

    name = "heartbeat to the core"

    def __init__(self, figures: EdgeFigures, upstream: UpstreamPort, *, seconds: float) -> None:
        self._figures = figures
        self._upstream = upstream
        self._seconds = seconds

    def close(self) -> None:
        pass

    def step(self) -> float:
        report = self._figures.read().report()
        try:
            response = self._upstream.post(
                "/api/edge/heartbeat",
                content=orjson.dumps(report),
                headers={"Content-Type": "application/json"},
            )
        except UpstreamUnavailable as exc:
            log.debug("heartbeat not delivered: %s", exc)
            return self._seconds
        if response.status_code != 204:
            log.warning(
                "the core refused the heartbeat: HTTP %d %s",
                response.status_code,
                response.text[:200],
            )
        return self._seconds
