"""The HTTP server worker: uvicorn serving the netpacs app on an inherited socket."""

from __future__ import annotations

import logging
import os
import socket

import uvicorn

from netpacs.adapters.http.app import create_app
from netpacs.adapters.http.deps import HttpServices

log = logging.getLogger(__name__)


def serve(services: HttpServices, sock: socket.socket) -> None:
    """Serve requests on ``sock`` until SIGTERM."""
    config = uvicorn.Config(
        create_app(services),
        log_config=None,
        access_log=False,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        timeout_keep_alive=30,
        timeout_graceful_shutdown=10,
        server_header=False,
        # Forwarded headers are handled in the app, from NETPACS_TRUSTED_PROXIES only.
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    log.info("HTTP listening on port %d (pid %d)", sock.getsockname()[1], os.getpid())
    server.run(sockets=[sock])
