"""The audit trail over HTTP: ``GET /api/audit`` and the auditor's page ``/audit``.

Server-rendered HTML, no scripts. The rules (who may read what) are in
services.audit_trail.
"""

from __future__ import annotations

from dataclasses import asdict
from html import escape
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse

from netpacs.adapters.http.deps import services
from netpacs.adapters.http.errors import HttpError
from netpacs.services.audit_trail import AuditAccessError, AuditTrail, Entry

router = APIRouter()

Text = Annotated[str | None, Query(max_length=64)]
Days = Annotated[int, Query(ge=1, le=366)]


def _trail(request: Request) -> AuditTrail:
    return services(request).audit_trail


@router.get("/api/audit", summary="Audit trail: a patient's accesses or a trust's report")
def audit_api(
    request: Request,
    patient_id: Text = None,
    issuer: Text = None,
    trust: Text = None,
    days: Days = 7,
    alerts: bool = False,
) -> JSONResponse:
    principal = services(request).principal
    try:
        if patient_id is not None:
            entries = _trail(request).patient(principal, patient_id, issuer or "")
        else:
            entries = _trail(request).trust_report(
                principal, trust or principal.trust or "", days=days, alerts_only=alerts
            )
    except AuditAccessError as exc:
        raise HttpError(403, str(exc)) from None
    return JSONResponse({"entries": [asdict(e) for e in entries]})


def _e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def _rows(entries: list[Entry]) -> str:
    out = []
    for e in entries:
        cls = ' class="alert"' if e.alert else ""
        patient = f"{_e(e.patient_id)} <small>{_e(e.issuer)}</small>" if e.patient_id else ""
        out.append(
            f"<tr{cls}><td>{_e(e.time[:19].replace('T', ' '))}</td><td>{_e(e.what)}</td>"
            f"<td>{'ok' if e.outcome == 0 else 'refused/failed'}</td>"
            f"<td>{_e(e.user)} <small>{_e(e.role)} {_e(e.trust)}</small></td>"
            f"<td>{_e(e.purpose)}</td><td>{patient}</td>"
            f"<td>{len(e.studies) or ''}</td><td>{_e(e.detail)}</td></tr>"
        )
    return "".join(out) or "<tr><td colspan=8>Nothing recorded.</td></tr>"


_PAGE = """<!doctype html>
<html lang=en><head><meta charset=utf-8><title>Audit trail · netpacs</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d2a36}}
table{{border-collapse:collapse;width:100%;margin-bottom:2em}}
th,td{{border-bottom:1px solid #d4dbe2;padding:.35em;text-align:left;vertical-align:top}}
th{{background:#eef2f5}} tr.alert{{background:#fbe4e4}} small{{color:#5a6b7b}}
form{{margin:1em 0}} input{{font:inherit}}
</style></head><body>
<nav><a href="/studies">Studies</a> · <a href="/audit">Audit trail</a>
<form method=post action="/signout" class=signout style="display:inline;margin-left:1em">
<button>Sign out</button></form></nav>
<h1>Audit trail</h1>
{error}
<form method=get action="/audit"><label>Hospital or NHS number
<input name=patient_id value="{patient_id}"></label>
<label>Issuer (ODS code, or NHS) <input name=issuer value="{issuer}" size=6></label>
<button>Who accessed this patient</button></form>
{patient_section}
<h2 id=alerts>Alerts for {trust}: break-glass and security alerts, last 30 days</h2>
<table><thead><tr><th>When</th><th>What</th><th>Outcome</th><th>Who</th><th>Purpose</th>
<th>Patient</th><th>Studies</th><th>Detail</th></tr></thead><tbody>{alerts}</tbody></table>
<h2 id=report>Access report for {trust}, last 7 days</h2>
<table><thead><tr><th>When</th><th>What</th><th>Outcome</th><th>Who</th><th>Purpose</th>
<th>Patient</th><th>Studies</th><th>Detail</th></tr></thead><tbody>{report}</tbody></table>
</body></html>
"""


@router.get("/audit", include_in_schema=False)
def audit_page(request: Request, patient_id: Text = None, issuer: Text = None) -> HTMLResponse:
    principal = services(request).principal
    trail = _trail(request)
    trust = principal.trust or ""
    try:
        alerts = trail.trust_report(principal, trust, days=30, alerts_only=True)
        report = trail.trust_report(principal, trust, days=7, limit=300)
        patient_section = ""
        if patient_id:
            found = trail.patient(principal, patient_id, issuer or "")
            patient_section = (
                f"<h2 id=patient>Accesses to {_e(patient_id)} ({_e(issuer)})</h2><table><thead>"
                "<tr><th>When</th><th>What</th><th>Outcome</th><th>Who</th><th>Purpose</th>"
                "<th>Patient</th><th>Studies</th><th>Detail</th></tr></thead>"
                f"<tbody>{_rows(found)}</tbody></table>"
            )
    except AuditAccessError as exc:
        return HTMLResponse(
            f"<!doctype html><title>Not allowed</title><p role=alert>{_e(exc)}</p>",
            status_code=403,
        )
    return HTMLResponse(
        _PAGE.format(
            error="",
            patient_id=_e(patient_id),
            issuer=_e(issuer),
            patient_section=patient_section,
            trust=_e(trust),
            alerts=_rows(alerts),
            report=_rows(report),
        )
    )
