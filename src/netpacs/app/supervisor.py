"""The ``netpacs serve`` process tree: one parent supervising DIMSE and HTTP workers.

Each listening socket (DIMSE, HTTP) is opened once by the parent and inherited by
its worker processes; the kernel hands each new connection to whichever worker
accepts first. The parent restarts a worker that dies and, on SIGTERM or SIGINT,
stops them all and waits for them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)


def listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.setblocking(False)
    return sock


@dataclass(frozen=True)
class WorkerGroup:
    """``count`` processes each running ``target()`` until it returns."""

    name: str
    count: int
    target: Callable[[], None]


def supervise(groups: Sequence[WorkerGroup]) -> None:
    """Fork every group's workers, restart those that die, stop all on a signal."""
    children: dict[int, tuple[WorkerGroup, int]] = {}
    stopping = False

    def spawn(group: WorkerGroup, slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 0
            try:
                group.target()
            except BaseException:
                log.exception("%s worker %d failed", group.name, slot)
                code = 1
            finally:
                logging.shutdown()
                sys.stdout.flush()
                os._exit(code)
        children[pid] = (group, slot)

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for group in groups:
        for slot in range(group.count):
            spawn(group, slot)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        group_slot = children.pop(pid, None)
        if group_slot is not None and not stopping:
            group, slot = group_slot
            log.error(
                "%s worker %d (pid %d) exited with status %d; restarting",
                group.name,
                slot,
                pid,
                status,
            )
            time.sleep(0.5)
            spawn(group, slot)
    sys.stdout.flush()
