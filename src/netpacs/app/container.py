"""The composition root: the services of one process, built once from the settings.

:func:`build_archive` builds what every process role shares (the region, the index, the
object store, audit, ingest, access, query and retrieve). :mod:`netpacs.app.roles` adds
what each role's adapter calls and hands it over as the adapter's own typed container;
the commands of the CLI use the archive directly. Nothing here imports an adapter but the edge's
HTTP client of the core (httpx), so a command that serves nothing does not load the
protocol stacks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import sqlalchemy as sa

from netpacs.adapters.transports.upstream import Upstream, UpstreamConfig
from netpacs.app.region_file import load_region
from netpacs.app.settings import Settings
from netpacs.app.startup import StartupError
from netpacs.domain.region import Region
from netpacs.index.db import make_engine
from netpacs.index.edge_cache import last_prefetch
from netpacs.index.writer import IndexWriter
from netpacs.services.access import NOBODY, AccessRules
from netpacs.services.access_policy import AccessPolicy
from netpacs.services.audit import AuditService
from netpacs.services.care import StoredIdentities, StudyPatientRule
from netpacs.services.coercion import CoercionService
from netpacs.services.edge.forward import ForwardRule
from netpacs.services.edge.link import LinkState
from netpacs.services.edge.status import EdgeFigures
from netpacs.services.identity import RegionalRecord
from netpacs.services.ingest import IngestService
from netpacs.services.ingest_batch import StoreService
from netpacs.services.metrics import watch_engine
from netpacs.services.partners import PartnerFinds
from netpacs.services.query import QueryService
from netpacs.services.rejection import RejectionService
from netpacs.services.report_outputs import ReportOutputs
from netpacs.services.reporting import (
    WorklistRule,
)
from netpacs.services.retrieve import RetrieveService
from netpacs.storage.blobstore import BlobStore
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
    blobs: BlobStore
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
    rejections: RejectionService  # IHE IOCM rejection notes (issue 15)
    _closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.ingest.close()
        self.writer.close()
        self.read_engine.dispose()
        self.write_engine.dispose()


@dataclass
class Edge:
    """What an edge node (NETPACS_ROLE=edge, issue 13) adds to its archive: the core as
    it reaches it, and the state of that link."""

    trust: str
    site: str
    upstream: Upstream
    link: LinkState
    figures: EdgeFigures
    timeout: float

    def close(self) -> None:
        self.upstream.close()


def upstream_config(settings: Settings) -> UpstreamConfig:
    """The edge's connection to the core; :class:`StartupError` naming a setting whose
    file cannot be read."""
    assert settings.upstream_url
    if settings.upstream_client_secret_file is not None:
        try:
            secret = settings.upstream_client_secret_file.read_text().strip()
        except OSError as exc:
            raise StartupError(
                f"NETPACS_UPSTREAM_CLIENT_SECRET_FILE="
                f"{str(settings.upstream_client_secret_file)!r} cannot be read ({exc.strerror})"
            ) from None
    else:  # demo mode (the settings check this): the demo edge account of the trust
        secret = settings.demo_password
    for name in ("upstream_ca_file", "upstream_tls_cert_file", "upstream_tls_key_file"):
        path = getattr(settings, name)
        if path is not None and not path.is_file():
            raise StartupError(f"NETPACS_{name.upper()}={str(path)!r} is not a file")
    return UpstreamConfig(
        base_url=settings.upstream_url.rstrip("/"),
        client_id=settings.effective_upstream_client_id,
        client_secret=secret,
        timeout=settings.upstream_timeout_seconds,
        ca_file=settings.upstream_ca_file,
        cert_file=settings.upstream_tls_cert_file,
        key_file=settings.upstream_tls_key_file,
    )


def edge_site(settings: Settings, region: Region) -> tuple[str, str]:
    """The edge's trust and site, checked against the region; :class:`StartupError`."""
    assert settings.edge_trust and settings.edge_site
    trust = region.trust(settings.edge_trust)
    if trust is None:
        raise StartupError(
            f"NETPACS_EDGE_TRUST={settings.edge_trust!r} is not a trust of the region file"
        )
    if not any(site.code == settings.edge_site for site in trust.sites):
        raise StartupError(
            f"NETPACS_EDGE_SITE={settings.edge_site!r} is not a site of {trust.ods_code} "
            f"({', '.join(s.code for s in trust.sites)})"
        )
    return trust.ods_code, settings.edge_site


def check_edge(settings: Settings, region: Region) -> None:
    """:class:`StartupError` for edge settings that cannot work (serve checks at start)."""
    if settings.role == "edge":
        edge_site(settings, region)
        upstream_config(settings)


def build_edge(settings: Settings, archive: Archive) -> Edge | None:
    """The edge's services when ``settings.role`` is edge, else None."""
    if settings.role != "edge":
        return None
    trust, site = edge_site(settings, archive.region)
    link = LinkState(archive.write_engine)
    return Edge(
        trust=trust,
        site=site,
        upstream=Upstream(upstream_config(settings), on_contact=link.record),
        link=link,
        figures=edge_figures(settings, archive, link),
        timeout=settings.upstream_timeout_seconds,
    )


def edge_figures(settings: Settings, archive: Archive, link: LinkState) -> EdgeFigures:
    """The edge's figures (heartbeat to the core, /metrics)."""
    return EdgeFigures(
        archive.read_engine,
        link,
        cache_limit_bytes=int(settings.cache_gb * (1 << 30)),
        last_prefetch=last_prefetch,  # edge: edge-prefetch
    )


def make_blob_store(settings: Settings, url: str | None = None) -> BlobStore:
    """The object store ``url`` names (default: NETPACS_BLOB_URL): S3 for an s3:// URL,
    else the directory ``<data_dir>/objects``."""
    url = url if url is not None else settings.blob_url
    if url:
        from netpacs.storage.s3 import S3BlobStore, S3Location  # boto3 only where used

        return S3BlobStore(S3Location.parse(url), credentials_file=settings.s3_credentials_file)
    return FileSystemBlobStore(settings.effective_blob_dir)


def build_archive(settings: Settings) -> Archive:
    region = load_region(settings.effective_region_file)
    url = settings.effective_database_url
    blobs = make_blob_store(settings)
    read_engine = make_engine(url)
    write_engine = make_engine(url, writer=True)
    watch_engine(read_engine)
    watch_engine(write_engine)
    writer = IndexWriter(
        write_engine,
        on_new_study=RegionalRecord(),
        on_new_series=WorklistRule(region),
        on_other_patient=StudyPatientRule(region, source_id=settings.ae_title),
        retry_seconds=settings.database_retry_seconds,
        on_new_instance=ForwardRule() if settings.role == "edge" else None,
    )
    audit = AuditService(writer.execute, source_id=settings.ae_title, append=writer.append)
    rejections = RejectionService(
        run=writer.execute,
        read_engine=read_engine,
        blobs=blobs,
        source_id=settings.ae_title,
        retention_days=region.rejection_retention_days,
    )
    ingest = IngestService(
        blobs=blobs,
        writer=writer,
        region=region,
        ae_title=settings.ae_title,
        duplicate_policy=settings.duplicate_policy,
        max_object_size=settings.max_object_mb * 1024 * 1024,
        spool_dir=settings.data_dir,
        # An edge node leaves rejection notes to the core it forwards them to.
        on_note=rejections.on_stored if settings.role != "edge" else None,
    )
    query = QueryService(
        read_engine,
        principal=NOBODY,
        audit=audit,
        rules=AccessRules(),
        retrieve_ae_title=settings.ae_title,
        time_limit=settings.query_timeout_seconds,
        partner_finds=PartnerFinds(writer.execute, token_seconds=settings.token_minutes * 60),
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
        stores=StoreService(ingest, audit, writer.execute, identities=StoredIdentities(region)),
        access=AccessPolicy(
            region,
            audit,
            reject_unknown_calling_ae=settings.reject_unknown_calling_ae,
            require_ae_hosts=settings.dimse_require_ae_hosts,
        ),
        query=query,
        coercion=coercion,
        retrieve=RetrieveService(query=query, coercion=coercion, blobs=blobs),
        report_outputs=ReportOutputs(
            ingest=ingest, region=region, read_engine=read_engine, ae_title=settings.ae_title
        ),
        rejections=rejections,
    )
