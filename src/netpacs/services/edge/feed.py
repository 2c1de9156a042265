"""The change feed the core offers its edges (``GET /edge/changes``), and the prefetch
status an edge shows (``/admin/prefetch``).

The feed names identities and study UIDs, never demographics: an edge asks for those
through QIDO-RS, under the core's access rules. An edge reads every merge, update and
deletion (a cached prior of another trust follows them too) and the admissions of its
own trust only.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from netpacs.domain.changes import ChangePage
from netpacs.domain.outcomes import Problem, Refused
from netpacs.index import edge_cache
from netpacs.index.changes import read_changes
from netpacs.index.schema import change_feed
from netpacs.services.access import Capability, Principal, Role

MAX_PAGE = 1000


class FeedRefused(Refused):
    """Not for this principal (FORBIDDEN) or a bad request (MALFORMED)."""


class ChangeFeed:
    """Reads the feed for an edge's machine principal (or a PACS administrator)."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

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
        with self._engine.connect() as conn:
            if after is None:
                top = conn.execute(sa.select(sa.func.max(change_feed.c.id))).scalar()
                return ChangePage((), int(top or 0))
            if after < 0:
                raise FeedRefused(Problem.MALFORMED, "after must be 0 or more")
            changes, cursor, more = read_changes(
                conn, after=after, limit=limit, admissions_of=admissions_of
            )
        return ChangePage(tuple(changes), cursor, more)


class PrefetchStatus:
    """An edge's prefetch requests, newest first, for its administrators."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    def rows(self, principal: Principal) -> list[dict[str, Any]]:
        if not principal.sees_everything or not principal.may(Capability.READ_AUDIT):
            raise FeedRefused(Problem.FORBIDDEN, "the prefetch status is for PACS administrators")
        with self._engine.connect() as conn:
            return edge_cache.prefetch_rows(conn)
