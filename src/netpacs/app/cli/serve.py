"""``netpacs serve``: checks the settings, prepares the archive, opens the listening sockets
and supervises the DIMSE, HTTP, MLLP and job worker processes."""

from __future__ import annotations

import argparse
import socket
import sys
from typing import TYPE_CHECKING

from netpacs.app.cli.common import EXIT_OK, EXIT_USAGE, METRICS_DIR, log

if TYPE_CHECKING:
    from netpacs.app.settings import Settings


def _cmd_serve(_args: argparse.Namespace, settings: Settings, _p: argparse.ArgumentParser) -> int:
    from netpacs.app import jobs, roles
    from netpacs.app.container import check_edge
    from netpacs.app.region_file import load_region
    from netpacs.app.roles import oidc_config
    from netpacs.app.startup import (
        StartupError,
        UnsafeConfiguration,
        check_blob_store,
        check_caller_identity,
        check_move_destinations,
        prepare,
    )
    from netpacs.app.supervisor import WorkerGroup, listen, supervise
    from netpacs.app.tls import TlsSettingsError, dimse_tls_context, mllp_tls_context
    from netpacs.domain.region import RegionError
    from netpacs.services import metrics

    try:
        dimse_tls_context(settings)  # certificates that do not load stop us now
        mllp_tls_context(settings)
        region = load_region(settings.effective_region_file)
        jobs.check_settings(settings, region)
        check_caller_identity(settings, region)
        oidc_config(settings)
        check_blob_store(settings)
        check_edge(settings, region)
    except (TlsSettingsError, jobs.JobSettingsError, RegionError, StartupError) as exc:
        print(f"netpacs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        check_move_destinations(settings)
        prepare(settings)
    except UnsafeConfiguration as exc:
        print(f"netpacs: will not start: {exc}", file=sys.stderr)
        return EXIT_USAGE
    listening: list[str] = []

    def open_port(
        what: str, host: str, port: int | None, wanted: bool = True
    ) -> socket.socket | None:
        if port is None or not wanted:
            return None
        sock = listen(host, port)
        listening.append(f"{what} {host}:{sock.getsockname()[1]}")
        return sock

    dimse_host, mllp_host = settings.effective_dimse_host, settings.effective_mllp_host
    dimse_sock = open_port("DIMSE", dimse_host, settings.dimse_port, settings.dimse_plain_port)
    tls_sock = open_port("DICOM TLS", dimse_host, settings.dimse_tls_port)
    http_sock = open_port("HTTP", settings.effective_http_host, settings.http_port)
    mllp_sock = open_port("MLLP", mllp_host, settings.mllp_port, settings.mllp_plain_port)
    mllp_tls_sock = open_port("MLLP over TLS", mllp_host, settings.mllp_tls_port)
    assert http_sock is not None
    log.info(
        "netpacs serve%s listening on %s",
        " (demo mode)" if settings.demo else "",
        ", ".join(listening),
    )
    if settings.role == "edge":
        log.info(
            "edge node of %s (site %s): the regional core is %s",
            settings.edge_trust,
            settings.edge_site,
            settings.upstream_url,
        )
    groups = [
        WorkerGroup(
            "DIMSE",
            settings.dimse_processes,
            lambda: roles.run_dimse(settings, dimse_sock, tls_sock),
        ),
        WorkerGroup("HTTP", settings.http_processes, lambda: roles.run_http(settings, http_sock)),
        # One MLLP process: HL7 messages of one sender must be applied in order.
        WorkerGroup("MLLP", 1, lambda: roles.run_mllp(settings, mllp_sock, mllp_tls_sock)),
        *jobs.worker_groups(settings),
    ]
    # Every worker records its metrics in files of this folder; any HTTP worker's
    # GET /metrics sums them (services.metrics).
    metrics.use_directory(settings.data_dir / METRICS_DIR)
    supervise(
        groups,
        shutdown_timeout=settings.shutdown_timeout,
        on_start=metrics.process_started,
        on_exit=metrics.process_ended,
    )
    return EXIT_OK
