"""``GET /healthz`` and ``GET /readyz``: for load balancers and orchestrators, open to
anyone (no sign-in; they carry no patient data).

``/healthz``: the process answers (no index, no disk: a liveness probe that restarts a
node must not fire because the database is away). ``/readyz``: the node can take work
(services.health): 200, or 503 with a JSON reason naming what failed.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from netpacs.adapters.http.deps import HttpServices

router = APIRouter(tags=["health"])

#: Open to anyone (auth.is_open), whatever Host header names them (gate.py): a balancer
#: or an orchestrator asks a node by its address. They answer no URL and no patient data.
PATHS = frozenset({"/healthz", "/readyz"})

_NO_CACHE = {"cache-control": "no-store"}


@router.get("/healthz", summary="The process is alive", include_in_schema=False)
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "alive"}, headers=_NO_CACHE)


@router.get("/readyz", summary="The node can take work", include_in_schema=False)
async def readyz(request: Request) -> JSONResponse:
    services: HttpServices = request.app.state.services
    readiness = await run_in_threadpool(services.health.readiness)
    checks = {check.name: {"ok": check.ok, "detail": check.detail} for check in readiness.checks}
    if readiness.ready:
        return JSONResponse({"status": "ready", "checks": checks}, headers=_NO_CACHE)
    return JSONResponse(
        {"status": 503, "message": f"not ready: {readiness.reason}", "checks": checks},
        status_code=503,
        headers=_NO_CACHE,
    )
