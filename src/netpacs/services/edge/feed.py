"""The change feed the core offers its edges (``GET /edge/changes``), and the prefetch
status an edge shows (``/admin/prefetch``).

The feed names identities and study UIDs, never demographics: an edge asks for those
through QIDO-RS, under the core's access rules. An edge reads every merge, update and
deletion (a cached prior of another trust follows them too) and the admissions of its
own trust only.

Each read by an edge notes where it asked from (index.changes.note_read); the core's
job :class:`FeedTrim` deletes the entries every edge of the region has read past, and
those older than the retention (``NETPACS_CHANGE_FEED_DAYS``) whoever has not. An edge
that asks from before what was trimmed gets no entries but ``resync`` and the cursor
just past the trim: it compares every study it holds with the core
(services.edge.catchup), then reads on from there.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from netpacs.domain.changes import ChangePage
from netpacs.domain.outcomes import Problem, Refused
from netpacs.index import changes as feed
from netpacs.index import edge_cache
from netpacs.index.changes import read_changes
from netpacs.services.access import Capability, Principal, Role

log = logging.getLogger(__name__)

MAX_PAGE = 1000
TRIM_EVERY = 3600.0  # seconds between trims of the feed


class FeedRefused(Refused):
    """Not for this principal (FORBIDDEN) or a bad request (MALFORMED)."""


class ChangeFeed:
    """Reads the feed for an edge's machine principal (or a PACS administrator)."""

    def __init__(self, engine: sa.Engine, writer: sa.Engine | None = None) -> None:
        self._engine = engine
        self._writer = writer or engine
        self._lock = threading.Lock()
        self._noted: dict[str, int] = {}  # edge -> the position last noted (this process)

    def read(self, principal: Principal, *, after: int | None, limit: int) -> ChangePage:
        """The changes after ``after`` (None: none, only the cursor of the feed's end, for
        an edge that starts following it)."""
        if principal.role is Role.EDGE:
            admissions_of: str | None = principal.trust or ""
        elif principal.role is Role.ADMIN:
            admissions_of = None
        else:
            raise FeedRefused(
                Problem.FORBIDDEN, "the change feed is for the region's edge nodes only"
            )
        if not 1 <= limit <= MAX_PAGE:
            raise FeedRefused(Problem.MALFORMED, f"limit must be 1 to {MAX_PAGE}")
        if after is not None and after < 0:
            raise FeedRefused(Problem.MALFORMED, "after must be 0 or more")
        with self._engine.connect() as conn:
            if after is None:
                page = ChangePage((), feed.top(conn))
            elif after < (trimmed := feed.trimmed_through(conn)):
                log.warning(
                    "%s asked for the change feed after %d, trimmed since: told to resync",
                    principal.user_id,
                    after,
                )
                # On from just past what was trimmed, not the feed's end: the entries
                # kept since (an admission while the edge was away, whose priors it
                # should prefetch) still reach it after its comparison.
                page = ChangePage((), trimmed, more=feed.top(conn) > trimmed, resync=True)
            else:
                changes, cursor, more = read_changes(
                    conn, after=after, limit=limit, admissions_of=admissions_of
                )
                page = ChangePage(tuple(changes), cursor, more)
        if principal.role is Role.EDGE:
            self._note(principal.user_id, page.cursor if after is None or page.resync else after)
        return page

    def _note(self, client_id: str, position: int) -> None:
        """Where the edge has read to (a write only when it moved)."""
        with self._lock:
            if self._noted.get(client_id) == position:
                return
        for attempt in (1, 2):
            try:
                with self._writer.begin() as conn:
                    feed.note_read(conn, client_id, position)
                break
            except sa.exc.IntegrityError:  # another worker made the row just now
                if attempt == 2:
                    raise
        with self._lock:
            self._noted[client_id] = position


class FeedTrim:
    """The core's job that trims the change feed (module doc)."""

    name = "change feed trim"

    def __init__(
        self,
        writer: sa.Engine,
        edges: Sequence[str],
        *,
        retention_days: float,
        every: float = TRIM_EVERY,
    ) -> None:
        self._writer = writer
        self._edges = tuple(edges)
        self._retention = dt.timedelta(days=retention_days)
        self._every = every

    def step(self) -> float:
        since = dt.datetime.now(dt.UTC) - self._retention
        try:
            with self._writer.begin() as conn:
                gone = feed.trim(conn, readers=self._edges, retain_since=since)
        except sa.exc.IntegrityError:  # another node of the core trimmed at once
            return self._every
        if gone:
            log.info("change feed: %d entries every edge has read (or expired) trimmed", gone)
        return self._every

    def close(self) -> None:
        pass


class PrefetchStatus:
    """An edge's prefetch requests, newest first, for its administrators."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    def rows(self, principal: Principal) -> list[dict[str, Any]]:
        if not principal.sees_everything or not principal.may(Capability.READ_AUDIT):
            raise FeedRefused(Problem.FORBIDDEN, "the prefetch status is for PACS administrators")
        with self._engine.connect() as conn:
            return edge_cache.prefetch_rows(conn)
