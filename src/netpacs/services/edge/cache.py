"""The edge's cache policy (issue 13): what it keeps, and what it may evict.

Kept, whatever the size:

- every study with an object captured at this site (a modality or workstation stored
  it here) in the last ``NETPACS_CACHE_DAYS`` days: enough local images to ride out a
  long outage (the NHS rule of thumb is 3-4 weeks);
- every study prefetched for an admission in the last ``NETPACS_CACHE_DAYS`` days;
- every study with an object the core has not confirmed it holds (forwarding's
  business): only what the core confirmed is ever evicted.

The rest (older captures, studies read through, old prefetches) is evicted least
recently used first while the cache holds more than ``NETPACS_CACHE_GB``. A study is
evicted whole: its index rows go in one transaction, its blobs after the commit (a
crash in between leaves orphans for ``netpacs verify --sweep-orphans``, never a row
without its blob). When the kept studies alone exceed the limit, nothing more is
evicted and the figure says so (``over_limit``).

Reads are tracked from the edge's own audit trail (every read of a study is audited
there: services.query), so no interface needs to report them.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from netpacs.index import edge_cache
from netpacs.index.edge_cache import CachedStudy
from netpacs.storage.blobstore import BlobStore

log = logging.getLogger(__name__)

EVERY = 60.0  # seconds between passes
AUDIT_READS = "audit-reads"  # edge_cursor

Run = Callable[[Callable[[sa.Connection], Any]], Any]
#: The held studies (of those given) with objects the core has not confirmed.
UnconfirmedOf = Callable[[sa.Connection, Collection[str]], set[str]]


@dataclass(frozen=True, slots=True)
class CachePolicy:
    limit_bytes: int
    keep_days: int

    def evictions(
        self, studies: Sequence[CachedStudy], *, now: dt.datetime, unconfirmed: Collection[str]
    ) -> list[CachedStudy]:
        """The studies to evict, least recently used first, to bring the cache within
        its limit (module doc)."""
        total = sum(s.size for s in studies)
        if total <= self.limit_bytes:
            return []
        since = now - dt.timedelta(days=self.keep_days)
        candidates = [
            s
            for s in studies
            if s.study_instance_uid not in unconfirmed
            and not (s.captured_at is not None and s.captured_at >= since)
            and not (s.prefetched_at is not None and s.prefetched_at >= since)
        ]
        chosen = []
        for s in sorted(candidates, key=lambda s: (s.last_access_at, s.study_instance_uid)):
            if total <= self.limit_bytes:
                break
            chosen.append(s)
            total -= s.size
        return chosen


@dataclass(frozen=True, slots=True)
class CacheUse:
    bytes: int
    limit_bytes: int
    studies: int

    @property
    def over_limit(self) -> bool:
        return self.bytes > self.limit_bytes


class CacheKeeper:
    """The eviction job: follows reads in the audit trail, then evicts per the policy."""

    name = "edge cache"

    def __init__(
        self,
        policy: CachePolicy,
        *,
        run: Run,
        blobs: BlobStore,
        unconfirmed: UnconfirmedOf,
        every: float = EVERY,
    ) -> None:
        self._policy = policy
        self._run = run
        self._blobs = blobs
        self._unconfirmed = unconfirmed
        self._every = every

    def step(self) -> float:
        self.follow_reads()
        self.evict(now=dt.datetime.now(dt.UTC))
        return self._every

    def close(self) -> None:
        pass

    def follow_reads(self) -> None:
        def write(conn: sa.Connection) -> None:
            after = edge_cache.cursor(conn, AUDIT_READS) or 0
            reads, last = edge_cache.reads_since(conn, after)
            for when, uids in reads:
                edge_cache.record_access(conn, uids, when)
            edge_cache.set_cursor(conn, AUDIT_READS, last)

        self._run(write)

    def evict(self, *, now: dt.datetime) -> list[str]:
        """One pass of the policy; the studies evicted."""

        def choose(conn: sa.Connection) -> list[CachedStudy]:
            studies = edge_cache.cached_studies(conn)
            held = [s.study_instance_uid for s in studies]
            return self._policy.evictions(
                studies, now=now, unconfirmed=self._unconfirmed(conn, held)
            )

        evicted: list[str] = []
        for victim in self._run(choose):
            uid = victim.study_instance_uid

            def remove(conn: sa.Connection, uid: str = uid) -> list[str] | None:
                # Checked again in the removing transaction: a new object may have come.
                if self._unconfirmed(conn, [uid]):
                    return None
                return edge_cache.remove_study(conn, uid)

            keys: list[str] | None = self._run(remove)
            if keys is None:
                continue
            for key in keys:
                try:
                    self._blobs.delete(key)
                except OSError as exc:
                    log.error("blob %s of an evicted study not removed (%s)", key, exc)
            evicted.append(uid)
        if evicted:
            log.info("cache: %d studies evicted (least recently used)", len(evicted))
        return evicted

    def use(self) -> CacheUse:
        def read(conn: sa.Connection) -> CacheUse:
            studies = edge_cache.cached_studies(conn)
            return CacheUse(sum(s.size for s in studies), self._policy.limit_bytes, len(studies))

        result: CacheUse = self._run(read)
        return result
