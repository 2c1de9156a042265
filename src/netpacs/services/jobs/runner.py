"""The job runner: each job in a thread of its own, stepped until the runner is stopped.

A job's step does at most one unit of work and returns the seconds until the job
should run again (0: at once, more work waits). A step that fails does not end its
job: an index that is away is retried soon, anything else later, and logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import sqlalchemy as sa

from netpacs.services import metrics

log = logging.getLogger(__name__)

GRACE = 20.0  # seconds the jobs' steps in progress get once the runner is stopped


class Job(Protocol):
    @property
    def name(self) -> str:
        """What the job does, for logs and thread names (e.g. ``results RXC``)."""
        ...

    def step(self) -> float:
        """Claim and do at most one unit of work; seconds until the next step."""
        ...

    def close(self) -> None:
        """Let go of connections; the job is not stepped again."""
        ...


@runtime_checkable
class Interruptible(Protocol):
    def interrupt(self) -> None:
        """From another thread: make the step in progress end now (the runner stops)."""
        ...


class JobRunner:
    """Runs ``jobs`` until :meth:`run`'s ``stop`` is set."""

    def __init__(
        self,
        jobs: Sequence[Job],
        *,
        after_index_failure: float = 1.0,
        after_failure: float = 30.0,
    ) -> None:
        self.jobs = tuple(jobs)
        self._after_index_failure = after_index_failure
        self._after_failure = after_failure

    def run(self, stop: threading.Event, *, grace: float = GRACE) -> None:
        """Step every job in its own thread; return once ``stop`` is set and each job's
        current step has ended, or ``grace`` seconds after ``stop`` at most.

        A step still running then (a results listener that takes our message and never
        answers, a connection pool or a lock it waits for) is left to the process's
        exit: its claim is a transaction that ends with its connection, so its work is
        done again later (at least once, as the jobs promise), never lost."""
        threads = [
            threading.Thread(
                target=self._loop, args=(job, stop), name=f"job {job.name}", daemon=True
            )
            for job in self.jobs
        ]
        for thread in threads:
            thread.start()
        try:
            stop.wait()
        finally:
            stop.set()
            for job in self.jobs:
                if isinstance(job, Interruptible):
                    job.interrupt()  # a results listener that never answers
            deadline = time.monotonic() + grace
            for thread in threads:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
            left = [thread.name for thread in threads if thread.is_alive()]
            if left:
                log.warning(
                    "stopping without waiting for %s (still in a step %.0f s after the stop)",
                    ", ".join(left),
                    grace,
                )

    def _loop(self, job: Job, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                delay = self._step(job)
                if delay > 0:
                    stop.wait(delay)
        finally:
            job.close()

    def _step(self, job: Job) -> float:
        try:
            return job.step()
        except (sa.exc.DBAPIError, sa.exc.TimeoutError) as exc:
            metrics.job_failed(job.name)
            # The database is away, or every connection of the pool is busy sending.
            reason = getattr(exc, "orig", None) or exc  # the driver's words, without the SQL
            log.warning("%s: the index failed (%s); trying again", job.name, reason)
            return self._after_index_failure
        except Exception:
            metrics.job_failed(job.name)
            log.exception("%s failed; trying again in %.0f s", job.name, self._after_failure)
            return self._after_failure
