"""The SQL of the outboxes: queued results (``result_outbox``) and audit records to forward.

Jobs on several nodes share these tables. They claim work with locks that end with
their transaction, so that work held by a node that dies is free again as soon as its
database connection is gone: rows with ``FOR UPDATE SKIP LOCKED`` (no two nodes take the
same rows), and PostgreSQL advisory locks where one sender at a time must do a piece of
work (one trust's results, which go strictly in order). SQLite serves one node and has
neither: there the statements run without the locks.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from typing import Any

import orjson
import sqlalchemy as sa

from netpacs.domain.outbox import AuditEntry, PendingResult, QueuedResult
from netpacs.domain.region import ResultsHeader
from netpacs.domain.report import Addendum, Reporter, SignedReport
from netpacs.index.schema import audit_event, result_outbox

#: The version of the stored form of a queued result (``result_outbox.message``).
RESULT_FORMAT = 1
ERROR_LENGTH = 2000  # characters of last_error kept


def shares_locks(conn: sa.Connection) -> bool:
    """True where several nodes may share the database (PostgreSQL)."""
    return conn.dialect.name != "sqlite"


def try_lock(conn: sa.Connection, name: str) -> bool:
    """Take the advisory lock ``name`` until ``conn``'s transaction ends; False when
    another session holds it. Always True on SQLite (one node)."""
    if not shares_locks(conn):
        return True
    digest = hashlib.sha256(f"netpacs {name}".encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    return bool(conn.execute(sa.select(sa.func.pg_try_advisory_xact_lock(key))).scalar_one())


def _aware(when: dt.datetime) -> dt.datetime:
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


# -- results -----------------------------------------------------------------------------


def queue_result(
    conn: sa.Connection, result: QueuedResult, *, trust: str, report_event_pk: int
) -> None:
    """Queue ``result`` for ``trust`` in ``conn``'s transaction, due at once."""
    conn.execute(
        sa.insert(result_outbox).values(
            trust=trust,
            study_instance_uid=result.report.study_instance_uid,
            report_event_fk=report_event_pk,
            control_id=result.control_id,
            message=orjson.dumps({"format": RESULT_FORMAT, "result": _stored(result)}).decode(),
            created_at=result.created_at,
            attempts=0,
            next_attempt_at=result.created_at,
        )
    )


def next_result(conn: sa.Connection, trust: str) -> PendingResult | None:
    """The oldest result of ``trust`` not yet accepted."""
    row = conn.execute(
        sa.select(
            result_outbox.c.id,
            result_outbox.c.trust,
            result_outbox.c.control_id,
            result_outbox.c.message,
            result_outbox.c.attempts,
            result_outbox.c.next_attempt_at,
        )
        .where(result_outbox.c.trust == trust, result_outbox.c.sent_at.is_(None))
        .order_by(result_outbox.c.id)
        .limit(1)
    ).first()
    if row is None:
        return None
    return PendingResult(
        id=row.id,
        trust=row.trust,
        control_id=row.control_id,
        attempts=row.attempts,
        next_attempt_at=_aware(row.next_attempt_at),
        content=_content(row.message),
    )


def result_accepted(conn: sa.Connection, result: PendingResult, *, at: dt.datetime) -> None:
    conn.execute(
        sa.update(result_outbox)
        .where(result_outbox.c.id == result.id)
        .values(sent_at=at, attempts=result.attempts + 1)
    )


def result_failed(
    conn: sa.Connection, result: PendingResult, *, error: str, retry_at: dt.datetime
) -> None:
    conn.execute(
        sa.update(result_outbox)
        .where(result_outbox.c.id == result.id)
        .values(
            attempts=result.attempts + 1,
            last_error=error[:ERROR_LENGTH],
            next_attempt_at=retry_at,
        )
    )


def results_held(conn: sa.Connection, trust: str, *, error: str) -> int:
    """Give every waiting result of ``trust`` the reason it waits; how many changed."""
    return int(
        conn.execute(
            sa.update(result_outbox)
            .where(
                result_outbox.c.trust == trust,
                result_outbox.c.sent_at.is_(None),
                sa.or_(result_outbox.c.last_error.is_(None), result_outbox.c.last_error != error),
            )
            .values(last_error=error[:ERROR_LENGTH])
        ).rowcount
    )


def trusts_waiting(conn: sa.Connection, *, besides: Sequence[str]) -> list[str]:
    """Trusts with waiting results, other than ``besides``."""
    return list(
        conn.execute(
            sa.select(result_outbox.c.trust)
            .where(result_outbox.c.sent_at.is_(None), result_outbox.c.trust.not_in(besides))
            .distinct()
        ).scalars()
    )


def _stored(result: QueuedResult) -> dict[str, Any]:
    names = result.names
    return {
        "control_id": result.control_id,
        "created_at": result.created_at,
        "names": {
            "sending_application": names.sending_application,
            "sending_facility": names.sending_facility,
            "receiving_application": names.receiving_application,
            "receiving_facility": names.receiving_facility,
        },
        "report": result.report,  # a dataclass: orjson writes its fields, datetimes ISO 8601
        "study_date": result.study_date,
        "study_time": result.study_time,
        "placer_order_number": result.placer_order_number,
        "filler_order_number": result.filler_order_number,
        "order_accession_number": result.order_accession_number,
    }


def _content(message: str) -> QueuedResult | str:
    if not message.startswith("{"):
        return message  # text queued before results were kept as values
    stored = orjson.loads(message)
    if stored.get("format") != RESULT_FORMAT:
        raise ValueError(f"a queued result in format {stored.get('format')!r} is not known")
    return _result(stored["result"])


def _when(value: str) -> dt.datetime:
    return _aware(dt.datetime.fromisoformat(value))


def _reporter(value: dict[str, Any]) -> Reporter:
    return Reporter(value["username"], value["name"], value["trust"])


def _result(value: dict[str, Any]) -> QueuedResult:
    r = value["report"]
    report = SignedReport(
        study_instance_uid=r["study_instance_uid"],
        accession_number=r["accession_number"],
        patient_id=r["patient_id"],
        issuer=r["issuer"],
        patient_name=r["patient_name"],
        birth_date=r["birth_date"],
        sex=r["sex"],
        nhs_number=r["nhs_number"],
        requesting_trust=r["requesting_trust"],
        requesting_site=r["requesting_site"],
        modality=r["modality"],
        study_description=r["study_description"],
        text=r["text"],
        author=_reporter(r["author"]),
        signed_at=_when(r["signed_at"]),
        addenda=tuple(
            Addendum(a["text"], _reporter(a["author"]), _when(a["at"])) for a in r["addenda"]
        ),
        event=r["event"],
        event_at=_when(r["event_at"]),
    )
    return QueuedResult(
        control_id=value["control_id"],
        created_at=_when(value["created_at"]),
        names=ResultsHeader(**value["names"]),
        report=report,
        study_date=value["study_date"],
        study_time=value["study_time"],
        placer_order_number=value.get("placer_order_number", ""),
        filler_order_number=value.get("filler_order_number", ""),
        order_accession_number=value.get("order_accession_number", ""),
    )


# -- audit records -------------------------------------------------------------------------


def audit_waiting(conn: sa.Connection) -> bool:
    """Whether any audit record waits to be forwarded."""
    query = sa.select(audit_event.c.id).where(audit_event.c.forwarded_at.is_(None)).limit(1)
    return conn.execute(query).first() is not None


def claim_audit_batch(conn: sa.Connection, limit: int) -> list[AuditEntry]:
    """The oldest waiting audit records that no other session has claimed, locked until
    ``conn``'s transaction ends (PostgreSQL; SQLite has one node and no row locks)."""
    rows = conn.execute(
        sa.select(
            audit_event.c.id,
            audit_event.c.event_time,
            audit_event.c.event_id,
            audit_event.c.outcome,
            audit_event.c.message_xml,
        )
        .where(audit_event.c.forwarded_at.is_(None))
        .order_by(audit_event.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    return [
        AuditEntry(
            id=row.id,
            event_time=_aware(row.event_time),
            event_id=row.event_id,
            outcome=row.outcome,
            message_xml=row.message_xml,
        )
        for row in rows
    ]


def audit_forwarded(conn: sa.Connection, entries: Sequence[AuditEntry], *, at: dt.datetime) -> None:
    conn.execute(
        sa.update(audit_event)
        .where(audit_event.c.id.in_([entry.id for entry in entries]))
        .values(forwarded_at=at)
    )
