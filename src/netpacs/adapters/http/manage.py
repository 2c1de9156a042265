"""Managing studies over HTTP: deleting one (``DELETE /api/studies/{uid}``) and its page.

The rules are in :mod:`netpacs.services.deletion`; this module translates HTTP to
them. The page (``/studies/{uid}/delete``, linked from the study list for PACS
administrators) shows what the study is, asks why, and posts a plain form (no
scripts); the session cookie is SameSite=Strict, so another site cannot post it.
"""

from __future__ import annotations

from dataclasses import asdict
from html import escape
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Body, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from netpacs.adapters.http.deps import HttpServices, check_url_uids, services
from netpacs.adapters.http.errors import HttpError
from netpacs.services.deletion import (
    MAX_REASON,
    MIN_REASON,
    DeletionError,
    DeletionService,
    Problem,
)
from netpacs.services.query import QueryLevel, QueryModel

router = APIRouter()

_STATUS = {
    Problem.NOT_FOUND: 404,
    Problem.FORBIDDEN: 403,
    Problem.CONFLICT: 409,
    Problem.INVALID: 400,
}


def deletion_service(svc: HttpServices) -> DeletionService:
    return svc.deletion


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
    try:
        done = deletion_service(services(request)).delete_study(
            study, reason=body.reason if body else ""
        )
    except DeletionError as exc:
        raise HttpError(_STATUS[exc.problem], exc.message) from None
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

_PAGE = """<!doctype html>
<html lang=en><head><meta charset=utf-8><title>{title} - netpacs</title>
<meta name=viewport content="width=device-width, initial-scale=1">
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;max-width:60em;font-size:15px}}
th,td{{text-align:left;padding:.3em .8em .3em 0;vertical-align:top}}
.message{{padding:.6em .8em;border-radius:4px;margin:1em 0}}
.ok{{background:#e3f4e8}} .error{{background:#fbe4e4}} .warning{{background:#fff4d6}}
textarea{{width:100%;max-width:40em;font:inherit}} button{{font:inherit;margin-top:.6em}}
nav a{{margin-right:1em}}
</style></head><body>
<nav><a href="/studies">Studies</a><a href="/audit">Audit trail</a>
<form method=post action="/signout" class=signout style="display:inline;margin-left:1em">
<button>Sign out</button></form></nav>
<h1>{title}</h1>
{body}
</body></html>
"""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _text(dataset: dict[str, Any], tag: str) -> str:
    values = dataset.get(tag, {}).get("Value") or []
    if not values:
        return ""
    first = values[0]
    if isinstance(first, dict):
        return str(first.get("Alphabetic", ""))
    return ", ".join(str(v) for v in values) if tag == "00080061" else str(first)


def _summary(svc: HttpServices, study: str) -> str:
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
    return (
        "<table id=study>"
        + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
        + "</table>"
    )


def _form(study: str, reason: str, report_status: str | None) -> str:
    action = f"/studies/{quote(study, safe='')}/delete"
    report = ""
    if report_status in ("preliminary", "final"):
        report = (
            f'<p class="message warning">This study has a {_e(report_status)} report: it '
            "is part of the medical record and will not be deleted.</p>"
        )
    return f"""{report}<p class="message warning">Deleting removes the study's images from
the archive for every trust of the region; it cannot be undone. The patient record stays.
Your name and reason go into the audit trail.</p>
<form method=post action="{_e(action)}">
<label for=reason>Why is this study deleted? (at least {MIN_REASON} characters)</label><br>
<textarea id=reason name=reason rows=3 minlength={MIN_REASON} maxlength={MAX_REASON}
 required placeholder="e.g. sent to the wrong patient's record">{_e(reason)}</textarea><br>
<button type=submit id=delete>Delete this study</button> <a href="/studies">Cancel</a>
</form>"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        _PAGE.format(title=_e(title), body=body),
        status_code=status,
        headers={"cache-control": "no-store"},
    )


def _refused(exc: DeletionError) -> HTMLResponse:
    return _page(
        "Study not deleted",
        f'<p class="message error" role=alert>{_e(exc.message)}</p><p><a href="/studies">'
        "Back to the studies</a></p>",
        _STATUS[exc.problem],
    )


def _gate(svc: HttpServices, study: str) -> None:
    """404 for a study the user cannot see, 403 for one they see but may not delete."""
    check_url_uids(Study=study)
    visible, _ = svc.query.scope_exists(study)
    if not visible:
        raise DeletionError(Problem.NOT_FOUND, f"study {study} is not stored here")
    if not deletion_service(svc).may_delete():
        raise DeletionError(Problem.FORBIDDEN, "deleting a study is for PACS administrators only")


@router.get("/studies/{study}/delete", include_in_schema=False)
def delete_page(request: Request, study: str) -> HTMLResponse:
    svc = services(request)
    try:
        _gate(svc, study)
    except DeletionError as exc:
        return _refused(exc)
    status = svc.reporting.statuses([study]).get(study)
    return _page("Delete a study", _summary(svc, study) + _form(study, "", status))


@router.post("/studies/{study}/delete", include_in_schema=False)
def delete_from_page(
    request: Request, study: str, reason: Annotated[str, Form(max_length=MAX_REASON)] = ""
) -> HTMLResponse:
    svc = services(request)
    try:
        _gate(svc, study)
        summary = _summary(svc, study)
        done = deletion_service(svc).delete_study(study, reason=reason)
    except DeletionError as exc:
        if exc.problem is not Problem.INVALID:
            return _refused(exc)
        status = svc.reporting.statuses([study]).get(study)
        message = f'<p class="message error" role=alert>{_e(exc.message)}</p>'
        return _page("Delete a study", message + summary + _form(study, reason, status), 400)
    left = (
        f" {done.blobs_left} files could not be removed now; the orphan sweep removes them."
        if done.blobs_left
        else ""
    )
    return _page(
        "Study deleted",
        f'<p class="message ok" role=status>Study {_e(study)} deleted: {done.instances} '
        f"instances in {done.series} series. The deletion and your reason are in the audit "
        f'trail.{_e(left)}</p>{summary}<p><a href="/studies">Back to the studies</a></p>',
    )
