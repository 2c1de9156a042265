"""The MLLP listener: HL7 v2 messages framed ``<VT> message <FS><CR>`` over TCP.

MLLP release 2 (HL7 v2.5 appendix C): each message is answered on the same
connection before the next is read, so that the messages of one connection are
applied in the order sent. Database work runs in a thread pool, off the event loop.
A frame that breaks the rules (adapters.hl7.mllp: bytes before the start block, over
``MAX_FRAME``) is answered with a NAK when possible and the connection closed; a
message that is framed well but wrong gets a NAK and the connection stays open.

Each connection's caller is its address and, on the TLS port, its verified client
certificate (:class:`~netpacs.domain.peer.Peer`); the ADT service decides which feed of
the region file that is and refuses what it may not send. A connection that is no feed
at all gets an AR for its first message and is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from netpacs.adapters.hl7 import messages
from netpacs.adapters.hl7.messages import AckCode, Rejected
from netpacs.adapters.hl7.mllp import FramingError, frame, read_frame
from netpacs.adapters.hl7.orders import ORDER_TYPES, read_order
from netpacs.domain.peer import Peer, PeerCertificate
from netpacs.services.adt import AdtCaller, AdtService, MessageKey, StoredAck
from netpacs.services.orders import OrderService

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 600.0  # seconds without a byte before a connection is closed
# A connection that is no ADT feed is answered once (an AR saying why) and closed; it
# may not hold its socket for the feeds' idle time meanwhile.
STRANGER_TIMEOUT = 10.0

Handler = Callable[[bytes], bytes]


class Hl7Endpoint:
    """One payload in, one acknowledgement out: never raises, whatever the bytes. One
    per connection: ``caller`` is who the connection is (``AdtService.caller``)."""

    def __init__(
        self, adt: AdtService, caller: AdtCaller, orders: OrderService | None = None
    ) -> None:
        self._adt = adt
        self._orders = orders
        self.caller = caller

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
        peeked = _header_or_none(payload)
        if peeked and peeked.message_type in ORDER_TYPES:
            if self._orders is None:  # an edge node: its orders are the core's
                raise Rejected(
                    "this is a site's edge node: send orders to the regional archive",
                    code=AckCode.AR,
                    error=messages.UNSUPPORTED_TYPE,
                    header=peeked,
                )
            return self._order(payload)
        request = messages.read(payload)
        h = request.header
        key = MessageKey(
            sending_application=h.sending_application,
            sending_facility=h.sending_facility,
            control_id=h.control_id,
            message_type=f"{h.message_type}^{h.trigger}",
            digest=request.digest,
        )
        return self._adt.process(
            key, request.event, lambda r: messages.ack_for(request, r), caller=self.caller
        )

    def _order(self, payload: bytes) -> StoredAck:
        assert self._orders is not None
        order = read_order(payload)
        h = order.header
        key = MessageKey(
            sending_application=h.sending_application,
            sending_facility=h.sending_facility,
            control_id=h.control_id,
            message_type=f"{h.message_type}^{h.trigger}",
            digest=order.digest,
        )
        return self._orders.process(
            key, order.event, lambda r: messages.ack_for_header(h, r), caller=self.caller
        )


def peer_of(writer: asyncio.StreamWriter) -> Peer:
    """The connection's caller: its IP address and, over TLS, the client certificate it
    presented (verified against our CAs by the handshake)."""
    peername = writer.get_extra_info("peername")
    address = str(peername[0]) if peername else None
    ssl_object = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return Peer(address, PeerCertificate.from_der(der) if der else None)


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
    close_after_answer: bool = False,
) -> None:
    """Answer the messages of one connection one after the other, in order
    (``close_after_answer``: only the first, then close: a caller that is no feed)."""
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
            if close_after_answer:
                log.warning("MLLP %s: not an ADT feed of the region; connection closed", peer)
                return
    except (ConnectionError, OSError) as exc:
        log.info("MLLP %s: connection lost (%s)", peer, exc)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


def serve(
    adt: AdtService,
    sock: socket.socket | None,
    tls_sock: socket.socket | None = None,
    tls: ssl.SSLContext | None = None,
    orders: OrderService | None = None,
) -> None:
    """Accept MLLP connections on ``sock`` (plain) and ``tls_sock`` (MLLP over TLS with
    ``tls``) until SIGTERM, applying each message through ``adt`` (orders through
    ``orders``)."""
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hl7")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            endpoint = Hl7Endpoint(adt, adt.caller(peer_of(w)), orders)
            stranger = not endpoint.caller.identified
            await serve_connection(
                r,
                w,
                handler=endpoint,
                executor=executor,
                idle_timeout=STRANGER_TIMEOUT if stranger else IDLE_TIMEOUT,
                close_after_answer=stranger,
            )

        servers = []
        ports = []
        if sock is not None:
            servers.append(await asyncio.start_server(on_connect, sock=sock))
            ports.append(f"{sock.getsockname()[1]}")
        if tls_sock is not None and tls is not None:
            servers.append(
                await asyncio.start_server(
                    on_connect, sock=tls_sock, ssl=tls, ssl_handshake_timeout=30
                )
            )
            ports.append(f"{tls_sock.getsockname()[1]} (TLS)")
        log.info("MLLP listening on port %s (pid %d)", " and ".join(ports), os.getpid())
        await stop.wait()
        for server in servers:
            server.close()
        for server in servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), timeout=5)

    try:
        asyncio.run(main())
    finally:
        executor.shutdown(wait=True)
