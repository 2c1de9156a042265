"""Who holds a worklist item: claiming, releasing, an admin assigning it or changing
its priority, and releasing claims that lapsed.

The claim is one row of the index that every worker and every trust reads, so
everyone sees who has an item and since when; it is taken under a row lock, so two
reporters can never both hold it. A claim lapses ``claim_minutes`` after the holder's
last save (services.reporting.reports renews it); a lapsed claim is nobody's at once,
and :meth:`ClaimsService.expire_claims` clears it from the row and the audit trail says
so.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from netpacs.domain.outcomes import Problem
from netpacs.index.schema import user_account, worklist_item
from netpacs.services.access import Capability, Principal, Role
from netpacs.services.reporting.common import (
    NO_CLAIM,
    Priority,
    ReportingError,
    ReportingScope,
    aware,
    held_message,
    holder,
    target,
)


class ClaimsService:
    """Claims on worklist items, for one principal."""

    def __init__(self, scope: ReportingScope) -> None:
        self._scope = scope

    def for_principal(self, principal: Principal) -> ClaimsService:
        return ClaimsService(self._scope.for_principal(principal))

    def claim(self, study_uid: str) -> dict[str, Any]:
        """Take the item for the principal (renews their own claim); CONFLICT when
        another reporter holds it or it is reported."""
        scope = self._scope
        scope.require_reporter()
        now = dt.datetime.now(dt.UTC)
        with scope.write_engine.begin() as conn:
            row = scope.locked_item(conn, study_uid)
            if row.status == "final":
                raise ReportingError(
                    Problem.CONFLICT,
                    f"already reported by {row.reported_by}: add an addendum instead",
                )
            held_by = holder(row, now)
            if held_by is not None and held_by != scope.principal.user_id:
                raise ReportingError(Problem.CONFLICT, held_message(row))
            values = scope.claim_values(now)
            if held_by is None:
                values["claimed_at"] = now
            conn.execute(
                sa.update(worklist_item).where(worklist_item.c.id == row.id).values(values)
            )
        scope.audit_event(row, "claimed for reporting")
        return scope.item(study_uid)

    def release(self, study_uid: str) -> dict[str, Any]:
        """Give the item up; only its holder or an admin may release a held claim."""
        scope = self._scope
        scope.require_reporter()
        now = dt.datetime.now(dt.UTC)
        with scope.write_engine.begin() as conn:
            row = scope.locked_item(conn, study_uid)
            held_by = holder(row, now)
            others = held_by is not None and held_by != scope.principal.user_id
            if others and not scope.principal.may(Capability.MANAGE_WORKLIST):
                raise ReportingError(
                    Problem.CONFLICT, held_message(row) + ": only they or an admin may release it"
                )
            conn.execute(
                sa.update(worklist_item).where(worklist_item.c.id == row.id).values(NO_CLAIM)
            )
        if held_by is not None:
            scope.audit_event(row, f"claim of {held_by} released")
        return scope.item(study_uid)

    def expire_claims(self, *, now: dt.datetime) -> int:
        """Release every claim that lapsed by ``now``, auditing each as a release; how
        many. A job: any node may run it at any time, and a claim renewed meanwhile (or
        locked by a reporter at this moment) stays."""
        scope = self._scope
        scope.require_admin("release lapsed claims")
        lapsed = sa.and_(
            worklist_item.c.claimed_by.is_not(None), worklist_item.c.claim_expires_at <= now
        )
        with scope.write_engine.begin() as conn:
            rows = conn.execute(
                scope.items().where(lapsed).with_for_update(of=worklist_item, skip_locked=True)
            ).all()
            if not rows:
                return 0
            released = set(
                conn.execute(
                    sa.update(worklist_item)
                    .where(worklist_item.c.id.in_([r.id for r in rows]), lapsed)
                    .values(NO_CLAIM)
                    .returning(worklist_item.c.id)
                ).scalars()
            )
        for row in rows:
            if row.id in released:
                scope.audit_event(row, f"claim of {row.claimed_by} released: it lapsed")
        return len(released)

    def assign(self, study_uid: str, username: str) -> dict[str, Any]:
        """An admin gives the item to a radiologist whose agreements cover it."""
        scope = self._scope
        scope.require_admin("reassign worklist items")
        assignee = self._radiologist(username)
        now = dt.datetime.now(dt.UTC)
        with scope.write_engine.begin() as conn:
            row = scope.locked_item(conn, study_uid)
            agreements = scope.for_principal(assignee).agreements()
            if agreements is not None and not any(
                a.covers(row.requesting_trust, row.subspecialty) for a in agreements
            ):
                raise ReportingError(
                    Problem.INVALID,
                    f"{assignee.user_id} ({assignee.trust}) has no reporting agreement for "
                    f"{row.requesting_trust}'s {row.subspecialty} studies",
                )
            if row.status == "final":
                raise ReportingError(Problem.CONFLICT, "already reported: nothing to assign")
            conn.execute(
                sa.update(worklist_item)
                .where(worklist_item.c.id == row.id)
                .values(claimed_at=now, **scope.claim_values(now, assignee))
            )
        scope.audit_event(row, f"assigned to {assignee.user_id}")
        return scope.item(study_uid)

    def _radiologist(self, username: str) -> Principal:
        """The enabled radiologist's account ``username``; INVALID when it is not one."""
        with self._scope.read_engine.connect() as conn:
            account = conn.execute(
                sa.select(user_account).where(
                    user_account.c.username == username.strip(), user_account.c.disabled.is_(False)
                )
            ).first()
        if account is None or account.role != Role.RADIOLOGIST.value:
            raise ReportingError(Problem.INVALID, f"{username!r} is not a radiologist's account")
        return Principal(
            account.username, Role.RADIOLOGIST, account.trust, name=account.display_name
        )

    def set_priority(self, study_uid: str, priority: str) -> dict[str, Any]:
        """An admin changes the item's priority; its target time follows."""
        scope = self._scope
        scope.require_admin("change a priority")
        new = Priority.parse(priority)
        with scope.write_engine.begin() as conn:
            row = scope.locked_item(conn, study_uid)
            conn.execute(
                sa.update(worklist_item)
                .where(worklist_item.c.id == row.id)
                .values(
                    priority=new.value, due_at=aware(row.arrived_at) + target(scope.region, new)
                )
            )
        return scope.item(study_uid)
