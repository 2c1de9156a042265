"""The open orders of an edge's site, kept at the edge so that its Modality Worklist
answers while the core is away (issues 13 and 15).

- The core (:func:`site_orders`, ``GET /api/edge/orders``): the open (scheduled or
  started) orders of the asking edge's own trust and site, every modality, in
  scheduled order; at most :data:`MAX_ORDERS`. Only an edge node signed in as itself
  may ask, and it gets its own site's only.
- The edge (:class:`OrderCopy`, a job of its job worker): asks every ``every`` seconds
  (30 by default), and again within ``retry`` seconds of the link coming back, and
  makes its own ``imaging_order`` table the core's answer, in one transaction (only
  when the answer changed). The edge's worklist service is the core's
  (services.orders.worklist) over that table: the same matching, the same rules of
  who sees which orders, answered from the copy always, cut off or not.

The edge's copy is of open orders only: one the core completes, cancels or
discontinues leaves the copy at the next pull.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import sqlalchemy as sa

from netpacs.index.schema import imaging_order
from netpacs.services.access import Capability, Principal, Role
from netpacs.services.access_policy import AccessPolicy
from netpacs.services.edge.ports import UpstreamPort, UpstreamUnavailable
from netpacs.services.orders.model import OrderStatus

log = logging.getLogger(__name__)

#: At most this many open orders go to an edge (a site's week of work is far fewer).
MAX_ORDERS = 5000
MAX_TEXT = 65536  # characters of one value (a reason for the request is free text)
#: The columns an edge receives: the order as the worklist answers it.
COLUMNS = (
    "trust", "accession_number", "placer_order_number", "filler_order_number", "status",
    "patient_id", "issuer", "nhs_number", "patient_name", "patient_birth_date",
    "patient_sex", "study_instance_uid", "requested_procedure_id", "scheduled_step_id",
    "procedure_code", "procedure_scheme", "procedure_text", "modality", "priority",
    "requesting_clinician", "requesting_location", "patient_class", "reason", "site",
    "scheduled_at", "scheduled_station_ae",
)  # fmt: skip
Run = Callable[[Callable[[sa.Connection], Any]], Any]  # IndexWriter.execute
_OPEN = (OrderStatus.SCHEDULED.value, OrderStatus.IN_PROGRESS.value)


class OrderCopyError(ValueError):
    """The core's answer is not a list of orders (the copy stays as it was)."""


def site_orders(engine: sa.Engine, access: AccessPolicy, who: Principal) -> list[dict[str, Any]]:
    """The open orders of ``who``'s site (``who``: an edge node signed in as itself)."""
    if who.role is not Role.EDGE or not who.trust or not who.site:
        access.deny(who, Capability.CONFIRM_STORED, "only an edge node asks for its site's orders")
    columns = [imaging_order.c[name] for name in COLUMNS]
    statement = (
        sa.select(*columns)
        .where(
            imaging_order.c.trust == who.trust,
            imaging_order.c.site == who.site,
            imaging_order.c.status.in_(_OPEN),
        )
        .order_by(imaging_order.c.scheduled_at, imaging_order.c.id)
        .limit(MAX_ORDERS)
    )
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(statement)]


def _checked(body: Any, trust: str, site: str) -> list[dict[str, Any]]:
    """The orders of the core's answer, each with exactly :data:`COLUMNS`, of this
    edge's trust and site; :class:`OrderCopyError` otherwise."""
    orders = body.get("orders") if isinstance(body, dict) else None
    if not isinstance(orders, list) or len(orders) > MAX_ORDERS:
        raise OrderCopyError("the core's answer is not a list of at most 5000 orders")
    clean = []
    for item in orders:
        if not isinstance(item, dict) or set(item) != set(COLUMNS):
            raise OrderCopyError("an order of the core's answer has other fields")
        if item["trust"] != trust or item["site"] != site or item["status"] not in _OPEN:
            raise OrderCopyError("the core sent an order of another site, or not open")
        for name in COLUMNS:
            value = item[name]
            if not (isinstance(value, str) and len(value) <= MAX_TEXT) and not (
                name == "nhs_number" and value is None
            ):
                raise OrderCopyError(f"{name!r} of an order is not text")
        clean.append(item)
    return clean


class OrderCopy:
    """The edge's job: its ``imaging_order`` table made the core's open orders of its site."""

    name = "edge order copy"

    def __init__(
        self,
        run: Run,
        upstream: UpstreamPort,
        *,
        trust: str,
        site: str,
        every: float = 30.0,
        retry: float = 2.0,
        timeout: float = 10.0,
    ) -> None:
        self._run = run
        self._upstream = upstream
        self._trust = trust
        self._site = site
        self._every = every
        self._retry = min(retry, every)
        self._timeout = timeout
        self._digest: bytes | None = None  # of the copy as last written

    def step(self) -> float:
        try:
            answer = self._upstream.get("/api/edge/orders", timeout=self._timeout)
        except UpstreamUnavailable:
            return self._retry  # the link: pull again as soon as it is back
        if answer.status_code != 200:
            log.error("the core refused the site's orders: HTTP %s", answer.status_code)
            return self._every
        try:
            orders = _checked(answer.json(), self._trust, self._site)
        except (OrderCopyError, ValueError) as exc:
            log.error("the site's orders from the core were not kept: %s", exc)
            return self._every
        digest = hashlib.sha256(orjson.dumps(orders)).digest()
        if digest != self._digest:
            self.replace(orders)
            self._digest = digest
        return self._every

    def replace(self, orders: Iterable[dict[str, Any]]) -> int:
        """Make the edge's orders ``orders``, at once for its readers; how many."""
        now = dt.datetime.now(dt.UTC)
        rows = [
            {**o, "created_at": now, "updated_at": now, "last_control_id": "edge copy"}
            for o in orders
        ]

        def write(conn: sa.Connection) -> None:
            conn.execute(sa.delete(imaging_order))
            if rows:
                conn.execute(sa.insert(imaging_order), rows)

        self._run(write)
        log.info("the site's open orders from the core: %d", len(rows))
        return len(rows)

    def close(self) -> None:
        pass
