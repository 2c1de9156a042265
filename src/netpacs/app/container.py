"""The composition root: the services of one process, built once from the settings.

:func:`build_archive` builds what every process role shares (the region, the index, the
object store, audit, ingest, query and retrieve); the role builders add what their
adapter calls and hand it over as the adapter's own typed container
(:class:`~netpacs.adapters.dimse.handlers.DimseServices`,
:class:`~netpacs.adapters.http.deps.HttpServices`, ...). Adapters receive those and
nothing else: they never see the settings, an engine or the blob store.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor
from dataclasses import dataclass, field

import sqlalchemy as sa

from netpacs.adapters.dimse.handlers import DimseServices
from netpacs.adapters.http.config import OidcConfig, WebConfig
from netpacs.adapters.http.deps import HttpServices
from netpacs.app.region_file import load_region
from netpacs.app.settings import Settings
from netpacs.app.startup import StartupError
from netpacs.domain.region import Region
from netpacs.index.db import make_engine
from netpacs.index.writer import IndexWriter
from netpacs.services.access import NOBODY, AccessRules, BreakGlass
from netpacs.services.access_policy import AccessPolicy
from netpacs.services.accounts import AccountService, load_secret
from netpacs.services.adt import AdtService, MergeService
from netpacs.services.audit import AuditService
from netpacs.services.audit_trail import AuditTrail
from netpacs.services.coercion import CoercionService
from netpacs.services.deletion import DeletionService
from netpacs.services.frames import FrameReader
from netpacs.services.identity import RegionalRecord
from netpacs.services.imaging_study import ImagingStudyService
from netpacs.services.ingest import IngestService
from netpacs.services.ingest_batch import StoreService
from netpacs.services.metadata import MetadataService
from netpacs.services.query import QueryService
from netpacs.services.reconciliation import ReconciliationService
from netpacs.services.report_outputs import ReportOutputs
from netpacs.services.reporting import (
    ClaimsService,
    ReportingScope,
    ReportsService,
    TurnaroundService,
    WorklistRule,
    WorklistService,
)
from netpacs.services.retrieve import RetrieveService
from netpacs.services.studies import StudyListService
from netpacs.storage.fs import FileSystemBlobStore

log = logging.getLogger(__name__)


@dataclass
class Archive:
    """What every process role shares, wired to one index and one object store.

    The query and retrieve services here answer for nobody (they see no patient);
    each association or request works with a copy scoped to its principal.
    """

    ae_title: str
    region: Region
    blobs: FileSystemBlobStore
    read_engine: sa.Engine
    write_engine: sa.Engine
    writer: IndexWriter
    audit: AuditService
    ingest: IngestService
    stores: StoreService
    access: AccessPolicy
    query: QueryService
    coercion: CoercionService
    retrieve: RetrieveService
    report_outputs: ReportOutputs
    _closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.ingest.close()
        self.writer.close()
        self.read_engine.dispose()
        self.write_engine.dispose()


def build_archive(settings: Settings) -> Archive:
    region = load_region(settings.effective_region_file)
    url = settings.effective_database_url
    blobs = FileSystemBlobStore(settings.blob_dir)
    read_engine = make_engine(url)
    write_engine = make_engine(url, writer=True)
    writer = IndexWriter(
        write_engine, on_new_study=RegionalRecord(), on_new_series=WorklistRule(region)
    )
    audit = AuditService(writer.execute, source_id=settings.ae_title)
    ingest = IngestService(
        blobs=blobs,
        writer=writer,
        region=region,
        ae_title=settings.ae_title,
        duplicate_policy=settings.duplicate_policy,
    )
    query = QueryService(
        read_engine,
        principal=NOBODY,
        audit=audit,
        rules=AccessRules(),
        retrieve_ae_title=settings.ae_title,
    )
    coercion = CoercionService(read_engine)
    return Archive(
        ae_title=settings.ae_title,
        region=region,
        blobs=blobs,
        read_engine=read_engine,
        write_engine=write_engine,
        writer=writer,
        audit=audit,
        ingest=ingest,
        stores=StoreService(ingest, audit, writer.execute),
        access=AccessPolicy(
            region, audit, reject_unknown_calling_ae=settings.reject_unknown_calling_ae
        ),
        query=query,
        coercion=coercion,
        retrieve=RetrieveService(query=query, coercion=coercion, blobs=blobs),
        report_outputs=ReportOutputs(
            ingest=ingest, region=region, read_engine=read_engine, ae_title=settings.ae_title
        ),
    )


# -- process roles -------------------------------------------------------------------------


def dimse_services(archive: Archive, executor: Executor) -> DimseServices:
    """The DIMSE worker's services (each association answers for its calling AE)."""
    return DimseServices(
        ae_title=archive.ae_title,
        access=archive.access,
        stores=archive.stores,
        query=archive.query,
        retrieve=archive.retrieve,
        executor=executor,
    )


def accounts(archive: Archive, settings: Settings) -> AccountService:
    return AccountService(
        archive.read_engine,
        secret=load_secret(settings.effective_auth_secret_file),
        audit=archive.audit,
        token_minutes=settings.token_minutes,
        signin_attempts=settings.signin_attempts,
        signin_window_minutes=settings.signin_window_minutes,
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


def http_services(archive: Archive, settings: Settings) -> HttpServices:
    """The HTTP worker's services; each request gets a copy scoped to its user."""
    reporting = ReportingScope(
        archive.read_engine, archive.write_engine, archive.region, archive.audit, archive.access
    )
    return HttpServices(
        region=archive.region,
        query=archive.query,
        retrieve=archive.retrieve,
        stores=archive.stores,
        access=archive.access,
        accounts=accounts(archive, settings),
        worklist=WorklistService(reporting),
        claims=ClaimsService(reporting),
        reports=ReportsService(reporting, outputs=archive.report_outputs),
        turnaround=TurnaroundService(reporting),
        metadata=MetadataService(archive.query, archive.coercion),
        frames=FrameReader(archive.blobs),
        imaging_studies=ImagingStudyService(archive.query),
        study_list=StudyListService(archive.query, archive.read_engine, archive.region),
        deletion=DeletionService(
            query=archive.query,
            run=archive.writer.execute,
            blobs=archive.blobs,
            audit=archive.audit,
            source_id=archive.ae_title,
        ),
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
        web=WebConfig(
            public_url=settings.public_url.rstrip("/") if settings.public_url else None,
            viewer_dir=settings.effective_viewer_dir,
            spool_dir=settings.data_dir,
            oidc=oidc_config(settings),
            token_minutes=settings.token_minutes,
        ),
    )


def adt_service(settings: Settings) -> tuple[AdtService, sa.Engine]:
    """The MLLP worker's service: ADT needs the index and the region only (no blob
    store, no ingest writer thread). The engine is returned for the worker to dispose."""
    engine = make_engine(settings.effective_database_url, writer=True)
    service = AdtService(
        engine, load_region(settings.effective_region_file), audit_source_id=settings.ae_title
    )
    return service, engine
