"""One DICOM association as an asyncio protocol: negotiation, message assembly, dispatch.

No thread per association and no polling: bytes are parsed as they arrive, complete
DIMSE messages go to a per-association worker task, and service calls that block
(ingest, queries, blob reads) run in the process's thread pool. Message handlers
are thin: they call services and map outcomes to statuses through ``status.py``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from netpacs.adapters.dimse import commands as c
from netpacs.adapters.dimse import pdu as p
from netpacs.adapters.dimse.negotiation import Negotiator
from netpacs.domain.dicom.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from netpacs.domain.outcomes import Origin, Protocol
from netpacs.services.access import Principal
from netpacs.services.spool import ObjectTooLarge, Spool

log = logging.getLogger(__name__)

_HDR = struct.Struct(">BBI")
_PDV = struct.Struct(">IBB")
_CONTROL_PDUS = frozenset(
    {
        p.A_ASSOCIATE_RQ,
        p.A_ASSOCIATE_AC,
        p.A_ASSOCIATE_RJ,
        p.A_RELEASE_RQ,
        p.A_RELEASE_RP,
        p.A_ABORT,
    }
)
_MAX_CONTROL_PDU = 1 << 20  # an A-ASSOCIATE-RQ with 128 contexts is a few kilobytes
# Data sets waiting for the worker (in memory or spooled) before the association is
# read no further.
_MAX_QUEUED_BYTES = 64 * 1024 * 1024


@dataclass(slots=True)
class Message:
    context_id: int
    command: c.Command
    # The data set: bytes while small; a Spool in a file of the data directory when
    # large (the handler closes it); None without one, or when it was refused.
    data: bytes | Spool | None
    refused: str | None = None  # why the data set was not kept (too large)

    @property
    def size(self) -> int:
        if self.data is None:
            return 0
        return self.data.size if isinstance(self.data, Spool) else len(self.data)

    def close(self) -> None:
        if isinstance(self.data, Spool):
            self.data.close()


class Association(asyncio.BufferedProtocol):
    """The acceptor side of one association (PS3.8 state machine, acceptor states)."""

    def __init__(
        self,
        *,
        negotiator: Negotiator,
        handlers: Callable[[Association], Any],
        idle_timeout: float,
        max_pdu_length: int,
        new_spool: Callable[[], Spool] = Spool,
    ) -> None:
        self._negotiator = negotiator
        self._make_handlers = handlers
        self._idle_timeout = idle_timeout
        self.our_max_pdu = max_pdu_length
        self.peer_max_pdu = 0
        self.transport: asyncio.Transport | None = None
        # Receive state: bytes land directly in ``_target`` (a PDU or PDV header, or a
        # fragment's own buffer); ``_on_full`` decides what comes next.
        self._header = bytearray(6)
        self._target = memoryview(self._header)
        self._filled = 0
        self._on_full: Callable[[], None] = self._pdu_header_read
        self._pdu_type = 0
        self._pdu_left = 0
        self._pdv_ctx = 0
        self._pdv_mch = 0
        self.established = False
        self._closing = False
        self.contexts: dict[int, p.AcceptedContext] = {}
        self.calling_ae = ""
        self.origin = Origin(Protocol.DIMSE)
        self.principal: Principal | None = None
        self.peer = ""
        self._cmd_frags: list[bytearray] = []
        # A data set's fragments: in memory while small, then in a file of the data
        # directory, never beyond the largest object accepted (then dropped).
        self._new_spool = new_spool
        self._data: Spool | None = None
        self._data_refused: str | None = None
        self._queued_bytes = 0  # of data sets in memory waiting for the worker
        self._paused = False
        self._pending: c.Command | None = None
        self._pending_ctx = 0
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self.cancelled: set[int] = set()
        self.store_waiters: dict[int, asyncio.Future[c.Command]] = {}
        self._next_message_id = 1
        self._last_activity = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self._handlers: Any = None
        self._finishing: asyncio.Task[None] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        loop = asyncio.get_running_loop()
        self._last_activity = loop.time()
        self._watchdog = loop.call_later(self._idle_timeout, self._check_idle)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._target[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        if self._filled < len(self._target) or self._closing:
            return
        self._last_activity = asyncio.get_running_loop().time()
        try:
            self._on_full()
        except (p.PDUError, c.CommandError) as exc:
            self._abort(p.ABORT_REASON_INVALID_PARAMETER, str(exc))

    def _expect(self, buffer: bytearray, then: Callable[[], None]) -> None:
        self._target = memoryview(buffer)
        self._filled = 0
        self._on_full = then
        if not buffer:
            then()

    def _pdu_header_read(self) -> None:
        pdu_type, _, length = _HDR.unpack_from(self._header, 0)
        self._pdu_type = pdu_type
        if pdu_type == p.P_DATA_TF:
            if not self.established:
                raise p.PDUError("P-DATA-TF before the association was accepted")
            self._pdu_left = length
            self._next_pdv()
        elif pdu_type in _CONTROL_PDUS:
            if length > _MAX_CONTROL_PDU:
                raise p.PDUError(f"PDU of type {pdu_type:#04x} is too long ({length} bytes)")
            self._expect(bytearray(length), self._control_pdu_read)
        else:
            self._abort(p.ABORT_REASON_UNRECOGNIZED_PDU, f"unknown PDU type {pdu_type:#04x}")

    def _control_pdu_read(self) -> None:
        body = bytes(self._target)
        self._expect(self._header, self._pdu_header_read)
        self._control_pdu(self._pdu_type, body)

    def _next_pdv(self) -> None:
        if self._pdu_left == 0:
            self._expect(self._header, self._pdu_header_read)
        elif self._pdu_left < 6:
            raise p.PDUError("truncated PDV item")
        else:
            self._expect(self._header, self._pdv_header_read)

    def _pdv_header_read(self) -> None:
        item_len, ctx_id, mch = _PDV.unpack_from(self._header, 0)
        if item_len < 2 or item_len + 4 > self._pdu_left:
            raise p.PDUError("PDV item length is inconsistent with its PDU")
        ctx = self.contexts.get(ctx_id)
        if ctx is None or ctx.result != p.PC_ACCEPTANCE:
            raise p.PDUError(f"PDV on presentation context {ctx_id}, which was not accepted")
        self._pdu_left -= 4 + item_len
        self._pdv_ctx = ctx_id
        self._pdv_mch = mch
        self._expect(bytearray(item_len - 2), self._fragment_read)

    def _fragment_read(self) -> None:
        fragment = self._target.obj
        assert isinstance(fragment, bytearray)
        ctx_id, mch = self._pdv_ctx, self._pdv_mch
        if mch & 1:
            self._cmd_frags.append(fragment)
            if mch & 2:
                self._command_complete(ctx_id)
        else:
            if self._pending is None:
                raise p.PDUError("data set fragment without a command")
            self._collect(fragment)
            if mch & 2:
                self._data_complete()
        if not self._closing:
            self._next_pdv()

    def _collect(self, fragment: bytearray) -> None:
        """Add a data set fragment (kept by reference while in memory: no copy)."""
        if self._data_refused is not None:
            return  # the rest of a refused data set is read and dropped
        if self._data is None:
            self._data = self._new_spool()
        try:
            self._data.write(fragment)
        except ObjectTooLarge as exc:
            self._data_refused = str(exc)
            self._data.close()
            self._data = None
        except OSError as exc:  # the spool file could not be written (disk full)
            self._data_refused = f"the data set could not be spooled: {exc}"
            self._data.close()
            self._data = None

    def _data_complete(self) -> None:
        spool, self._data = self._data, None
        refused, self._data_refused = self._data_refused, None
        cmd, self._pending = self._pending, None
        assert cmd is not None
        if refused is not None or spool is None:
            self._dispatch(Message(self._pending_ctx, cmd, None, refused or "no data set"))
        elif spool.in_file:
            self._dispatch(Message(self._pending_ctx, cmd, spool))
        else:
            self._dispatch(Message(self._pending_ctx, cmd, spool.memory()))

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._data is not None:
            self._data.close()
            self._data = None
        if self._watchdog:
            self._watchdog.cancel()
        for fut in self.store_waiters.values():
            if not fut.done():
                fut.set_exception(ConnectionError("association closed"))
        while not self._queue.empty():  # messages the worker will never take
            queued = self._queue.get_nowait()
            if queued is not None:
                queued.close()
        if self._worker is not None:
            self._queue.put_nowait(None)
            self._worker.cancel()
            # An aborted or dropped association: its stores are audited all the same.
            self._finishing = asyncio.get_running_loop().create_task(self._handlers.finish())

    # -- PDUs --------------------------------------------------------------------------
    def _control_pdu(self, pdu_type: int, body: bytes) -> None:
        if pdu_type == p.A_ASSOCIATE_RQ:
            if self.established:
                raise p.PDUError("A-ASSOCIATE-RQ on an established association")
            self._associate(p.decode_associate_rq(body))
        elif pdu_type == p.A_RELEASE_RQ:
            self._queue.put_nowait(None)  # release after the messages before it
        elif pdu_type == p.A_ABORT:
            log.info("association from %s (%s) aborted by peer", self.calling_ae, self.peer)
            self._close()
        elif pdu_type == p.A_RELEASE_RP:
            self._close()
        else:
            raise p.PDUError(f"unexpected PDU type {pdu_type:#04x}")

    def _associate(self, rq: p.AssociateRequest) -> None:
        assert self.transport is not None
        address = self.peer.rpartition(":")[0] or None
        decision = self._negotiator.negotiate(rq, address)
        if decision.refusal is not None:
            self._negotiator.record_later(decision.refusal)
        if decision.reject is not None:
            result, source, reason, why = decision.reject
            log.warning(
                "rejected association from %r to %r (%s): %s",
                rq.calling_ae_title,
                rq.called_ae_title,
                self.peer,
                why,
            )
            self.transport.write(p.encode_associate_rj(result, source, reason))
            self._close()
            return
        assert decision.origin is not None and decision.principal is not None
        self.origin = decision.origin
        self.principal = decision.principal
        self.calling_ae = rq.calling_ae_title
        self.peer_max_pdu = rq.max_pdu_length
        self.contexts = {ctx.context_id: ctx for ctx in decision.contexts}
        ac = p.AssociateAccept(
            called_ae_title=rq.called_ae_title,
            calling_ae_title=rq.calling_ae_title,
            contexts=decision.contexts,
            max_pdu_length=self.our_max_pdu,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            roles=decision.roles,
        )
        self.transport.write(p.encode_associate_ac(ac))
        self.established = True
        self._handlers = self._make_handlers(self)
        self._worker = asyncio.get_running_loop().create_task(self._work())

    def _command_complete(self, ctx_id: int) -> None:
        raw = bytes(b"".join(self._cmd_frags))
        self._cmd_frags = []
        cmd = c.decode_command(raw)
        if cmd.has_data_set:
            self._pending = cmd
            self._pending_ctx = ctx_id
        else:
            self._dispatch(Message(ctx_id, cmd, None))

    def _dispatch(self, msg: Message) -> None:
        field = msg.command.field
        if field == c.C_CANCEL_RQ:
            self.cancelled.add(msg.command.get_int(c.MESSAGE_ID_BEING_RESPONDED_TO))
            return
        if field == c.C_STORE_RSP:
            fut = self.store_waiters.pop(msg.command.get_int(c.MESSAGE_ID_BEING_RESPONDED_TO), None)
            if fut is not None and not fut.done():
                fut.set_result(msg.command)
            return
        self._queue.put_nowait(msg)
        if msg.data is not None:
            # A peer that sends without waiting for answers is read no further until
            # the worker catches up: what an association holds waiting (in memory or
            # spooled to disk) is bounded.
            self._queued_bytes += msg.size
            if self._queued_bytes > _MAX_QUEUED_BYTES and not self._paused:
                self._paused = True
                assert self.transport is not None
                self.transport.pause_reading()

    async def _work(self) -> None:
        while True:
            msg = await self._queue.get()
            if msg is not None and msg.data is not None:
                self._queued_bytes -= msg.size
                if self._paused and self._queued_bytes <= _MAX_QUEUED_BYTES // 2:
                    self._paused = False
                    if self.transport is not None and not self._closing:
                        self.transport.resume_reading()
            if msg is None:
                await self._handlers.finish()
                if not self._closing and self.transport is not None:
                    self.transport.write(p.encode_release_rp())
                    self._close()
                return
            try:
                await self._handlers.handle(msg)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "handler failed for command %#06x from %s", msg.command.field, self.calling_ae
                )

    # -- sending -----------------------------------------------------------------------
    def send_message(
        self, context_id: int, command: bytes, data: bytes | memoryview | None
    ) -> None:
        if self.transport is None or self._closing:
            raise ConnectionError("association is closed")
        bufs = p.encode_p_data(context_id, command, command=True, max_pdu_length=self.peer_max_pdu)
        if data is not None:
            bufs += p.encode_p_data(
                context_id, data, command=False, max_pdu_length=self.peer_max_pdu
            )
        self.transport.writelines(bufs)

    def next_message_id(self) -> int:
        mid = self._next_message_id
        self._next_message_id = mid % 65535 + 1
        return mid

    @property
    def closed(self) -> bool:
        return self._closing

    # -- closing -----------------------------------------------------------------------
    def _abort(self, reason: int, why: str) -> None:
        log.warning("aborting association from %s (%s): %s", self.calling_ae or "?", self.peer, why)
        if self.transport is not None and not self._closing:
            self.transport.write(p.encode_abort(p.ABORT_SOURCE_PROVIDER, reason))
        self._close()

    def _close(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    def _check_idle(self) -> None:
        if self._closing:
            return
        loop = asyncio.get_running_loop()
        idle = loop.time() - self._last_activity
        busy = self._worker is not None and (not self._queue.empty() or self._handlers.busy)
        if idle >= self._idle_timeout and not busy:
            what = "association" if self.established else "A-ASSOCIATE-RQ"
            self._abort(p.ABORT_REASON_NOT_SPECIFIED, f"no {what} activity for {idle:.0f} s")
            return
        self._watchdog = loop.call_later(max(1.0, self._idle_timeout - idle), self._check_idle)
