"""Reconciliation: the items the regional record raised, and a person's decisions on them.

The rules that raise items and what a link is are in :mod:`netpacs.services.identity`.
Here a PACS administrator lists the items, resolves one (``link``, ``unlink``,
``merge``, ``reject``: which are allowed depends on its kind), lists the patient
merges (from ADT A40/A47 and from resolved items) and undoes one. Undoing a merge an
item made reopens that item, so the state before the decision is back exactly.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from netpacs.domain.outcomes import Problem, Refused
from netpacs.index.schema import patient, patient_merge, reconciliation
from netpacs.services.access import Principal
from netpacs.services.adt import MergeRefused, MergeService
from netpacs.services.adt import Outcome as AdtOutcome
from netpacs.services.audit import AuditRecord, AuditService, Event, Purpose
from netpacs.services.identity import ACTIONS, OPEN, RESOLVED, Action, Kind, RegionalRecord


class ReconciliationError(Refused):
    """Not done: no such item or merge, already resolved or no longer possible
    (CONFLICT), or an action the item does not take (MALFORMED)."""


@dataclass(frozen=True, slots=True)
class Item:
    id: int
    kind: str
    status: str
    patient_id: str
    issuer: str
    nhs_number: str | None
    other_patient_id: str | None
    other_issuer: str | None
    study_instance_uid: str | None
    detail: str
    source: str
    created_at: str
    actions: list[str]
    resolution: str | None
    resolution_note: str | None
    resolved_by: str | None
    resolved_at: str | None
    merge_id: int | None


@dataclass(frozen=True, slots=True)
class Merge:
    id: int
    trigger: str  # A40, A47, or MERGE (a reconciliation decision)
    issuer: str
    prior_patient_id: str
    patient_id: str
    reference: str  # HL7 message control id, or the reconciliation item
    created_at: str
    undone_at: str | None


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite gives naive UTC
        value = value.replace(tzinfo=dt.UTC)
    return value.isoformat()


def _item(row: sa.Row[Any]) -> Item:
    kind = Kind(row.kind)
    return Item(
        id=int(row.id),
        kind=row.kind,
        status=row.status,
        patient_id=row.patient_id,
        issuer=row.issuer,
        nhs_number=row.nhs_number,
        other_patient_id=row.other_patient_id,
        other_issuer=row.other_issuer,
        study_instance_uid=row.study_instance_uid,
        detail=row.detail,
        source=row.source,
        created_at=_iso(row.created_at) or "",
        actions=[a.value for a in ACTIONS[kind]] if row.status == OPEN else [],
        resolution=row.resolution,
        resolution_note=row.resolution_note,
        resolved_by=row.resolved_by,
        resolved_at=_iso(row.resolved_at),
        merge_id=None if row.merge_fk is None else int(row.merge_fk),
    )


class ReconciliationService:
    def __init__(
        self, engine: sa.Engine, merges: MergeService, *, source_id: str = "NETPACS"
    ) -> None:
        self._engine = engine
        self._source_id = source_id
        self._merges = merges
        self._record = RegionalRecord()

    # -- reading ------------------------------------------------------------------------
    def items(self, *, status: str | None = OPEN, limit: int = 100, offset: int = 0) -> list[Item]:
        """Items newest first; ``status`` open, resolved, or None for all."""
        stmt = sa.select(reconciliation)
        if status is not None:
            stmt = stmt.where(reconciliation.c.status == status)
        stmt = stmt.order_by(reconciliation.c.id.desc()).limit(limit).offset(offset)
        with self._engine.connect() as conn:
            return [_item(r) for r in conn.execute(stmt)]

    def counts(self) -> dict[str, int]:
        stmt = sa.select(reconciliation.c.status, sa.func.count()).group_by(reconciliation.c.status)
        with self._engine.connect() as conn:
            found = {str(s): int(n) for s, n in conn.execute(stmt)}
        return {OPEN: found.get(OPEN, 0), RESOLVED: found.get(RESOLVED, 0)}

    def item(self, item_id: int) -> Item:
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(reconciliation).where(reconciliation.c.id == item_id)
            ).first()
        if row is None:
            raise ReconciliationError(
                Problem.NOT_FOUND, f"there is no reconciliation item {item_id}"
            )
        return _item(row)

    def merges(self, *, limit: int = 100, offset: int = 0) -> list[Merge]:
        stmt = (
            sa.select(patient_merge).order_by(patient_merge.c.id.desc()).limit(limit).offset(offset)
        )
        with self._engine.connect() as conn:
            return [
                Merge(
                    id=int(r.id),
                    trigger=r.trigger,
                    issuer=r.issuer,
                    prior_patient_id=r.prior_patient_id,
                    patient_id=r.patient_id,
                    reference=r.message_control_id,
                    created_at=_iso(r.created_at) or "",
                    undone_at=_iso(r.undone_at),
                )
                for r in conn.execute(stmt)
            ]

    # -- deciding -----------------------------------------------------------------------
    def resolve(self, item_id: int, action: str, *, by: Principal, note: str = "") -> Item:
        """Carry out a person's decision on an open item, in one transaction."""
        try:
            chosen = Action(action)
        except ValueError:
            allowed = ", ".join(a.value for a in Action)
            raise ReconciliationError(
                Problem.MALFORMED, f"action {action!r} is not one of {allowed}"
            ) from None
        now = dt.datetime.now(dt.UTC)
        with self._engine.begin() as conn:
            row = conn.execute(
                sa.select(reconciliation).where(reconciliation.c.id == item_id).with_for_update()
            ).first()
            if row is None:
                raise ReconciliationError(
                    Problem.NOT_FOUND, f"there is no reconciliation item {item_id}"
                )
            if row.status != OPEN:
                raise ReconciliationError(
                    Problem.CONFLICT,
                    f"item {item_id} was resolved already ({row.resolution} by {row.resolved_by})",
                )
            kind = Kind(row.kind)
            if chosen not in ACTIONS[kind]:
                allowed = ", ".join(a.value for a in ACTIONS[kind])
                raise ReconciliationError(
                    Problem.MALFORMED, f"a {kind.value} item is resolved by {allowed}, not {action}"
                )
            merge_id = self._carry_out(conn, row, chosen, by=by.user_id, now=now)
            conn.execute(
                sa.update(reconciliation)
                .where(reconciliation.c.id == item_id)
                .values(
                    status=RESOLVED,
                    resolution=chosen.value,
                    resolution_note=note or None,
                    resolved_by=by.user_id,
                    resolved_at=now,
                    merge_fk=merge_id,
                )
            )
            patients = [(row.patient_id, row.issuer)]
            if row.other_patient_id is not None:
                patients.append((row.other_patient_id, row.other_issuer or ""))
            AuditService(lambda fn: fn(conn), source_id=self._source_id).record(
                AuditRecord(
                    Event.PATIENT_RECORD,
                    by.actor(),
                    purpose=Purpose.HOPERAT,
                    patients=patients,
                    detail=f"reconciliation item {item_id} ({row.kind}): {chosen.value}"
                    + (f" (merge {merge_id})" if merge_id is not None else "")
                    + (f"; {note}" if note else ""),
                    when=now,
                )
            )
        return self.item(item_id)

    def _carry_out(
        self, conn: sa.Connection, row: sa.Row[Any], action: Action, *, by: str, now: dt.datetime
    ) -> int | None:
        if action is Action.REJECT:
            return None
        if action is Action.GRANT:  # the resolved item is the grant (services.access)
            return None
        pk = conn.execute(
            sa.select(patient.c.id).where(
                patient.c.patient_id == row.patient_id, patient.c.issuer == row.issuer
            )
        ).scalar()
        if pk is None:
            raise ReconciliationError(
                Problem.CONFLICT, f"{row.patient_id} at {row.issuer} is no longer in the index"
            )
        if action is Action.LINK:
            conn.execute(
                sa.update(patient).where(patient.c.id == pk).values(nhs_number=row.nhs_number)
            )
            return None
        if action is Action.UNLINK:
            self._record.unlink(conn, int(pk))
            return None
        # MERGE: this hospital number into the other of the same trust (the older record).
        if row.other_patient_id is None or row.other_issuer is None:
            raise ReconciliationError(Problem.MALFORMED, "this item names no record to merge into")
        try:
            return self._merges.merge_identities(
                conn,
                (row.patient_id, row.issuer),
                (row.other_patient_id, row.other_issuer),
                reference=f"reconciliation {row.id} by {by}",
                now=now,
            )
        except MergeRefused as refused:
            raise ReconciliationError(Problem.CONFLICT, str(refused)) from None

    def undo_merge(self, merge_id: int, *, by: Principal) -> str:
        """Undo a patient merge exactly; an item that made it is open again."""
        result = self._merges.undo_merge(merge_id)
        if result.outcome is AdtOutcome.UNKNOWN_IDENTITY:
            raise ReconciliationError(Problem.NOT_FOUND, result.detail)
        if result.outcome is not AdtOutcome.APPLIED:
            raise ReconciliationError(Problem.CONFLICT, result.detail)
        with self._engine.begin() as conn:
            conn.execute(
                sa.update(reconciliation)
                .where(reconciliation.c.merge_fk == merge_id)
                .values(
                    status=OPEN,
                    resolution=None,
                    resolution_note=None,
                    resolved_by=None,
                    resolved_at=None,
                    merge_fk=None,
                )
            )
            merged = conn.execute(
                sa.select(patient_merge).where(patient_merge.c.id == merge_id)
            ).one()
            AuditService(lambda fn: fn(conn), source_id=self._source_id).record(
                AuditRecord(
                    Event.PATIENT_RECORD,
                    by.actor(),
                    purpose=Purpose.HOPERAT,
                    patients=[
                        (merged.prior_patient_id, merged.issuer),
                        (merged.patient_id, merged.issuer),
                    ],
                    detail=f"merge {merge_id} undone",
                )
            )
        return result.detail
