"""The edge's cache rules as pure decisions: which studies are evicted, in which order
priors are prefetched (services.edge.cache, services.edge.prefetch)."""

from __future__ import annotations

import datetime as dt

from netpacs.domain.changes import SeriesFound, StudyFound
from netpacs.index.edge_cache import CachedStudy
from netpacs.services.edge.cache import CachePolicy
from netpacs.services.edge.prefetch import relevance_order

NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
GB = 1_000_000_000


def study(
    uid: str,
    size: float,
    *,
    accessed_days_ago: float,
    captured_days_ago: float | None = None,
    prefetched_days_ago: float | None = None,
) -> CachedStudy:
    def ago(days: float | None) -> dt.datetime | None:
        return None if days is None else NOW - dt.timedelta(days=days)

    accessed = ago(accessed_days_ago)
    assert accessed is not None
    return CachedStudy(
        uid, int(size * GB), ago(captured_days_ago), ago(prefetched_days_ago), accessed
    )


def evicted(policy: CachePolicy, studies: list[CachedStudy], unconfirmed: set[str]) -> list[str]:
    return [
        s.study_instance_uid for s in policy.evictions(studies, now=NOW, unconfirmed=unconfirmed)
    ]


def test_within_the_limit_nothing_is_evicted() -> None:
    policy = CachePolicy(limit_bytes=10 * GB, keep_days=30)
    assert evicted(policy, [study("a", 4, accessed_days_ago=400)], set()) == []


def test_over_the_limit_the_least_recently_used_go_first_until_it_fits() -> None:
    policy = CachePolicy(limit_bytes=5 * GB, keep_days=30)
    studies = [
        study("recent", 2, accessed_days_ago=1, captured_days_ago=90),
        study("oldest", 2, accessed_days_ago=60, captured_days_ago=90),
        study("older", 2, accessed_days_ago=40),
        study("newer", 2, accessed_days_ago=35),
    ]
    assert evicted(policy, studies, set()) == ["oldest", "older"]


def test_site_captures_and_prefetches_of_the_last_days_and_unconfirmed_studies_are_kept() -> None:
    policy = CachePolicy(limit_bytes=1 * GB, keep_days=30)
    studies = [
        study("captured", 2, accessed_days_ago=29, captured_days_ago=29),
        study("prefetched", 2, accessed_days_ago=20, prefetched_days_ago=20),
        study("not confirmed", 2, accessed_days_ago=100, captured_days_ago=100),
        study("old capture", 2, accessed_days_ago=31, captured_days_ago=31),
        study("old prefetch", 2, accessed_days_ago=50, prefetched_days_ago=50),
    ]
    # Still over the limit afterwards: the kept ones are never evicted to make room.
    assert evicted(policy, studies, {"not confirmed"}) == ["old prefetch", "old capture"]


def found(uid: str, date: str, *parts: str) -> StudyFound:
    return StudyFound(uid, date, series=tuple(SeriesFound(f"{uid}.{p}", "CT", p) for p in parts))


def test_priors_of_the_last_two_years_come_same_body_part_first_then_newest_first() -> None:
    studies = [
        found("chest-2025", "20250301", "CHEST"),
        found("head-2026", "20261120", "HEAD"),  # the newest: what the patient is here for
        found("head-2024", "20241203", "HEAD"),
        found("head-2023", "20230101", "HEAD"),  # over two years old: not prefetched
        found("knee-2026", "20260601", "KNEE"),
        found("no-date", "", "HEAD"),
    ]
    order = [s.study_instance_uid for s in relevance_order(studies, today=NOW.date())]
    assert order == ["head-2026", "head-2024", "knee-2026", "chest-2025"]
