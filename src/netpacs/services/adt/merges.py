"""Merging two local identities of one trust, and undoing a merge exactly."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import orjson
import sqlalchemy as sa

from netpacs.domain.changes import ChangeKind
from netpacs.index.changes import record_change
from netpacs.index.schema import adt_identity, patient, patient_merge, study
from netpacs.index.writer import bump_epoch
from netpacs.services.adt.events import (
    AdtResult,
    Identity,
    MergeRefused,
    Outcome,
    Refused,
    Trigger,
)
from netpacs.services.adt.patients import (
    PATIENT_COLUMNS,
    identity_row,
    patient_row,
    store_patient,
)

log = logging.getLogger(__name__)


class MergeService:
    """Merges of two hospital numbers of one trust (A40, A47, or a person's decision),
    each kept with a snapshot that undoes it exactly."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    def merge_identities(
        self,
        conn: sa.Connection,
        prior: tuple[str, str],
        survivor: tuple[str, str],
        *,
        reference: str,
        now: dt.datetime,
    ) -> int:
        """Merge one hospital number into another of the same trust (a person decided).

        Like an A40: the studies of ``prior`` move to ``survivor``; undone by
        :meth:`undo_merge`. Raises :class:`MergeRefused` with the reason.
        """
        if prior[1] != survivor[1]:
            raise MergeRefused(
                f"{prior[0]} at {prior[1]} and {survivor[0]} at {survivor[1]} "
                "are of different trusts: a merge across trusts is refused"
            )
        try:
            return self.merge(
                conn, "MERGE", reference, Identity(*prior), Identity(*survivor), now=now
            )
        except Refused as refused:
            raise MergeRefused(refused.result.detail) from None

    def merge(
        self,
        conn: sa.Connection,
        trigger: str,
        control_id: str,
        prior: Identity,
        survivor: Identity,
        *,
        now: dt.datetime,
    ) -> int:
        prior_row = patient_row(conn, prior)
        if prior_row is None:
            raise Refused(Outcome.UNKNOWN_IDENTITY, f"MRG-1 {prior} is not known to netpacs")
        survivor_row = patient_row(conn, survivor)
        if trigger != Trigger.A47.value and survivor_row is None:
            raise Refused(Outcome.UNKNOWN_IDENTITY, f"PID-3 {survivor} is not known to netpacs")
        if trigger == Trigger.A47.value and survivor_row is not None:
            raise Refused(
                Outcome.IDENTIFIER_IN_USE,
                f"PID-3 {survivor} is already in use: send A40 to merge two identities",
            )
        moved = list(
            conn.execute(
                sa.select(study.c.id)
                .where(study.c.patient_fk == prior_row["id"])
                .order_by(study.c.id)
            ).scalars()
        )
        snapshot: dict[str, Any] = {
            "prior_patient": prior_row,
            "survivor_patient": survivor_row,
            "prior_identity": identity_row(conn, prior),
            "survivor_identity": identity_row(conn, survivor),
            "studies": moved,
        }
        if survivor_row is None:  # A47: the new number takes over the old one's record
            copied = {c: prior_row[c] for c in PATIENT_COLUMNS}
            survivor_pk = store_patient(conn, survivor, copied, now)
            old = snapshot["prior_identity"]
            if old is not None:
                conn.execute(
                    sa.insert(adt_identity).values(
                        {
                            **{k: v for k, v in old.items() if k != "id"},
                            "patient_id": survivor.patient_id,
                            "issuer": survivor.issuer,
                        }
                    )
                )
        else:
            survivor_pk = int(survivor_row["id"])
        conn.execute(sa.update(study).where(study.c.id.in_(moved)).values(patient_fk=survivor_pk))
        record_change(
            conn,
            ChangeKind.MERGE,
            patient_id=survivor.patient_id,
            issuer=survivor.issuer,
            prior_patient_id=prior.patient_id,
            study_uids=_study_uids(conn, moved),
            now=now,
        )
        return int(
            conn.execute(
                sa.insert(patient_merge)
                .values(
                    trigger=trigger,
                    issuer=survivor.issuer,
                    prior_patient_id=prior.patient_id,
                    patient_id=survivor.patient_id,
                    prior_patient_fk=prior_row["id"],
                    patient_fk=survivor_pk,
                    message_control_id=control_id,
                    snapshot_json=orjson.dumps(snapshot, default=str).decode(),
                    created_at=now,
                )
                .returning(patient_merge.c.id)
            ).scalar_one()
        )

    # -- undo ---------------------------------------------------------------------------

    def undo_merge(self, merge_id: int) -> AdtResult:
        """Restore the state before merge ``merge_id``: studies, patient rows, identities.

        Refused when something changed the merged identities since (a later merge not
        undone, or a moved study that is no longer where the merge put it).
        """
        now = dt.datetime.now(dt.UTC)
        with self._engine.begin() as conn:
            row = conn.execute(
                sa.select(patient_merge).where(patient_merge.c.id == merge_id)
            ).first()
            if row is None:
                return AdtResult(Outcome.UNKNOWN_IDENTITY, f"there is no merge {merge_id}")
            if row.undone_at is not None:
                return AdtResult(Outcome.CONFLICT, f"merge {merge_id} was undone already")
            fks = (row.prior_patient_fk, row.patient_fk)
            later = conn.execute(
                sa.select(patient_merge.c.id).where(
                    patient_merge.c.id > merge_id,
                    patient_merge.c.undone_at.is_(None),
                    sa.or_(
                        patient_merge.c.prior_patient_fk.in_(fks),
                        patient_merge.c.patient_fk.in_(fks),
                    ),
                )
            ).first()
            if later is not None:
                return AdtResult(Outcome.CONFLICT, f"undo merge {later.id} first")
            snap = orjson.loads(row.snapshot_json)
            moved: list[int] = snap["studies"]
            still = conn.execute(
                sa.select(sa.func.count())
                .select_from(study)
                .where(study.c.id.in_(moved), study.c.patient_fk == row.patient_fk)
            ).scalar_one()
            if still != len(moved):
                return AdtResult(
                    Outcome.CONFLICT,
                    f"{len(moved) - still} of the studies merge {merge_id} moved have moved since",
                )
            conn.execute(
                sa.update(study)
                .where(study.c.id.in_(moved))
                .values(patient_fk=row.prior_patient_fk)
            )
            _restore_patient(conn, row.prior_patient_fk, snap["prior_patient"])
            _restore_patient(conn, row.patient_fk, snap["survivor_patient"])
            prior = Identity(row.prior_patient_id, row.issuer)
            survivor = Identity(row.patient_id, row.issuer)
            _restore_identity(conn, prior, snap["prior_identity"])
            _restore_identity(conn, survivor, snap["survivor_identity"])
            conn.execute(
                sa.update(patient_merge).where(patient_merge.c.id == merge_id).values(undone_at=now)
            )
            record_change(
                conn,
                ChangeKind.UNMERGE,
                patient_id=prior.patient_id,
                issuer=prior.issuer,
                prior_patient_id=survivor.patient_id,
                study_uids=_study_uids(conn, moved),
                now=now,
            )
        log.info("ADT merge %d of %s into %s undone", merge_id, prior, survivor)
        return AdtResult(Outcome.APPLIED, f"merge {merge_id} undone")


def _study_uids(conn: sa.Connection, pks: list[int]) -> list[str]:
    if not pks:
        return []
    return [
        str(uid)
        for uid in conn.execute(
            sa.select(study.c.study_instance_uid).where(study.c.id.in_(pks)).order_by(study.c.id)
        ).scalars()
    ]


def _restore_patient(conn: sa.Connection, pk: int, before: dict[str, Any] | None) -> None:
    if before is None:
        # Created by the merge (A47): removed again unless a study arrived for it since.
        has_studies = conn.execute(
            sa.select(study.c.id).where(study.c.patient_fk == pk).limit(1)
        ).first()
        if has_studies is None:
            conn.execute(sa.delete(patient).where(patient.c.id == pk))
            bump_epoch(conn)
        return
    conn.execute(
        sa.update(patient)
        .where(patient.c.id == pk)
        .values({c: before[c] for c in PATIENT_COLUMNS if c in before})
    )


def _restore_identity(
    conn: sa.Connection, identity: Identity, before: dict[str, Any] | None
) -> None:
    where = sa.and_(
        adt_identity.c.patient_id == identity.patient_id,
        adt_identity.c.issuer == identity.issuer,
    )
    conn.execute(sa.delete(adt_identity).where(where))
    if before is not None:
        values = {k: v for k, v in before.items() if k != "updated_at"}
        values["updated_at"] = dt.datetime.fromisoformat(before["updated_at"])
        conn.execute(sa.insert(adt_identity).values(values))
