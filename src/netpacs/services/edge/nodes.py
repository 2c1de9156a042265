"""The core's side of store and forward (issue 13): what it holds, and its edge nodes.

- :meth:`EdgeNodes.held`: for SOP Instance UIDs an edge asks about, the size and CRC-32
  the core recorded when it wrote each object, and the CRC-32 of the object's file meta
  read back from the object store now. The edge computes ``crc32(its data set,
  start=that head CRC)``: equal to the recorded CRC only when the core holds the data
  set byte for byte (the file meta differs: each archive records its own origin).
- :meth:`EdgeNodes.heartbeat`: an edge's periodic report (link, backlog, cache, last
  prefetch), kept per edge; :meth:`EdgeNodes.listing`: every edge the core knows with
  its last report, for the admin page and ``GET /api/edges``.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from netpacs.domain.region import EdgeNode, Region
from netpacs.index.schema import edge_node_status, instance
from netpacs.services.access import Capability, Principal, Role
from netpacs.services.access_policy import AccessPolicy
from netpacs.services.edge.mpps import RelayError, relay
from netpacs.services.edge.orders import site_orders
from netpacs.services.orders.mpps import MppsService
from netpacs.storage.blobstore import BlobNotFound, BlobStore

MAX_UIDS = 1000  # SOP Instance UIDs per question
#: The figures an edge reports, and their types (anything else is refused).
REPORT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "link_up": bool,
    "down_since": (str, type(None)),
    "backlog": int,
    "backlog_oldest_seconds": (int, float),
    "forwarded": int,
    "failing": int,
    "cache_bytes": int,
    "cache_limit_bytes": int,
    "last_prefetch": (str, type(None)),
    "version": str,
}


class HeartbeatError(ValueError):
    """A report that is not one (400)."""


@dataclass(frozen=True, slots=True)
class Held:
    size: int  # the whole object as stored (file meta and data set)
    crc32: int  # CRC-32 of the whole object, recorded when it was written
    dataset_offset: int  # where the data set starts
    head_crc32: int  # CRC-32 of the file meta as read back from the object store now


@dataclass(frozen=True, slots=True)
class EdgeRow:
    client_id: str
    name: str
    trust: str
    site: str
    last_contact: str | None  # ISO 8601 UTC
    seconds_since_contact: float | None
    link: str  # up | down | never (as the core sees it: heartbeats arriving)
    address: str | None
    report: dict[str, Any]


class EdgeNodes:
    def __init__(
        self,
        engine: sa.Engine,
        blobs: BlobStore,
        access: AccessPolicy,
        edges: Sequence[EdgeNode],
        *,
        heartbeat_seconds: float = 10.0,
        principal: Principal | None = None,
        mpps: tuple[MppsService, Region] | None = None,
    ) -> None:
        self._mpps = mpps
        self._engine = engine
        self._blobs = blobs
        self._access = access
        self._edges = tuple(edges)
        self._heartbeat = heartbeat_seconds
        self._principal = principal

    def for_principal(self, principal: Principal) -> EdgeNodes:
        return EdgeNodes(
            self._engine,
            self._blobs,
            self._access,
            self._edges,
            heartbeat_seconds=self._heartbeat,
            principal=principal,
            mpps=self._mpps,
        )

    def _who(self) -> Principal:
        assert self._principal is not None, "scope the service to a principal first"
        return self._principal

    def held(self, sop_instance_uids: Sequence[str]) -> dict[str, Held]:
        """What the core holds of these objects (those it does not hold are left out)."""
        self._access.require(self._who(), Capability.CONFIRM_STORED)
        if len(sop_instance_uids) > MAX_UIDS:
            raise ValueError(f"at most {MAX_UIDS} SOP Instance UIDs per question")
        uids = sorted({u for u in sop_instance_uids if isinstance(u, str) and len(u) <= 64})
        if not uids:
            return {}
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    instance.c.sop_instance_uid,
                    instance.c.blob_key,
                    instance.c.blob_size,
                    instance.c.blob_crc32,
                    instance.c.dataset_offset,
                ).where(instance.c.sop_instance_uid.in_(uids))
            ).all()
        found: dict[str, Held] = {}
        for r in rows:
            try:
                head = self._blobs.get_range(r.blob_key, 0, int(r.dataset_offset))
            except (OSError, BlobNotFound):
                continue  # indexed but not readable: not held, as far as the edge knows
            found[r.sop_instance_uid] = Held(
                size=int(r.blob_size),
                crc32=int(r.blob_crc32),
                dataset_offset=int(r.dataset_offset),
                head_crc32=zlib.crc32(head),
            )
        return found

    def heartbeat(self, report: Mapping[str, Any], *, address: str | None) -> None:
        """Keep an edge's report (the principal must be the edge itself)."""
        who = self._who()
        if who.role is not Role.EDGE:
            self._access.deny(who, Capability.CONFIRM_STORED, "only an edge node reports here")
        clean: dict[str, Any] = {}
        for key, kind in REPORT_FIELDS.items():
            if key in report:
                value = report[key]
                if not isinstance(value, kind) or (isinstance(value, str) and len(value) > 64):
                    raise HeartbeatError(f"{key!r} is not what an edge reports")
                clean[key] = value
        unknown = sorted(set(report) - set(REPORT_FIELDS))[:5]
        if unknown:
            raise HeartbeatError(f"unknown figures {unknown}")
        now = dt.datetime.now(dt.UTC)
        values = {
            "last_contact": now,
            "address": (address or "")[:64] or None,
            "report_json": orjson.dumps(clean).decode(),
        }
        with self._engine.begin() as conn:
            done = conn.execute(
                sa.update(edge_node_status)
                .where(edge_node_status.c.client_id == who.user_id)
                .values(**values)
            ).rowcount
            if not done:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            sa.insert(edge_node_status).values(client_id=who.user_id, **values)
                        )
                except sa.exc.IntegrityError:  # the edge's other process, just now
                    conn.execute(
                        sa.update(edge_node_status)
                        .where(edge_node_status.c.client_id == who.user_id)
                        .values(**values)
                    )

    def site_orders(self) -> list[dict[str, Any]]:
        """The open orders of the asking edge's site (services.edge.orders)."""
        return site_orders(self._engine, self._access, self._who())

    def relay_mpps(self, body: Any) -> str:
        """Apply an edge's MPPS message (services.edge.mpps); RelayError."""
        if self._mpps is None:
            raise RelayError("this archive keeps no performed procedure steps", status=404)
        mpps, region = self._mpps
        return relay(mpps, region, self._access, self._who(), body)

    def listing(self) -> list[dict[str, Any]]:
        """Every edge node with its last report (PACS administrators)."""
        self._access.require(self._who(), Capability.SEE_EDGES)
        with self._engine.connect() as conn:
            status = {r.client_id: r for r in conn.execute(sa.select(edge_node_status))}
        now = dt.datetime.now(dt.UTC)
        rows = []
        for edge in self._edges:
            row = status.get(edge.client_id)
            last = row.last_contact if row is not None else None
            if last is not None and last.tzinfo is None:
                last = last.replace(tzinfo=dt.UTC)
            age = (now - last).total_seconds() if last is not None else None
            link = "never" if age is None else "up" if age <= 3 * self._heartbeat + 5 else "down"
            rows.append(
                EdgeRow(
                    client_id=edge.client_id,
                    name=edge.name,
                    trust=edge.trust,
                    site=edge.site,
                    last_contact=last.isoformat() if last is not None else None,
                    seconds_since_contact=round(age, 1) if age is not None else None,
                    link=link,
                    address=row.address if row is not None else None,
                    report=orjson.loads(row.report_json) if row is not None else {},
                )
            )
        return [asdict(r) for r in rows]
