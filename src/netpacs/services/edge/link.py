"""The edge's link to the core: up, or down since the first failed call (issue 13).

One row in the edge's index (``edge_link``), written by every process that calls the
core (:class:`~netpacs.adapters.transports.upstream.Upstream` reports each call through
:meth:`LinkState.record`) and read by the fallback banner, forwarding, prefetch, the
heartbeat and ``/metrics``. A process writes only when the state changes or its last
write is older than :data:`REFRESH` seconds, so that a busy link costs no write per call.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass

import sqlalchemy as sa

from netpacs.index.schema import edge_link

log = logging.getLogger(__name__)

REFRESH = 1.0  # seconds between writes of an unchanged state (last contact)


@dataclass(frozen=True, slots=True)
class Link:
    up: bool
    down_since: dt.datetime | None = None  # UTC; None while up
    last_contact: dt.datetime | None = None  # the core's last answer (UTC)
    last_error: str | None = None

    def describe(self) -> str:
        if self.up:
            return "up"
        since = f" since {self.down_since:%Y-%m-%d %H:%M:%S} UTC" if self.down_since else ""
        return f"down{since}"


#: Before any call: up, never heard from (the edge answers from the core until it fails).
UNKNOWN = Link(up=True)


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite gives naive datetimes back: they are UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


class LinkState:
    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._last_up: bool | None = None
        self._last_write = 0.0

    def current(self) -> Link:
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(edge_link).where(edge_link.c.id == 1)).first()
        if row is None:
            return UNKNOWN
        return Link(
            up=bool(row.up),
            down_since=_utc(row.down_since),
            last_contact=_utc(row.last_contact),
            last_error=row.last_error,
        )

    def record(self, ok: bool, why: str | None = None) -> None:
        """One call's outcome: the core answered (``ok``), or not and ``why``."""
        now = time.monotonic()
        with self._lock:
            if ok == self._last_up and now - self._last_write < REFRESH:
                return
            changed = ok != self._last_up
            self._last_up, self._last_write = ok, now
        try:
            self._write(ok, why, changed)
        except sa.exc.IntegrityError:  # another process made the row just now
            with self._lock:
                self._last_write = 0.0

    def _write(self, ok: bool, why: str | None, changed: bool) -> None:
        when = dt.datetime.now(dt.UTC)
        with self._engine.begin() as conn:
            row = conn.execute(sa.select(edge_link).where(edge_link.c.id == 1)).first()
            values: dict[str, object]
            if ok:
                values = {"up": True, "down_since": None, "last_contact": when, "last_error": None}
            else:
                was_up = row is None or row.up
                values = {
                    "up": False,
                    "down_since": when if was_up or row is None else _utc(row.down_since),
                    "last_error": (why or "")[:500],
                }
                if row is not None and was_up and changed:
                    log.warning("the link to the core is down: %s", why)
            if row is not None and ok and not row.up:
                log.warning("the link to the core is up again (down since %s)", row.down_since)
            if row is None:
                conn.execute(sa.insert(edge_link).values(id=1, updated_at=when, **values))
            else:
                conn.execute(
                    sa.update(edge_link)
                    .where(edge_link.c.id == 1)
                    .values(updated_at=when, **values)
                )
