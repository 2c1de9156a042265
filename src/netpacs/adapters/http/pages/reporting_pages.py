"""The reporting pages: the regional worklist (``/worklist``), the reporting page
beside the viewer (``/report/{study_instance_uid}``) and the turnaround dashboard
(``/turnaround``).

Each page is one HTML document with its CSS and script inline; what it shows comes
from the reporting JSON API (``/api/worklist``, ``/api/reports``, ``/api/turnaround``)
fetched on the same origin with the session cookie. Nothing is fetched from elsewhere:
the charts are SVG drawn by the page's own script. The rules (who may claim, report,
sign) are the reporting service's; these pages only show its answers and messages.

For radiologists and PACS administrators; everyone else gets the 403 page.
"""

from __future__ import annotations

import json
import re
from html import escape
from importlib import resources
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from netpacs.adapters.http.deps import HttpServices, services
from netpacs.domain.uids import is_valid_uid
from netpacs.services.access import Capability, Principal

router = APIRouter(include_in_schema=False)

_NO_STORE = {"cache-control": "no-store"}


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


# ``{{name}}`` placeholders: ``$`` (string.Template) is everywhere in the scripts.
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_COMMON = _read("reporting_common.html")  # the shared style and script
_PAGES = {name: _read(f"{name}.html") for name in ("worklist", "report", "turnaround")}


def fill(template: str, **values: str) -> str:
    """``template`` with each ``{{name}}`` replaced by ``values[name]`` (all must exist)."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def may_report(principal: Principal) -> bool:
    """Radiologists and PACS administrators (services.access, Capability.REPORT)."""
    return principal.may(Capability.REPORT)


def reporting_links(principal: Principal) -> str:
    """Header links to the reporting pages, for the roles that may use them."""
    if not may_report(principal):
        return ""
    return ' · <a href="/worklist">Worklist</a> · <a href="/turnaround">Turnaround</a>'


def _nav(current: str) -> str:
    links = [
        ("/studies", "Studies"),
        ("/worklist", "Worklist"),
        ("/turnaround", "Turnaround"),
    ]
    return " · ".join(
        f'<a href="{href}"{" aria-current=page" if href == current else ""}>{label}</a>'
        for href, label in links
    )


def _json_for_script(value: object) -> str:
    """JSON to sit inside ``<script type="application/json">`` (no ``</`` can close it)."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e")


def _not_for_your_role(principal: Principal) -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html lang=en><meta charset=utf-8><title>Not allowed · netpacs</title>"
        "<body style='font:15px/1.5 system-ui,sans-serif;margin:1.5em'>"
        f"<p role=alert>The reporting pages are for radiologists and PACS administrators; "
        f"you are signed in as {_e(principal.user_id)} ({_e(principal.role.value)}).</p>"
        "<p><a href='/studies'>Back to the study list</a></p></body></html>",
        status_code=403,
        headers=_NO_STORE,
    )


def _page(request: Request, name: str, path: str, **values: str) -> HTMLResponse:
    svc: HttpServices = services(request)
    principal = svc.principal
    if not may_report(principal):
        return _not_for_your_role(principal)
    region = svc.region
    context = {
        "me": {
            "username": principal.user_id,
            "name": principal.name or "",
            "trust": principal.trust or "",
            "role": principal.role.value,
        },
        "trusts": [{"code": t.ods_code, "name": t.name} for t in region.trusts],
    }
    html = fill(
        _PAGES[name],
        common=_COMMON,
        region=_e(region.name),
        nav=_nav(path),
        who=_e(f"{principal.name or principal.user_id} · {principal.trust or ''}"),
        context=_json_for_script(context),
        **values,
    )
    return HTMLResponse(html, headers=_NO_STORE)


@router.get("/worklist")
def worklist(request: Request) -> HTMLResponse:
    """The regional reporting worklist (views, counts, claims), refreshed every 10 s."""
    return _page(request, "worklist", "/worklist")


@router.get("/report/{study_instance_uid}")
def report(request: Request, study_instance_uid: str) -> HTMLResponse:
    """The reporting page of one study: viewer, priors, report editor, history."""
    if not is_valid_uid(study_instance_uid):
        return HTMLResponse(
            "<!doctype html><html lang=en><meta charset=utf-8><title>Not a study · netpacs</title>"
            f"<p role=alert>{_e(study_instance_uid[:80])} is not a valid Study Instance UID."
            "</p><p><a href='/worklist'>Back to the worklist</a></p></html>",
            status_code=400,
            headers=_NO_STORE,
        )
    return _page(
        request,
        "report",
        "",
        uid=_e(study_instance_uid),
        uid_json=_json_for_script(study_instance_uid),
        viewer_src=_e("/viewer?StudyInstanceUIDs=" + quote(study_instance_uid, safe="")),
    )


@router.get("/turnaround")
def turnaround(request: Request) -> HTMLResponse:
    """Turnaround dashboard: reported, median and 90th centile times, backlog, breaches."""
    return _page(request, "turnaround", "/turnaround")
