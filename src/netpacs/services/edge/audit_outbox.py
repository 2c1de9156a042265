"""The edge's audit records go to the core's audit trail (issue 13).

At the edge, every audit record (what was answered from the cache, sign-ins, stores,
questions of the site's DICOM AEs) is committed to its own index first, as anywhere
(services.audit), and waits there while the core is away. :class:`AuditSender` sends
them to the core in id order, in batches (``POST /api/edge/audit``), and moves its mark
(``edge_audit_mark``) only when the core took a batch. :class:`AuditIntake` is the
core's side: it keeps each record once (its own mark per edge node: a batch sent again
after a lost answer is not kept twice), as the edge built it, in the core's trail.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

import orjson
import sqlalchemy as sa

from netpacs.index.schema import audit_event, edge_audit_mark
from netpacs.services.access import Principal, Role
from netpacs.services.edge.ports import UpstreamPort, UpstreamUnavailable

log = logging.getLogger(__name__)

AUDIT_PATH = "/api/edge/audit"
BATCH = 200
_OWN = ""  # the edge's own mark
_FIELDS = (
    "event_id",
    "event_type",
    "action",
    "outcome",
    "user_id",
    "trust",
    "role",
    "purpose_of_use",
    "source",
    "patient_id",
    "issuer",
    "study_uids",
    "detail",
    "message_xml",
)


class AuditRefused(ValueError):
    """A batch the core does not keep; the message says why. ``forbidden``: the sender
    may not send any (else: this batch is malformed)."""

    def __init__(self, message: str, *, forbidden: bool = False) -> None:
        super().__init__(message)
        self.forbidden = forbidden


def _mark(conn: sa.Connection, sender: str, *, lock: bool = False) -> int:
    """The sender's mark; ``lock``: held until the transaction ends (two core nodes
    given the same batch keep it once)."""
    query = sa.select(edge_audit_mark.c.last_id).where(edge_audit_mark.c.sender == sender)
    value = conn.execute(query.with_for_update() if lock else query).scalar_one_or_none()
    return int(value or 0)


def _set_mark(conn: sa.Connection, sender: str, last_id: int) -> None:
    done = conn.execute(
        sa.update(edge_audit_mark).where(edge_audit_mark.c.sender == sender).values(last_id=last_id)
    ).rowcount
    if not done:
        conn.execute(sa.insert(edge_audit_mark).values(sender=sender, last_id=last_id))


class AuditSender:
    """At the edge: sends the audit records the core has not taken yet (a job of the
    edge's job worker, services.jobs.runner)."""

    name = "audit to the core"

    def __init__(
        self,
        engine: sa.Engine,
        upstream: UpstreamPort,
        *,
        timeout: float = 10.0,
        poll: float = 2.0,
    ) -> None:
        self._engine = engine
        self._upstream = upstream
        self._timeout = timeout
        self._poll = poll

    def step(self) -> float:
        """One batch; at once again while full batches go, else after ``poll``."""
        return 0.0 if self.send_batch() >= BATCH else self._poll

    def close(self) -> None:
        pass

    def waiting(self) -> int:
        """How many records wait for the core."""
        with self._engine.connect() as conn:
            mark = _mark(conn, _OWN)
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(audit_event)
                    .where(audit_event.c.id > mark)
                ).scalar_one()
            )

    def send_batch(self) -> int:
        """Send one batch; how many records the core took (0: none waited, or the core
        is away: they wait)."""
        with self._engine.connect() as conn:
            mark = _mark(conn, _OWN)
            rows = conn.execute(
                sa.select(audit_event)
                .where(audit_event.c.id > mark)
                .order_by(audit_event.c.id)
                .limit(BATCH)
            ).all()
        if not rows:
            return 0
        records = [_record(row) for row in rows]
        try:
            answer = self._upstream.post(
                AUDIT_PATH,
                timeout=self._timeout,
                headers={"Content-Type": "application/json"},
                content=orjson.dumps({"records": records}),
            )
        except UpstreamUnavailable:
            return 0
        if answer.status_code != 200:
            log.error(
                "the core refused %d audit records: %s %s",
                len(records),
                answer.status_code,
                answer.text[:300],
            )
            return 0
        with self._engine.begin() as conn:
            _set_mark(conn, _OWN, max(r["id"] for r in records))
        return len(records)


def _record(row: Any) -> dict[str, Any]:
    when: dt.datetime = row.event_time
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    record = {name: getattr(row, name) for name in _FIELDS}
    record["id"] = int(row.id)
    record["event_time"] = when.isoformat()
    return record


class AuditIntake:
    """At the core: keeps the audit records an edge node sends, once each."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    def take(self, edge: Principal, records: Sequence[dict[str, Any]]) -> int:
        """Keep the records not kept before; how many were new. :class:`AuditRefused`
        for a sender that is not an edge node or a record about another trust's
        people."""
        if edge.role is not Role.EDGE or edge.via is not None:
            raise AuditRefused("only an edge node, as itself, sends audit records", forbidden=True)
        rows = []
        for record in records:
            try:
                row = {name: record.get(name) for name in _FIELDS}
                row["event_time"] = dt.datetime.fromisoformat(str(record["event_time"]))
                row["outcome"] = int(record["outcome"])
                ident = int(record["id"])
            except (KeyError, TypeError, ValueError) as exc:
                raise AuditRefused(f"an audit record is not complete: {exc}") from None
            if row["trust"] not in (None, edge.trust):
                raise AuditRefused(
                    f"audit record {ident} names trust {row['trust']!r}: the edge node "
                    f"{edge.user_id} records for {edge.trust} only"
                )
            if not all(isinstance(row[k], str) for k in ("event_id", "action", "user_id")):
                raise AuditRefused(f"audit record {ident} lacks its event, action or user")
            row["detail"] = f"{row.get('detail') or ''} [recorded at edge {edge.user_id}]".strip()
            row["message_xml"] = str(row.get("message_xml") or "")
            rows.append((ident, row))
        with self._engine.begin() as conn:
            mark = _mark(conn, edge.user_id, lock=True)
            new = [(i, r) for i, r in sorted(rows, key=lambda x: x[0]) if i > mark]
            if new:
                conn.execute(sa.insert(audit_event), [r for _, r in new])
                _set_mark(conn, edge.user_id, new[-1][0])
        return len(new)
