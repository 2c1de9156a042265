"""Catch-up (issue 13): what changed at the core reaches the edge's cache.

The job follows the core's change feed (``GET /edge/changes``, index.changes) from the
cursor it keeps in the edge's index, every few seconds while the link is up, and at
once after a cut: entries wait at the core, so nothing that happened during the cut is
missed. For each entry:

- **merge / undone merge**: the studies it moved, and those the cache holds of either
  identity, are put under the identity the core gives them now;
- **demographic update** (and an admission, which may carry one): the studies the cache
  holds of the identity follow the core's demographics;
- **deletion**: the study is removed from the cache (rows, then blobs), unless some of
  its objects were captured here and the core has not confirmed them (then it is left
  to forwarding, and a person, to settle);
- **admission** of a hospital number of the edge's trust: a prefetch is queued
  (services.edge.prefetch), and the registration's NHS number kept here.

When the feed answers again after the core was away, the prefetches waiting for it are
tried at once rather than at the end of their backoff.

When the core trimmed its feed past this edge's cursor (the edge was away longer than
``NETPACS_CHANGE_FEED_DAYS``), the feed says ``resync``: every study held here is
compared with the core (:meth:`CatchUp.resync`).

Every entry is applied idempotently: applying it twice changes nothing more, so the
entries the core sends again (index.changes: the settle window) do no harm.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable, Collection
from typing import Any

import sqlalchemy as sa

from netpacs.domain.changes import Change, ChangeKind, PatientOfStudy
from netpacs.index import edge_cache
from netpacs.services.edge.ports import UpstreamUnavailable
from netpacs.services.edge.prefetch import CoreArchive
from netpacs.storage.blobstore import BlobStore

log = logging.getLogger(__name__)

CORE_CHANGES = "core-changes"  # edge_cursor
EVERY = 2.0  # seconds between reads of the feed
PAGE = 500
AFTER_FAILURE = 5.0

Run = Callable[[Callable[[sa.Connection], Any]], Any]
#: The held studies (of those given) with objects the core has not confirmed.
Unconfirmed = Callable[[sa.Connection, Collection[str]], set[str]]


def _follow_all(answers: list[PatientOfStudy], now: dt.datetime, conn: sa.Connection) -> int:
    return sum(edge_cache.follow_patient(conn, a, at=now) for a in answers)


class CatchUp:
    """The catch-up job of an edge."""

    name = "edge catch-up"

    def __init__(
        self,
        core: CoreArchive,
        *,
        run: Run,
        blobs: BlobStore,
        trust: str,
        unconfirmed: Unconfirmed,
        every: float = EVERY,
    ) -> None:
        self._core = core
        self._run = run
        self._blobs = blobs
        self._trust = trust
        self._unconfirmed = unconfirmed
        self._every = every
        self._applied: set[int] = set()  # entries past the cursor applied already
        self._core_away = False

    def step(self) -> float:
        after = self._run(lambda conn: edge_cache.cursor(conn, CORE_CHANGES))
        try:
            page = self._core.changes(after, PAGE)
            if page.resync:
                self.resync()
            for change in page.changes:
                if change.id not in self._applied:
                    self.apply(change)
                    self._applied.add(change.id)
        except UpstreamUnavailable as exc:
            log.debug("catch-up waits for the core: %s", exc)
            self._core_away = True
            return AFTER_FAILURE
        if self._core_away:  # the core is back: prefetches waiting for it go now
            self._core_away = False
            now = dt.datetime.now(dt.UTC)
            self._run(lambda conn: edge_cache.retry_waiting(conn, now))
        if page.cursor != after:
            self._run(lambda conn: edge_cache.set_cursor(conn, CORE_CHANGES, page.cursor))
        self._applied = {i for i in self._applied if i > page.cursor}
        return 0.0 if page.more and page.cursor != after else self._every

    def close(self) -> None:
        pass

    # -- one entry ------------------------------------------------------------------------

    def apply(self, change: Change) -> None:
        kind = change.kind
        if kind is ChangeKind.DELETE:
            for uid in change.study_uids:
                self._delete(uid)
            return
        identities = [(change.patient_id, change.issuer)]
        if change.prior_patient_id:
            identities.append((change.prior_patient_id, change.issuer))
        if kind is ChangeKind.ADMIT and change.issuer == self._trust:
            self._admitted(change)

        def affected(conn: sa.Connection) -> list[str]:
            held = edge_cache.held_studies(conn, change.study_uids)
            for patient_id, issuer in identities:
                held.update(edge_cache.studies_of(conn, patient_id, issuer))
            return sorted(held)

        uids: list[str] = self._run(affected)
        if uids:
            self.follow(uids)

    def resync(self) -> None:
        """The feed was trimmed past this edge's cursor (it was away longer than the
        core keeps entries): every study held here is compared with the core instead.
        Each follows its patient as the core has it now; one the core no longer lists
        for this edge is removed from the cache (unless objects of it captured here are
        not confirmed yet); it comes back on demand if the core still holds it."""
        held: list[str] = self._run(edge_cache.all_studies)
        log.warning(
            "catch-up: the core's change feed was trimmed past this edge's cursor; "
            "comparing all %d studies held here with the core",
            len(held),
        )
        for start in range(0, len(held), PAGE):
            batch = held[start : start + PAGE]
            answers = self._core.patients_of(batch)
            listed = {a.study_instance_uid for a in answers}
            self._run(functools.partial(_follow_all, answers, dt.datetime.now(dt.UTC)))
            for uid in batch:
                if uid not in listed:
                    self._delete(uid)

    def follow(self, study_uids: list[str]) -> int:
        """Put the held studies under their patients as the core has them now; how many
        changed."""
        answers = self._core.patients_of(study_uids)
        now = dt.datetime.now(dt.UTC)

        def write(conn: sa.Connection) -> int:
            return sum(edge_cache.follow_patient(conn, a, at=now) for a in answers)

        changed: int = self._run(write)
        if changed:
            log.info("catch-up: %d studies of the cache follow the core's patient now", changed)
        return changed

    def _admitted(self, change: Change) -> None:
        now = dt.datetime.now(dt.UTC)

        def write(conn: sa.Connection) -> None:
            if change.nhs_number:
                edge_cache.mirror_registration(
                    conn,
                    patient_id=change.patient_id,
                    issuer=change.issuer,
                    nhs_number=change.nhs_number,
                    now=now,
                )
            edge_cache.request_prefetch(
                conn,
                patient_id=change.patient_id,
                issuer=change.issuer,
                nhs_number=change.nhs_number,
                reason="admission (ADT) relayed by the regional core",
                now=now,
            )

        self._run(write)

    def _delete(self, study_uid: str) -> None:
        def write(conn: sa.Connection) -> list[str] | None:
            if self._unconfirmed(conn, [study_uid]):
                log.warning(
                    "study %s was deleted at the core, but objects of it captured here are "
                    "not confirmed by the core yet: kept",
                    study_uid,
                )
                return None
            return edge_cache.remove_study(conn, study_uid)

        keys: list[str] | None = self._run(write)
        if keys is None:
            return
        log.info("catch-up: study %s deleted at the core, removed from the cache", study_uid)
        for key in keys:
            try:
                self._blobs.delete(key)
            except OSError as exc:
                log.error("blob %s of a study deleted at the core not removed (%s)", key, exc)
