"""MPPS at an edge node (issues 13 and 15): the site's modalities report their performed
procedure steps to their edge, which passes them on to the core in order.

- The edge (:class:`EdgeMpps`, the DIMSE worker's MPPS service there): an N-CREATE or
  N-SET from an AE of the region of the edge's own trust is checked as far as the edge
  can (N-CREATE's status is IN PROGRESS; an N-SET's status one of the three), kept in
  ``edge_mpps_outbox`` (committed before the modality gets its success) and answered.
  The order's state is the core's: the edge's worklist shows the step STARTED after the
  core took it and the edge's next copy of the orders.
- :class:`MppsSender` (a job of the edge's job worker) sends the kept messages to the
  core (``POST /api/edge/mpps``) one at a time in the order they came, each again until
  the core has answered (the link cut, the core away: it waits; once back, the queue
  drains in order). A message the core refuses (a duplicate N-CREATE after a resend, an
  N-SET of a step already completed) is logged and dropped: the modality was answered
  long ago.
- The core (:func:`relay`): the edge's message is applied by the core's MPPS service for
  the AE (of the edge's trust and site), exactly as if the modality had called the core.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import orjson
import sqlalchemy as sa

from netpacs.domain.region import Region
from netpacs.index.schema import edge_mpps_outbox
from netpacs.services.access import Capability, Principal, Role, principal_for_ae
from netpacs.services.access_policy import AccessPolicy
from netpacs.services.audit import AuditRecord, AuditService, Event
from netpacs.services.edge.ports import UpstreamPort, UpstreamUnavailable
from netpacs.services.orders.mpps import (
    MppsProblem,
    MppsRefused,
    MppsService,
    MppsStatus,
    PerformedSeries,
    StepValues,
)

log = logging.getLogger(__name__)

Run = Callable[[Callable[[sa.Connection], Any]], Any]  # IndexWriter.execute
OPERATIONS = ("create", "update")
_STATUSES = {s.value for s in MppsStatus}


class EdgeMpps:
    """The edge's MPPS service: keeps what the site's modalities report, for the core."""

    def __init__(self, run: Run, region: Region, audit: AuditService | None, *, trust: str) -> None:
        self._run = run
        self._region = region
        self._audit = audit
        self._trust = trust

    def create(self, principal: Principal, sop_instance_uid: str, values: StepValues) -> str:
        status = (values.status or "").strip()
        if status != MppsStatus.IN_PROGRESS.value:
            raise MppsRefused(
                MppsProblem.INVALID_VALUE,
                f"Performed Procedure Step Status must be IN PROGRESS at N-CREATE, not {status!r}",
            )
        return self._keep(principal, sop_instance_uid, "create", values)

    def update(self, principal: Principal, sop_instance_uid: str, values: StepValues) -> str:
        if values.status is not None and values.status.strip() not in _STATUSES:
            raise MppsRefused(
                MppsProblem.INVALID_VALUE,
                f"Performed Procedure Step Status {values.status[:20]!r} is not "
                "IN PROGRESS, COMPLETED or DISCONTINUED",
            )
        return self._keep(principal, sop_instance_uid, "update", values)

    def _keep(self, principal: Principal, uid: str, operation: str, values: StepValues) -> str:
        ae = self._region.ae(principal.user_id)
        if ae is None or ae.trust != self._trust or principal.trust != self._trust:
            raise MppsRefused(
                MppsProblem.NOT_AUTHORIZED,
                f"only an AE of {self._trust} may report procedure steps to this edge node",
            )
        row = {
            "sop_instance_uid": uid,
            "operation": operation,
            "calling_ae": ae.ae_title[:16],
            "values_json": orjson.dumps(asdict(values)).decode(),
            "received_at": dt.datetime.now(dt.UTC),
        }
        self._run(lambda conn: conn.execute(sa.insert(edge_mpps_outbox).values(**row)))
        detail = f"MPPS {uid} {operation} kept for the regional archive"
        log.info("%s: %s", principal.user_id, detail)
        if self._audit is not None:
            self._audit.record(AuditRecord(Event.PATIENT_RECORD, principal.actor(), detail=detail))
        return detail


class MppsSender:
    """The edge's job: the kept MPPS messages to the core, in order."""

    name = "edge MPPS sender"

    def __init__(
        self, run: Run, engine: sa.Engine, upstream: UpstreamPort, *, retry: float = 2.0
    ) -> None:
        self._run = run
        self._engine = engine
        self._upstream = upstream
        self._retry = retry

    def step(self) -> float:
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(edge_mpps_outbox).order_by(edge_mpps_outbox.c.id).limit(1)
            ).first()
        if row is None:
            return self._retry
        body = {
            "sop_instance_uid": row.sop_instance_uid,
            "operation": row.operation,
            "calling_ae": row.calling_ae,
            "values": orjson.loads(row.values_json),
        }
        try:
            answer = self._upstream.post(
                "/api/edge/mpps",
                content=orjson.dumps(body),
                headers={"Content-Type": "application/json"},
            )
        except UpstreamUnavailable:
            return self._retry  # in order: nothing after it goes first
        if answer.status_code == 401 or answer.status_code == 403:
            log.error("the core refuses the edge's MPPS messages: HTTP %s", answer.status_code)
            return 30.0
        if answer.status_code != 200:
            log.error(
                "MPPS %s %s refused by the core, dropped: %s",
                row.operation,
                row.sop_instance_uid,
                answer.text[:300],
            )
        self._run(
            lambda conn: conn.execute(
                sa.delete(edge_mpps_outbox).where(edge_mpps_outbox.c.id == row.id)
            )
        )
        return 0.0

    def close(self) -> None:
        pass


class RelayError(ValueError):
    """The edge's message is not one (400) or the core's MPPS service refused it (409)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def _values(raw: Any) -> StepValues:
    if not isinstance(raw, dict):
        raise RelayError("'values' is not an object", status=400)
    text = {}
    for name in ("status", "accession_number", "study_instance_uid", "modality"):
        value = raw.get(name)
        if value is not None and not (isinstance(value, str) and len(value) <= 256):
            raise RelayError(f"{name!r} is not text", status=400)
        text[name] = value
    station = raw.get("performed_station_ae")
    if station is not None and not (isinstance(station, str) and len(station) <= 64):
        raise RelayError("'performed_station_ae' is not text", status=400)
    series = raw.get("series")
    performed: tuple[PerformedSeries, ...] | None = None
    if series is not None:
        if not isinstance(series, list) or len(series) > 1000:
            raise RelayError("'series' is not a list of at most 1000", status=400)
        try:
            performed = tuple(
                PerformedSeries(
                    str(s["series_instance_uid"])[:64],
                    int(s["images"]),
                    str(s.get("description", ""))[:256],
                )
                for s in series
            )
        except (KeyError, TypeError, ValueError):
            raise RelayError("a performed series is not one", status=400) from None
    return StepValues(performed_station_ae=station, series=performed, **text)


def relay(
    mpps: MppsService, region: Region, access: AccessPolicy, edge: Principal, body: Any
) -> str:
    """Apply an edge's MPPS message at the core, for its AE; what was done, in words."""
    if edge.role is not Role.EDGE or not edge.trust or not edge.site:
        access.deny(edge, Capability.CONFIRM_STORED, "only an edge node relays MPPS messages")
    if not isinstance(body, dict) or body.get("operation") not in OPERATIONS:
        raise RelayError("an MPPS message has an operation, create or update", status=400)
    uid, calling = body.get("sop_instance_uid"), body.get("calling_ae")
    if not isinstance(uid, str) or not 0 < len(uid) <= 64 or not isinstance(calling, str):
        raise RelayError("an MPPS message has a SOP Instance UID and a calling AE", status=400)
    ae = region.ae(calling)
    if ae is None or ae.trust != edge.trust or (ae.site and ae.site != edge.site):
        raise RelayError(f"{calling[:16]!r} is not an AE of the edge's site", status=400)
    principal = principal_for_ae(ae, ae.ae_title, edge.address)
    values = _values(body.get("values"))
    try:
        if body["operation"] == "create":
            return mpps.create(principal, uid, values)
        return mpps.update(principal, uid, values)
    except MppsRefused as exc:
        raise RelayError(f"{exc.problem.value}: {exc.message}", status=409) from None
