"""What the maintenance jobs share: :func:`run_bounded`, a bounded thread pool over a
lazy iterable, and the progress callback they report through."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

ProgressCallback = Callable[[str, int, int | None], None]
"""Called as ``progress(phase, done, total)``; total is None when not known in advance."""


def _no_progress(_phase: str, _done: int, _total: int | None) -> None:
    return None


def run_bounded(
    fn: Callable[[T], R], items: Iterable[T], *, workers: int, window: int | None = None
) -> Iterator[tuple[T, R]]:
    """Apply ``fn`` to ``items`` on ``workers`` threads, yielding (item, result) as each ends.

    At most ``window`` items are in flight, so an endless or huge iterable is consumed
    lazily. Exceptions raised by ``fn`` propagate to the consumer.
    """
    window = max(window or workers * 4, 1)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="netpacs-maint")
    pending: dict[Future[R], T] = {}
    try:
        for item in items:
            pending[pool.submit(fn, item)] = item
            if len(pending) >= window:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield pending.pop(fut), fut.result()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield pending.pop(fut), fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
