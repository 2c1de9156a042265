"""Prefetch on admission (issue 13): a patient admitted at the edge's trust has their
earlier studies from every trust fetched into the cache, most relevant first.

What asks for a prefetch: an ADT A01 (admit), A04 (register, emergency arrival) or A05
(pre-admit) of a hospital number the edge's trust issues, received by the edge's own
MLLP listener (its ADT service appends an ``admit`` entry to the edge's change feed,
read here) or by the core (relayed through the core's change feed, services.edge.
catchup). One request per local identity: a new admission queues it again.

How: the core is asked (QIDO-RS, as the edge itself, under the core's access rules:
its trust's care relationship) for the studies of the identity and of every identity
linked to it by NHS number; each study's series too (their body parts). The studies
of the last :data:`YEARS` years are fetched, in the order :func:`relevance_order` gives;
older ones are left to be fetched when someone opens them. Instances the cache holds
are not fetched again. Each object is stored through the ingest service (origin
``upstream``: it is never forwarded back) and the study kept as prefetched (services.edge.
cache).

When the core cannot be reached the request waits and is tried again with backoff
(link down: nothing to do but wait); the admin page shows each request's state.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, Protocol

import sqlalchemy as sa

from netpacs.domain.changes import (
    ChangeKind,
    ChangePage,
    PatientOfStudy,
    SeriesFound,
    StudyFound,
)
from netpacs.domain.outcomes import Origin, StoreStatus
from netpacs.domain.outcomes import Protocol as Via
from netpacs.index import edge_cache
from netpacs.index.schema import change_feed
from netpacs.services.access import Principal, Role
from netpacs.services.edge.ports import UpstreamUnavailable
from netpacs.services.ingest_batch import StoreService

log = logging.getLogger(__name__)

YEARS = 2  # studies of the last two years are prefetched
EVERY = 2.0  # seconds between looks for work
RETRY_FIRST = 5.0
RETRY_MAX = 300.0
MAX_ATTEMPTS = 8  # a request failing for another reason than the link is given up
LOCAL_ADMISSIONS = "local-admissions"  # edge_cursor: the edge's own change feed

Run = Callable[[Callable[[sa.Connection], Any]], Any]

#: Who stores what the core sends: the region's archive (it raises no foreign-identity
#: items, as a replicating peer archive would not).
CORE_PRINCIPAL = Principal("regional core", Role.ARCHIVE)


class CoreArchive(Protocol):
    """What the edge's cache jobs ask the core (adapters.transports.core_archive). Every
    method raises :class:`UpstreamUnavailable` when the core does not answer."""

    def find_studies(self, patient_id: str, issuer: str) -> list[StudyFound]:
        """The studies of the identity and of every identity linked to it."""
        ...

    def series_of(self, study_uid: str) -> list[SeriesFound]: ...

    def instances_of(self, study_uid: str, series_uid: str) -> list[str]: ...

    def fetch_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes | None:
        """The Part 10 file, in the transfer syntax it is stored in (None: gone)."""
        ...

    def patients_of(self, study_uids: Sequence[str]) -> list[PatientOfStudy]:
        """Each study's patient as the core says it is now (studies it does not show:
        left out)."""
        ...

    def changes(self, after: int | None, limit: int) -> ChangePage:
        """The core's change feed after ``after`` (None: only the cursor of its end)."""
        ...


def relevance_order(
    studies: Sequence[StudyFound], *, today: dt.date, years: int = YEARS
) -> list[StudyFound]:
    """The studies to prefetch, most relevant first: those of the last ``years`` years
    only; first those showing a body part of the patient's newest study (the problem
    they are here for, most likely), then the rest; newest first within each."""
    since = f"{today.year - years:04d}{today.month:02d}{min(today.day, 28):02d}"
    recent = [s for s in studies if s.study_date and s.study_date >= since]
    if not recent:
        return []
    newest = max(recent, key=lambda s: s.study_date)
    parts = newest.body_parts
    return sorted(
        recent,
        key=lambda s: (not (s.body_parts & parts), _negated(s.study_date), s.study_instance_uid),
    )


def _negated(da: str) -> str:
    return "".join(chr(0x7F - ord(c)) for c in da)  # newest first in an ascending sort


class Prefetcher:
    """The prefetch job: turns admissions into requests and runs them one at a time."""

    name = "edge prefetch"

    def __init__(
        self,
        core: CoreArchive,
        *,
        run: Run,
        stores: StoreService,
        trust: str,
        every: float = EVERY,
    ) -> None:
        self._core = core
        self._run = run
        self._stores = stores
        self._trust = trust
        self._every = every
        self._recovered = False

    def step(self) -> float:
        now = dt.datetime.now(dt.UTC)
        if not self._recovered:
            self._run(lambda conn: edge_cache.recover_running(conn, now))
            self._recovered = True
        self._run(lambda conn: self._take_admissions(conn, now))
        request = self._run(lambda conn: edge_cache.take_prefetch(conn, now))
        if request is None:
            return self._every
        self.prefetch(request)
        return 0.0

    def close(self) -> None:
        pass

    # -- admissions at this edge ------------------------------------------------------

    def _take_admissions(self, conn: sa.Connection, now: dt.datetime) -> None:
        after = edge_cache.cursor(conn, LOCAL_ADMISSIONS)
        if after is None:  # first run: admissions from now on
            top = conn.execute(sa.select(sa.func.max(change_feed.c.id))).scalar()
            edge_cache.set_cursor(conn, LOCAL_ADMISSIONS, int(top or 0))
            return
        rows = conn.execute(
            sa.select(change_feed)
            .where(change_feed.c.id > after)
            .order_by(change_feed.c.id)
            .limit(500)
        ).all()
        for row in rows:
            if row.kind == ChangeKind.ADMIT.value and row.issuer == self._trust:
                edge_cache.request_prefetch(
                    conn,
                    patient_id=row.patient_id,
                    issuer=row.issuer,
                    nhs_number=row.nhs_number,
                    reason="admission (ADT) received by this edge",
                    now=now,
                )
        if rows:
            edge_cache.set_cursor(conn, LOCAL_ADMISSIONS, int(rows[-1].id))

    # -- one request ----------------------------------------------------------------------

    def prefetch(self, request: edge_cache.PrefetchRequest) -> None:
        who = f"{request.patient_id} at {request.issuer}"
        try:
            self._fetch(request)
        except UpstreamUnavailable as exc:
            delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (request.attempts - 1))
            retry = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)
            log.info("prefetch for %s waits for the core (%s); again in %.0f s", who, exc, delay)
            self._finish(request, f"the regional core is unreachable: {exc}", retry)
        except Exception as exc:
            log.exception("prefetch for %s failed", who)
            retry = None
            if request.attempts < MAX_ATTEMPTS:
                retry = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=RETRY_MAX)
            self._finish(request, f"{type(exc).__name__}: {exc}", retry)
        else:
            self._finish(request, None, None)

    def _finish(
        self, request: edge_cache.PrefetchRequest, error: str | None, retry: dt.datetime | None
    ) -> None:
        now = dt.datetime.now(dt.UTC)
        self._run(
            lambda conn: edge_cache.finish_prefetch(
                conn, request.id, now=now, error=error, retry_at=retry
            )
        )

    def _fetch(self, request: edge_cache.PrefetchRequest) -> None:
        core = self._core
        found = core.find_studies(request.patient_id, request.issuer)
        studies = [
            StudyFound(
                s.study_instance_uid,
                s.study_date,
                s.patient_id,
                s.issuer,
                tuple(core.series_of(s.study_instance_uid)),
            )
            for s in found
        ]
        chosen = relevance_order(studies, today=dt.date.today())
        self._progress(request, studies_found=len(chosen))
        fetched = size = cached = 0
        for study in chosen:
            count, length = self._fetch_study(study)
            fetched, size, cached = fetched + count, size + length, cached + 1
            self._progress(
                request, studies_cached=cached, instances_fetched=fetched, bytes_fetched=size
            )
        self._follow(request, [s.study_instance_uid for s in chosen])
        log.info(
            "prefetch for %s at %s: %d studies, %d objects (%d bytes) fetched",
            request.patient_id,
            request.issuer,
            cached,
            fetched,
            size,
        )

    def _fetch_study(self, study: StudyFound) -> tuple[int, int]:
        """Fetch what the cache lacks of ``study``; (objects, bytes) fetched."""
        core = self._core
        uid = study.study_instance_uid
        held: set[str] = self._run(partial(edge_cache.held_instances, study_uid=uid))
        fetched = size = 0
        refused: list[str] = []
        origin = Origin(Via.UPSTREAM, user=CORE_PRINCIPAL.user_id)
        with self._stores.session(CORE_PRINCIPAL, origin) as batch:
            for se in study.series:
                for sop in core.instances_of(uid, se.series_instance_uid):
                    if sop in held:
                        continue
                    data = core.fetch_instance(uid, se.series_instance_uid, sop)
                    if data is None:  # deleted at the core since it was listed
                        continue
                    outcome = batch.store_part10(data)
                    if outcome.status is StoreStatus.STORED:
                        fetched += 1
                        size += len(data)
                    elif not outcome.status.ok:
                        refused.append(f"{sop}: {outcome.message}")
        if refused:
            log.warning(
                "prefetch of study %s: %d objects refused by this edge, first: %s",
                uid,
                len(refused),
                refused[0],
            )
        now = dt.datetime.now(dt.UTC)
        self._run(partial(edge_cache.mark_prefetched, study_uid=uid, now=now))
        return fetched, size

    def _follow(self, request: edge_cache.PrefetchRequest, study_uids: list[str]) -> None:
        """Put the fetched studies under the patients the core gives them now, with the
        person's NHS number (the core found them linked to it), so that this edge's own
        access rules see them as the core does while the core is away."""
        if not study_uids:
            return
        now = dt.datetime.now(dt.UTC)
        answers = self._core.patients_of(study_uids)

        def write(conn: sa.Connection) -> None:
            for answer in answers:
                if not answer.nhs_number and request.nhs_number:
                    answer = replace(answer, nhs_number=request.nhs_number)
                edge_cache.follow_patient(conn, answer, at=now)

        self._run(write)

    def _progress(self, request: edge_cache.PrefetchRequest, **counts: int) -> None:
        self._run(lambda conn: edge_cache.prefetch_progress(conn, request.id, **counts))
