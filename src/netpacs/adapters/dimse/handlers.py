"""DIMSE-C service handlers: each turns one request into service calls and statuses.

C-ECHO and C-STORE (PS3.4 A, B), C-FIND, C-MOVE and C-GET (PS3.4 C); the C-GET
sub-operations are ``get_scp.py``'s, the worklist, MPPS and Storage Commitment their
own modules'. Blocking work runs in the process's thread pool; statuses come from
``status.py``.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import orjson
from pydicom import Dataset
from pynetdicom.dsutils import decode, encode

from netpacs.adapters.dimse import commands as c
from netpacs.adapters.dimse import get_scp, mpps, worklist
from netpacs.adapters.dimse import status as st
from netpacs.adapters.dimse.association import Association
from netpacs.adapters.dimse.commitment import CommitmentRequests
from netpacs.adapters.dimse.federation import c_store_arrival, move_remote, remote_matches
from netpacs.adapters.dimse.message import Message
from netpacs.adapters.dimse.negotiation import (
    DEFLATED,
    EXPLICIT_VR_BE,
    IMPLICIT_VR_LE,
    MODALITY_WORKLIST_FIND,
    MPPS,
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STORAGE_COMMITMENT,
    STORAGE_SOP_CLASSES,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
    VERIFICATION,
)
from netpacs.adapters.dimse.scu import SubOpCounts, send_to
from netpacs.domain.dicom.json_encode import UTF8, encode_json_dataset
from netpacs.domain.query import QueryError, QueryLevel, QueryModel, QueryTimeout
from netpacs.domain.region import ApplicationEntity
from netpacs.services.access import Capability, Principal
from netpacs.services.access_policy import AccessPolicy, Refusal
from netpacs.services.commitment import CommitmentService
from netpacs.services.edge.mpps import EdgeMpps
from netpacs.services.edge.readthrough import ReadThrough
from netpacs.services.federation import FederatedSearch, MoveArrivals, RemoteCache
from netpacs.services.ingest_batch import StoreService
from netpacs.services.orders.mpps import MppsService
from netpacs.services.orders.worklist import ModalityWorklist
from netpacs.services.query import QueryService
from netpacs.services.retrieve import RetrieveService, Served
from netpacs.services.spool import Spool

log = logging.getLogger(__name__)
T = TypeVar("T")

_MODEL = {
    PATIENT_ROOT_FIND: QueryModel.PATIENT_ROOT,
    PATIENT_ROOT_MOVE: QueryModel.PATIENT_ROOT,
    PATIENT_ROOT_GET: QueryModel.PATIENT_ROOT,
    STUDY_ROOT_FIND: QueryModel.STUDY_ROOT,
    STUDY_ROOT_MOVE: QueryModel.STUDY_ROOT,
    STUDY_ROOT_GET: QueryModel.STUDY_ROOT,
}
_FIND_BATCH = 64


@dataclass(frozen=True, slots=True)
class DimseServices:
    """What the DIMSE adapter needs from the rest of netpacs (one set per process)."""

    ae_title: str
    access: AccessPolicy
    stores: StoreService
    query: QueryService
    retrieve: RetrieveService
    executor: Executor
    # -- edge: edge-read --
    edge_read: ReadThrough | None = None  # an edge node: reads through to the core
    # -- orders: modality worklist and MPPS (issue 15) --
    worklist: ModalityWorklist | None = None
    mpps: MppsService | EdgeMpps | None = None
    # Storage Commitment SCP (issue 15; None: not offered)
    commitment: CommitmentService | None = None
    # -- federation (issue 14) --
    federation: FederatedSearch | None = None  # workstations' C-FIND across networks
    public_url: str | None = None  # our HTTP base URL (Retrieve URL of remote studies)
    remote_cache: RemoteCache | None = None  # C-MOVE of a DIMSE network's study
    arrivals: MoveArrivals | None = None  # a network's C-STOREs of our C-MOVE from it

    def for_principal(self, principal: Principal) -> DimseServices:
        """The same services answering for the calling AE (access and audit)."""
        return replace(
            self,
            query=self.query.for_principal(principal),
            retrieve=self.retrieve.for_principal(principal),
            federation=self.federation.for_principal(principal) if self.federation else None,
            remote_cache=self.remote_cache.for_principal(principal) if self.remote_cache else None,
        )


# What each request needs the calling AE to be allowed (region file permissions).
_NEEDS = {
    c.C_STORE_RQ: Capability.STORE,
    c.C_FIND_RQ: Capability.QUERY,
    c.C_MOVE_RQ: Capability.SEND,
    c.C_GET_RQ: Capability.RETRIEVE,
    c.N_ACTION_RQ: Capability.STORE,  # Storage Commitment: a sender asks about its stores
}


def _encoding(ts: str) -> tuple[bool, bool, bool]:
    """(implicit VR, little endian, deflated) of an uncompressed transfer syntax."""
    return ts == IMPLICIT_VR_LE, ts != EXPLICIT_VR_BE, ts == DEFLATED


class AssociationHandlers:
    def __init__(self, services: DimseServices, assoc: Association) -> None:
        assert assoc.principal is not None
        self.principal = assoc.principal
        self.s = services.for_principal(self.principal)
        self.assoc = assoc
        self.busy = False
        # Every C-STORE of the association, audited per study when it ends.
        self._stores = services.stores.batch(self.principal, assoc.origin)
        self._commitments: CommitmentRequests | None = None  # on its first N-ACTION

    def data_spool(self, command: c.Command, context_id: int) -> Spool:
        """Where the data set of ``command`` is collected as it arrives: a C-STORE's
        into a spool that, when large, is the blob store's own pending file (the object
        is then written once); any other into a plain spool."""
        ctx = self.assoc.contexts[context_id]
        sop_class = command.get_str(c.AFFECTED_SOP_CLASS_UID)
        if (
            self.principal.partner is None  # a network's objects never reach the blob store
            and command.field == c.C_STORE_RQ
            and ctx.abstract_syntax in STORAGE_SOP_CLASSES
            and sop_class == ctx.abstract_syntax
        ):
            return self._stores.dataset_spool(
                transfer_syntax_uid=ctx.transfer_syntax,
                sop_class_uid=sop_class,
                sop_instance_uid=command.get_str(c.AFFECTED_SOP_INSTANCE_UID),
            )
        return self._stores.spool()

    def _commitment(self) -> CommitmentRequests:
        if self._commitments is None:
            assert self.s.commitment is not None
            self._commitments = CommitmentRequests(
                self.s.commitment, self.assoc, executor=self.s.executor, ae_title=self.s.ae_title
            )
        return self._commitments

    async def finish(self) -> None:
        """The association ended (released, aborted or dropped): audit its stores."""
        await self._run(self._stores.close)

    async def _run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.s.executor, functools.partial(fn, *args, **kw))

    async def handle(self, msg: Message) -> None:
        """Answer one request; an unexpected error still gets a failure response."""
        self.busy = True
        try:
            await self._handle(msg)
        except Exception as exc:
            log.exception("%#06x from %s failed", msg.command.field, self.assoc.calling_ae)
            field = msg.command.field
            if field < 0x8000 and field != c.C_CANCEL_RQ:
                failure = st.OUT_OF_RESOURCES if field == c.C_STORE_RQ else st.CANNOT_UNDERSTAND
                self._reply(msg, field | 0x8000, failure, comment=f"internal error: {exc}"[:64])
        finally:
            msg.close()
            self.busy = False

    async def _handle(self, msg: Message) -> None:
        field = msg.command.field
        ctx = self.assoc.contexts[msg.context_id]
        needed = _NEEDS.get(field)
        if ctx.abstract_syntax in (MODALITY_WORKLIST_FIND, MPPS):
            needed = Capability.WORKLIST
        if (
            field == c.C_STORE_RQ
            and self.principal.partner is not None
            and self.s.arrivals is not None
            and ctx.abstract_syntax in STORAGE_SOP_CLASSES
        ):
            await c_store_arrival(self, msg, self.s.arrivals)
            return
        refusal = None if needed is None else self.s.access.decide(self.principal, needed)
        if refusal is not None:
            await self._run(self.s.access.record, refusal)
            self._reply(msg, field | 0x8000, st.NOT_AUTHORIZED, comment=refusal.message)
            return
        if field == c.C_STORE_RQ and ctx.abstract_syntax in STORAGE_SOP_CLASSES:
            await self.c_store(msg)
        elif field == c.C_ECHO_RQ and ctx.abstract_syntax == VERIFICATION:
            self._reply(msg, c.C_ECHO_RSP, st.SUCCESS)
        elif field == c.C_FIND_RQ and ctx.abstract_syntax in (PATIENT_ROOT_FIND, STUDY_ROOT_FIND):
            await self.c_find(msg)
        elif field == c.C_FIND_RQ and ctx.abstract_syntax == MODALITY_WORKLIST_FIND:
            await worklist.c_find(self, msg)
        elif field == c.N_CREATE_RQ and ctx.abstract_syntax == MPPS:
            await mpps.n_create(self, msg)
        elif field == c.N_SET_RQ and ctx.abstract_syntax == MPPS:
            await mpps.n_set(self, msg)
        elif field == c.C_MOVE_RQ and ctx.abstract_syntax in (PATIENT_ROOT_MOVE, STUDY_ROOT_MOVE):
            await self.c_move(msg)
        elif field == c.C_GET_RQ and ctx.abstract_syntax in (PATIENT_ROOT_GET, STUDY_ROOT_GET):
            await get_scp.c_get(self, msg)
        elif (
            field == c.N_ACTION_RQ
            and ctx.abstract_syntax == STORAGE_COMMITMENT
            and self.s.commitment is not None
        ):
            await self._commitment().n_action(msg)
        else:
            rsp = field | 0x8000 if field < 0x8000 else field
            self._reply(
                msg,
                rsp,
                st.UNRECOGNIZED_OPERATION,
                comment=f"command {field:#06x} is not supported on this context",
            )

    def _reply(
        self,
        msg: Message,
        rsp_field: int,
        status: int,
        *,
        comment: str | None = None,
        sop_instance_uid: str | None = None,
        identifier: bytes | None = None,
        counts: tuple[int, int, int, int] | None = None,
    ) -> None:
        if self.assoc.closed:
            return
        cmd = c.response(
            msg.command,
            rsp_field,
            status,
            sop_instance_uid=sop_instance_uid,
            has_data_set=identifier is not None,
            error_comment=comment,
            counts=counts,
        )
        self.assoc.send_message(msg.context_id, cmd, identifier)

    # -- C-STORE -----------------------------------------------------------------------
    async def c_store(self, msg: Message) -> None:
        cmd = msg.command
        sop_class = cmd.get_str(c.AFFECTED_SOP_CLASS_UID)
        sop_instance = cmd.get_str(c.AFFECTED_SOP_INSTANCE_UID)
        ctx = self.assoc.contexts[msg.context_id]
        if sop_class != ctx.abstract_syntax:
            self._reply(
                msg,
                c.C_STORE_RSP,
                st.SOP_CLASS_NOT_SUPPORTED,
                sop_instance_uid=sop_instance,
                comment="SOP Class differs from the presentation context",
            )
            return
        if msg.data is None:
            self._reply(
                msg,
                c.C_STORE_RSP,
                st.OUT_OF_RESOURCES,
                sop_instance_uid=sop_instance,
                comment=msg.refused or "no data set",
            )
            return
        outcome = await self._run(
            self._stores.store_dataset,
            msg.data,
            transfer_syntax_uid=ctx.transfer_syntax,
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
        )
        status = st.store_status(outcome)
        self._reply(
            msg,
            c.C_STORE_RSP,
            status,
            sop_instance_uid=sop_instance,
            comment=outcome.message or None if status else None,
        )

    # -- identifiers -------------------------------------------------------------------
    def _identifier(self, msg: Message) -> tuple[dict[str, Any], QueryLevel, QueryModel]:
        ctx = self.assoc.contexts[msg.context_id]
        if not isinstance(msg.data, bytes):
            raise QueryError(
                "the request has no identifier"
                if msg.data is None
                else "the identifier is too large for a query"
            )
        implicit, little, deflated = _encoding(ctx.transfer_syntax)
        try:
            ds = decode(io.BytesIO(msg.data), implicit, little, deflated)
            ident: dict[str, Any] = ds.to_json_dict()
        except Exception as exc:
            raise QueryError(f"the identifier cannot be decoded: {exc}") from None
        level_el = ident.get("00080052", {}).get("Value") or [""]
        level_name = str(level_el[0]).strip().upper()
        try:
            level = QueryLevel(level_name)
        except ValueError:
            raise QueryError(f"Query/Retrieve Level {level_name!r} is not valid") from None
        return ident, level, _MODEL[ctx.abstract_syntax]

    def _encode_identifier(self, msg: Message, result: dict[str, Any]) -> bytes:
        ctx = self.assoc.contexts[msg.context_id]
        implicit, little, deflated = _encoding(ctx.transfer_syntax)
        if "00080005" not in result and not orjson.dumps(result).isascii():
            result = {**result, "00080005": {"vr": "CS", "Value": [UTF8]}}
        if little and not deflated:  # nearly always: written straight from the JSON
            direct = encode_json_dataset(result, implicit=implicit)
            if direct is not None:
                return direct
        encoded = encode(Dataset.from_json(result), implicit, little, deflated)
        if encoded is None:
            raise ValueError("response identifier could not be encoded")
        return encoded

    # -- C-FIND ------------------------------------------------------------------------
    async def c_find(self, msg: Message) -> None:
        try:
            ident, level, model = self._identifier(msg)
        except QueryError as exc:
            self._reply(msg, c.C_FIND_RSP, st.IDENTIFIER_DOES_NOT_MATCH, comment=str(exc))
            return
        results: Iterator[dict[str, Any]] | None = None
        exhausted = False  # the matches all read: the query has ended (and is audited)
        final, comment = st.SUCCESS, None
        encoder = self._encoder(msg)
        try:
            if self.s.edge_read is not None:  # an edge node: the core, else the cache
                answer = await self._run(
                    self.s.edge_read.find,
                    self.s.query,
                    ident,
                    level=level,
                    model=model,
                    interface="c-find",
                )
                results = iter(answer.matches)
                if answer.fallback is not None:
                    final = st.FIND_FROM_CACHE
                    comment = answer.fallback.comment(self.s.edge_read.zone)
                batch = await self._run(_take, results, _FIND_BATCH, encoder)
            else:
                # The query and its first matches in one trip to a worker thread: most
                # searches end there (each trip costs a wake-up on each side).
                find = functools.partial(
                    self.s.query.find, ident, level=level, model=model, interface="c-find"
                )
                results, batch = await self._run(_find_and_take, find, encoder)
            while True:
                exhausted = len(batch) < _FIND_BATCH
                for encoded in batch:
                    if msg.command.message_id in self.assoc.cancelled:
                        self.assoc.cancelled.discard(msg.command.message_id)
                        self._reply(msg, c.C_FIND_RSP, st.CANCEL)
                        return
                    self._reply(msg, c.C_FIND_RSP, st.PENDING, identifier=encoded)
                if exhausted or self.assoc.closed:
                    break
                await asyncio.sleep(0)
                batch = await self._run(_take, results, _FIND_BATCH, encoder)
            remote = None
            if self.s.federation is not None:
                remote = await self._run(
                    remote_matches, self.s.federation, ident, level, public_url=self.s.public_url
                )
            if remote is not None:
                matches, comment = remote
                for match in matches:
                    encoded = await self._run(self._encode_identifier, msg, match)
                    self._reply(msg, c.C_FIND_RSP, st.PENDING, identifier=encoded)
                if comment:
                    final = st.FIND_WITHOUT_SOME_NETWORKS
        except QueryTimeout as exc:
            self._reply(msg, c.C_FIND_RSP, st.OUT_OF_RESOURCES, comment=str(exc))
            return
        except QueryError as exc:
            self._reply(msg, c.C_FIND_RSP, st.IDENTIFIER_DOES_NOT_MATCH, comment=str(exc))
            return
        except Exception as exc:
            log.exception("C-FIND from %s failed", self.assoc.calling_ae)
            self._reply(msg, c.C_FIND_RSP, st.CANNOT_UNDERSTAND, comment=f"query failed: {exc}")
            return
        finally:
            close = getattr(results, "close", None)
            if close is not None and not exhausted:
                await self._run(close)
        self._reply(msg, c.C_FIND_RSP, final, comment=comment)

    def _encoder(self, msg: Message) -> Callable[[dict[str, Any]], bytes]:
        return functools.partial(self._encode_identifier, msg)

    # -- C-MOVE ------------------------------------------------------------------------
    async def _select(self, msg: Message, rsp: int) -> tuple[list[Served], str | None] | None:
        """The objects to send, as the retrieve service serves them, and on an edge node
        that could not ask the core, the final response's Error Comment saying so (None:
        the failure is answered here)."""
        try:
            ident, level, model = self._identifier(msg)
            if level is QueryLevel.PATIENT and model is QueryModel.STUDY_ROOT:
                raise QueryError("PATIENT level is not valid in the Study Root model")
            edge = self.s.edge_read
            down = None
            if edge is not None:  # an edge node: fill the cache from the core
                down = await self._run(
                    edge.fill_for_retrieve, self.principal, ident, level=level, model=model
                )
            items = await self._run(self.s.retrieve.select, ident, level=level, model=model)
            if edge is None or down is None:
                return items, None
            if not items:  # A7xx: the requestor may ask again once the core is back
                comment = down.retrieve_comment(edge.zone, held=False)
                self._reply(msg, rsp, st.OUT_OF_RESOURCES_SUBOPS, comment=comment)
                return None
            return items, down.retrieve_comment(edge.zone, held=True)
        except QueryError as exc:
            self._reply(msg, rsp, st.IDENTIFIER_DOES_NOT_MATCH, comment=str(exc))
        except Exception as exc:
            log.exception("retrieve selection failed")
            self._reply(msg, rsp, st.OUT_OF_RESOURCES_MATCHES, comment=f"cannot select: {exc}")
        return None

    def _final(
        self,
        msg: Message,
        rsp: int,
        counts: SubOpCounts,
        cancelled: bool,
        from_cache: str | None = None,
    ) -> None:
        """The final response; a warning (with ``from_cache`` as its comment) when an
        edge node could send only what it holds (the core unreachable: there may be
        more)."""
        if cancelled:
            status = st.CANCEL
        elif counts.failed or counts.warning or from_cache is not None:
            status = st.WARNING_SUBOPS
        else:
            status = st.SUCCESS
        remaining = counts.remaining if cancelled else -1
        self._reply(
            msg,
            rsp,
            status,
            comment=from_cache if status == st.WARNING_SUBOPS else None,
            counts=(remaining, counts.completed, counts.failed, counts.warning),
        )

    async def c_move(self, msg: Message) -> None:
        dest_title = msg.command.get_str(c.MOVE_DESTINATION).strip()
        dest = await self._run(self.s.access.move_destination, self.principal, dest_title)
        if isinstance(dest, Refusal):
            self._reply(msg, c.C_MOVE_RSP, st.MOVE_DESTINATION_UNKNOWN, comment=dest.message)
            return
        selected = await self._select(msg, c.C_MOVE_RSP)
        if selected is None:
            return
        items, from_cache = selected
        if not items and self.s.remote_cache is not None and await self._moved_remote(msg, dest):
            return
        loop = asyncio.get_running_loop()
        mid = msg.command.message_id

        def progress(counts: SubOpCounts) -> None:
            if counts.remaining:
                reply = functools.partial(
                    self._reply, msg, c.C_MOVE_RSP, st.PENDING, counts=counts.as_tuple()
                )
                loop.call_soon_threadsafe(reply)

        try:
            counts = await self._run(
                send_to,
                dest,
                our_ae_title=self.s.ae_title,
                items=items,
                retrieve=self.s.retrieve,
                originator=(self.assoc.calling_ae, mid),
                progress=progress,
                cancelled=lambda: mid in self.assoc.cancelled or self.assoc.closed,
            )
        except ConnectionError as exc:
            self._reply(msg, c.C_MOVE_RSP, st.OUT_OF_RESOURCES_SUBOPS, comment=str(exc))
            return
        cancelled = mid in self.assoc.cancelled
        self.assoc.cancelled.discard(mid)
        self._final(msg, c.C_MOVE_RSP, counts, cancelled, from_cache)

    async def _moved_remote(self, msg: Message, dest: ApplicationEntity) -> bool:
        """A study another network holds, moved through the federation cache (issue 14);
        False when the identifier names no such study."""
        ident, level, _ = self._identifier(msg)
        try:
            outcome = await self._run(
                move_remote,
                self.s.remote_cache,
                ident,
                level,
                dest,
                our_ae_title=self.s.ae_title,
                originator=(self.assoc.calling_ae, msg.command.message_id),
            )
        except ConnectionError as exc:
            self._reply(msg, c.C_MOVE_RSP, st.OUT_OF_RESOURCES_SUBOPS, comment=str(exc))
            return True
        if outcome is None:
            return False
        if isinstance(outcome, str):
            self._reply(msg, c.C_MOVE_RSP, st.OUT_OF_RESOURCES_SUBOPS, comment=outcome)
            return True
        completed, failed = outcome
        counts = SubOpCounts(remaining=0, completed=completed, failed=failed)
        self._final(msg, c.C_MOVE_RSP, counts, False)
        return True


def _find_and_take(
    find: Callable[[], Iterator[dict[str, Any]]], encoder: Callable[[dict[str, Any]], bytes]
) -> tuple[Iterator[dict[str, Any]], list[bytes]]:
    """The query's matches and the first :data:`_FIND_BATCH` of them, encoded."""
    results = find()
    try:
        return results, _take(results, _FIND_BATCH, encoder)
    except BaseException:
        close = getattr(results, "close", None)
        if close is not None:
            close()  # its connection back to the pool now, not when collected
        raise


def _take(
    results: Iterator[dict[str, Any]], n: int, encoder: Callable[[dict[str, Any]], bytes]
) -> list[bytes]:
    out: list[bytes] = []
    for result in results:
        out.append(encoder(result))
        if len(out) >= n:
            break
    return out
