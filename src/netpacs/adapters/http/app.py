"""The HTTP application: every route of netpacs on one origin.

``/dicomweb`` (STOW-RS, QIDO-RS, WADO-RS, WADO-URI), ``/fhir`` (ImagingStudy),
``/api`` (reconciliation), ``/viewer`` (OHIF) and the pages. Routes translate HTTP to
service calls and back; the rules live in the services (ARCHITECTURE.md layers).
"""

from __future__ import annotations

from fastapi import FastAPI

from netpacs import __version__
from netpacs.adapters.http import (
    errors,
    fhir,
    qido,
    reconciliation,
    rendered,
    stow,
    viewer,
    wado,
)
from netpacs.adapters.http.deps import HttpServices


def create_app(services: HttpServices) -> FastAPI:
    app = FastAPI(
        title="netpacs",
        version=__version__,
        description="Regional shared PACS: DICOMweb (PS3.18), FHIR ImagingStudy, viewer",
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.services = services
    errors.install(app)
    for module in (stow, qido, wado, rendered, fhir, reconciliation, viewer):
        app.include_router(module.router)
    return app
