"""The DIMSE server: one listening socket shared by several worker processes.

Each worker process runs an asyncio loop accepting associations on the inherited
socket, with its own index writer and thread pool; the kernel hands each new
connection to whichever worker accepts first, so a busy worker takes fewer. The
parent supervises: it restarts a worker that dies and stops them all on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from netpacs.adapters.dimse.association import Association
from netpacs.adapters.dimse.handlers import AssociationHandlers, DimseServices
from netpacs.adapters.dimse.negotiation import Negotiator
from netpacs.app import Archive, build_archive
from netpacs.config import Settings
from netpacs.services.query import QueryService
from netpacs.services.retrieve import RetrieveService

log = logging.getLogger(__name__)


def listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def dimse_services(archive: Archive, executor: ThreadPoolExecutor) -> DimseServices:
    query = QueryService(archive.read_engine)
    return DimseServices(
        ae_title=archive.settings.ae_title,
        region=archive.region,
        ingest=archive.ingest,
        query=query,
        retrieve=RetrieveService(query=query, blobs=archive.blobs),
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


def serve_forever(settings: Settings) -> None:
    """Run the DIMSE server until SIGINT or SIGTERM (call ``app.prepare`` first)."""
    sock = listen(settings.dimse_host, settings.dimse_port)
    if settings.dimse_processes == 1:
        _worker(settings, sock)
        return
    children: dict[int, int] = {}  # pid -> slot
    stopping = False

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 0
            try:
                _worker(settings, sock)
            except BaseException:
                log.exception("DIMSE worker %d failed", slot)
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = slot

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for slot in range(settings.dimse_processes):
        spawn(slot)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        slot = children.pop(pid, -1)
        if slot >= 0 and not stopping:
            log.error(
                "DIMSE worker %d (pid %d) exited with status %d; restarting", slot, pid, status
            )
            time.sleep(0.5)
            spawn(slot)
    sock.close()
    sys.stdout.flush()
