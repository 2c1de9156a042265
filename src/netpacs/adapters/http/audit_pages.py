"""The audit trail over HTTP: ``GET /api/audit`` and the auditor's page ``/audit``.

The page is server-rendered HTML (templates/audit.html), no scripts. The rules (who
may read what) are in services.audit_trail.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse

from netpacs.adapters.http.deps import services
from netpacs.adapters.http.pages.render import render
from netpacs.services.audit_trail import AuditTrail

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
    if patient_id is not None:
        entries = _trail(request).patient(principal, patient_id, issuer or "")
    else:
        entries = _trail(request).trust_report(
            principal, trust or principal.trust or "", days=days, alerts_only=alerts
        )
    return JSONResponse({"entries": [asdict(e) for e in entries]})


@router.get("/audit", include_in_schema=False)
def audit_page(request: Request, patient_id: Text = None, issuer: Text = None) -> HTMLResponse:
    principal = services(request).principal
    trail = _trail(request)
    trust = principal.trust or ""
    alerts = trail.trust_report(principal, trust, days=30, alerts_only=True)
    report = trail.trust_report(principal, trust, days=7, limit=300)
    patient = trail.patient(principal, patient_id, issuer or "") if patient_id else None
    return render(
        request,
        "audit.html",
        patient_id=patient_id or "",
        issuer=issuer or "",
        patient=patient,
        trust=trust,
        alerts=alerts,
        report=report,
    )
