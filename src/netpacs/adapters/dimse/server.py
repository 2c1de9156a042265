"""The DIMSE server worker: accepts associations on a listening socket it inherits.

Each worker process (see ``netpacs.app.supervisor``) runs an asyncio loop accepting
associations on the shared socket, with its own index writer and thread pool; the
kernel hands each new connection to whichever worker accepts first, so a busy
worker takes fewer. The plain port may be closed (DICOM TLS only); on the TLS port
the caller's verified client certificate goes to the association's negotiation,
where the access policy checks it against the region file.
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
from typing import Any

from netpacs.adapters.dimse.association import Association
from netpacs.adapters.dimse.handlers import AssociationHandlers, DimseServices
from netpacs.adapters.dimse.negotiation import Negotiator
from netpacs.domain.peer import PeerCertificate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DimseConfig:
    """How the DIMSE listener behaves (from the composition root)."""

    idle_timeout: float  # seconds of silence before an association is aborted
    max_pdu_length: int
    tls: ssl.SSLContext | None = None  # for the DICOM TLS port


class _PeerAssociation(Association):
    """An association that tells its negotiation the caller's TLS client certificate."""

    def __init__(self, *, negotiator: Negotiator, **kwargs: Any) -> None:
        super().__init__(negotiator=negotiator, **kwargs)
        self._peer_negotiator = negotiator

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self._peer_negotiator.certificate = PeerCertificate.from_der(der) if der else None
        super().connection_made(transport)


async def _serve(
    services: DimseServices,
    config: DimseConfig,
    sock: socket.socket | None,
    stop: asyncio.Event,
    tls_sock: socket.socket | None = None,
) -> None:
    def factory() -> Association:
        return _PeerAssociation(
            negotiator=Negotiator(access=services.access, ae_title=services.ae_title),
            handlers=lambda assoc: AssociationHandlers(services, assoc),
            idle_timeout=config.idle_timeout,
            max_pdu_length=config.max_pdu_length,
        )

    loop = asyncio.get_running_loop()
    servers = []
    ports = []
    if sock is not None:
        servers.append(await loop.create_server(factory, sock=sock, backlog=128))
        ports.append(str(sock.getsockname()[1]))
    if tls_sock is not None and config.tls is not None:
        servers.append(
            await loop.create_server(
                factory, sock=tls_sock, backlog=128, ssl=config.tls, ssl_handshake_timeout=30
            )
        )
        ports.append(f"{tls_sock.getsockname()[1]} (TLS)")
        log.info("DICOM TLS on port %d (pid %d)", tls_sock.getsockname()[1], os.getpid())
    log.info(
        "DIMSE %s listening on port %s (pid %d)",
        services.ae_title,
        " and ".join(ports),
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
    sock: socket.socket | None,
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
