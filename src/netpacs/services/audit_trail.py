"""Reading the audit trail: who accessed a patient, and a trust's access report.

For auditors (and PACS administrators). An auditor sees every access to a patient
(whichever trust's user made it), and the report of their own trust's users
(including every break-glass); an administrator sees any trust's report.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from netpacs.index.schema import audit_event
from netpacs.services.access import Capability, Principal, Role
from netpacs.services.access_policy import AccessPolicy

_NAMES = {
    ("110104", None): "objects transferred",
    ("110112", None): "query",
    ("110103", None): "objects accessed",
    ("110106", None): "export",
    ("110105", None): "study deleted",
    ("110110", None): "patient record",
    ("110114", "110122"): "sign-in",
    ("110114", "110123"): "sign-out",
    ("110113", "110127"): "BREAK-GLASS",
    ("110113", "110132"): "security alert",
}


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    time: str
    what: str
    action: str
    outcome: int
    user: str
    trust: str | None
    role: str | None
    purpose: str | None
    address: str | None
    patient_id: str | None
    issuer: str | None
    studies: list[str]
    detail: str
    alert: bool


def _entry(row: sa.Row[Any]) -> Entry:
    when: dt.datetime = row.event_time
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    what = _NAMES.get((row.event_id, row.event_type)) or _NAMES.get((row.event_id, None), "")
    return Entry(
        id=int(row.id),
        time=when.isoformat(timespec="seconds"),
        what=what or row.event_id,
        action=row.action,
        outcome=int(row.outcome),
        user=row.user_id,
        trust=row.trust,
        role=row.role,
        purpose=row.purpose_of_use,
        address=row.source,
        patient_id=row.patient_id,
        issuer=row.issuer,
        studies=(row.study_uids or "").split(),
        detail=row.detail,
        alert=row.event_id == "110113",
    )


class AuditTrail:
    """Raises :class:`~netpacs.services.access_policy.AccessDenied` (audited) for a
    principal who may not read what it asks for."""

    def __init__(self, engine: sa.Engine, access: AccessPolicy) -> None:
        self._engine = engine
        self._access = access

    def _check(self, principal: Principal) -> None:
        self._access.require(principal, Capability.READ_AUDIT)

    def patient(
        self, principal: Principal, patient_id: str, issuer: str, *, limit: int = 500
    ) -> list[Entry]:
        """Who accessed this patient (the patient named first in each record)."""
        self._check(principal)
        stmt = (
            sa.select(audit_event)
            .where(audit_event.c.patient_id == patient_id, audit_event.c.issuer == issuer)
            .order_by(audit_event.c.id.desc())
            .limit(limit)
        )
        with self._engine.connect() as conn:
            return [_entry(r) for r in conn.execute(stmt)]

    def trust_report(
        self,
        principal: Principal,
        trust: str,
        *,
        days: int = 7,
        alerts_only: bool = False,
        limit: int = 1000,
    ) -> list[Entry]:
        """What the trust's users (and AEs) did in the last ``days``, newest first, and
        the alerts raised for the trust about its patients by others (a store under its
        patient's identity: ``AuditRecord.audience``, services.care)."""
        self._check(principal)
        if principal.role is Role.AUDITOR and trust != principal.trust:
            self._access.deny(
                principal,
                Capability.READ_AUDIT,
                f"an auditor of {principal.trust} reports on {principal.trust}",
            )
        since = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
        stmt = sa.select(audit_event).where(
            audit_event.c.trust == trust, audit_event.c.event_time >= since
        )
        if alerts_only:
            stmt = stmt.where(audit_event.c.event_id == "110113")
        stmt = stmt.order_by(audit_event.c.id.desc()).limit(limit)
        with self._engine.connect() as conn:
            return [_entry(r) for r in conn.execute(stmt)]
