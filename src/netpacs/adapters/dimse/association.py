"""One DICOM association as an asyncio protocol: negotiation, message assembly, dispatch.

No thread per association and no polling: bytes are parsed as they arrive, complete
DIMSE messages go to a per-association worker task, and service calls that block
(ingest, queries, blob reads) run in the process's thread pool. Message handlers
are thin: they call services and map outcomes to statuses through ``status.py``.

What a peer can make us hold is bounded before anything is allocated for it (issue 17):
a P-DATA-TF PDU longer than the maximum we announced, a command set over
:data:`MAX_COMMAND`, or an A-ASSOCIATE-RQ (or any other control PDU) over
:data:`MAX_ASSOCIATE_RQ` is answered with an A-ABORT; a control PDU is read in
chunks, so a length that is announced but not sent holds nothing. Time is bounded
too: the A-ASSOCIATE-RQ must be whole within ``associate_timeout`` seconds (PS3.8's
ARTIM timer), and once associated a peer that completes no PDU for ``idle_timeout``
seconds while we owe it nothing is aborted, so a stall before, after or inside a PDU
ends. :class:`~netpacs.adapters.dimse.server.Connections` caps how many connections a
worker holds.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from netpacs.adapters.dimse import commands as c
from netpacs.adapters.dimse import pdu as p
from netpacs.adapters.dimse.message import Message
from netpacs.adapters.dimse.negotiation import Negotiator
from netpacs.domain.dicom.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from netpacs.domain.outcomes import Origin, Protocol
from netpacs.services.access import Principal
from netpacs.services.spool import ObjectTooLarge, Spool

if TYPE_CHECKING:
    from netpacs.adapters.dimse.server import Connections

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
# An A-ASSOCIATE-RQ proposing 128 contexts with a dozen transfer syntaxes each is under
# 48 KiB; other control PDUs are a few bytes.
MAX_ASSOCIATE_RQ = 128 * 1024
MAX_COMMAND = 64 * 1024  # a command set is a few hundred bytes
# The P-DATA-TF limit when we announce none (max_pdu_length = 0): PS3.8 then allows
# any length, but we hold at most this much of a PDV at once.
UNANNOUNCED_PDU_LIMIT = 1 << 24
_CHUNK = 16 * 1024  # control PDUs are read this much at a time
MAX_QUEUED = 16  # messages of one association waiting for its handler; then we stop reading
# Data sets waiting for the worker (in memory or spooled) before the association is
# read no further.
MAX_QUEUED_BYTES = 64 * 1024 * 1024
SHUTTING_DOWN = "the archive is shutting down"


class Association(asyncio.BufferedProtocol):
    """The acceptor side of one association (PS3.8 state machine, acceptor states)."""

    def __init__(
        self,
        *,
        negotiator: Negotiator,
        handlers: Callable[[Association], Any],
        idle_timeout: float,
        max_pdu_length: int,
        associate_timeout: float | None = None,
        connections: Connections | None = None,
    ) -> None:
        self._negotiator = negotiator
        self._make_handlers = handlers
        self._idle_timeout = idle_timeout
        self._associate_timeout = associate_timeout or idle_timeout
        self._connections = connections
        self.our_max_pdu = max_pdu_length
        self._pdu_limit = max_pdu_length or UNANNOUNCED_PDU_LIMIT
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
        self._control_body = bytearray()
        self._control_left = 0
        self._command_length = 0
        self.established = False
        self._draining = False
        self._write_paused = False
        self._queue_full = False
        self._reading = True
        self._closing = False
        self.contexts: dict[int, p.AcceptedContext] = {}
        self.calling_ae = ""
        self.origin = Origin(Protocol.DIMSE)
        self.principal: Principal | None = None
        self.peer = ""
        self._cmd_frags: list[bytearray] = []
        # A data set's fragments: in memory while small, then in a file (the blob
        # store's own, for a C-STORE), never beyond the largest object accepted (then
        # dropped). The handlers give the spool: ``data_spool(command, context_id)``.
        self._data: Spool | None = None
        self._data_refused: str | None = None
        self._queued_bytes = 0  # of data sets (in memory or spooled) waiting for the worker
        self._pending: c.Command | None = None
        self._pending_ctx = 0
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self.cancelled: set[int] = set()
        self.store_waiters: dict[int, asyncio.Future[c.Command]] = {}
        self._next_message_id = 1
        self._last_activity = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self._artim: asyncio.TimerHandle | None = None
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
        connections = self._connections
        if connections is not None:
            if connections.draining or len(connections.negotiating) >= connections.max_associations:
                why = SHUTTING_DOWN if connections.draining else "too many connections negotiating"
                log.warning("closed the connection from %s at once: %s", self.peer, why)
                self._closing = True
                transport.abort()
                return
            connections.negotiating.add(self)
        loop = asyncio.get_running_loop()
        self._last_activity = loop.time()
        self._watchdog = loop.call_later(self._idle_timeout, self._check_idle)
        self._artim = loop.call_later(self._associate_timeout, self._artim_expired)

    def pause_writing(self) -> None:
        """The peer reads less than we send: read nothing more from it until it has
        caught up, so that what we buffer for it stays bounded (and, nothing completing,
        the idle timeout ends a peer that never reads)."""
        self._write_paused = True
        self._flow()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._flow()

    def _flow(self) -> None:
        """Read from the peer only while we keep up: our answers are being read and at
        most :data:`MAX_QUEUED` of its messages (:data:`MAX_QUEUED_BYTES` of data sets) wait
        for a handler."""
        reading = not (self._write_paused or self._queue_full)
        if reading == self._reading or self.transport is None or self._closing:
            return
        self._reading = reading
        if reading:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._target[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        if self._filled < len(self._target) or self._closing:
            return
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
            if length > self._pdu_limit:
                raise p.PDUError(
                    f"P-DATA-TF of {length} bytes, over the maximum PDU length "
                    f"{self._pdu_limit} we accept"
                )
            self._pdu_left = length
            self._next_pdv()
        elif pdu_type in _CONTROL_PDUS:
            if length > MAX_ASSOCIATE_RQ:
                raise p.PDUError(
                    f"PDU of type {pdu_type:#04x} is too long ({length} bytes, "
                    f"at most {MAX_ASSOCIATE_RQ})"
                )
            # Read in chunks: what is held is what was sent, not what was announced.
            self._control_body = bytearray()
            self._control_left = length
            self._expect(bytearray(min(length, _CHUNK)), self._control_chunk_read)
        else:
            self._abort(p.ABORT_REASON_UNRECOGNIZED_PDU, f"unknown PDU type {pdu_type:#04x}")

    def _control_chunk_read(self) -> None:
        self._control_body += self._target
        self._control_left -= len(self._target)
        if self._control_left > 0:
            self._expect(bytearray(min(self._control_left, _CHUNK)), self._control_chunk_read)
            return
        body = bytes(self._control_body)
        self._control_body = bytearray()
        self._pdu_complete()
        self._expect(self._header, self._pdu_header_read)
        self._control_pdu(self._pdu_type, body)

    def _pdu_complete(self) -> None:
        self._last_activity = asyncio.get_running_loop().time()

    def _next_pdv(self) -> None:
        if self._pdu_left == 0:
            self._pdu_complete()
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
            self._command_length += len(fragment)
            if self._command_length > MAX_COMMAND:
                raise p.PDUError(f"command set longer than {MAX_COMMAND} bytes")
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
            assert self._pending is not None
            self._data = self._handlers.data_spool(self._pending, self._pending_ctx)
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
        if not self._closing and self.established:
            # Neither side released nor aborted: say so, since work owed to the peer (a
            # storage commitment report, a C-MOVE's answer) can no longer reach it here.
            log.info(
                "association from %s (%s) ended: the peer %s the connection without "
                "A-RELEASE or A-ABORT",
                self.calling_ae,
                self.peer,
                f"reset ({exc})" if exc else "closed",
            )
        self._closing = True
        if self._data is not None:
            self._data.close()
            self._data = None
        if self._watchdog:
            self._watchdog.cancel()
        if self._artim:
            self._artim.cancel()
        if self._connections is not None:
            self._connections.negotiating.discard(self)
            self._connections.established.discard(self)
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
        if self._artim is not None:
            self._artim.cancel()
        connections = self._connections
        if connections is not None and (
            connections.draining or len(connections.established) >= connections.max_associations
        ):
            why = (
                SHUTTING_DOWN
                if connections.draining
                else f"{connections.max_associations} associations are open in this worker"
            )
            log.warning(
                "rejected association from %r (%s), transient: %s",
                rq.calling_ae_title,
                self.peer,
                why,
            )
            self.transport.write(
                p.encode_associate_rj(
                    p.RJ_TRANSIENT, p.RJ_SOURCE_PRESENTATION, p.RJ_REASON_LOCAL_LIMIT_EXCEEDED
                )
            )
            self._close()
            return
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
        if connections is not None:
            connections.negotiating.discard(self)
            connections.established.add(self)
        self._handlers = self._make_handlers(self)
        self._worker = asyncio.get_running_loop().create_task(self._work())

    def _command_complete(self, ctx_id: int) -> None:
        raw = bytes(b"".join(self._cmd_frags))
        self._cmd_frags = []
        self._command_length = 0
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
        if field in (c.C_STORE_RSP, c.N_EVENT_REPORT_RSP):  # answers to our requests
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
        full = self._queue.qsize() >= MAX_QUEUED or self._queued_bytes > MAX_QUEUED_BYTES
        if full and not self._queue_full:
            self._queue_full = True
            self._flow()

    async def _work(self) -> None:
        while True:
            msg = await self._queue.get()
            if msg is not None and msg.data is not None:
                self._queued_bytes -= msg.size
            if (
                self._queue_full
                and self._queue.qsize() <= MAX_QUEUED // 2
                and self._queued_bytes <= MAX_QUEUED_BYTES // 2
            ):
                self._queue_full = False
                self._flow()
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
            if self._draining:
                self._drain_if_quiet()

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
            if self._write_paused:
                self.transport.abort()  # the peer reads nothing: do not wait to flush
            else:
                self.transport.close()

    @property
    def _busy(self) -> bool:
        """We owe the peer an answer: a message waits or is being handled."""
        return self._worker is not None and (not self._queue.empty() or self._handlers.busy)

    @property
    def _mid_message(self) -> bool:
        """Part of a message (a PDU, a command or a data set) has arrived, not all of it."""
        return (
            self._on_full != self._pdu_header_read
            or self._filled > 0
            or self._pending is not None
            or bool(self._cmd_frags)
        )

    def _check_idle(self) -> None:
        """Idle: no PDU completed for ``idle_timeout`` seconds while we owe the peer
        nothing (a stall between PDUs, inside one, or in the middle of a data set)."""
        if self._closing:
            return
        loop = asyncio.get_running_loop()
        idle = loop.time() - self._last_activity
        if self._busy:
            self._last_activity = loop.time()  # our own work is not the peer's silence
            idle = 0.0
        if idle >= self._idle_timeout:
            what = "association" if self.established else "A-ASSOCIATE-RQ"
            self._abort(p.ABORT_REASON_NOT_SPECIFIED, f"no {what} activity for {idle:.0f} s")
            return
        self._watchdog = loop.call_later(max(0.5, self._idle_timeout - idle), self._check_idle)

    def _artim_expired(self) -> None:
        if self._closing or self.established:
            return
        self._abort(
            p.ABORT_REASON_NOT_SPECIFIED,
            f"no complete A-ASSOCIATE-RQ within {self._associate_timeout:g} s",
        )

    # -- shutdown ----------------------------------------------------------------------
    def drain(self) -> None:
        """The worker is stopping: finish the message in progress (a C-STORE being
        received or handled is stored and answered), then abort; abort at once if none."""
        self._draining = True
        self._drain_if_quiet()

    def _drain_if_quiet(self) -> None:
        if self._closing or self._busy or (self.established and self._mid_message):
            return
        self._abort(p.ABORT_REASON_NOT_SPECIFIED, SHUTTING_DOWN)

    def abort(self, why: str) -> None:
        """Abort now (A-ABORT to the peer, then close)."""
        if not self._closing:
            self._abort(p.ABORT_REASON_NOT_SPECIFIED, why)

    async def finished(self) -> None:
        """Wait for the audit of the association's stores (after it closed)."""
        if self._finishing is not None:
            await self._finishing
