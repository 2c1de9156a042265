"""IHE IOCM rejections over HTTP: the list and the undo, for PACS administrators.

``GET /api/rejections`` lists the rejection notes received (newest first) and what
each hid; ``POST /api/rejections/{id}/undo`` with ``{"reason": ...}`` puts the
instances back. The page ``/rejections`` (templates/rejections.html, plain forms, no
scripts) shows the same list with an undo form per rejection. The rules are in
:mod:`netpacs.services.rejection`.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Body, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, Field

from netpacs.adapters.http.deps import services
from netpacs.adapters.http.pages.render import render
from netpacs.services.access import Capability
from netpacs.services.rejection import RejectionError

router = APIRouter()


class UndoBody(BaseModel):
    reason: str = Field("", max_length=2000, description="why (at least 10 characters; audited)")


@router.get(
    "/api/rejections",
    tags=["management"],
    summary="The IOCM rejection notes received (PACS administrators)",
)
def list_rejections(
    request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 200
) -> JSONResponse:
    svc = services(request)
    return JSONResponse({"rejections": svc.rejections.listing(svc.principal, limit=limit)})


@router.post(
    "/api/rejections/{rejection_id}/undo",
    tags=["management"],
    summary="Undo a rejection: its instances come back (PACS administrators; audited)",
)
def undo_rejection(
    request: Request, rejection_id: int, body: Annotated[UndoBody | None, Body()] = None
) -> JSONResponse:
    svc = services(request)
    done = svc.rejections.undo(svc.principal, rejection_id, reason=body.reason if body else "")
    return JSONResponse(done)


# -- the page --------------------------------------------------------------------------


def _back(**params: str) -> RedirectResponse:
    return RedirectResponse(f"/rejections?{urlencode(params)}", status_code=303)


@router.get("/rejections", include_in_schema=False)
def page(
    request: Request,
    ok: Annotated[str, Query(max_length=500)] = "",
    error: Annotated[str, Query(max_length=500)] = "",
) -> HTMLResponse:
    svc = services(request)
    svc.access.require(svc.principal, Capability.DELETE)  # else 403 on the layout, audited
    return render(
        request,
        "rejections.html",
        ok=ok,
        error=error,
        rejections=svc.rejections.listing(svc.principal, limit=500),
    )


@router.post("/rejections/{rejection_id}/undo", include_in_schema=False)
def page_undo(
    request: Request,
    rejection_id: int,
    reason: Annotated[str, Form(max_length=2000)] = "",
) -> RedirectResponse:
    svc = services(request)
    svc.access.require(svc.principal, Capability.DELETE)
    try:
        done = svc.rejections.undo(svc.principal, rejection_id, reason=reason)
    except RejectionError as exc:
        return _back(error=exc.message)
    return _back(ok=f"Rejection {rejection_id} undone: {done['restored']} instances restored")
