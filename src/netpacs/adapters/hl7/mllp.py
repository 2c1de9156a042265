"""MLLP framing, for our listener and our client: ``<VT> message <FS><CR>``.

HL7 v2.5 appendix C (MLLP release 1; release 2 adds only the rule that each message is
answered before the next is sent). One frame reader for both sides: whitespace between
frames is allowed, up to :data:`MAX_WHITESPACE` bytes of it (whitespace was buffered
and rescanned without limit: a sender of endless blanks held memory and CPU); anything
else outside a frame, more whitespace, a frame over :data:`MAX_FRAME` bytes or a
connection closed inside a frame is a :class:`FramingError`, after which the byte
stream cannot be trusted.
"""

from __future__ import annotations

import asyncio
import socket
import time

START = b"\x0b"  # <VT>
END = b"\x1c\r"  # <FS><CR>
MAX_FRAME = 1 << 20  # bytes; ADT messages and acknowledgements are a few kB
MAX_WHITESPACE = 4096  # bytes between frames (a CR/LF or two is what senders add)
_READ_SIZE = 64 * 1024


class FramingError(Exception):
    """The byte stream is not MLLP; the connection cannot be trusted further."""


def frame(payload: bytes) -> bytes:
    return START + payload + END


def take_frame(buffer: bytearray) -> bytes | None:
    """The payload of the first whole frame in ``buffer``, removed from it; None while
    the frame is incomplete."""
    start = buffer.find(START, 0, MAX_WHITESPACE + 1)
    if start > 0 and buffer[:start].strip():
        raise FramingError(f"{start} bytes before the start block <VT>")
    if start < 0:
        if buffer[: MAX_WHITESPACE + 1].strip():
            raise FramingError("data without the start block <VT>")
        if len(buffer) > MAX_WHITESPACE:
            raise FramingError(f"more than {MAX_WHITESPACE} bytes of whitespace between messages")
        return None
    end = buffer.find(END, start + 1)
    if end >= 0:
        payload = bytes(buffer[start + 1 : end])
        del buffer[: end + len(END)]
        return payload
    if len(buffer) - start > MAX_FRAME:
        raise FramingError(f"message longer than {MAX_FRAME} bytes without <FS><CR>")
    return None


async def read_frame(reader: asyncio.StreamReader, buffer: bytearray, idle: float) -> bytes | None:
    """The next payload; None when the peer closed between frames. ``buffer`` keeps the
    rest. TimeoutError after ``idle`` seconds without a byte."""
    while (payload := take_frame(buffer)) is None:
        chunk = await asyncio.wait_for(reader.read(_READ_SIZE), idle)
        if not chunk:
            if buffer.strip():
                raise FramingError("connection closed inside a message")
            return None
        buffer += chunk
    return payload


def receive_frame(sock: socket.socket, buffer: bytearray, *, timeout: float) -> bytes:
    """The next payload from a blocking socket. TimeoutError when none is whole within
    ``timeout`` seconds; EOFError when the peer closed the connection first."""
    deadline = time.monotonic() + timeout
    while (payload := take_frame(buffer)) is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(_READ_SIZE)
        if not chunk:
            raise EOFError
        buffer += chunk
    return payload
