"""IHE IOCM rejection notes: instances a modality or a user withdraws (issue 15).

A Key Object Selection Document (PS3.3 A.35.4) whose Concept Name Code Sequence is one
of the rejection codes of CID 7011 (:data:`REJECTION_CODES`), stored by C-STORE or
STOW-RS, *rejects* the instances its Current Requested Procedure Evidence Sequence
(0040,A375) names (IHE RAD TF-2 IOCM, "Rejection Note Stored"). The rules:

- Hidden in one place. The rejected instances' index rows are moved out of
  ``instance`` into ``rejected_instance`` (with their series and study rows when the
  rejection leaves those empty), in one writer transaction. Every query and retrieve
  (C-FIND, QIDO-RS, WADO-RS and its metadata, frames and rendered images, C-MOVE,
  C-GET, the study list and its counts, FHIR ImagingStudy) reads ``instance`` and so
  stops seeing them at once; no adapter filters anything. The note itself is moved
  there too: kept, but hidden from normal queries, as dcm4chee keeps it.
- Who may reject what: a sender rejects only instances its own trust stored (the
  ``origin_trust`` of each instance). A note naming another trust's instances, or
  instances this archive does not hold, rejects nothing of them (the log and the
  rejection's counts say so): a modality withdraws only what its trust may store.
- An administrator (``Capability.DELETE``) lists the rejections and may undo one:
  the rows go back (series and study re-created when they had gone). Both are audited.
- The rejected instances' blobs are deleted by a job (:meth:`purge_expired`) once
  the region's ``rejection_retention_days`` have passed, unless the rejection was
  undone. Notes are kept (small, and the record of what happened).

- Incorrect Modality Worklist Entry (113038) also unlinks the rejected study from its
  order (the worklist entry the modality picked by mistake): the order goes back on
  the worklist, scheduled, under a new Study Instance UID, and its procedure steps no
  longer point at it, so the examination can be performed again for the right patient.
  An undo brings the instances back but does not link them to the order again.

Not done here: an edge node does not apply notes
itself (the core does, when the note is forwarded); ``netpacs reindex`` rebuilds the
index from the blobs and so brings back rejected instances not yet purged.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from pydicom.uid import generate_uid

from netpacs.domain.dicom.header import JsonDataset, first_str
from netpacs.domain.outcomes import Origin, Problem, Refused
from netpacs.index.records import InstanceRecord
from netpacs.index.schema import (
    imaging_order,
    instance,
    performed_step,
    rejected_instance,
    rejection,
    series,
    study,
)
from netpacs.index.writer import bump_epoch
from netpacs.services.access import SYSTEM, Capability, Principal
from netpacs.services.audit import Actor, AuditRecord, AuditService, Event, Purpose
from netpacs.services.orders.model import OrderStatus
from netpacs.storage.blobstore import BlobStore

log = logging.getLogger(__name__)

KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
#: CID 7011 "Rejected for ..." codes (scheme DCM) that make a KOS a rejection note.
REJECTION_CODES = {
    "113001": "Rejected for Quality Reasons",
    "113037": "Rejected for Patient Safety Reasons",
    "113038": "Incorrect Modality Worklist Entry",
    "113039": "Data Retention Policy Expired",
}
#: The most instances one note may name (a peer's count is bounded).
MAX_REFERENCES = 20_000
_CHUNK = 500

Run = Callable[[Callable[[sa.Connection], Any]], Any]


INCORRECT_WORKLIST_ENTRY = "113038"


class RejectionError(Refused):
    """A rejection cannot be listed or undone: not found, not allowed, or done already."""


@dataclass(frozen=True, slots=True)
class RejectionNote:
    code_value: str
    code_meaning: str
    # (Study, Series, SOP Instance UID) of each instance the note names.
    references: tuple[tuple[str, str, str], ...]


def _items(header: JsonDataset | dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = header.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return [v for v in values or [] if isinstance(v, dict)]


def parse_note(header: JsonDataset) -> RejectionNote | None:
    """The rejection a KOS header carries, or None when it is not a rejection note.

    PS3.3 C.17.6 Key Object Document: Concept Name Code Sequence (0040,A043);
    Current Requested Procedure Evidence Sequence (0040,A375) > Referenced Series
    Sequence (0008,1115) > Referenced SOP Sequence (0008,1199)."""
    if first_str(header, "00080016") != KEY_OBJECT_SELECTION:
        return None
    concept = _items(header, "0040A043")
    if not concept:
        return None
    code = first_str(concept[0], "00080100")
    if code not in REJECTION_CODES or first_str(concept[0], "00080102") != "DCM":
        return None
    refs: list[tuple[str, str, str]] = []
    for st in _items(header, "0040A375"):
        study_uid = first_str(st, "0020000D")
        for se in _items(st, "00081115"):
            series_uid = first_str(se, "0020000E")
            for sop in _items(se, "00081199"):
                refs.append((study_uid, series_uid, first_str(sop, "00081155")))
                if len(refs) > MAX_REFERENCES:
                    raise RejectionError(
                        Problem.INVALID, f"a rejection note names over {MAX_REFERENCES} instances"
                    )
    meaning = first_str(concept[0], "00080104") or REJECTION_CODES[code]
    return RejectionNote(code, meaning, tuple(refs))


def _encode(row: sa.RowMapping | dict[str, Any]) -> str:
    return orjson.dumps(
        {
            str(k): {"$dt": v.isoformat()} if isinstance(v, dt.datetime) else v
            for k, v in row.items()
        }
    ).decode()


def _decode(text: str) -> dict[str, Any]:
    row: dict[str, Any] = orjson.loads(text)
    return {
        k: dt.datetime.fromisoformat(v["$dt"]) if isinstance(v, dict) and "$dt" in v else v
        for k, v in row.items()
    }


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


class RejectionService:
    """Applies rejection notes as they are stored, lists and undoes rejections, and
    purges what they rejected after the retention delay."""

    def __init__(
        self,
        *,
        run: Run,
        read_engine: sa.Engine,
        blobs: BlobStore,
        source_id: str,
        retention_days: float,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._run = run
        self._read = read_engine
        self._blobs = blobs
        self._source_id = source_id
        self.retention_days = retention_days
        self._clock = clock

    def _audit_in(self, conn: sa.Connection, record: AuditRecord) -> None:
        AuditService(lambda fn: fn(conn), source_id=self._source_id).record(record)

    # -- a note arrives ------------------------------------------------------------------
    def on_stored(self, record: InstanceRecord, origin: Origin) -> None:
        """Apply the note ``record`` is, if it is one (called by ingest after a KOS is
        stored or re-sent). A failure is logged: the note stays stored and visible,
        and a re-send of it applies it then."""
        try:
            note = parse_note(record.header)
        except RejectionError as exc:
            log.warning("rejection note %s not applied: %s", record.instance.sop_instance_uid, exc)
            return
        if note is None:
            return
        try:
            self._run(lambda conn: self._apply(conn, record, note, origin))
        except Exception:
            log.exception("rejection note %s not applied", record.instance.sop_instance_uid)

    def _apply(
        self, conn: sa.Connection, record: InstanceRecord, note: RejectionNote, origin: Origin
    ) -> None:
        note_uid = record.instance.sop_instance_uid
        who = origin.ae_title or origin.user or origin.protocol.value
        found = conn.execute(
            sa.select(rejection.c.id).where(rejection.c.note_sop_instance_uid == note_uid)
        ).scalar()
        if found is not None:  # a re-sent note: applied already; hide this copy too
            self._hide(conn, [note_uid], int(found), note_uid=note_uid)
            return
        rid = conn.execute(
            sa.insert(rejection)
            .values(
                note_sop_instance_uid=note_uid,
                code_value=note.code_value,
                code_meaning=note.code_meaning,
                study_instance_uid=record.study.study_instance_uid,
                patient_id=record.patient.patient_id,
                issuer=record.patient.issuer,
                sender=who,
                sender_trust=origin.trust,
                received_at=self._clock(),
                referenced=len(note.references),
                rejected=0,
            )
            .returning(rejection.c.id)
        ).scalar_one()
        wanted = {sop: series_uid for _, series_uid, sop in note.references}
        allowed = self._rejectable(conn, wanted, origin.trust)
        hidden = self._hide(conn, [*allowed, note_uid], int(rid), note_uid=note_uid)
        conn.execute(sa.update(rejection).where(rejection.c.id == rid).values(rejected=hidden - 1))
        unlinked = 0
        if note.code_value == INCORRECT_WORKLIST_ENTRY and allowed:
            taken = set(allowed)
            studies = {s for s, _, sop in note.references if sop in taken and s}
            unlinked = self._unlink_orders(conn, studies or {record.study.study_instance_uid})
        left = len(note.references) - (hidden - 1)
        log.warning(
            "rejection note %s (%s) from %s: %d of %d instances rejected%s",
            note_uid,
            note.code_meaning,
            who,
            hidden - 1,
            len(note.references),
            f"; {left} not held here or not its trust's to reject" if left else "",
        )
        self._audit_in(
            conn,
            AuditRecord(
                Event.REJECT,
                origin_actor(origin),
                purpose=Purpose.HOPERAT,
                patients=[(record.patient.patient_id, record.patient.issuer)],
                study_uids=sorted({s for s, _, _ in note.references} - {""}),
                detail=f"rejection note {note_uid} ({note.code_value} {note.code_meaning}): "
                f"{hidden - 1} of {len(note.references)} instances hidden"
                + (f"; {unlinked} order(s) unlinked and scheduled again" if unlinked else ""),
            ),
        )

    def _unlink_orders(self, conn: sa.Connection, study_uids: set[str]) -> int:
        """Put the orders the rejected studies performed back on the worklist (module
        doc); returns how many."""
        now = self._clock()
        orders = conn.execute(
            sa.select(imaging_order.c.id).where(imaging_order.c.study_instance_uid.in_(study_uids))
        ).scalars()
        count = 0
        for order_id in orders:
            conn.execute(
                sa.update(imaging_order)
                .where(imaging_order.c.id == order_id)
                .values(
                    status=OrderStatus.SCHEDULED.value,
                    study_instance_uid=generate_uid(),
                    updated_at=now,
                )
            )
            conn.execute(
                sa.update(performed_step)
                .where(performed_step.c.order_fk == order_id)
                .values(order_fk=None, updated_at=now)
            )
            count += 1
        return count

    def _rejectable(
        self, conn: sa.Connection, wanted: dict[str, str], trust: str | None
    ) -> list[str]:
        """Of the SOP Instance UIDs ``wanted`` (with the series the note names them in),
        those stored here, in that series, by ``trust``."""
        if trust is None:
            return []
        found: list[str] = []
        for chunk in _chunks(list(wanted)):
            rows = conn.execute(
                sa.select(instance.c.sop_instance_uid, series.c.series_instance_uid)
                .select_from(instance.join(series, instance.c.series_fk == series.c.id))
                .where(instance.c.sop_instance_uid.in_(chunk), instance.c.origin_trust == trust)
            )
            found += [sop for sop, series_uid in rows if wanted[sop] in ("", series_uid)]
        return found

    def _hide(
        self, conn: sa.Connection, sop_uids: Sequence[str], rid: int, *, note_uid: str
    ) -> int:
        """Move the index rows of ``sop_uids`` into ``rejected_instance``; remove series
        and studies left empty. Returns how many instances were moved."""
        moved = 0
        touched_series: set[int] = set()
        for chunk in _chunks(list(sop_uids)):
            rows = conn.execute(
                sa.select(instance, series, study)
                .select_from(
                    instance.join(series, instance.c.series_fk == series.c.id).join(
                        study, series.c.study_fk == study.c.id
                    )
                )
                .where(instance.c.sop_instance_uid.in_(chunk))
            ).all()
            for row in rows:
                inst = {c.name: row._mapping[c] for c in instance.c}
                if conn.execute(
                    sa.select(rejected_instance.c.id).where(
                        rejected_instance.c.sop_instance_uid == inst["sop_instance_uid"]
                    )
                ).first():
                    continue  # the copy of a re-sent note: its first copy is kept
                conn.execute(
                    sa.insert(rejected_instance).values(
                        rejection_fk=rid,
                        sop_instance_uid=inst["sop_instance_uid"],
                        blob_key=inst["blob_key"],
                        is_note=inst["sop_instance_uid"] == note_uid,
                        instance_row=_encode(inst),
                        series_row=_encode({c.name: row._mapping[c] for c in series.c}),
                        study_row=_encode({c.name: row._mapping[c] for c in study.c}),
                    )
                )
                moved += 1
            conn.execute(sa.delete(instance).where(instance.c.sop_instance_uid.in_(chunk)))
            touched_series |= {int(r._mapping[series.c.id]) for r in rows}
        self._remove_empty(conn, touched_series)
        return moved

    @staticmethod
    def _remove_empty(conn: sa.Connection, series_ids: set[int]) -> None:
        if not series_ids:
            return
        studies = set(
            conn.execute(sa.select(series.c.study_fk).where(series.c.id.in_(series_ids))).scalars()
        )
        has_instances = sa.select(instance.c.id).where(instance.c.series_fk == series.c.id)
        gone = conn.execute(
            sa.delete(series).where(series.c.id.in_(series_ids), ~has_instances.exists())
        ).rowcount
        has_series = sa.select(series.c.id).where(series.c.study_fk == study.c.id)
        gone += conn.execute(
            sa.delete(study).where(study.c.id.in_(studies), ~has_series.exists())
        ).rowcount
        if gone:
            bump_epoch(conn)  # every index writer drops the series and study ids it cached

    # -- administrators ------------------------------------------------------------------
    @staticmethod
    def _check(principal: Principal) -> None:
        if not principal.may(Capability.DELETE):
            raise RejectionError(
                Problem.FORBIDDEN, "rejections are managed by PACS administrators only"
            )

    def listing(self, principal: Principal, *, limit: int = 200) -> list[dict[str, Any]]:
        """The rejections received, newest first."""
        self._check(principal)
        with self._read.connect() as conn:
            rows = conn.execute(
                sa.select(rejection).order_by(rejection.c.id.desc()).limit(min(limit, 1000))
            ).all()
        return [_public(dict(r._mapping)) for r in rows]

    def undo(self, principal: Principal, rejection_id: int, *, reason: str) -> dict[str, Any]:
        """Put the instances the rejection hid back (audited); its note stays hidden."""
        self._check(principal)
        text = " ".join(reason.split())
        if len(text) < 10:
            raise RejectionError(
                Problem.MALFORMED, "say why the rejection is undone (at least 10 characters)"
            )
        result: dict[str, Any] = self._run(
            lambda conn: self._restore(conn, principal, rejection_id, text)
        )
        return result

    def _restore(
        self, conn: sa.Connection, principal: Principal, rid: int, reason: str
    ) -> dict[str, Any]:
        row = conn.execute(sa.select(rejection).where(rejection.c.id == rid)).first()
        if row is None:
            raise RejectionError(Problem.NOT_FOUND, f"no rejection {rid}")
        if row.undone_at is not None or row.purged_at is not None:
            done = "undone" if row.undone_at is not None else "purged"
            raise RejectionError(Problem.CONFLICT, f"rejection {rid} was {done} already")
        hidden = conn.execute(
            sa.select(rejected_instance).where(
                rejected_instance.c.rejection_fk == rid, ~rejected_instance.c.is_note
            )
        ).all()
        restored = 0
        for item in hidden:
            if self._put_back(conn, item):
                restored += 1
            conn.execute(sa.delete(rejected_instance).where(rejected_instance.c.id == item.id))
        now = self._clock()
        conn.execute(
            sa.update(rejection)
            .where(rejection.c.id == rid)
            .values(undone_at=now, undone_by=principal.user_id)
        )
        self._audit_in(
            conn,
            AuditRecord(
                Event.RESTORE,
                principal.actor(),
                purpose=Purpose.HOPERAT,
                patients=[(row.patient_id, row.issuer)],
                study_uids=[row.study_instance_uid] if row.study_instance_uid else [],
                detail=f"rejection {rid} (note {row.note_sop_instance_uid}, {row.code_meaning}) "
                f"undone: {restored} instances restored; reason: {reason}",
            ),
        )
        log.warning("rejection %d undone by %s: %d restored", rid, principal.user_id, restored)
        updated = conn.execute(sa.select(rejection).where(rejection.c.id == rid)).one()
        return {**_public(dict(updated._mapping)), "restored": restored}

    @staticmethod
    def _put_back(conn: sa.Connection, item: sa.Row[Any]) -> bool:
        """Re-insert one hidden instance (its study and series first when they had gone,
        under new ids). False when the same SOP Instance UID is stored again meanwhile."""
        inst, se, st = (
            _decode(item.instance_row),
            _decode(item.series_row),
            _decode(item.study_row),
        )
        if conn.execute(
            sa.select(instance.c.id).where(instance.c.sop_instance_uid == inst["sop_instance_uid"])
        ).first():
            return False
        study_pk = conn.execute(
            sa.select(study.c.id).where(study.c.study_instance_uid == st["study_instance_uid"])
        ).scalar()
        if study_pk is None:
            st.pop("id")
            study_pk = conn.execute(sa.insert(study).values(st).returning(study.c.id)).scalar()
        series_pk = conn.execute(
            sa.select(series.c.id).where(series.c.series_instance_uid == se["series_instance_uid"])
        ).scalar()
        if series_pk is None:
            se.pop("id")
            se["study_fk"] = study_pk
            series_pk = conn.execute(sa.insert(series).values(se).returning(series.c.id)).scalar()
        inst.pop("id")
        inst["series_fk"] = series_pk
        conn.execute(sa.insert(instance).values(inst))
        return True

    # -- the retention job ---------------------------------------------------------------
    def purge_expired(self) -> int:
        """Delete the blobs of instances rejected longer than the retention delay ago
        (and not undone); returns how many were deleted."""
        cutoff = self._clock() - dt.timedelta(days=self.retention_days)
        keys: list[str] = self._run(lambda conn: self._purge_rows(conn, cutoff))
        for key in keys:
            try:
                self._blobs.delete(key)
            except OSError as exc:
                log.error("blob %s of a rejected instance not removed (%s): an orphan", key, exc)
        return len(keys)

    def _purge_rows(self, conn: sa.Connection, cutoff: dt.datetime) -> list[str]:
        due = conn.execute(
            sa.select(rejection)
            .where(
                rejection.c.undone_at.is_(None),
                rejection.c.purged_at.is_(None),
                rejection.c.received_at < cutoff,
            )
            .with_for_update(skip_locked=True)  # several nodes run the job
        ).all()
        keys: list[str] = []
        for row in due:
            gone = list(
                conn.execute(
                    sa.delete(rejected_instance)
                    .where(rejected_instance.c.rejection_fk == row.id, ~rejected_instance.c.is_note)
                    .returning(rejected_instance.c.blob_key)
                ).scalars()
            )
            conn.execute(
                sa.update(rejection).where(rejection.c.id == row.id).values(purged_at=self._clock())
            )
            self._audit_in(
                conn,
                AuditRecord(
                    Event.DELETE,
                    SYSTEM.actor(),
                    purpose=Purpose.HOPERAT,
                    patients=[(row.patient_id, row.issuer)],
                    study_uids=[row.study_instance_uid] if row.study_instance_uid else [],
                    detail=f"{len(gone)} instances rejected by note {row.note_sop_instance_uid} "
                    f"({row.code_meaning}) deleted after {self.retention_days:g} days",
                ),
            )
            keys += gone
        return keys


def origin_actor(origin: Origin) -> Actor:
    """The audit actor of a store's sender."""
    return Actor(
        user_id=origin.ae_title or origin.user or origin.protocol.value,
        trust=origin.trust,
        is_application=origin.ae_title is not None,
    )


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in row.items()}
