"""The HTTP server worker: uvicorn serving the netpacs app on an inherited socket."""

from __future__ import annotations

import logging
import os
import socket

import uvicorn

from netpacs.adapters.http.app import create_app
from netpacs.adapters.http.deps import HttpServices
from netpacs.app import build_archive
from netpacs.config import Settings

log = logging.getLogger(__name__)


def run_worker(settings: Settings, sock: socket.socket) -> None:
    """One HTTP worker process: serve requests on ``sock`` until SIGTERM."""
    archive = build_archive(settings)
    try:
        app = create_app(HttpServices.of(archive))
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            loop="uvloop",
            http="httptools",
            lifespan="off",
            timeout_keep_alive=30,
            timeout_graceful_shutdown=10,
            server_header=False,
        )
        server = uvicorn.Server(config)
        log.info("HTTP listening on port %d (pid %d)", sock.getsockname()[1], os.getpid())
        server.run(sockets=[sock])
    finally:
        archive.close()
