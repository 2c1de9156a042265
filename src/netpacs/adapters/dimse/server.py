"""The DIMSE server worker: accepts associations on a listening socket it inherits.

Each worker process (see ``netpacs.supervisor``) runs an asyncio loop accepting
associations on the shared socket, with its own index writer and thread pool; the
kernel hands each new connection to whichever worker accepts first, so a busy
worker takes fewer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor

from netpacs.adapters.dimse.association import Association
from netpacs.adapters.dimse.handlers import AssociationHandlers, DimseServices
from netpacs.adapters.dimse.negotiation import Negotiator
from netpacs.app import Archive, build_archive
from netpacs.config import Settings
from netpacs.services.access import NOBODY
from netpacs.services.audit import AuditService
from netpacs.services.coercion import CoercionService
from netpacs.services.query import QueryService
from netpacs.services.retrieve import RetrieveService

log = logging.getLogger(__name__)


def dimse_services(archive: Archive, executor: ThreadPoolExecutor) -> DimseServices:
    # Each association answers for its calling AE (AssociationHandlers); this one sees
    # no patient.
    audit = AuditService(archive.writer.execute, source_id=archive.settings.ae_title)
    query = QueryService(archive.read_engine, principal=NOBODY, audit=audit)
    return DimseServices(
        ae_title=archive.settings.ae_title,
        region=archive.region,
        ingest=archive.ingest,
        query=query,
        retrieve=RetrieveService(query=query, blobs=archive.blobs),
        coercion=CoercionService(archive.read_engine),
        executor=executor,
    )


class DimseTlsError(ValueError):
    """The DICOM TLS settings cannot work; the message names the setting."""


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server TLS context of the DICOM TLS port (PS3.15 B.1, BCP 195: TLS 1.2+),
    or None when there is no TLS port. Client certificates are required when
    ``dimse_tls_ca_file`` is set (the Secure Transport Connection Profile's
    peer authentication)."""
    if settings.dimse_tls_port is None:
        return None
    cert, key = settings.dimse_tls_cert_file, settings.dimse_tls_key_file
    if cert is None or key is None:
        raise DimseTlsError(
            "NETPACS_DIMSE_TLS_PORT is set: NETPACS_DIMSE_TLS_CERT_FILE and "
            "NETPACS_DIMSE_TLS_KEY_FILE must name our certificate and its key"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise DimseTlsError(
            f"NETPACS_DIMSE_TLS_CERT_FILE/KEY_FILE ({cert}, {key}) do not load: {exc}"
        ) from None
    if settings.dimse_tls_ca_file is not None:
        try:
            context.load_verify_locations(cafile=settings.dimse_tls_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise DimseTlsError(
                f"NETPACS_DIMSE_TLS_CA_FILE={str(settings.dimse_tls_ca_file)!r} does not load: "
                f"{exc}"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def _serve(
    settings: Settings,
    sock: socket.socket,
    stop: asyncio.Event,
    tls_sock: socket.socket | None = None,
) -> None:
    archive = build_archive(settings)
    executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="dimse")
    services = dimse_services(archive, executor)
    negotiator = Negotiator(
        region=archive.region,
        ae_title=settings.ae_title,
        reject_unknown_calling_ae=settings.reject_unknown_calling_ae,
    )

    def factory() -> Association:
        return Association(
            negotiator=negotiator,
            handlers=lambda assoc: AssociationHandlers(services, assoc),
            idle_timeout=settings.dimse_timeout,
            max_pdu_length=settings.max_pdu_length,
        )

    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, sock=sock, backlog=128)
    servers = [server]
    context = tls_context(settings)
    if tls_sock is not None and context is not None:
        servers.append(
            await loop.create_server(
                factory, sock=tls_sock, backlog=128, ssl=context, ssl_handshake_timeout=30
            )
        )
        log.info("DICOM TLS on port %d (pid %d)", tls_sock.getsockname()[1], os.getpid())
    log.info(
        "DIMSE %s listening on port %d (pid %d)",
        settings.ae_title,
        sock.getsockname()[1],
        os.getpid(),
    )
    try:
        await stop.wait()
    finally:
        for one in servers:
            one.close()
        for one in servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(one.wait_closed(), timeout=5)
        executor.shutdown(wait=True, cancel_futures=False)
        archive.close()


def _worker(settings: Settings, sock: socket.socket, tls_sock: socket.socket | None) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await _serve(settings, sock, stop, tls_sock)

    asyncio.run(main())


def run_worker(
    settings: Settings, sock: socket.socket, tls_sock: socket.socket | None = None
) -> None:
    """One DIMSE worker process: accept associations on ``sock`` (and DICOM TLS ones on
    ``tls_sock``) until SIGTERM."""
    _worker(settings, sock, tls_sock)
