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


async def _serve(settings: Settings, sock: socket.socket, stop: asyncio.Event) -> None:
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
    log.info(
        "DIMSE %s listening on port %d (pid %d)",
        settings.ae_title,
        sock.getsockname()[1],
        os.getpid(),
    )
    try:
        await stop.wait()
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), timeout=5)
        executor.shutdown(wait=True, cancel_futures=False)
        archive.close()


def _worker(settings: Settings, sock: socket.socket) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await _serve(settings, sock, stop)

    asyncio.run(main())


def run_worker(settings: Settings, sock: socket.socket) -> None:
    """One DIMSE worker process: accept associations on ``sock`` until SIGTERM."""
    _worker(settings, sock)
