"""The process roles of ``netpacs serve``: each builds its services once and runs its adapter.

One function per role, run in a worker process the supervisor forks: DIMSE, HTTP and
MLLP listeners on inherited sockets, and the job workers.
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

from netpacs.adapters.dimse import scu
from netpacs.adapters.dimse import server as dimse_server
from netpacs.adapters.hl7 import server as hl7_server
from netpacs.adapters.http import server as http_server
from netpacs.app.container import adt_service, build_archive, dimse_services, http_services
from netpacs.app.settings import Settings
from netpacs.app.tls import dimse_tls_context


def dimse_config(settings: Settings) -> dimse_server.DimseConfig:
    return dimse_server.DimseConfig(
        idle_timeout=settings.dimse_timeout,
        max_pdu_length=settings.max_pdu_length,
        tls=dimse_tls_context(settings),
    )


def run_dimse(settings: Settings, sock: socket.socket, tls_sock: socket.socket | None) -> None:
    """A DIMSE worker: associations on ``sock`` (and DICOM TLS ones on ``tls_sock``)."""
    scu.send_files_as_stored()
    archive = build_archive(settings)
    executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="dimse")
    try:
        dimse_server.serve(
            dimse_services(archive, executor), dimse_config(settings), sock, tls_sock
        )
    finally:
        executor.shutdown(wait=True, cancel_futures=False)
        archive.close()


def run_http(settings: Settings, sock: socket.socket) -> None:
    """An HTTP worker: DICOMweb, FHIR, the API, the pages and the viewer on ``sock``."""
    archive = build_archive(settings)
    try:
        http_server.serve(http_services(archive, settings), sock)
    finally:
        archive.close()


def run_mllp(settings: Settings, sock: socket.socket) -> None:
    """The MLLP worker: HL7 v2 ADT on ``sock``."""
    adt, engine = adt_service(settings)
    try:
        hl7_server.serve(adt, sock)
    finally:
        engine.dispose()
