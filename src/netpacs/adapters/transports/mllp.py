"""MLLP client: one frame out, the answer's frame back, over TCP or TLS 1.2+.

The connection is kept between messages. A kept connection that turns out dead when
the next message goes (the listener restarted meanwhile) is replaced once, at once.
MLLP over TLS secures HL7 v2 as IHE ITI TF-2 3.1.2 describes: the listener's
certificate must be signed by a CA of the client context and name the host.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from dataclasses import dataclass

from netpacs.adapters.hl7.mllp import FramingError, frame, receive_frame

CONNECT_TIMEOUT = 10.0  # seconds, at most


class MllpError(Exception):
    """An exchange failed; the message says how, for people."""


class ConnectionLost(MllpError):
    """The connection broke before an answer came."""


@dataclass(frozen=True, slots=True)
class TlsClient:
    """How to connect to a TLS listener: the client context, and what to tell people
    when a TLS connection breaks (the likely cause, e.g. a missing client certificate)."""

    context: ssl.SSLContext
    hint: str = ""

    def failure(self, where: str, exc: OSError) -> str:
        hint = f"; {self.hint}" if self.hint else ""
        return f"TLS connection to {where} failed: {_reason(exc)}{hint}"


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


class MllpClient:
    """A client for one listener; not thread-safe (one job uses it)."""

    def __init__(self, host: str, port: int, *, timeout: float, tls: TlsClient | None) -> None:
        self.host = host
        self.port = port
        self._timeout = timeout  # for each answer
        self._tls = tls
        self._sock: socket.socket | None = None
        self._interrupted = False

    @property
    def peer(self) -> str:
        return f"{self.host}:{self.port}"

    def exchange(self, payload: bytes) -> bytes:
        """Send ``payload`` in one frame and return the payload of the answer."""
        try:
            return self._exchange_on_a_connection(payload)
        except MllpError:
            if self._interrupted:
                raise MllpError(f"stopped waiting for {self.peer}: netpacs is stopping") from None
            raise

    def interrupt(self) -> None:
        """From another thread: end the exchange in progress at once (and any later
        one) with :class:`MllpError`; the process is stopping."""
        self._interrupted = True
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _exchange_on_a_connection(self, payload: bytes) -> bytes:
        if self._interrupted:
            raise MllpError("interrupted")
        if self._sock is not None:
            try:
                return self._exchange(self._sock, payload)
            except ConnectionLost:
                self.close()  # kept since the last message and dead now: a new one, once
            except MllpError:
                self.close()
                raise
        self._sock = self._connect()
        if self._interrupted:  # while we were connecting
            self.close()
            raise MllpError("interrupted")
        try:
            return self._exchange(self._sock, payload)
        except MllpError:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def _connect(self) -> socket.socket:
        try:
            sock = socket.create_connection(
                (self.host, self.port), timeout=min(CONNECT_TIMEOUT, self._timeout)
            )
        except OSError as exc:
            raise MllpError(f"cannot connect to {self.peer}: {_reason(exc)}") from None
        if self._tls is None:
            return sock
        try:
            return self._tls.context.wrap_socket(sock, server_hostname=self.host)
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            raise MllpError(
                f"TLS to {self.peer}: its certificate is not trusted ({exc.verify_message})"
            ) from None
        except OSError as exc:  # ssl.SSLError included
            sock.close()
            raise MllpError(self._tls.failure(self.peer, exc)) from None

    def _exchange(self, sock: socket.socket, payload: bytes) -> bytes:
        buffer = bytearray()
        try:
            sock.settimeout(self._timeout)
            sock.sendall(frame(payload))
            return receive_frame(sock, buffer, timeout=self._timeout)
        except TimeoutError:
            raise MllpError(f"no ACK from {self.peer} within {self._timeout:g} s") from None
        except EOFError:
            raise ConnectionLost(f"{self.peer} closed the connection without an ACK") from None
        except FramingError as exc:
            raise MllpError(f"{self.peer} answered outside MLLP framing: {exc}") from None
        except OSError as exc:
            if self._tls is not None and isinstance(exc, ssl.SSLError):
                raise ConnectionLost(self._tls.failure(self.peer, exc)) from None
            raise ConnectionLost(f"connection to {self.peer} failed: {_reason(exc)}") from None
