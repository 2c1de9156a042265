"""The SQL of an edge's cache (issue 13): prefetch requests, per-study bookkeeping, the
cursors of the edge's jobs, the studies held and their removal.

An edge is one node on SQLite: its jobs run in one process, so requests are taken
without row locks. Every function works in the caller's transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from netpacs.domain.changes import PatientOfStudy
from netpacs.domain.outcomes import Protocol
from netpacs.index.schema import (
    adt_identity,
    audit_event,
    edge_cached_study,
    edge_cursor,
    edge_forward,
    edge_prefetch,
    instance,
    patient,
    series,
    study,
)
from netpacs.index.writer import bump_epoch

ERROR_LENGTH = 2000
#: Instances that came from the core (prefetch, read-through): the core holds them.
FROM_CORE = Protocol.UPSTREAM.value


def aware(when: dt.datetime) -> dt.datetime:
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


# -- cursors ------------------------------------------------------------------------------


def cursor(conn: sa.Connection, name: str) -> int | None:
    found = conn.execute(
        sa.select(edge_cursor.c.position).where(edge_cursor.c.name == name)
    ).scalar()
    return None if found is None else int(found)


def set_cursor(conn: sa.Connection, name: str, position: int) -> None:
    done = conn.execute(
        sa.update(edge_cursor).where(edge_cursor.c.name == name).values(position=position)
    ).rowcount
    if not done:
        conn.execute(sa.insert(edge_cursor).values(name=name, position=position))


# -- prefetch requests --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrefetchRequest:
    id: int
    patient_id: str
    issuer: str
    nhs_number: str | None
    attempts: int


def request_prefetch(
    conn: sa.Connection,
    *,
    patient_id: str,
    issuer: str,
    nhs_number: str | None,
    reason: str,
    now: dt.datetime,
) -> None:
    """Queue (again) the prefetch of a patient's earlier studies, due now."""
    values: dict[str, Any] = {
        "reason": reason[:200],
        "status": "queued",
        "requested_at": now,
        "next_attempt_at": now,
        "attempts": 0,
        "last_error": None,
    }
    if nhs_number:
        values["nhs_number"] = nhs_number
    done = conn.execute(
        sa.update(edge_prefetch)
        .where(edge_prefetch.c.patient_id == patient_id, edge_prefetch.c.issuer == issuer)
        .values(values)
    ).rowcount
    if not done:
        conn.execute(
            sa.insert(edge_prefetch).values(patient_id=patient_id, issuer=issuer, **values)
        )


def take_prefetch(conn: sa.Connection, now: dt.datetime) -> PrefetchRequest | None:
    """The request due first, marked running; None: none is due."""
    row = conn.execute(
        sa.select(edge_prefetch)
        .where(edge_prefetch.c.status == "queued", edge_prefetch.c.next_attempt_at <= now)
        .order_by(edge_prefetch.c.requested_at, edge_prefetch.c.id)
        .limit(1)
    ).first()
    if row is None:
        return None
    conn.execute(
        sa.update(edge_prefetch)
        .where(edge_prefetch.c.id == row.id)
        .values(
            status="running",
            started_at=now,
            finished_at=None,
            attempts=row.attempts + 1,
            studies_found=0,
            studies_cached=0,
            instances_fetched=0,
            bytes_fetched=0,
        )
    )
    return PrefetchRequest(
        int(row.id), row.patient_id, row.issuer, row.nhs_number, int(row.attempts) + 1
    )


def prefetch_progress(conn: sa.Connection, request_id: int, **counts: int) -> None:
    conn.execute(sa.update(edge_prefetch).where(edge_prefetch.c.id == request_id).values(counts))


def finish_prefetch(
    conn: sa.Connection,
    request_id: int,
    *,
    now: dt.datetime,
    error: str | None = None,
    retry_at: dt.datetime | None = None,
) -> None:
    """Done (no error), failed (an error, no retry) or queued again for ``retry_at``.
    A request queued again meanwhile (a new admission) stays queued."""
    where = sa.and_(edge_prefetch.c.id == request_id, edge_prefetch.c.status == "running")
    if retry_at is not None:
        values: dict[str, Any] = {"status": "queued", "next_attempt_at": retry_at}
    else:
        values = {"status": "failed" if error else "done", "finished_at": now}
    values["last_error"] = error[:ERROR_LENGTH] if error else None
    conn.execute(sa.update(edge_prefetch).where(where).values(values))


def retry_waiting(conn: sa.Connection, now: dt.datetime) -> int:
    """Requests waiting to be tried again (the core was away): due now."""
    return int(
        conn.execute(
            sa.update(edge_prefetch)
            .where(
                edge_prefetch.c.status == "queued",
                edge_prefetch.c.next_attempt_at > now,
                edge_prefetch.c.last_error.is_not(None),
            )
            .values(next_attempt_at=now)
        ).rowcount
    )


def recover_running(conn: sa.Connection, now: dt.datetime) -> int:
    """Requests left running by a process that ended: queued again."""
    return int(
        conn.execute(
            sa.update(edge_prefetch)
            .where(edge_prefetch.c.status == "running")
            .values(status="queued", next_attempt_at=now)
        ).rowcount
    )


def prefetch_rows(conn: sa.Connection, *, limit: int = 200) -> list[dict[str, Any]]:
    """The newest requests first, for the admin page."""
    rows = conn.execute(
        sa.select(edge_prefetch).order_by(edge_prefetch.c.requested_at.desc()).limit(limit)
    )
    return [{str(k): v for k, v in row._mapping.items()} for row in rows]


def last_prefetch(conn: sa.Connection) -> dt.datetime | None:
    found = conn.execute(sa.select(sa.func.max(edge_prefetch.c.finished_at))).scalar()
    return None if found is None else aware(found)


# -- studies held -------------------------------------------------------------------------


def held_instances(conn: sa.Connection, study_uid: str) -> set[str]:
    """The SOP Instance UIDs of ``study_uid`` this cache holds."""
    return set(
        conn.execute(
            sa.select(instance.c.sop_instance_uid)
            .select_from(
                instance.join(series, series.c.id == instance.c.series_fk).join(
                    study, study.c.id == series.c.study_fk
                )
            )
            .where(study.c.study_instance_uid == study_uid)
        ).scalars()
    )


def held_studies(conn: sa.Connection, study_uids: Iterable[str]) -> set[str]:
    uids = sorted(set(study_uids))
    held: set[str] = set()
    for start in range(0, len(uids), 500):
        held.update(
            conn.execute(
                sa.select(study.c.study_instance_uid).where(
                    study.c.study_instance_uid.in_(uids[start : start + 500])
                )
            ).scalars()
        )
    return held


def all_studies(conn: sa.Connection) -> list[str]:
    """Every study the edge holds (a resync compares them all with the core)."""
    return list(conn.execute(sa.select(study.c.study_instance_uid)).scalars())


def studies_of(conn: sa.Connection, patient_id: str, issuer: str) -> list[str]:
    return list(
        conn.execute(
            sa.select(study.c.study_instance_uid)
            .select_from(study.join(patient, patient.c.id == study.c.patient_fk))
            .where(patient.c.patient_id == patient_id, patient.c.issuer == issuer)
        ).scalars()
    )


def mark_prefetched(conn: sa.Connection, study_uid: str, now: dt.datetime) -> None:
    done = conn.execute(
        sa.update(edge_cached_study)
        .where(edge_cached_study.c.study_instance_uid == study_uid)
        .values(prefetched_at=now)
    ).rowcount
    if not done:
        conn.execute(
            sa.insert(edge_cached_study).values(
                study_instance_uid=study_uid, prefetched_at=now, last_access_at=now
            )
        )


def record_access(conn: sa.Connection, study_uids: Iterable[str], when: dt.datetime) -> None:
    for uid in set(study_uids):
        done = conn.execute(
            sa.update(edge_cached_study)
            .where(
                edge_cached_study.c.study_instance_uid == uid,
                edge_cached_study.c.last_access_at < when,
            )
            .values(last_access_at=when)
        ).rowcount
        exists = (
            done
            or conn.execute(
                sa.select(edge_cached_study.c.study_instance_uid).where(
                    edge_cached_study.c.study_instance_uid == uid
                )
            ).first()
        )
        if not exists:
            conn.execute(
                sa.insert(edge_cached_study).values(study_instance_uid=uid, last_access_at=when)
            )


def reads_since(
    conn: sa.Connection, after: int, *, limit: int = 5000
) -> tuple[list[tuple[dt.datetime, list[str]]], int]:
    """Reads of studies in the audit trail after id ``after`` (accesses, retrieves,
    exports): (when, study UIDs) each, and the last audit id taken."""
    rows = conn.execute(
        sa.select(audit_event.c.id, audit_event.c.event_time, audit_event.c.study_uids)
        .where(audit_event.c.id > after, audit_event.c.action == "R")
        .order_by(audit_event.c.id)
        .limit(limit)
    ).all()
    reads = [(aware(r.event_time), r.study_uids.split()) for r in rows if r.study_uids]
    return reads, int(rows[-1].id) if rows else after


@dataclass(frozen=True, slots=True)
class CachedStudy:
    """A study of the cache, as the eviction rules see it."""

    study_instance_uid: str
    size: int
    captured_at: dt.datetime | None  # the newest object captured at the site (not the core's)
    prefetched_at: dt.datetime | None
    last_access_at: dt.datetime


def cached_studies(conn: sa.Connection) -> list[CachedStudy]:
    """Every study held, with its size and the times the eviction rules weigh."""
    captured = sa.case((instance.c.origin_protocol != FROM_CORE, instance.c.received_at))
    rows = conn.execute(
        sa.select(
            study.c.study_instance_uid,
            sa.func.sum(instance.c.blob_size),
            sa.func.max(captured),
            sa.func.max(instance.c.received_at),
            edge_cached_study.c.prefetched_at,
            edge_cached_study.c.last_access_at,
        )
        .select_from(
            study.join(series, series.c.study_fk == study.c.id)
            .join(instance, instance.c.series_fk == series.c.id)
            .outerjoin(
                edge_cached_study,
                edge_cached_study.c.study_instance_uid == study.c.study_instance_uid,
            )
        )
        .group_by(
            study.c.study_instance_uid,
            edge_cached_study.c.prefetched_at,
            edge_cached_study.c.last_access_at,
        )
    ).all()
    found = []
    for uid, size, captured_at, received_at, prefetched_at, accessed_at in rows:
        received = aware(received_at)
        last = max(received, aware(accessed_at)) if accessed_at is not None else received
        found.append(
            CachedStudy(
                uid,
                int(size or 0),
                None if captured_at is None else aware(_datetime(captured_at)),
                None if prefetched_at is None else aware(prefetched_at),
                last,
            )
        )
    return found


def _datetime(value: Any) -> dt.datetime:
    # SQLite returns max() over a CASE as the stored text, not a datetime.
    if isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


def cache_bytes(conn: sa.Connection) -> int:
    return int(
        conn.execute(sa.select(sa.func.coalesce(sa.func.sum(instance.c.blob_size), 0))).scalar_one()
    )


def remove_study(conn: sa.Connection, study_uid: str) -> list[str] | None:
    """Remove the study's instance, series and study rows (the patient row stays); the
    blob keys to delete after the commit. None: not held."""
    pk = conn.execute(sa.select(study.c.id).where(study.c.study_instance_uid == study_uid)).scalar()
    if pk is None:
        return None
    of_study = sa.select(series.c.id).where(series.c.study_fk == pk)
    keys = [
        str(k)
        for k in conn.execute(
            sa.select(instance.c.blob_key).where(instance.c.series_fk.in_(of_study))
        ).scalars()
    ]
    conn.execute(sa.delete(instance).where(instance.c.series_fk.in_(of_study)))
    conn.execute(sa.delete(series).where(series.c.study_fk == pk))
    conn.execute(sa.delete(study).where(study.c.id == pk))
    conn.execute(
        sa.delete(edge_cached_study).where(edge_cached_study.c.study_instance_uid == study_uid)
    )
    bump_epoch(conn)
    return keys


def sop_uids_of(conn: sa.Connection, study_uid: str) -> Sequence[str]:
    return sorted(held_instances(conn, study_uid))


def follow_patient(conn: sa.Connection, now: PatientOfStudy, *, at: dt.datetime) -> bool:
    """Put the held study under the identity the core gives it, with the core's
    demographics (the patient row is made when missing); True when something changed.
    Objects are never rewritten: the index rows say who the patient is now, as at the
    core (services.adt)."""
    found = conn.execute(
        sa.select(study.c.id, study.c.patient_fk).where(
            study.c.study_instance_uid == now.study_instance_uid
        )
    ).first()
    if found is None:
        return False
    columns: dict[str, Any] = {
        "patient_name": now.patient_name,
        "patient_birth_date": now.patient_birth_date,
        "patient_sex": now.patient_sex,
    }
    if now.nhs_number:
        columns["nhs_number"] = now.nhs_number
    row = conn.execute(
        sa.select(patient).where(
            patient.c.patient_id == now.patient_id, patient.c.issuer == now.issuer
        )
    ).first()
    if row is None:
        pk = conn.execute(
            sa.insert(patient)
            .values(patient_id=now.patient_id, issuer=now.issuer, created_at=at, **columns)
            .returning(patient.c.id)
        ).scalar_one()
        changed = True
    else:
        pk = row.id
        differs = {k: v for k, v in columns.items() if getattr(row, k) != v}
        if differs:
            conn.execute(sa.update(patient).where(patient.c.id == pk).values(differs))
        changed = bool(differs)
    if found.patient_fk != pk:
        conn.execute(sa.update(study).where(study.c.id == found.id).values(patient_fk=pk))
        changed = True
    return changed


def mirror_registration(
    conn: sa.Connection, *, patient_id: str, issuer: str, nhs_number: str, now: dt.datetime
) -> None:
    """Keep here what the core holds of an admission's ADT registration (the hospital
    number and its NHS number), so that this edge's own access rules link the person's
    identities as the core's do while the core is away. An edge that received the ADT
    message itself has it already; its own values stay."""
    where = sa.and_(adt_identity.c.patient_id == patient_id, adt_identity.c.issuer == issuer)
    row = conn.execute(sa.select(adt_identity.c.nhs_number).where(where)).first()
    if row is None:
        conn.execute(
            sa.insert(adt_identity).values(
                patient_id=patient_id,
                issuer=issuer,
                nhs_number=nhs_number,
                updated_at=now,
                last_control_id="core change feed",
            )
        )
    elif not row.nhs_number:
        conn.execute(sa.update(adt_identity).where(where).values(nhs_number=nhs_number))
    pk = conn.execute(
        sa.select(patient.c.id).where(
            patient.c.patient_id == patient_id, patient.c.issuer == issuer
        )
    ).scalar()
    if pk is None:
        conn.execute(
            sa.insert(patient).values(
                patient_id=patient_id, issuer=issuer, created_at=now, nhs_number=nhs_number
            )
        )
    else:
        conn.execute(
            sa.update(patient)
            .where(patient.c.id == pk, patient.c.nhs_number.is_(None))
            .values(nhs_number=nhs_number)
        )


def unconfirmed_studies(conn: sa.Connection, study_uids: Iterable[str]) -> set[str]:
    """Those of ``study_uids`` with an object captured here that the core has not
    confirmed it holds (the forward queue, services.edge.forward)."""
    uids = sorted(set(study_uids))
    found: set[str] = set()
    for start in range(0, len(uids), 500):
        found.update(
            conn.execute(
                sa.select(edge_forward.c.study_instance_uid)
                .where(
                    edge_forward.c.study_instance_uid.in_(uids[start : start + 500]),
                    edge_forward.c.forwarded_at.is_(None),
                )
                .distinct()
            ).scalars()
        )
    return found
