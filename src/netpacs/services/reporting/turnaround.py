"""The turnaround dashboard's figures: arrival-to-final times, backlog and breaches of
the region's targets, per requesting trust and modality."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from netpacs.domain.outcomes import Problem
from netpacs.index.schema import patient, study, worklist_item
from netpacs.services.access import Principal
from netpacs.services.reporting.common import (
    OPEN,
    Priority,
    ReportingError,
    ReportingScope,
    aware,
)


class TurnaroundService:
    """Turnaround of the worklist items in the principal's scope."""

    def __init__(self, scope: ReportingScope) -> None:
        self._scope = scope

    def for_principal(self, principal: Principal) -> TurnaroundService:
        return TurnaroundService(self._scope.for_principal(principal))

    def turnaround(self, days: int = 30) -> dict[str, Any]:
        """Items reported in the last ``days`` days and those still open: per trust and
        modality, how many were reported, median and 90th centile minutes, backlog and
        breaches; the backlog per trust and priority."""
        self._scope.require_reporter()
        if not 1 <= days <= 366:
            raise ReportingError(Problem.INVALID, "days must be 1 to 366")
        now = dt.datetime.now(dt.UTC)
        rows = self._rows(since=now - dt.timedelta(days=days))
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        by_priority: dict[tuple[str, str], int] = {}
        for r in rows:
            g = groups.setdefault(
                (r.requesting_trust, r.modality),
                {"times": [], "backlog": 0, "breaches": 0, "open_breaches": 0},
            )
            due = aware(r.due_at)
            if r.status == "final" and r.reported_at is not None:
                done = aware(r.reported_at)
                g["times"].append((done - aware(r.arrived_at)).total_seconds() / 60)
                if done > due:
                    g["breaches"] += 1
            else:
                g["backlog"] += 1
                key = (r.requesting_trust, r.priority)
                by_priority[key] = by_priority.get(key, 0) + 1
                if now > due:
                    g["breaches"] += 1
                    g["open_breaches"] += 1
        return {
            "days": days,
            "rows": [
                _figures(trust, modality, g) for (trust, modality), g in sorted(groups.items())
            ],
            "backlog_by_priority": [
                {"trust": t, "priority": p, "count": c}
                for (t, p), c in sorted(
                    by_priority.items(), key=lambda kv: (kv[0][0], Priority(kv[0][1]).rank)
                )
            ],
        }

    def _rows(self, *, since: dt.datetime) -> Sequence[sa.Row[Any]]:
        """The principal's items still open or reported since ``since``."""
        q: sa.Select[Any] = (
            sa.select(
                worklist_item.c.requesting_trust,
                worklist_item.c.modality,
                worklist_item.c.priority,
                worklist_item.c.status,
                worklist_item.c.arrived_at,
                worklist_item.c.due_at,
                worklist_item.c.reported_at,
            )
            .select_from(
                worklist_item.join(
                    study, study.c.study_instance_uid == worklist_item.c.study_instance_uid
                ).join(patient, patient.c.id == study.c.patient_fk)
            )
            .where(
                self._scope.condition(),
                sa.or_(worklist_item.c.status.in_(OPEN), worklist_item.c.reported_at >= since),
            )
        )
        with self._scope.read_engine.connect() as conn:
            return conn.execute(q).all()


def _figures(trust: str, modality: str, group: dict[str, Any]) -> dict[str, Any]:
    times = sorted(group["times"])
    return {
        "trust": trust,
        "modality": modality,
        "reported": len(times),
        "median_minutes": _centile(times, 50),
        "p90_minutes": _centile(times, 90),
        "backlog": group["backlog"],
        "breaches": group["breaches"],
        "open_breaches": group["open_breaches"],
    }


def _centile(values: list[float], pct: int) -> float | None:
    """Nearest-rank centile of sorted values, in whole minutes (None when empty)."""
    if not values:
        return None
    k = max(0, min(len(values) - 1, -(-pct * len(values) // 100) - 1))
    return round(values[k], 1)
