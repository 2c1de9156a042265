"""The job worker of ``netpacs serve``: builds the jobs from the settings and runs them.

The jobs (services.jobs): the results sender (one job per trust of the region, and
one for results of trusts it does not name), the audit forwarder (when
``NETPACS_AUDIT_SYSLOG`` names a collector), the SR sweep and claim expiry. Their
transports are built here from the settings: an MLLP client per trust (over TLS where
the region file says so) and a syslog client. :func:`check_settings` finds the settings
and files that cannot work, so that ``serve`` stops at once with a message instead of
a job failing later.
"""

from __future__ import annotations

import logging
import signal
import ssl
import threading
import urllib.parse

import sqlalchemy as sa

from netpacs.adapters.hl7.oru import OruSender
from netpacs.adapters.transports.mllp import MllpClient, TlsClient
from netpacs.adapters.transports.syslog import Collector, SyslogClient, local_hostname
from netpacs.app import edge_read
from netpacs.app.container import Archive, Edge, build_archive, build_edge
from netpacs.app.edge_cache import cache_jobs
from netpacs.app.settings import Settings
from netpacs.app.supervisor import WorkerGroup, worker_grace
from netpacs.domain.region import Endpoint, Region
from netpacs.index.db import make_engine
from netpacs.services.access import SYSTEM
from netpacs.services.edge.clients import demo_edges
from netpacs.services.edge.feed import FeedTrim
from netpacs.services.edge.forward import Forwarding, Lanes
from netpacs.services.edge.forward import Timing as ForwardTiming
from netpacs.services.edge.mpps import MppsSender
from netpacs.services.edge.orders import OrderCopy
from netpacs.services.edge.status import Heartbeat
from netpacs.services.jobs.audit_forwarding import AuditForwarding
from netpacs.services.jobs.claim_expiry import ClaimExpiry
from netpacs.services.jobs.claiming import Claiming
from netpacs.services.jobs.rejection_purge import RejectionPurge
from netpacs.services.jobs.results import StrayResults, Timing, TrustResults
from netpacs.services.jobs.runner import Job, JobRunner
from netpacs.services.jobs.sr_sweep import SrSweep
from netpacs.services.jobs.store_audits import StaleStoreAudits
from netpacs.services.metrics import watch_engine
from netpacs.services.reporting import ClaimsService, ReportingScope, ReportsService

log = logging.getLogger(__name__)

AUDIT_SYSLOG = "NETPACS_AUDIT_SYSLOG"
NO_CLIENT_CERTIFICATE = "if it requires a client certificate, set NETPACS_RESULTS_TLS_CERT_FILE"


class JobSettingsError(ValueError):
    """A setting or file of a job cannot be used; the message names it and says why."""


# -- results ------------------------------------------------------------------------------


def results_timing(settings: Settings) -> Timing:
    return Timing(
        poll=settings.results_poll_seconds,
        retry_first=settings.results_retry_first_seconds,
        retry_max=settings.results_retry_max_seconds,
    )


def _results_tls(endpoint: Endpoint, settings: Settings) -> TlsClient:
    """TLS 1.2+ client for ``endpoint``: its certificate and name are verified."""
    cert_file, key_file = settings.results_tls_cert_file, settings.results_tls_key_file
    try:
        context = ssl.create_default_context(
            cafile=str(endpoint.ca_file) if endpoint.ca_file else None
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    except (ssl.SSLError, OSError) as exc:
        raise JobSettingsError(f"the CA file {endpoint.ca_file} cannot be used: {exc}") from exc
    if cert_file is None:
        return TlsClient(context, hint=NO_CLIENT_CERTIFICATE)
    try:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    except (ssl.SSLError, OSError) as exc:
        raise JobSettingsError(
            f"NETPACS_RESULTS_TLS_CERT_FILE / NETPACS_RESULTS_TLS_KEY_FILE cannot be used: {exc}"
        ) from exc
    return TlsClient(context)


def results_tls(region: Region, settings: Settings) -> dict[str, TlsClient]:
    """The TLS client of every trust whose results go over TLS, by ODS code."""
    if settings.results_tls_key_file is not None and settings.results_tls_cert_file is None:
        raise JobSettingsError(
            "NETPACS_RESULTS_TLS_KEY_FILE is set without NETPACS_RESULTS_TLS_CERT_FILE"
        )
    clients: dict[str, TlsClient] = {}
    for trust in region.trusts:
        endpoint = trust.results_endpoint
        if endpoint is not None and endpoint.tls:
            try:
                clients[trust.ods_code] = _results_tls(endpoint, settings)
            except JobSettingsError as exc:
                raise JobSettingsError(f"results to {trust.ods_code}: {exc}") from exc
    return clients


def results_jobs(
    region: Region,
    *,
    claiming: Claiming,
    writer: sa.Engine,
    timing: Timing,
    ack_timeout: float,
    tls: dict[str, TlsClient],
    region_file: str = "the region file",
) -> list[Job]:
    """A job per trust of the region, and one for results of trusts it does not name."""
    jobs: list[Job] = []
    for trust in region.trusts:
        endpoint = trust.results_endpoint
        transport = (
            OruSender(
                MllpClient(
                    endpoint.host,
                    endpoint.port,
                    timeout=ack_timeout,
                    tls=tls.get(trust.ods_code),
                )
            )
            if endpoint is not None
            else None
        )
        jobs.append(
            TrustResults(
                trust.ods_code,
                transport=transport,
                claiming=claiming,
                timing=timing,
                region_file=region_file,
            )
        )
    known = [t.ods_code for t in region.trusts]
    jobs.append(StrayResults(known, writer=writer, region_file=region_file))
    with_endpoint = [t.ods_code for t in region.trusts if t.results_endpoint is not None]
    log.info("sending results (HL7 ORU) to the listeners of %s", ", ".join(with_endpoint))
    return jobs


# -- audit forwarding ---------------------------------------------------------------------


def parse_collector(url: str) -> Collector:
    """The collector named by ``url``; :class:`JobSettingsError` naming the setting if bad."""
    example = "e.g. tls://audit.example.nhs.uk:6514"
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise JobSettingsError(f"{AUDIT_SYSLOG}={url!r} is not a URL ({exc}); {example}") from None
    if parts.scheme not in ("tls", "tcp"):
        raise JobSettingsError(
            f"{AUDIT_SYSLOG}={url!r}: the scheme must be tls:// (syslog over TLS, RFC 5425) "
            f"or tcp:// (plain TCP, for a collector on this host); {example}"
        )
    if not parts.hostname:
        raise JobSettingsError(f"{AUDIT_SYSLOG}={url!r} names no host; {example}")
    if port is None or port == 0:
        raise JobSettingsError(f"{AUDIT_SYSLOG}={url!r} names no port (1-65535); {example}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise JobSettingsError(
            f"{AUDIT_SYSLOG}={url!r}: give only scheme, host and port; {example}"
        )
    return Collector(parts.scheme, parts.hostname, port)


def audit_collector(settings: Settings) -> Collector | None:
    """The collector to forward to (None: audit records stay in the index only)."""
    if not settings.audit_syslog:
        return None
    collector = parse_collector(settings.audit_syslog)
    files = {
        "NETPACS_AUDIT_SYSLOG_CA_FILE": settings.audit_syslog_ca_file,
        "NETPACS_AUDIT_SYSLOG_CERT_FILE": settings.audit_syslog_cert_file,
        "NETPACS_AUDIT_SYSLOG_KEY_FILE": settings.audit_syslog_key_file,
    }
    for name, path in files.items():
        if path is not None and not path.is_file():
            raise JobSettingsError(f"{name}={str(path)!r} is not a file")
    if collector.scheme == "tcp" and any(path is not None for path in files.values()):
        raise JobSettingsError(
            f"{AUDIT_SYSLOG}={settings.audit_syslog!r} is plain TCP, but certificate files "
            "are set: use tls:// to send over TLS"
        )
    if settings.audit_syslog_key_file is not None and settings.audit_syslog_cert_file is None:
        raise JobSettingsError(
            "NETPACS_AUDIT_SYSLOG_KEY_FILE is set without NETPACS_AUDIT_SYSLOG_CERT_FILE"
        )
    if collector.scheme == "tls":
        audit_tls(settings)  # a CA or key file that does not load fails here, now
    return collector


def audit_tls(settings: Settings) -> ssl.SSLContext:
    """TLS 1.2+ client context: the collector's certificate and name are verified."""
    ca_file = settings.audit_syslog_ca_file
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if settings.audit_syslog_cert_file is not None:
            key_file = settings.audit_syslog_key_file
            context.load_cert_chain(
                str(settings.audit_syslog_cert_file), str(key_file) if key_file else None
            )
    except (ssl.SSLError, OSError) as exc:
        raise JobSettingsError(f"the audit syslog certificate files cannot be used: {exc}") from exc
    return context


def audit_forwarding(
    settings: Settings, collector: Collector, *, reader: sa.Engine, claiming: Claiming
) -> AuditForwarding:
    if collector.scheme == "tcp" and not collector.is_local:
        log.warning(
            "%s=%s sends audit records unencrypted over the network: use tls:// for a "
            "collector on another host",
            AUDIT_SYSLOG,
            collector.url,
        )
    context = audit_tls(settings) if collector.scheme == "tls" else None
    log.info("forwarding audit records to %s", collector.url)
    return AuditForwarding(
        reader=reader,
        claiming=claiming,
        transport=SyslogClient(collector, context=context, hostname=local_hostname()),
        repository=f"{collector.url} ({AUDIT_SYSLOG})",
    )


# -- the worker ---------------------------------------------------------------------------


def check_settings(settings: Settings, region: Region) -> None:
    """:class:`JobSettingsError` for a job setting or file that cannot work."""
    audit_collector(settings)
    results_tls(region, settings)


def archive_jobs(archive: Archive) -> list[Job]:
    """The SR sweep and claim expiry, run as netpacs itself by the reporting services,
    and the audit of store batches whose process died."""
    scope = ReportingScope(
        archive.read_engine,
        archive.write_engine,
        archive.region,
        archive.audit,
        archive.access,
        principal=SYSTEM,
    )
    claiming = Claiming(reader=archive.read_engine, writer=archive.write_engine)
    return [
        SrSweep(ReportsService(scope, outputs=archive.report_outputs), claiming=claiming),
        ClaimExpiry(ClaimsService(scope)),
        StaleStoreAudits(archive.writer.execute, archive.audit),
        RejectionPurge(archive.rejections),
    ]


def outbox_jobs(
    settings: Settings, region: Region, *, reader: sa.Engine, writer: sa.Engine
) -> list[Job]:
    """The jobs that send what waits in the outboxes: results, and audit records when a
    collector is set."""
    claiming = Claiming(reader=reader, writer=writer)
    jobs = results_jobs(
        region,
        claiming=claiming,
        writer=writer,
        timing=results_timing(settings),
        ack_timeout=settings.results_ack_timeout_seconds,
        tls=results_tls(region, settings),
        region_file=str(settings.effective_region_file),
    )
    collector = audit_collector(settings)
    if collector is not None:
        jobs.append(audit_forwarding(settings, collector, reader=reader, claiming=claiming))
    return jobs


def feed_trim(settings: Settings, region: Region, writer: sa.Engine) -> FeedTrim:
    """The trim of the change feed (issue 13): at the core, what every edge of the
    region has read, and what is older than NETPACS_CHANGE_FEED_DAYS; at an edge (whose
    feed holds the admissions it received itself, read within seconds), by age only."""
    edges = region.edges
    if settings.demo:
        edges += demo_edges(region, settings.demo_password)
    return FeedTrim(
        writer,
        [e.client_id for e in edges] if settings.role == "core" else [],
        retention_days=settings.change_feed_days,
        every=settings.change_feed_trim_seconds,
    )


def edge_jobs(settings: Settings, archive: Archive, edge: Edge) -> list[Job]:
    """The jobs of an edge node (NETPACS_ROLE=edge, issue 13): forwarding what the site
    stored to the core, and the heartbeat that reports the edge's figures there."""
    lanes = Lanes()
    forwarding: list[Job] = [
        Forwarding(
            reader=archive.read_engine,
            writer=archive.write_engine,
            blobs=archive.blobs,
            upstream=edge.upstream,
            batch=settings.forward_batch,
            timing=ForwardTiming(retry_max=settings.forward_retry_max_seconds),
            lanes=lanes,
            lane=k + 1,
        )
        for k in range(settings.forward_lanes)
    ]
    return [
        *forwarding,
        Heartbeat(edge.figures, edge.upstream, seconds=settings.heartbeat_seconds),
        OrderCopy(  # the site's open orders, for the edge's Modality Worklist
            archive.writer.execute,
            edge.upstream,
            trust=edge.trust,
            site=edge.site,
            every=settings.edge_orders_seconds,
        ),
        MppsSender(archive.writer.execute, archive.read_engine, edge.upstream),
        # -- edge: edge-read --
        edge_read.audit_sender(archive, edge),
        *cache_jobs(settings, archive, edge),
    ]


def run_worker(settings: Settings) -> None:
    """The job worker process: run every job until SIGTERM or SIGINT."""
    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    url = settings.effective_database_url
    archive = build_archive(settings)
    # Engines of their own: a trust's job holds a connection while its message is on
    # the wire, and must not wait for one behind ingest or behind the other trusts.
    pool = len(archive.region.trusts) + 4
    reader = make_engine(url, pool_size=pool)
    writer = make_engine(url, writer=True, pool_size=pool)
    watch_engine(reader)
    watch_engine(writer)
    edge = build_edge(settings, archive)
    try:
        jobs = outbox_jobs(settings, archive.region, reader=reader, writer=writer)
        if edge is not None:
            jobs += edge_jobs(settings, archive, edge)
        jobs.append(feed_trim(settings, archive.region, writer))
        JobRunner([*jobs, *archive_jobs(archive)]).run(
            stop, grace=worker_grace(settings.shutdown_timeout)
        )
    finally:
        if edge is not None:
            edge.close()
        archive.close()
        reader.dispose()
        writer.dispose()


def worker_groups(settings: Settings) -> list[WorkerGroup]:
    """One job worker per node: any node's jobs may take any work (services.jobs)."""
    return [WorkerGroup("jobs", 1, lambda: run_worker(settings))]
