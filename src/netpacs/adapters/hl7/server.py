"""The MLLP listener: HL7 v2 messages framed ``<VT> message <FS><CR>`` over TCP.

MLLP release 2 (HL7 v2.5 appendix C): each message is answered on the same
connection before the next is read, so that the messages of one connection are
applied in the order sent. Database work runs in a thread pool, off the event loop.
A frame that breaks the rules (adapters.hl7.mllp: bytes before the start block, over
``MAX_FRAME``) is answered with a NAK when possible and the connection closed; a
message that is framed well but wrong gets a NAK and the connection stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from netpacs.adapters.hl7 import messages
from netpacs.adapters.hl7.messages import AckCode, Rejected
from netpacs.adapters.hl7.mllp import FramingError, frame, read_frame
from netpacs.services.adt import AdtService, MessageKey, StoredAck

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 600.0  # seconds without a byte before a connection is closed

Handler = Callable[[bytes], bytes]


class Hl7Endpoint:
    """One payload in, one acknowledgement out: never raises, whatever the bytes."""

    def __init__(self, adt: AdtService) -> None:
        self._adt = adt

    def __call__(self, payload: bytes) -> bytes:
        try:
            ack: StoredAck = self._handle(payload)
        except Rejected as rejected:
            log.warning(
                "HL7 %s rejected (%s): %s",
                rejected.header.control_id if rejected.header else "message",
                rejected.code.value,
                rejected.reason,
            )
            ack = messages.build_ack(
                rejected.header, rejected.code, rejected.reason, error=rejected.error
            )
        except Exception:
            log.exception("HL7 message could not be applied")
            header = _header_or_none(payload)
            ack = messages.build_ack(
                header,
                AckCode.AE,
                "netpacs could not apply the message now (internal error); send it again",
                error=messages.INTERNAL_ERROR,
            )
        return ack.message.encode("utf-8")

    def _handle(self, payload: bytes) -> StoredAck:
        request = messages.read(payload)
        h = request.header
        key = MessageKey(
            sending_application=h.sending_application,
            sending_facility=h.sending_facility,
            control_id=h.control_id,
            message_type=f"{h.message_type}^{h.trigger}",
            digest=request.digest,
        )
        return self._adt.process(key, request.event, lambda r: messages.ack_for(request, r))


def _header_or_none(payload: bytes) -> messages.Header | None:
    try:
        return messages.read_header(messages.decode(payload))
    except Rejected as rejected:
        return rejected.header


async def serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    handler: Handler,
    executor: ThreadPoolExecutor,
    idle_timeout: float = IDLE_TIMEOUT,
) -> None:
    """Answer the messages of one connection one after the other, in order."""
    peer = writer.get_extra_info("peername")
    loop = asyncio.get_running_loop()
    buffer = bytearray()
    try:
        while True:
            try:
                payload = await read_frame(reader, buffer, idle_timeout)
            except FramingError as exc:
                log.warning("MLLP %s: %s; NAK sent, connection closed", peer, exc)
                nak = messages.build_ack(
                    None, AckCode.AR, f"MLLP framing error: {exc}", error=messages.SEGMENT_ERROR
                )
                writer.write(frame(nak.message.encode("utf-8")))
                await writer.drain()
                return
            except TimeoutError:
                log.info("MLLP %s: idle for %.0f s, connection closed", peer, idle_timeout)
                return
            if payload is None:
                return
            answer = await loop.run_in_executor(executor, handler, payload)
            writer.write(frame(answer))
            await writer.drain()
    except (ConnectionError, OSError) as exc:
        log.info("MLLP %s: connection lost (%s)", peer, exc)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


def serve(adt: AdtService, sock: socket.socket) -> None:
    """Accept MLLP connections on ``sock`` until SIGTERM, applying each message through
    ``adt``."""
    endpoint = Hl7Endpoint(adt)
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hl7")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await serve_connection(r, w, handler=endpoint, executor=executor)

        server = await asyncio.start_server(on_connect, sock=sock)
        log.info("MLLP listening on port %d (pid %d)", sock.getsockname()[1], os.getpid())
        await stop.wait()
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), timeout=5)

    try:
        asyncio.run(main())
    finally:
        executor.shutdown(wait=True)
