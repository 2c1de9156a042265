"""Reconciliation over HTTP: the REST API (``/api/reconciliation``, ``/api/merges``) and
the administrator's page (``/reconciliation``).

The page is server-rendered HTML with plain forms (no scripts): each open item shows
its detail and one button per allowed action; merges are listed with an undo button.
The rules are in services.reconciliation; this module translates HTTP to them.

PACS administrators only; a decision is recorded with the signed-in user's name.
"""

from __future__ import annotations

from dataclasses import asdict
from html import escape
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, Field

from netpacs.adapters.http.deps import services
from netpacs.adapters.http.errors import HttpError
from netpacs.domain.nhs_number import format_for_people
from netpacs.services.access import Capability
from netpacs.services.identity import OPEN
from netpacs.services.reconciliation import (
    Item,
    Merge,
    Problem,
    ReconciliationError,
    ReconciliationService,
)

router = APIRouter()

_STATUS = {Problem.NOT_FOUND: 404, Problem.CONFLICT: 409, Problem.INVALID: 400}
_LABELS = {
    "link": "Link (same person)",
    "unlink": "Unlink (not this person)",
    "merge": "Merge into the other record",
    "reject": "Reject (leave as is)",
}
_KINDS = {
    "nhs-number-conflict": "NHS number with different demographics",
    "two-nhs-numbers": "Two NHS numbers for one hospital number",
    "duplicate-registration": "Two hospital numbers of one trust, one NHS number",
    "study-mismatch": "Study disagrees with the ADT record",
    "invalid-nhs-number": "Invalid NHS number",
}


def _service(request: Request) -> ReconciliationService:
    svc = services(request)
    if not svc.principal.may(Capability.RECONCILE):
        raise HttpError(403, "reconciling patient identities is for PACS administrators")
    return svc.reconciliation


def _http(exc: ReconciliationError) -> HttpError:
    return HttpError(_STATUS[exc.problem], exc.message)


class Decision(BaseModel):
    action: Literal["link", "unlink", "merge", "reject"] = Field(
        description="what to do: which actions an item takes is in its `actions`"
    )
    note: str = Field("", max_length=2000, description="why, for the record")


StatusParam = Annotated[
    Literal["open", "resolved", "all"], Query(description="which items (default open)")
]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=10**9)]


@router.get("/api/reconciliation", summary="List reconciliation items, newest first")
def list_items(
    request: Request, status: StatusParam = "open", limit: Limit = 100, offset: Offset = 0
) -> JSONResponse:
    service = _service(request)
    items = service.items(status=None if status == "all" else status, limit=limit, offset=offset)
    return JSONResponse({"items": [asdict(i) for i in items], "counts": service.counts()})


@router.get("/api/reconciliation/{item_id}", summary="One reconciliation item")
def get_item(request: Request, item_id: int) -> JSONResponse:
    try:
        return JSONResponse(asdict(_service(request).item(item_id)))
    except ReconciliationError as exc:
        raise _http(exc) from None


@router.post("/api/reconciliation/{item_id}/resolve", summary="Resolve an item")
def resolve_item(request: Request, item_id: int, decision: Decision) -> JSONResponse:
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
def undo_merge(request: Request, merge_id: int) -> JSONResponse:
    try:
        detail = _service(request).undo_merge(merge_id, by=services(request).principal)
    except ReconciliationError as exc:
        raise _http(exc) from None
    return JSONResponse({"merge_id": merge_id, "detail": detail})


# -- the page ------------------------------------------------------------------------------


def _e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def _identity(patient_id: str | None, issuer: str | None) -> str:
    if not patient_id:
        return ""
    return f"{_e(patient_id)} <span class=issuer>{_e(issuer or 'no issuer')}</span>"


def _number(value: str | None) -> str:
    if not value:
        return ""
    return _e(format_for_people(value) if value.isdigit() and len(value) == 10 else value)


def _item_row(item: Item) -> str:
    buttons = "".join(
        f'<button name=action value="{_e(a)}">{_e(_LABELS[a])}</button>' for a in item.actions
    )
    if item.status == OPEN:
        decide = (
            f'<form method=post action="/reconciliation/{item.id}">'
            f'<input name=note placeholder="Note (why)" aria-label="Note for item {item.id}">'
            f"{buttons}</form>"
        )
    else:
        decide = f"{_e(item.resolution)} by {_e(item.resolved_by)}" + (
            f" <q>{_e(item.resolution_note)}</q>" if item.resolution_note else ""
        )
    return (
        f'<tr id="item-{item.id}" data-kind="{_e(item.kind)}">'
        f"<td>{item.id}</td><td>{_e(_KINDS.get(item.kind, item.kind))}</td>"
        f"<td>{_identity(item.patient_id, item.issuer)}</td>"
        f"<td>{_number(item.nhs_number)}</td>"
        f"<td>{_identity(item.other_patient_id, item.other_issuer)}</td>"
        f"<td class=detail>{_e(item.detail)}<br><small>{_e(item.source)}, "
        f"{_e(item.created_at[:16].replace('T', ' '))}</small></td>"
        f"<td>{decide}</td></tr>"
    )


def _merge_row(merge: Merge) -> str:
    if merge.undone_at is None:
        action = (
            f'<form method=post action="/reconciliation/merges/{merge.id}/undo">'
            f"<button>Undo merge {merge.id}</button></form>"
        )
    else:
        action = f"undone {_e(merge.undone_at[:16].replace('T', ' '))}"
    return (
        f'<tr id="merge-{merge.id}"><td>{merge.id}</td><td>{_e(merge.trigger)}</td>'
        f"<td>{_identity(merge.prior_patient_id, merge.issuer)}</td>"
        f"<td>{_identity(merge.patient_id, merge.issuer)}</td>"
        f"<td>{_e(merge.reference)}</td><td>{_e(merge.created_at[:16].replace('T', ' '))}</td>"
        f"<td>{action}</td></tr>"
    )


_PAGE = """<!doctype html>
<html lang=en><head><meta charset=utf-8><title>Reconciliation · netpacs</title>
<meta name=viewport content="width=device-width, initial-scale=1">
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d2a36}}
table{{border-collapse:collapse;width:100%;margin-bottom:2em}}
th,td{{border-bottom:1px solid #d4dbe2;padding:.4em;text-align:left;vertical-align:top}}
th{{background:#eef2f5}} .issuer{{color:#5a6b7b;font-size:.85em}}
.detail{{max-width:32em}} .message{{padding:.6em;border-radius:4px;margin-bottom:1em}}
.ok{{background:#e3f4e8}} .error{{background:#fbe4e4}}
button{{margin:.15em}} nav a{{margin-right:1em}}
</style></head><body>
<nav><a href="/studies">Studies</a><a href="/reconciliation">Reconciliation</a>
<a href="/reconciliation?show=resolved">Resolved items</a>
<form method=post action="/signout" class=signout style="display:inline;margin-left:1em">
<button>Sign out</button></form></nav>
<h1>Patient identity reconciliation</h1>
{message}
<p>{open_count} open, {resolved_count} resolved. Nothing here changes by itself: two
records are linked or merged only when you say so, and every merge can be undone.</p>
<h2>{heading}</h2>
<table id=items><thead><tr><th>#</th><th>What</th><th>Hospital number</th>
<th>NHS number</th><th>Other record</th><th>Detail</th><th>Decision</th></tr></thead>
<tbody>{items}</tbody></table>
<h2>Merges</h2>
<table id=merges><thead><tr><th>#</th><th>How</th><th>Merged record</th><th>Into</th>
<th>Reference</th><th>When</th><th></th></tr></thead><tbody>{merges}</tbody></table>
</body></html>
"""


@router.get("/reconciliation", include_in_schema=False)
def page(
    request: Request,
    show: Annotated[Literal["open", "resolved"], Query()] = "open",
    ok: Annotated[str, Query(max_length=500)] = "",
    error: Annotated[str, Query(max_length=500)] = "",
) -> HTMLResponse:
    service = _service(request)
    items = service.items(status=show, limit=500)
    counts = service.counts()
    message = ""
    if ok:
        message = f'<p class="message ok" role=status>{_e(ok)}</p>'
    elif error:
        message = f'<p class="message error" role=alert>{_e(error)}</p>'
    empty = "<tr><td colspan=7>Nothing to reconcile.</td></tr>"
    html = _PAGE.format(
        message=message,
        open_count=counts["open"],
        resolved_count=counts["resolved"],
        heading="Open items" if show == "open" else "Resolved items",
        items="".join(_item_row(i) for i in items) or empty,
        merges="".join(_merge_row(m) for m in service.merges(limit=200))
        or "<tr><td colspan=7>No merges.</td></tr>",
    )
    return HTMLResponse(html)


def _back(**params: Any) -> RedirectResponse:
    return RedirectResponse(f"/reconciliation?{urlencode(params)}", status_code=303)


@router.post("/reconciliation/{item_id}", include_in_schema=False)
def page_resolve(
    request: Request,
    item_id: int,
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
def page_undo(request: Request, merge_id: int) -> RedirectResponse:
    try:
        detail = _service(request).undo_merge(merge_id, by=services(request).principal)
    except ReconciliationError as exc:
        return _back(error=exc.message)
    return _back(ok=detail[:1].upper() + detail[1:])
