"""Managing studies over HTTP: deleting one (``DELETE /api/studies/{uid}``) and its page.

The rules are in :mod:`netpacs.services.deletion`; this module translates HTTP to
them. The page (``/studies/{uid}/delete``, linked from the study list for PACS
administrators) shows what the study is, asks why, and posts a plain form (no
scripts); a post from another origin's page is refused by the gate (gate.py).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Body, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from netpacs.adapters.http.deps import HttpServices, check_url_uids, services
from netpacs.adapters.http.errors import STATUS
from netpacs.adapters.http.pages.render import render
from netpacs.domain.outcomes import Problem
from netpacs.domain.query import QueryLevel, QueryModel
from netpacs.services.deletion import MAX_REASON, MIN_REASON, DeletionError

router = APIRouter()


class DeleteBody(BaseModel):
    reason: str = Field(
        "",
        max_length=MAX_REASON,
        description=f"why the study is deleted (at least {MIN_REASON} characters; audited)",
    )


@router.delete(
    "/api/studies/{study}",
    tags=["management"],
    summary="Delete a study (PACS administrators; a reason is required and audited)",
)
def delete_study(
    request: Request, study: str, body: Annotated[DeleteBody | None, Body()] = None
) -> JSONResponse:
    check_url_uids(Study=study)
    done = services(request).deletion.delete_study(study, reason=body.reason if body else "")
    return JSONResponse(asdict(done))


# -- the page ------------------------------------------------------------------------------

_KEYS: dict[str, dict[str, Any]] = {
    "00100010": {"vr": "PN"},
    "00100020": {"vr": "LO"},
    "00100021": {"vr": "LO"},
    "00080020": {"vr": "DA"},
    "00081030": {"vr": "LO"},
    "00080061": {"vr": "CS"},
    "00201206": {"vr": "IS"},
    "00201208": {"vr": "IS"},
}
_SHOWN = (
    ("Patient name", "00100010"),
    ("Patient ID", "00100020"),
    ("Issuer", "00100021"),
    ("Study date", "00080020"),
    ("Description", "00081030"),
    ("Modalities", "00080061"),
    ("Series", "00201206"),
    ("Instances", "00201208"),
)


def _text(dataset: dict[str, Any], tag: str) -> str:
    values = dataset.get(tag, {}).get("Value") or []
    if not values:
        return ""
    first = values[0]
    if isinstance(first, dict):
        return str(first.get("Alphabetic", ""))
    return ", ".join(str(v) for v in values) if tag == "00080061" else str(first)


def _summary(svc: HttpServices, study: str) -> list[tuple[str, str]]:
    """What the study is, as label and value rows."""
    found = next(
        iter(
            svc.query.find(
                {"0020000D": {"vr": "UI", "Value": [study]}, **_KEYS},
                level=QueryLevel.STUDY,
                model=QueryModel.STUDY_ROOT,
                limit=1,
            )
        ),
        None,
    )
    rows = [("Study Instance UID", study)]
    if found is not None:
        rows += [(label, _text(found, tag)) for label, tag in _SHOWN]
    return rows


def _form(svc: HttpServices, study: str, reason: str) -> dict[str, Any]:
    return {
        "action": f"/studies/{quote(study, safe='')}/delete",
        "reason": reason,
        "report_status": svc.worklist.statuses([study]).get(study),
        "min_reason": MIN_REASON,
        "max_reason": MAX_REASON,
    }


def _page(
    request: Request,
    title: str,
    *,
    status: int = 200,
    study: list[tuple[str, str]] | None = None,
    form: dict[str, Any] | None = None,
    error: str = "",
    done: str = "",
) -> HTMLResponse:
    return render(
        request,
        "delete.html",
        status=status,
        title=title,
        study=study,
        form=form,
        error=error,
        done=done,
    )


def _refused(request: Request, exc: DeletionError) -> HTMLResponse:
    return _page(request, "Study not deleted", status=STATUS[exc.problem], error=exc.message)


def _gate(svc: HttpServices, study: str) -> None:
    """404 for a study the user cannot see, 403 for one they see but may not delete."""
    check_url_uids(Study=study)
    svc.deletion.check(study)


@router.get("/studies/{study}/delete", include_in_schema=False)
def delete_page(request: Request, study: str) -> HTMLResponse:
    svc = services(request)
    try:
        _gate(svc, study)
    except DeletionError as exc:
        return _refused(request, exc)
    return _page(request, "Delete a study", study=_summary(svc, study), form=_form(svc, study, ""))


@router.post("/studies/{study}/delete", include_in_schema=False)
def delete_from_page(
    request: Request, study: str, reason: Annotated[str, Form(max_length=MAX_REASON)] = ""
) -> HTMLResponse:
    svc = services(request)
    try:
        _gate(svc, study)
        summary = _summary(svc, study)
        done = svc.deletion.delete_study(study, reason=reason)
    except DeletionError as exc:
        if exc.problem is not Problem.MALFORMED:  # a reason too short: kept for correcting
            return _refused(request, exc)
        return _page(
            request,
            "Delete a study",
            status=STATUS[exc.problem],
            study=summary,
            form=_form(svc, study, reason),
            error=exc.message,
        )
    left = (
        f" {done.blobs_left} files could not be removed now; the orphan sweep removes them."
        if done.blobs_left
        else ""
    )
    return _page(
        request,
        "Study deleted",
        study=summary,
        done=f"Study {study} deleted: {done.instances} instances in {done.series} series. "
        f"The deletion and your reason are in the audit trail.{left}",
    )
