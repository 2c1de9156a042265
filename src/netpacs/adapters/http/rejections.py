"""IHE IOCM rejections over HTTP: the list and the undo, for PACS administrators.

``GET /api/rejections`` lists the rejection notes received (newest first) and what
each hid; ``POST /api/rejections/{id}/undo`` with ``{"reason": ...}`` puts the
instances back. The rules are in :mod:`netpacs.services.rejection`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from netpacs.adapters.http.deps import services

router = APIRouter()


class UndoBody(BaseModel):
    reason: str = Field("", max_length=2000, description="why (at least 10 characters; audited)")


@router.get(
    "/api/rejections",
    tags=["management"],
    summary="The IOCM rejection notes received (PACS administrators)",
)
def list_rejections(request: Request, limit: int = 200) -> JSONResponse:
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
