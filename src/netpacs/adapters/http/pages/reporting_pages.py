"""The reporting pages: the regional worklist (``/worklist``), the reporting page
beside the viewer (``/report/{study_instance_uid}``) and the turnaround dashboard
(``/turnaround``).

Each page's CSS and script are inline; what it shows comes from the reporting JSON
API (``/api/worklist``, ``/api/reports``, ``/api/turnaround``) fetched on the same
origin with the session cookie. Nothing is fetched from elsewhere: the charts are SVG
drawn by the page's own script. The rules (who may claim, report, sign) are the
reporting services'; these pages only show their answers and messages.

For radiologists and PACS administrators; everyone else gets the not-allowed page.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from netpacs.adapters.http.deps import HttpServices, services
from netpacs.adapters.http.pages.render import Link, error_page, render
from netpacs.domain.uids import is_valid_uid
from netpacs.services.access import Capability

router = APIRouter(include_in_schema=False)


def _page(
    request: Request,
    template: str,
    *,
    opened: Callable[[HttpServices], None] | None = None,
    **values: Any,
) -> HTMLResponse:
    """The page for a principal who may report; ``opened`` audits a page of a patient."""
    svc: HttpServices = services(request)
    principal = svc.principal
    refusal = svc.access.check(principal, Capability.REPORT)  # audited when refused
    if refusal is not None:
        return error_page(
            request,
            403,
            "Not allowed",
            f"{refusal.message[0].upper()}{refusal.message[1:]}; you are signed in as "
            f"{principal.user_id}.",
            back=Link("/studies", "Back to the study list"),
        )
    if opened is not None:
        opened(svc)
    context = {
        "me": {
            "username": principal.user_id,
            "name": principal.name or "",
            "trust": principal.trust or "",
            "role": principal.role.value,
        },
        "trusts": [{"code": t.ods_code, "name": t.name} for t in svc.region.trusts],
        # A PACS admin releases anyone's claim, reassigns and queues (services.reporting).
        "manages_worklist": principal.may(Capability.MANAGE_WORKLIST),
    }
    return render(request, template, context=context, **values)


@router.get("/worklist")
def worklist(request: Request) -> HTMLResponse:
    """The regional reporting worklist (views, counts, claims), refreshed every 10 s."""
    return _page(request, "worklist.html")


@router.get("/report/{study_instance_uid}")
def report(request: Request, study_instance_uid: str) -> HTMLResponse:
    """The reporting page of one study: viewer, priors, report editor, history."""
    if not is_valid_uid(study_instance_uid):
        return error_page(
            request,
            400,
            "Not a study",
            f"{study_instance_uid[:80]} is not a valid Study Instance UID.",
            back=Link("/worklist", "Back to the worklist"),
        )
    return _page(
        request,
        "report.html",
        opened=lambda svc: svc.reports.page_opened(study_instance_uid),
        uid=study_instance_uid,
        viewer_src="/viewer?StudyInstanceUIDs=" + quote(study_instance_uid, safe=""),
    )


@router.get("/turnaround")
def turnaround(request: Request) -> HTMLResponse:
    """Turnaround dashboard: reported, median and 90th centile times, backlog, breaches."""
    return _page(request, "turnaround.html")
