"""What the HTTP routes reach: the services of this worker process, and request helpers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from netpacs.adapters.http.config import WebConfig
from netpacs.adapters.http.errors import HttpError
from netpacs.adapters.transports.dicomweb_peer import DicomwebPeer
from netpacs.domain.region import Region
from netpacs.domain.uids import is_valid_uid
from netpacs.services.access import BreakGlass, Principal
from netpacs.services.access_policy import AccessPolicy
from netpacs.services.accounts import AccountService
from netpacs.services.audit_trail import AuditTrail
from netpacs.services.deletion import DeletionService
from netpacs.services.edge.feed import ChangeFeed, PrefetchStatus
from netpacs.services.edge.nodes import EdgeNodes
from netpacs.services.edge.readthrough import ReadThrough
from netpacs.services.edge.serving import EdgeServing
from netpacs.services.federation import FederatedSearch, RemoteCache, RemoteStudies
from netpacs.services.frames import FrameReader
from netpacs.services.health import HealthService
from netpacs.services.imaging_study import ImagingStudyService
from netpacs.services.ingest_batch import StoreService
from netpacs.services.metadata import MetadataService
from netpacs.services.metrics import Scrape
from netpacs.services.query import QueryService
from netpacs.services.reconciliation import ReconciliationService
from netpacs.services.rejection import RejectionService
from netpacs.services.reporting import (
    ClaimsService,
    ReportsService,
    TurnaroundService,
    WorklistService,
)
from netpacs.services.retrieve import RetrieveService
from netpacs.services.studies import StudyListService

DICOMWEB_ROOT = "/dicomweb"


@dataclass(frozen=True)
class HttpServices:
    """The services of one worker, scoped to the principal of one request.

    The composition root builds the worker's own instance, which answers for
    :data:`~netpacs.services.access.NOBODY` (it sees no patient); the authentication
    dependency gives each request a copy scoped to its user.
    """

    region: Region
    query: QueryService
    retrieve: RetrieveService
    stores: StoreService
    access: AccessPolicy
    accounts: AccountService
    worklist: WorklistService
    claims: ClaimsService
    reports: ReportsService
    turnaround: TurnaroundService
    metadata: MetadataService
    frames: FrameReader
    imaging_studies: ImagingStudyService
    study_list: StudyListService
    deletion: DeletionService
    rejections: RejectionService  # IHE IOCM rejection notes: list, undo (issue 15)
    reconciliation: ReconciliationService
    break_glass: BreakGlass
    audit_trail: AuditTrail
    web: WebConfig
    health: HealthService
    metrics: Scrape | None = None  # GET /metrics (None: not served)
    # -- edge: edge-prefetch --
    change_feed: ChangeFeed | None = None  # GET /edge/changes (the core)
    prefetch_status: PrefetchStatus | None = None  # /admin/prefetch (an edge)
    edges: EdgeNodes | None = None  # the core's side of its edge nodes (issue 13)
    # -- edge: edge-read --
    edge_read: ReadThrough | None = None  # an edge node: reads through to the core
    edge_serving: EdgeServing | None = None  # a core: answers its edge nodes' questions
    # -- federation (issue 14) --
    federation: FederatedSearch | None = None  # the other networks (None: none configured)
    remote: RemoteStudies | None = None  # their studies opened through us
    remote_wire: DicomwebPeer | None = None  # the DICOMweb client passing them through
    remote_cache: RemoteCache | None = None  # DIMSE networks' studies, retrieved to open

    @property
    def principal(self) -> Principal:
        return self.query.principal

    def for_principal(self, principal: Principal) -> HttpServices:
        root: HttpServices = vars(self).get("_root", self)
        return _Scoped(root, root.worklist.with_agreements(principal))


# The services that answer for a principal: built for each request from the worker's.
_SCOPED = frozenset(
    {
        "query", "retrieve", "worklist", "claims", "reports", "turnaround", "metadata",
        "imaging_studies", "study_list", "deletion", "edges", "federation", "remote",
        "remote_cache",
    }
)  # fmt: skip


class _Scoped(HttpServices):
    """:class:`HttpServices` for one request's principal. A scoped service is made when
    the route first uses it (a study search needs one of fourteen; making all of them
    for every request was 2 % of a search's CPU)."""

    def __init__(self, root: HttpServices, principal: Principal) -> None:
        mine = vars(self)  # past the frozen dataclass's __setattr__, as its __init__ is
        mine.update((k, v) for k, v in vars(root).items() if k not in _SCOPED)
        mine["_root"], mine["_principal"] = root, principal
        for name in ("edges", "federation", "remote", "remote_cache"):
            # These default to None on the class, where a look-up would stop; few.
            service = getattr(root, name)
            mine[name] = None if service is None else service.for_principal(principal)

    def __getattr__(self, name: str) -> Any:
        """Only for what the instance does not hold yet: a scoped service, made once."""
        if name not in _SCOPED:
            raise AttributeError(name)
        mine = vars(self)
        scoped = getattr(mine["_root"], name).for_principal(mine["_principal"])
        mine[name] = scoped
        return scoped


def check_url_uids(**uids: str | None) -> None:
    """400 for a UID in the URL that is not one (PS3.5 9.1); keywords name the level
    (``Study``, ``Series``, ``SOP``). Checked before any query: a ``*`` there would
    otherwise be universal matching."""
    for name, uid in uids.items():
        if uid is not None and not is_valid_uid(uid):
            raise HttpError(
                400, f"{uid[:80]!r} in the URL is not a valid {name} Instance UID (PS3.5 9.1)"
            )


def services(request: Request) -> HttpServices:
    """FastAPI dependency: the services answering this request, for its principal."""
    scoped: HttpServices | None = getattr(request.state, "services", None)
    if scoped is not None:
        return scoped
    svc: HttpServices = request.app.state.services
    return svc


def base_url(request: Request) -> str:
    """The URL clients reach us at, without a trailing slash (for BulkDataURIs, links)."""
    svc: HttpServices = request.app.state.services
    return svc.web.public_url or str(request.base_url).rstrip("/")


def is_https(request: Request) -> bool:
    """Whether the browser reached us over https: the request's scheme (a trusted
    proxy's X-Forwarded-Proto included), or an https public URL (TLS ends before us).
    Decides the session cookie's ``Secure``."""
    svc: HttpServices = request.app.state.services
    return request.url.scheme == "https" or svc.web.https
