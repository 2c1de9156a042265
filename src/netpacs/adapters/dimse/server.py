"""The DIMSE server worker: accepts associations on a listening socket it inherits.

Each worker process (see ``netpacs.app.supervisor``) runs an asyncio loop accepting
associations on the shared socket, with its own index writer and thread pool; the
kernel hands each new connection to whichever worker accepts first, so a busy
worker takes fewer. The plain port may be closed (DICOM TLS only); on the TLS port
the caller's verified client certificate goes to the association's negotiation,
where the access policy checks it against the region file.

On SIGTERM a worker stops accepting, lets each association finish the message in
progress (a C-STORE being received or handled is stored and answered), aborts it,
and aborts what is left after ``drain_timeout`` seconds; the supervisor kills a
worker that overstays its own bound.
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

from netpacs.adapters.dimse.association import SHUTTING_DOWN, Association
from netpacs.adapters.dimse.handlers import AssociationHandlers, DimseServices
from netpacs.adapters.dimse.negotiation import Negotiator
from netpacs.domain.peer import PeerCertificate

log = logging.getLogger(__name__)


class Connections:
    """The connections of one worker process: a cap, and the list to drain at shutdown.

    At most ``max_associations`` established associations (one more is rejected,
    transient, local limit exceeded) and as many connections still negotiating (one
    more is closed at once), so that stalled or flooding peers hold a bounded share
    of the worker and time out (ARTIM, idle) to make room.
    """

    def __init__(self, max_associations: int) -> None:
        self.max_associations = max_associations
        self.negotiating: set[Association] = set()
        self.established: set[Association] = set()
        self.draining = False

    def __len__(self) -> int:
        return len(self.negotiating) + len(self.established)

    def all(self) -> list[Association]:
        return [*self.negotiating, *self.established]


@dataclass(frozen=True)
class DimseConfig:
    """How the DIMSE listener behaves (from the composition root)."""

    idle_timeout: float  # seconds of silence before an association is aborted
    max_pdu_length: int
    tls: ssl.SSLContext | None = None  # for the DICOM TLS port
    associate_timeout: float = 30.0  # seconds to send a whole A-ASSOCIATE-RQ (ARTIM)
    max_associations: int = 100  # per worker; as many more may be negotiating
    drain_timeout: float = 20.0  # seconds in-flight messages get at shutdown


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
    connections = Connections(config.max_associations)

    def factory() -> Association:
        return _PeerAssociation(
            negotiator=Negotiator(access=services.access, ae_title=services.ae_title),
            handlers=lambda assoc: AssociationHandlers(services, assoc),
            idle_timeout=config.idle_timeout,
            max_pdu_length=config.max_pdu_length,
            associate_timeout=config.associate_timeout,
            connections=connections,
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
        await _drain(connections, config.drain_timeout)
        for one in servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(one.wait_closed(), timeout=5)


async def _drain(connections: Connections, timeout: float) -> None:
    """Let in-flight messages finish, then abort every association (module docstring)."""
    connections.draining = True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen = connections.all()
    if seen:
        log.info("stopping: %d connections to finish (pid %d)", len(seen), os.getpid())
    while connections and loop.time() < deadline:
        for assoc in connections.all():
            assoc.drain()  # aborts it once its message in progress is answered
        await asyncio.sleep(0.05)
    for assoc in connections.all():
        assoc.abort(f"{SHUTTING_DOWN}; its message did not finish within {timeout:g} s")
    closing = loop.time() + 2  # for the A-ABORTs to go out and the transports to close
    while connections and loop.time() < closing:
        await asyncio.sleep(0.05)
    # The audit of each association's stores, started as it closed.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(*(assoc.finished() for assoc in seen), return_exceptions=True), 5
        )


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
