"""The DIMSE server worker: accepts associations on a listening socket it inherits.

Each worker process (see ``netpacs.app.supervisor``) runs an asyncio loop accepting
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
from dataclasses import dataclass

from netpacs.adapters.dimse.association import Association
from netpacs.adapters.dimse.handlers import AssociationHandlers, DimseServices
from netpacs.adapters.dimse.negotiation import Negotiator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DimseConfig:
    """How the DIMSE listener behaves (from the composition root)."""

    idle_timeout: float  # seconds of silence before an association is aborted
    max_pdu_length: int
    tls: ssl.SSLContext | None = None  # for the DICOM TLS port


async def _serve(
    services: DimseServices,
    config: DimseConfig,
    sock: socket.socket,
    stop: asyncio.Event,
    tls_sock: socket.socket | None = None,
) -> None:
    negotiator = Negotiator(access=services.access, ae_title=services.ae_title)

    def factory() -> Association:
        return Association(
            negotiator=negotiator,
            handlers=lambda assoc: AssociationHandlers(services, assoc),
            idle_timeout=config.idle_timeout,
            max_pdu_length=config.max_pdu_length,
            new_spool=services.stores.spool,
        )

    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, sock=sock, backlog=128)
    servers = [server]
    if tls_sock is not None and config.tls is not None:
        servers.append(
            await loop.create_server(
                factory, sock=tls_sock, backlog=128, ssl=config.tls, ssl_handshake_timeout=30
            )
        )
        log.info("DICOM TLS on port %d (pid %d)", tls_sock.getsockname()[1], os.getpid())
    log.info(
        "DIMSE %s listening on port %d (pid %d)",
        services.ae_title,
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


def serve(
    services: DimseServices,
    config: DimseConfig,
    sock: socket.socket,
    tls_sock: socket.socket | None = None,
) -> None:
    """Accept associations on ``sock`` (and DICOM TLS ones on ``tls_sock``) until SIGTERM."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await _serve(services, config, sock, stop, tls_sock)

    asyncio.run(main())
