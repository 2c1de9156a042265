"""The job runner's promises: a step that fails does not end its job, and stopping the
runner ends every job, each closed once."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from netpacs.services.jobs.runner import JobRunner
from tests.conftest import wait_until
from tests.hl7.test_results import running


class Counting:
    """A job that fails its first ``failures`` steps (the index away), then counts."""

    def __init__(self, name: str, failures: int = 0) -> None:
        self.name = name
        self.failures = failures
        self.steps = 0
        self.closed = 0
        self.threads: set[str] = set()

    def step(self) -> float:
        self.threads.add(threading.current_thread().name)
        if self.failures:
            self.failures -= 1
            raise sa.exc.OperationalError("SELECT 1", {}, OSError("the index is away"))
        self.steps += 1
        return 0.01

    def close(self) -> None:
        self.closed += 1


def test_a_job_whose_step_failed_runs_on_and_each_job_runs_in_its_own_thread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failing, steady = Counting("failing", failures=2), Counting("steady")
    with running(JobRunner([failing, steady], after_index_failure=0.01)):
        wait_until(lambda: failing.steps >= 3 and steady.steps >= 3)
    assert failing.closed == steady.closed == 1
    assert caplog.text.count("failing: the index failed (the index is away)") == 2
    assert failing.threads == {"job failing"} and steady.threads == {"job steady"}


def test_an_unexpected_failure_is_logged_with_its_traceback_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(Counting):
        def step(self) -> float:
            if not self.steps:
                self.steps += 1
                raise RuntimeError("a bug")
            return super().step()

    job = Broken("broken")
    with running(JobRunner([job], after_failure=0.01)):
        wait_until(lambda: job.steps >= 3)
    assert "broken failed; trying again" in caplog.text
    assert "RuntimeError: a bug" in caplog.text
