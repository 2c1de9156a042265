"""Reconciliation over HTTP: the REST API (``/api/reconciliation``, ``/api/merges``) and
the administrator's page (``/reconciliation``).

The page (templates/reconciliation.html) is server-rendered HTML with plain forms (no
scripts): each open item shows its detail and one button per allowed action; merges are
listed with an undo button.
The rules are in services.reconciliation; this module translates HTTP to them.

PACS administrators only; a decision is recorded with the signed-in user's name.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, Field

from netpacs.adapters.http.deps import services
from netpacs.adapters.http.errors import STATUS, HttpError
from netpacs.adapters.http.pages.render import render
from netpacs.domain.nhs_number import format_for_people
from netpacs.services.access import Capability
from netpacs.services.identity import OPEN
from netpacs.services.reconciliation import ReconciliationError, ReconciliationService

router = APIRouter()

_LABELS = {
    "link": "Link (same person)",
    "unlink": "Unlink (not this person)",
    "merge": "Merge into the other record",
    "reject": "Reject (leave as is)",
    "grant": "Grant care (the storing trust treats this patient)",
}
_KINDS = {
    "nhs-number-conflict": "NHS number with different demographics",
    "two-nhs-numbers": "Two NHS numbers for one hospital number",
    "duplicate-registration": "Two hospital numbers of one trust, one NHS number",
    "study-mismatch": "Study disagrees with the ADT record",
    "invalid-nhs-number": "Invalid NHS number",
    "foreign-identity": "Stored under another trust's identity",
    "patient-contradicts-study": "Object refused: its patient is not the study's",
}


def _service(request: Request) -> ReconciliationService:
    """The reconciliation service, for a principal who may reconcile (else 403, audited)."""
    svc = services(request)
    svc.access.require(svc.principal, Capability.RECONCILE)
    return svc.reconciliation


def _http(exc: ReconciliationError) -> HttpError:
    return HttpError(STATUS[exc.problem], exc.message)


class Decision(BaseModel):
    action: Literal["link", "unlink", "merge", "reject", "grant"] = Field(
        description="what to do: which actions an item takes is in its `actions`"
    )
    note: str = Field("", max_length=2000, description="why, for the record")


StatusParam = Annotated[
    Literal["open", "resolved", "all"], Query(description="which items (default open)")
]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=10**9)]
# A row id: beyond 64 bits the index cannot even look it up (an error, not "not found").
RowId = Annotated[int, Path(ge=-(2**63), le=2**63 - 1)]


@router.get("/api/reconciliation", summary="List reconciliation items, newest first")
def list_items(
    request: Request, status: StatusParam = "open", limit: Limit = 100, offset: Offset = 0
) -> JSONResponse:
    service = _service(request)
    items = service.items(status=None if status == "all" else status, limit=limit, offset=offset)
    return JSONResponse({"items": [asdict(i) for i in items], "counts": service.counts()})


@router.get("/api/reconciliation/{item_id}", summary="One reconciliation item")
def get_item(request: Request, item_id: RowId) -> JSONResponse:
    try:
        return JSONResponse(asdict(_service(request).item(item_id)))
    except ReconciliationError as exc:
        raise _http(exc) from None


@router.post("/api/reconciliation/{item_id}/resolve", summary="Resolve an item")
def resolve_item(request: Request, item_id: RowId, decision: Decision) -> JSONResponse:
    try:
        item = _service(request).resolve(
            item_id, decision.action, by=services(request).principal, note=decision.note
        )
    except ReconciliationError as exc:
        raise _http(exc) from None
    return JSONResponse(asdict(item))


@router.get("/api/merges", summary="Patient merges (ADT A40/A47 and reconciliation)")
def list_merges(request: Request, limit: Limit = 100, offset: Offset = 0) -> JSONResponse:
    merges = _service(request).merges(limit=limit, offset=offset)
    return JSONResponse({"merges": [asdict(m) for m in merges]})


@router.post("/api/merges/{merge_id}/undo", summary="Undo a merge, restoring the prior state")
def undo_merge(request: Request, merge_id: RowId) -> JSONResponse:
    try:
        detail = _service(request).undo_merge(merge_id, by=services(request).principal)
    except ReconciliationError as exc:
        raise _http(exc) from None
    return JSONResponse({"merge_id": merge_id, "detail": detail})


# -- the page ------------------------------------------------------------------------------


def _number(value: str | None) -> str:
    if not value:
        return ""
    return format_for_people(value) if value.isdigit() and len(value) == 10 else value


@router.get("/reconciliation", include_in_schema=False)
def page(
    request: Request,
    show: Annotated[Literal["open", "resolved"], Query()] = "open",
    ok: Annotated[str, Query(max_length=500)] = "",
    error: Annotated[str, Query(max_length=500)] = "",
) -> HTMLResponse:
    service = _service(request)
    return render(
        request,
        "reconciliation.html",
        show=show,
        ok=ok,
        error=error,
        counts=service.counts(),
        items=service.items(status=show, limit=500),
        merges=service.merges(limit=200),
        kinds=_KINDS,
        labels=_LABELS,
        open_status=OPEN,
        nhs_number=_number,
    )


def _back(**params: Any) -> RedirectResponse:
    return RedirectResponse(f"/reconciliation?{urlencode(params)}", status_code=303)


@router.post("/reconciliation/{item_id}", include_in_schema=False)
def page_resolve(
    request: Request,
    item_id: RowId,
    action: Annotated[str, Form(max_length=20)],
    note: Annotated[str, Form(max_length=2000)] = "",
) -> RedirectResponse:
    try:
        item = _service(request).resolve(item_id, action, by=services(request).principal, note=note)
    except ReconciliationError as exc:
        return _back(error=exc.message)
    done = f"Item {item.id}: {item.resolution}"
    if item.merge_id is not None:
        done += f" (merge {item.merge_id}, which can be undone below)"
    return _back(ok=done)


@router.post("/reconciliation/merges/{merge_id}/undo", include_in_schema=False)
def page_undo(request: Request, merge_id: RowId) -> RedirectResponse:
    try:
        detail = _service(request).undo_merge(merge_id, by=services(request).principal)
    except ReconciliationError as exc:
        return _back(error=exc.message)
    return _back(ok=detail[:1].upper() + detail[1:])
