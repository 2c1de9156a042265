"""Associations we request with pynetdicom, without its reactor's race for responses.

pynetdicom (3.0) runs a reactor thread on every association. Before a ``send_*`` call
sends a request, it clears the reactor's checkpoint (a :class:`threading.Event`) and
spins until the reactor's ``_is_paused`` flag is true. The reactor sets that flag just
*before* it waits on the checkpoint and resets it just after. If the checkpoint is
cleared while the reactor is between those two steps, the sender believes the reactor
paused, sends its request, and both threads then read the association's message queue.
When the reactor wins, it logs "Received unexpected C-STORE service message", drops the
response, and the sender waits out the whole DIMSE timeout for an answer already
received. A C-MOVE's sub-operations then stall for a minute (seen in our suite as a
move that never completed).

:func:`associate` installs a :class:`Checkpoint` in the place of that Event. Its
:meth:`~Checkpoint.clear`, called from any thread but the reactor's, returns only once
the reactor is parked inside :meth:`~Checkpoint.wait`, which it enters under the same
lock. A parked reactor cannot read the queue until the sender sets the checkpoint
again, so the response goes to the sender. pynetdicom offers no hook for this; the
attribute it reads on every pass of its loop is the only seam. :func:`associate` also
turns Nagle's algorithm off on the association's socket (pynetdicom leaves it on).

A reactor that ends while the association is still established (an exception in its
thread) leaves that flag false, and pynetdicom's own ``release`` and ``send_*`` then spin
on it for ever; :meth:`~Checkpoint.clear` sets it for them once the thread has ended.

pynetdicom also writes every C-FIND, C-GET and C-MOVE identifier it sends or receives to
its log at INFO, netpacs's default level: the NHS number a federated search asks for,
and the names, birth dates and hospital numbers another network answers with. Patient
data belongs in the audit trail, so those two settings of pynetdicom's (of the whole
process, like ``STORE_SEND_CHUNKED_DATASET``) are turned off wherever this module is
imported, which every association netpacs requests goes through.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from typing import Any

from pynetdicom import AE, _config

log = logging.getLogger(__name__)

_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False


class Checkpoint:
    """A drop-in for the reactor's Event whose ``clear`` waits for the reactor to park."""

    def __init__(self, reactor: threading.Thread) -> None:
        self._reactor = reactor
        self._cond = threading.Condition()
        self._flag = True
        self._parked = False

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with self._cond:
            self._flag = True
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._flag = False
            if threading.current_thread() is self._reactor:
                return  # the reactor pausing itself (its network timeout) is not racing
            # As long as pynetdicom's own spin would: until the reactor parks (it does
            # once its current message is handled) or its thread has ended. Going on
            # sooner would let a reply it is still sending follow our next request.
            while not self._parked and self._reactor.is_alive():
                self._cond.wait(0.05)
            if not self._parked:
                # The reactor has ended while the association is established (an error
                # in its thread). pynetdicom's flag then stays false and the caller's
                # spin on it would never end; nothing is left to race with.
                log.warning("association reactor ended while established; going on")
                self._reactor._is_paused = True  # type: ignore[attr-defined]

    def wait(self, timeout: float | None = None) -> bool:
        with self._cond:
            if self._flag:
                return True
            self._parked = True
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: self._flag, timeout)
            finally:
                self._parked = False


def associate(ae: AE, host: str, port: int, **kw: Any) -> Any:
    """``ae.associate(host, port, **kw)``, with the reactor's race closed (an
    established association gets a :class:`Checkpoint`) and without Nagle's delay."""
    assoc = ae.associate(host, port, **kw)
    if assoc.is_established:
        assoc._reactor_checkpoint = Checkpoint(assoc)  # type: ignore[assignment]  # duck-typed Event
        _no_delay(assoc)
    return assoc


def _no_delay(assoc: Any) -> None:
    """TCP_NODELAY on the association's socket. pynetdicom leaves Nagle's algorithm on,
    and a request it writes as two PDUs (a C-FIND's command, then its identifier) then
    waits for the peer's delayed acknowledgement of the first: about 40 ms per request
    on Linux (a C-FIND of three answers took 53 ms with it, 9 ms without)."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
