"""The ``netpacs serve`` process tree: one parent supervising DIMSE and HTTP workers.

Each listening socket (DIMSE, HTTP) is opened once by the parent and inherited by
its worker processes; the kernel hands each new connection to whichever worker
accepts first. The parent restarts a worker that dies and, on SIGTERM or SIGINT,
stops them all: each gets SIGTERM and :func:`worker_grace` seconds to finish its
in-flight work and close its pools; a worker still running ``shutdown_timeout``
seconds after the signal is killed (SIGKILL), so that the whole tree is gone within
that bound whatever a worker waits on.
"""

from __future__ import annotations

import contextlib
import gc
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


def worker_grace(shutdown_timeout: float) -> float:
    """Seconds a worker gives its in-flight work on SIGTERM: the supervisor's bound less
    the few seconds the worker needs afterwards to close its pools and exit."""
    return max(1.0, shutdown_timeout - 5)


@dataclass(frozen=True)
class WorkerGroup:
    """``count`` processes each running ``target()`` until it returns."""

    name: str
    count: int
    target: Callable[[], None]


def supervise(
    groups: Sequence[WorkerGroup],
    *,
    shutdown_timeout: float = 25.0,
    on_start: Callable[[str], None] | None = None,
    on_exit: Callable[[int], None] | None = None,
) -> None:
    """Fork every group's workers, restart those that die, stop all on a signal (and
    kill those still running ``shutdown_timeout`` seconds after it). ``on_start`` runs
    in each new worker with its group's name, ``on_exit`` here with the pid of each
    worker that ended (the metrics' live gauges)."""
    children: dict[int, tuple[WorkerGroup, int]] = {}
    stopping = False
    deadline = 0.0

    def spawn(group: WorkerGroup, slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 0
            try:
                if on_start is not None:
                    on_start(group.name)
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
        nonlocal stopping, deadline
        if not stopping:
            deadline = time.monotonic() + shutdown_timeout
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # What the parent made before forking (the loaded modules, the settings, the region:
    # some 180,000 objects) lives as long as the workers do. Frozen, it is skipped by
    # every worker's garbage collection (a full collection over it took over 100 ms, a
    # pause in whatever request was being served) and its memory pages are not copied
    # into each worker by the collector's writes.
    gc.freeze()
    for group in groups:
        for slot in range(group.count):
            spawn(group, slot)
    while children:
        # Polled, not os.wait(): a wait blocked in the kernel is resumed after a signal
        # (PEP 475), and the supervisor must act on its deadline.
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            if stopping and time.monotonic() >= deadline:
                _kill_overstaying(children, shutdown_timeout)
            time.sleep(0.1)
            continue
        group_slot = children.pop(pid, None)
        if on_exit is not None:
            on_exit(pid)
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
            if not stopping:  # a signal during the pause: the new worker would miss it
                spawn(group, slot)
    sys.stdout.flush()


def _kill_overstaying(children: dict[int, tuple[WorkerGroup, int]], bound: float) -> None:
    for pid, (group, slot) in children.items():
        log.error(
            "%s worker %d (pid %d) still running %.0f s after SIGTERM; killing it",
            group.name,
            slot,
            pid,
            bound,
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
