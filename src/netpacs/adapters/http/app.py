"""The HTTP application: every route of netpacs on one origin.

``/dicomweb`` (STOW-RS, QIDO-RS, WADO-RS, WADO-URI), ``/fhir`` (ImagingStudy),
``/api`` (reconciliation), ``/viewer`` (OHIF) and the pages. Routes translate HTTP to
service calls and back; the rules live in the services (ARCHITECTURE.md layers).
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from netpacs import __version__
from netpacs.adapters.http import (
    audit_pages,
    auth,
    edge_cache,
    edge_read,
    edges,
    errors,
    fhir,
    gate,
    health,
    manage,
    metrics,
    oidc,
    qido,
    reconciliation,
    rejections,
    remote,
    rendered,
    reporting,
    stow,
    viewer,
    wado,
    wado_frames,
    wado_uri,
)
from netpacs.adapters.http.deps import HttpServices
from netpacs.adapters.http.pages import reporting_pages
from netpacs.adapters.http.pages.render import wants_page


def create_app(services: HttpServices) -> FastAPI:
    app = FastAPI(
        title="netpacs",
        version=__version__,
        description="Regional shared PACS: DICOMweb (PS3.18), FHIR ImagingStudy, viewer",
        # The documents are routes of auth (signed-in users only); no docs UI: it
        # would load its scripts from a CDN (nothing is fetched from outside).
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(auth.authenticate)],
    )
    app.state.services = services
    errors.install(app)

    @app.exception_handler(auth.SignInRequired)
    async def _sign_in(request: Request, exc: auth.SignInRequired) -> Response:
        if wants_page(request):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return auth.sign_in_page(request, target, status=401)
        return JSONResponse(
            {"status": 401, "message": exc.message}, status_code=401, headers=exc.headers
        )

    for module in (
        health,
        auth,
        oidc,
        audit_pages,
        stow,
        remote,
        qido,
        wado,
        wado_frames,
        wado_uri,
        rendered,
        fhir,
        reconciliation,
        manage,
        rejections,
        reporting,
        reporting_pages,
        viewer,
        metrics,
        edge_read,
        edge_cache,
        edges,
    ):
        # An edge node fills its cache from the core before answering a retrieve.
        fills = services.edge_read is not None and module in (wado, wado_frames, wado_uri, rendered)
        app.include_router(
            module.router, dependencies=[Depends(edge_read.fill_cache)] if fills else None
        )
    # The gate sees every request before a route or a body read (gate.py); outside it,
    # X-Forwarded-For/-Proto are believed from the trusted proxies only (none: from
    # nobody; uvicorn's own default would believe anyone on 127.0.0.1).
    if services.remote is not None:  # inside the gate: the user is known (remote.py)
        app.add_middleware(remote.OpenRemote)
    app.add_middleware(gate.Gate, web=services.web)
    if services.web.trusted_proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(services.web.trusted_proxies))
    return app
