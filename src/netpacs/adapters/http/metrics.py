"""``GET /metrics``: the node's metrics in the Prometheus text format, without sign-in.

Only clients at the addresses ``NETPACS_METRICS_ALLOW`` names may read them (403 for
the others): the counts per trust say how much each trust stores and asks. What is
counted, and how the worker processes' values are summed, is services.metrics.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from netpacs.adapters.http.auth import client_address
from netpacs.adapters.http.deps import HttpServices, services
from netpacs.adapters.http.errors import HttpError

router = APIRouter()
PATH = "/metrics"


@router.get(PATH, summary="Metrics in the Prometheus text format", include_in_schema=False)
async def metrics(request: Request, svc: Annotated[HttpServices, Depends(services)]) -> Response:
    scrape = svc.metrics
    if scrape is None:
        raise HttpError(404, "metrics are not served by this application")
    address = client_address(request)
    if not scrape.allows(address):
        raise HttpError(
            403,
            f"metrics are not served to {address or 'an unknown address'} "
            "(NETPACS_METRICS_ALLOW names the addresses that may read them)",
        )
    # The backlogs are read from the index (a few queries, cached): off the event loop.
    body, media_type = await run_in_threadpool(scrape.text)
    return Response(body, media_type=media_type, headers={"cache-control": "no-store"})
