"""The process roles of ``netpacs serve``: the typed container of services each role's
adapter receives, built once per process, and the function that runs the role.

One runner per role, run in a worker process the supervisor forks: DIMSE, HTTP and
MLLP listeners on inherited sockets (the job worker is :mod:`netpacs.app.jobs`).
"""

from __future__ import annotations

import socket
from concurrent.futures import Executor, ThreadPoolExecutor

import sqlalchemy as sa

from netpacs.adapters.dimse import scu
from netpacs.adapters.dimse import server as dimse_server
from netpacs.adapters.dimse.handlers import DimseServices
from netpacs.adapters.hl7 import server as hl7_server
from netpacs.adapters.http import server as http_server
from netpacs.adapters.http.config import OidcConfig, WebConfig
from netpacs.adapters.http.deps import HttpServices
from netpacs.app import edge_read
from netpacs.app.container import Archive, Edge, build_archive, build_edge, edge_figures
from netpacs.app.federation import (
    dicomweb_peer,
    federated_search,
    move_arrivals,
    remote_cache,
)
from netpacs.app.region_file import load_region
from netpacs.app.settings import Settings, split_list
from netpacs.app.startup import StartupError
from netpacs.app.supervisor import worker_grace
from netpacs.app.tls import dimse_tls_context, mllp_tls_context
from netpacs.domain.networks import Retrieve
from netpacs.index.db import lost_primary, make_engine
from netpacs.services.access import BreakGlass
from netpacs.services.accounts import AccountService
from netpacs.services.adt import AdtService, MergeService
from netpacs.services.audit_trail import AuditTrail
from netpacs.services.commitment import CommitmentService
from netpacs.services.deletion import DeletionService
from netpacs.services.edge.clients import EdgeClients, demo_edges
from netpacs.services.edge.feed import ChangeFeed, PrefetchStatus
from netpacs.services.edge.link import LinkState
from netpacs.services.edge.mpps import EdgeMpps
from netpacs.services.edge.nodes import EdgeNodes
from netpacs.services.federation import RemoteStudies
from netpacs.services.frames import FrameReader
from netpacs.services.health import HealthService
from netpacs.services.imaging_study import ImagingStudyService
from netpacs.services.metadata import MetadataService
from netpacs.services.metrics import Backlogs, Scrape, watch_engine
from netpacs.services.orders import OrderService
from netpacs.services.orders.mpps import MppsService
from netpacs.services.orders.worklist import ModalityWorklist
from netpacs.services.partners import PartnerClients
from netpacs.services.reconciliation import ReconciliationService
from netpacs.services.reporting import (
    ClaimsService,
    ReportingScope,
    ReportsService,
    TurnaroundService,
    WorklistService,
)
from netpacs.services.reporting.orders import OrderedStudies
from netpacs.services.studies import StudyListService
from netpacs.services.tokens import load_secret

# -- the containers -----------------------------------------------------------------------


def dimse_services(
    archive: Archive,
    executor: Executor,
    edge: Edge | None = None,
    settings: Settings | None = None,
) -> DimseServices:
    """The DIMSE worker's services (each association answers for its calling AE);
    with ``settings``, the workstations' C-FIND across the other networks (issue 14)."""
    federation = None
    if settings is not None and settings.federation_find_aes:
        federation = federated_search(archive, settings, dicomweb_peer(settings))
    public_url = settings.public_url.rstrip("/") if settings and settings.public_url else None
    if settings is not None and public_url is None and settings.effective_http_host != "0.0.0.0":
        public_url = f"http://{settings.effective_http_host}:{settings.http_port}"
    return DimseServices(
        ae_title=archive.ae_title,
        access=archive.access,
        stores=archive.stores,
        query=archive.query,
        retrieve=archive.retrieve,
        executor=executor,
        edge_read=edge_read.read_through(archive, edge),
        # At an edge node, from its copy of its site's open orders (services.edge.orders).
        worklist=ModalityWorklist(archive.read_engine, archive.region, archive.audit),
        # At an edge node, kept and passed on to the core (services.edge.mpps).
        mpps=core_mpps(archive)
        if edge is None
        else EdgeMpps(archive.writer.execute, archive.region, archive.audit, trust=edge.trust),
        commitment=CommitmentService(archive.read_engine, archive.region, edge=edge is not None),
        federation=federation,
        public_url=public_url,
        remote_cache=remote_cache(federation, settings) if federation and settings else None,
        arrivals=move_arrivals(settings) if settings and moves_to_us(archive, settings) else None,
    )


def moves_to_us(archive: Archive, settings: Settings) -> bool:
    """Whether a DIMSE network of a core's region C-MOVEs to our AE title (issue 14)."""
    return settings.role == "core" and any(
        n.dimse is not None and n.dimse.retrieve is Retrieve.MOVE for n in archive.region.networks
    )


def core_mpps(archive: Archive) -> MppsService:
    """The core's MPPS service (for its AEs, and for its edge nodes' AEs)."""
    return MppsService(
        archive.write_engine,
        archive.region,
        archive.audit,
        on_completed=OrderedStudies(archive.region).study_completed,
    )


def accounts(archive: Archive, settings: Settings, edge: Edge | None = None) -> AccountService:
    if edge is not None:  # sign-in confirmed by the core (issue 13)
        return edge_read.edge_accounts(archive, settings, edge, edge_clients(archive, settings))
    return AccountService(
        archive.read_engine,
        secret=load_secret(settings.effective_auth_secret_file),
        audit=archive.audit,
        token_minutes=settings.token_minutes,
        signin_attempts=settings.signin_attempts,
        signin_window_minutes=settings.signin_window_minutes,
        edges=edge_clients(archive, settings),
        state_seconds=settings.account_cache_seconds,
        partners=PartnerClients(
            archive.region.networks, demo_password=settings.demo_password if settings.demo else None
        ),
    )


def edge_clients(archive: Archive, settings: Settings) -> EdgeClients:
    """The edge nodes that may sign in here: the region file's, and in demo mode a demo
    edge node for every trust without one (issue 13)."""
    edges = archive.region.edges
    if settings.demo:
        edges += demo_edges(archive.region, settings.demo_password)
    return EdgeClients(edges)


def edge_nodes(archive: Archive, settings: Settings) -> EdgeNodes | None:
    """The core's side of its edge nodes (None on an edge)."""
    if settings.role != "core":
        return None
    return EdgeNodes(
        archive.write_engine,
        archive.blobs,
        archive.access,
        edge_clients(archive, settings).edges,
        heartbeat_seconds=settings.heartbeat_seconds,
        mpps=(core_mpps(archive), archive.region),
    )


def oidc_config(settings: Settings) -> OidcConfig | None:
    """OpenID Connect sign-in, when an issuer is configured."""
    if not settings.oidc_issuer:
        return None
    assert settings.oidc_client_id and settings.oidc_client_secret_file
    try:
        secret = settings.oidc_client_secret_file.read_text().strip()
    except OSError as exc:
        raise StartupError(
            f"NETPACS_OIDC_CLIENT_SECRET_FILE={str(settings.oidc_client_secret_file)!r} "
            f"cannot be read ({exc.strerror})"
        ) from None
    return OidcConfig(
        issuer=settings.oidc_issuer.rstrip("/"),
        client_id=settings.oidc_client_id,
        client_secret=secret,
        display_name=settings.oidc_display_name,
        scopes=settings.oidc_scopes,
        username_claim=settings.oidc_username_claim,
        trust_claim=settings.oidc_trust_claim,
        role_claim=settings.oidc_role_claim,
    )


def metrics_scrape(archive: Archive, settings: Settings) -> Scrape:
    """GET /metrics: who may read it, and the backlogs read from the index."""
    backlogs = Backlogs(
        archive.read_engine,
        trusts=[trust.ods_code for trust in archive.region.trusts],
        audit_forwarding=bool(settings.audit_syslog),
        cache_seconds=settings.metrics_cache_seconds,
    )
    more = []
    if settings.role == "edge":
        more.append(edge_figures(settings, archive, LinkState(archive.write_engine)))
    return Scrape(allow=split_list(settings.metrics_allow), backlogs=backlogs, more=more)


def http_services(archive: Archive, settings: Settings, edge: Edge | None = None) -> HttpServices:
    """The HTTP worker's services; each request gets a copy scoped to its user."""
    reporting = ReportingScope(
        archive.read_engine, archive.write_engine, archive.region, archive.audit, archive.access
    )
    reading = edge_read.read_through(archive, edge)
    peers = dicomweb_peer(settings)
    federation = federated_search(archive, settings, peers)
    return HttpServices(
        region=archive.region,
        query=archive.query,
        retrieve=archive.retrieve,
        stores=archive.stores,
        access=archive.access,
        accounts=accounts(archive, settings, edge),
        worklist=WorklistService(reporting),
        claims=ClaimsService(reporting),
        reports=ReportsService(reporting, outputs=archive.report_outputs),
        turnaround=TurnaroundService(reporting),
        metadata=MetadataService(archive.query, archive.coercion),
        frames=FrameReader(archive.blobs),
        imaging_studies=ImagingStudyService(archive.query),
        study_list=StudyListService(
            archive.query, archive.read_engine, archive.region, read_through=reading
        ),
        deletion=DeletionService(
            query=archive.query,
            run=archive.writer.execute,
            blobs=archive.blobs,
            audit=archive.audit,
            source_id=archive.ae_title,
        ),
        rejections=archive.rejections,
        reconciliation=ReconciliationService(
            archive.write_engine, MergeService(archive.write_engine), source_id=archive.ae_title
        ),
        break_glass=BreakGlass(
            archive.write_engine,
            archive.audit,
            archive.access,
            minutes=settings.break_glass_minutes,
        ),
        audit_trail=AuditTrail(archive.read_engine, archive.access),
        metrics=metrics_scrape(archive, settings),
        edges=edge_nodes(archive, settings),
        web=WebConfig(
            public_url=settings.public_url.rstrip("/") if settings.public_url else None,
            viewer_dir=settings.effective_viewer_dir,
            spool_dir=settings.data_dir,
            oidc=oidc_config(settings),
            token_minutes=settings.token_minutes,
            trusted_proxies=tuple(split_list(settings.trusted_proxies)),
            allowed_hosts=frozenset(h.lower() for h in split_list(settings.allowed_hosts)),
            max_body_bytes=settings.http_max_body_bytes,
            upload_idle_seconds=settings.upload_idle_seconds,
            unavailable=lost_primary,
        ),
        health=HealthService(
            engine=archive.write_engine,
            blobs=archive.blobs,
            timeout=settings.readiness_timeout_seconds,
        ),
        edge_read=reading,
        edge_serving=edge_read.edge_serving(archive, edge),
        # -- edge: edge-prefetch --
        change_feed=(
            ChangeFeed(archive.read_engine, archive.write_engine)
            if settings.role == "core"
            else None
        ),
        prefetch_status=PrefetchStatus(archive.read_engine) if settings.role == "edge" else None,
        federation=federation,
        remote=RemoteStudies(federation, opens_dimse=True) if federation else None,
        remote_wire=peers if federation else None,
        remote_cache=remote_cache(federation, settings) if federation else None,
    )


def adt_service(settings: Settings) -> tuple[AdtService, sa.Engine]:
    """The MLLP worker's service: ADT needs the index and the region only (no blob
    store, no ingest writer thread). The engine is returned for the worker to dispose."""
    engine = make_engine(settings.effective_database_url, writer=True)
    watch_engine(engine)
    service = AdtService(
        engine, load_region(settings.effective_region_file), audit_source_id=settings.ae_title
    )
    return service, engine


def order_service(adt: AdtService, settings: Settings) -> OrderService:
    """Orders over the same MLLP listener, under the ADT feed's rules."""
    region = load_region(settings.effective_region_file)
    return OrderService(adt, region, on_change=OrderedStudies(region).order_changed)


# -- the runners ---------------------------------------------------------------------------


def dimse_config(settings: Settings) -> dimse_server.DimseConfig:
    return dimse_server.DimseConfig(
        idle_timeout=settings.dimse_timeout,
        max_pdu_length=settings.max_pdu_length,
        tls=dimse_tls_context(settings),
        associate_timeout=settings.dimse_associate_timeout,
        max_associations=settings.dimse_max_associations,
        drain_timeout=worker_grace(settings.shutdown_timeout),
    )


def run_dimse(
    settings: Settings, sock: socket.socket | None, tls_sock: socket.socket | None
) -> None:
    """A DIMSE worker: associations on ``sock`` (and DICOM TLS ones on ``tls_sock``)."""
    scu.send_files_as_stored()
    archive = build_archive(settings)
    edge = build_edge(settings, archive)
    executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="dimse")
    try:
        dimse_server.serve(
            dimse_services(archive, executor, edge, settings),
            dimse_config(settings),
            sock,
            tls_sock,
        )
    finally:
        if edge is not None:
            edge.close()
        # Drained already (DimseConfig.drain_timeout): what still runs is finished,
        # what is queued is dropped with its association.
        executor.shutdown(wait=True, cancel_futures=True)
        archive.close()


def run_http(settings: Settings, sock: socket.socket) -> None:
    """An HTTP worker: DICOMweb, FHIR, the API, the pages and the viewer on ``sock``."""
    archive = build_archive(settings)
    edge = build_edge(settings, archive)
    try:
        http_server.serve(http_services(archive, settings, edge), sock)
    finally:
        if edge is not None:
            edge.close()
        archive.close()


def run_mllp(
    settings: Settings, sock: socket.socket | None, tls_sock: socket.socket | None
) -> None:
    """The MLLP worker: HL7 v2 ADT on ``sock`` (and MLLP over TLS on ``tls_sock``)."""
    adt, engine = adt_service(settings)
    # An edge node's orders are a copy of the core's (services.edge.orders): the RIS
    # sends its orders to the core.
    orders = order_service(adt, settings) if settings.role != "edge" else None
    try:
        hl7_server.serve(adt, sock, tls_sock, mllp_tls_context(settings), orders)
    finally:
        engine.dispose()
