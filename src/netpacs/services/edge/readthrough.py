"""Reading through the edge to the core, and falling back to the cache (issue 13).

While the core answers, a question asked at the edge (QIDO-RS, C-FIND, WADO-RS
/metadata, the selection of a C-MOVE or C-GET) goes to the core for the person who
asked (``X-Netpacs-On-Behalf-Of``): the core's access rules decide and its audit trail
records it, and the answer covers the whole region. A DICOM AE of the site is no
person: the edge asks as itself (its trust's care relationships) and records the AE's
question in its own audit trail, which goes to the core later (services.edge.audit_outbox).

When the core does not answer within ``timeout`` (:class:`UpstreamUnavailable`), the
edge's own index answers under the same rules (services.access, through the local
query service, which audits), and the answer says so: a :class:`LinkDown` the
adapters turn into a QIDO-RS ``Warning``, a C-FIND warning status, a banner.

Pixel data is served from the cache. An instance the cache lacks is fetched from the
core for the person asking (the core decides whether they may have it) and kept: it
is stored through the ingest service with the ``upstream`` origin, which forwarding
skips (it came from the core).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import sqlalchemy as sa

from netpacs.domain.dicom.header import JsonDataset, first_str
from netpacs.domain.outcomes import Origin, Protocol
from netpacs.domain.query import QueryError, QueryLevel, QueryModel
from netpacs.index.schema import edge_forward, instance
from netpacs.services.access import PEOPLE, Principal
from netpacs.services.audit import AuditRecord, AuditService, Event
from netpacs.services.edge.ports import UpstreamPort, UpstreamUnavailable
from netpacs.services.ingest_batch import IngestBatch, StoreService
from netpacs.services.query import QueryService
from netpacs.services.spool import ObjectTooLarge

log = logging.getLogger(__name__)

FIND_PATH = "/api/edge/find"
SELECT_PATH = "/api/edge/select"
_RETRIEVE_AE_TITLE = "00080054"
_BULK_URI = re.compile(rb'("BulkDataURI"\s*:\s*")[^"]*?/dicomweb/')
_PART10 = "application/dicom; transfer-syntax=*"
#: While the core is away, it is asked again at most this often; in between, answers
#: come from the cache at once instead of after a timeout each.
RETRY_SECONDS = 5.0
#: At most this many instances are fetched for one retrieve (a study, a series).
MAX_FETCH = 5_000


@dataclass(frozen=True, slots=True)
class LinkDown:
    """The core did not answer: what the edge answered from instead, and since when."""

    since: dt.datetime  # aware, UTC

    def local_time(self, zone: ZoneInfo) -> str:
        return self.since.astimezone(zone).strftime("%H:%M")

    def banner(self, zone: ZoneInfo) -> str:
        """The words of the banner on every page and over the viewer."""
        return (
            f"Regional archive unreachable since {self.local_time(zone)} - "
            "showing what this hospital holds"
        )

    def warning(self, zone: ZoneInfo) -> str:
        """An HTTP ``Warning`` header (RFC 7234 5.5, code 299 as PS3.18 8.3.4.4 uses it)."""
        return f'299 netpacs "{self.banner(zone)}"'

    def comment(self, zone: ZoneInfo) -> str:
        """A C-FIND Error Comment (0000,0902): LO, at most 64 characters."""
        return f"core unreachable since {self.local_time(zone)}: answers from cache"[:64]

    def retrieve_comment(self, zone: ZoneInfo, *, held: bool) -> str:
        """A C-MOVE / C-GET Error Comment: what was sent (``held``: what this edge node
        holds of it), else that it holds none of it."""
        what = "sent what this edge holds" if held else "this edge holds none of it"
        return f"core unreachable since {self.local_time(zone)}: {what}"[:64]


@dataclass(frozen=True, slots=True)
class Found:
    """The matches of a query, and whether they came from the cache alone."""

    matches: list[JsonDataset]
    fallback: LinkDown | None = None


class ReadThrough:
    """The edge's questions to the core, with the fallback to its own index."""

    def __init__(
        self,
        upstream: UpstreamPort,
        *,
        read_engine: sa.Engine,
        stores: StoreService,
        audit: AuditService,
        down_since: Callable[[], dt.datetime | None],
        timeout: float = 2.0,
        retrieve_ae_title: str = "",
        zone: ZoneInfo | None = None,
    ) -> None:
        """``down_since``: when the link went down as the edge's link state records it
        (services.edge.link), None while it is up."""
        self._upstream = upstream
        self._engine = read_engine
        self._stores = stores
        self._audit = audit
        self._down_since = down_since
        self._timeout = timeout
        self._retrieve_ae_title = retrieve_ae_title
        self.zone = zone or ZoneInfo("Europe/London")
        self._lock = threading.Lock()
        self._failed_at: float | None = None  # monotonic, of the last failed attempt

    # -- the link ---------------------------------------------------------------------------
    def link_down(self) -> LinkDown | None:
        """The state the banner shows: None while the core answers."""
        since = self._down_since()
        return None if since is None else LinkDown(_aware(since))

    def _skip_core(self) -> bool:
        """Whether this process failed to reach the core a moment ago, and no process
        of the edge has reached it since (the link state says down)."""
        with self._lock:
            failed = self._failed_at
        recent = failed is not None and time.monotonic() - failed < RETRY_SECONDS
        return recent and self.link_down() is not None

    def _down(self) -> LinkDown:
        """What the answers from the cache say (the link state; now, before the first
        failure is on record)."""
        return self.link_down() or LinkDown(dt.datetime.now(dt.UTC))

    def _answered(self) -> None:
        with self._lock:
            self._failed_at = None

    def _call(self, fn: Callable[[], Any]) -> Any:
        """``fn()``'s answer, or :class:`UpstreamUnavailable` (at once while the core
        failed within :data:`RETRY_SECONDS`)."""
        if self._skip_core():
            raise UpstreamUnavailable("the core did not answer a moment ago")
        try:
            answer = fn()
        except UpstreamUnavailable:
            with self._lock:
                self._failed_at = time.monotonic()
            raise
        self._answered()
        return answer

    @staticmethod
    def acting_for(principal: Principal) -> str | None:
        """The user the edge acts for at the core; None: the edge asks as itself."""
        return principal.user_id if principal.role in PEOPLE else None

    # -- queries ----------------------------------------------------------------------------
    def find(
        self,
        local: QueryService,
        identifier: dict[str, Any],
        *,
        level: QueryLevel,
        model: QueryModel,
        limit: int | None = None,
        offset: int = 0,
        linked: bool = False,
        interface: str = "other",
    ) -> Found:
        """The core's answers for ``local``'s principal, else the cache's, saying so.

        :class:`QueryError` for an identifier the core (or the local index) refuses.
        """
        principal = local.principal
        body = {
            "identifier": identifier,
            "level": level.value,
            "model": model.value,
            "limit": limit,
            "offset": offset,
            "linked": linked,
        }
        try:
            answer = self._call(lambda: self._post_json(FIND_PATH, body, principal))
        except UpstreamUnavailable:
            down = self._down()
            found = local.find(
                identifier,
                level=level,
                model=model,
                limit=limit,
                offset=offset,
                linked=linked,
                interface=interface,
            )
            return Found(list(found), down)
        matches: list[JsonDataset] = answer
        if self.acting_for(principal) is None:
            self._record_for_ae(principal, identifier, level, len(matches))
        if offset == 0 and (limit is None or len(matches) < limit) and self._backlog():
            # What the site stored and the core does not confirm yet is the edge's alone.
            own = local.find(
                identifier,
                level=level,
                model=model,
                limit=limit,
                linked=linked,
                interface=interface,
            )
            matches = _union(matches, list(own), level, limit)
        if self._retrieve_ae_title:
            for match in matches:
                if _RETRIEVE_AE_TITLE in match:
                    match[_RETRIEVE_AE_TITLE] = {"vr": "AE", "Value": [self._retrieve_ae_title]}
        return Found(matches)

    def _backlog(self) -> bool:
        """Whether objects stored here wait for the core's confirmation."""
        with self._engine.connect() as conn:
            waiting = conn.execute(
                sa.select(edge_forward.c.id).where(edge_forward.c.forwarded_at.is_(None)).limit(1)
            ).first()
        return waiting is not None

    def _post_json(self, path: str, body: dict[str, Any], principal: Principal) -> Any:
        response = self._upstream.post(
            path,
            timeout=self._timeout,
            on_behalf_of=self.acting_for(principal),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            content=orjson.dumps(body),
        )
        if response.status_code == 400:
            raise QueryError(_message(response))
        if response.status_code != 200:
            # 401/403 from the core: the user may not ask this there; answered as no
            # match, as the core's rules would (an unseen patient does not exist).
            log.warning(
                "the core refused %s: %s %s", path, response.status_code, _message(response)
            )
            return []
        return response.json()

    def _record_for_ae(
        self, principal: Principal, identifier: dict[str, Any], level: QueryLevel, count: int
    ) -> None:
        self._audit.record(
            AuditRecord(
                event=Event.QUERY,
                actor=principal.actor(),
                query=orjson.dumps(identifier, default=str).decode(),
                detail=f"{level.value} level query passed to the core: {count} answers",
            )
        )

    # -- metadata -------------------------------------------------------------------------
    def metadata(
        self,
        principal: Principal,
        dicomweb_root: str,
        study: str,
        series: str | None = None,
        sop_instance: str | None = None,
    ) -> tuple[bytes | None, LinkDown | None]:
        """WADO-RS /metadata from the core (its bulk data URIs made ours), or (None,
        None) when the core has none for this user, or (None, LinkDown) when it did not
        answer: the caller answers from the cache."""
        path = _path(study, series, sop_instance) + "/metadata"
        try:
            response = self._call(
                lambda: self._upstream.get(
                    path,
                    timeout=self._timeout,
                    on_behalf_of=self.acting_for(principal),
                    headers={"Accept": "application/dicom+json"},
                )
            )
        except UpstreamUnavailable:
            return None, self._down()
        if response.status_code != 200:
            return None, None
        root = dicomweb_root.rstrip("/").encode() + b"/"
        return _BULK_URI.sub(lambda m: m.group(1) + root, response.content), None

    # -- pixel data: the cache, filled from the core --------------------------------------
    def held(self, sop_instance_uids: Iterable[str]) -> set[str]:
        """Which of these instances the cache holds."""
        uids = list(dict.fromkeys(sop_instance_uids))
        found: set[str] = set()
        with self._engine.connect() as conn:
            for start in range(0, len(uids), 500):
                chunk = uids[start : start + 500]
                found.update(
                    conn.execute(
                        sa.select(instance.c.sop_instance_uid).where(
                            instance.c.sop_instance_uid.in_(chunk)
                        )
                    ).scalars()
                )
        return found

    def fill(
        self,
        principal: Principal,
        study: str,
        series: str | None = None,
        sop_instance: str | None = None,
    ) -> LinkDown | None:
        """Fetch into the cache what the core holds of this scope and the cache lacks,
        for ``principal``. An instance the cache holds costs no call to the core. The
        LinkDown when the core did not answer (the cache answers what it holds)."""
        if sop_instance is not None and series is not None:
            if self.held([sop_instance]):
                return None
            wanted = [(study, series, sop_instance)]
        else:
            identifier: dict[str, Any] = {"0020000D": {"vr": "UI", "Value": [study]}}
            level = QueryLevel.STUDY
            if series is not None:
                identifier["0020000E"] = {"vr": "UI", "Value": [series]}
                level = QueryLevel.SERIES
            down, wanted = self._select(principal, identifier, level, QueryModel.STUDY_ROOT)
            if down is not None:
                return down
        return self._fetch_missing(principal, wanted)

    def fill_for_retrieve(
        self,
        principal: Principal,
        identifier: dict[str, Any],
        *,
        level: QueryLevel,
        model: QueryModel,
    ) -> LinkDown | None:
        """Before a C-MOVE or C-GET: fetch what the identifier selects at the core and
        the cache lacks."""
        down, wanted = self._select(principal, identifier, level, model)
        return down if down is not None else self._fetch_missing(principal, wanted)

    def _select(
        self,
        principal: Principal,
        identifier: dict[str, Any],
        level: QueryLevel,
        model: QueryModel,
    ) -> tuple[LinkDown | None, list[tuple[str, str, str]]]:
        body = {"identifier": identifier, "level": level.value, "model": model.value}
        try:
            answer = self._call(lambda: self._post_json(SELECT_PATH, body, principal))
        except UpstreamUnavailable:
            return self._down(), []
        except QueryError:
            return None, []  # the local selection says what is wrong with it
        return None, [(str(a), str(b), str(c)) for a, b, c in answer[:MAX_FETCH]]

    def _fetch_missing(
        self, principal: Principal, wanted: list[tuple[str, str, str]]
    ) -> LinkDown | None:
        held = self.held(uid for _, _, uid in wanted)
        missing = [w for w in wanted if w[2] not in held]
        if not missing:
            return None
        origin = Origin(Protocol.UPSTREAM, user=principal.user_id, trust=principal.trust)
        with self._stores.session(principal, origin) as batch:
            for study, series, sop in missing:
                try:
                    self._call(functools.partial(self._keep, batch, principal, study, series, sop))
                except UpstreamUnavailable:
                    return self._down()
        return None

    def _keep(
        self, batch: IngestBatch, principal: Principal, study: str, series: str, sop: str
    ) -> None:
        """One instance from the core into the cache, streamed through a spool (bounded
        by the largest object the edge stores)."""
        with self._upstream.stream(
            "GET",
            _path(study, series, sop),
            timeout=self._timeout,
            on_behalf_of=self.acting_for(principal),
            headers={"Accept": _PART10},
        ) as response:
            if response.status_code != 200:
                return  # not this user's to have, or gone at the core meanwhile
            spool = batch.spool()
            try:
                try:
                    for chunk in response.iter_bytes():
                        spool.write(chunk)
                except ObjectTooLarge:
                    log.warning("instance %s at the core is larger than the edge keeps", sop)
                    return
                outcome = batch.store_part10(spool, study_instance_uid=study)
            finally:
                spool.close()
        if not outcome.status.ok:
            log.warning("instance %s from the core not kept: %s", sop, outcome)


_UNIQUE = {
    QueryLevel.PATIENT: ("00100020", "00100021"),
    QueryLevel.STUDY: ("0020000D",),
    QueryLevel.SERIES: ("0020000E",),
    QueryLevel.IMAGE: ("00080018",),
}


def _union(
    matches: list[JsonDataset], own: Iterable[JsonDataset], level: QueryLevel, limit: int | None
) -> list[JsonDataset]:
    """The core's matches, then the edge's own the core did not give (by the level's
    unique key), up to ``limit``."""

    def key(match: JsonDataset) -> tuple[str, ...]:
        return tuple(first_str(match, tag) for tag in _UNIQUE[level])

    seen = {key(m) for m in matches}
    out = list(matches)
    for match in own:
        if limit is not None and len(out) >= limit:
            break
        if key(match) not in seen:
            seen.add(key(match))
            out.append(match)
    return out


def _path(study: str, series: str | None, sop_instance: str | None) -> str:
    path = f"/dicomweb/studies/{study}"
    if series is not None:
        path += f"/series/{series}"
        if sop_instance is not None:
            path += f"/instances/{sop_instance}"
    return path


def _message(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return str(response.text)[:200]
    return str(body.get("message", body))[:200] if isinstance(body, dict) else str(body)[:200]


def _aware(when: dt.datetime) -> dt.datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
