"""Results sender: delivers the results queued for each trust, strictly in order.

The reporting service queues one result per signed report or addendum in the
transaction that signs it (index.outbox). One :class:`TrustResults` job per trust of
the region sends that trust's results through its transport and records the answer:

* accepted: delivered, ``sent_at`` is set;
* an error or a rejection, no answer in time, a refused or broken connection:
  ``attempts`` + 1, ``last_error`` says what happened, and the result waits until
  ``next_attempt_at`` (1 s, 2 s, 4 s ... up to ``retry_max``) before it is sent again,
  unchanged (the same message, the same control id).

Order: a trust's results go strictly in queue order, one at a time; the next is not
sent before the one before it is accepted, however long that takes. Trusts are
independent: each has its own job, so a trust whose listener is down holds up no
other. A trust without a results endpoint keeps its results queued, ``last_error``
saying so; results for trusts the region does not name wait likewise (:class:`StrayResults`).

Delivery is at least once: the only state is the table, so a result whose answer was
lost is sent again with its control id, by which the receiver recognises it. On
PostgreSQL a trust's job holds the trust's advisory lock in the transaction of each
attempt, so that the jobs of several nodes never send one trust's results at once,
and a node that dies leaves the trust to the others.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import sqlalchemy as sa

from netpacs.domain.outbox import Acceptance, PendingResult, Receipt
from netpacs.index import outbox
from netpacs.services.jobs.claiming import Claiming

log = logging.getLogger(__name__)

STRAY_CHECK = 30.0  # seconds between looks for results of trusts the region does not name


class DeliveryFailed(Exception):
    """An attempt failed on the wire; the message (for ``last_error``) says how."""


class ResultTransport(Protocol):
    """Sends one trust's results: renders a queued result and reads the receiver's answer."""

    @property
    def peer(self) -> str:
        """Where results go, for people (``host:port``)."""
        ...

    def send(self, result: PendingResult) -> Receipt:
        """One attempt; :class:`DeliveryFailed` when no answer came."""
        ...

    def interrupt(self) -> None:
        """From another thread: end the attempt in progress now (we are stopping); it
        fails with :class:`DeliveryFailed` and the result is sent again later."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Timing:
    """How often to look for results and how to back off after a failed attempt."""

    poll: float = 0.5
    retry_first: float = 1.0
    retry_max: float = 60.0

    def backoff(self, attempts: int) -> float:
        """Seconds before the next attempt after ``attempts`` failed ones (capped doubling)."""
        return float(min(self.retry_first * 2 ** min(max(attempts - 1, 0), 30), self.retry_max))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class TrustResults:
    """Sends one trust's queued results in order (module docstring)."""

    def __init__(
        self,
        trust: str,
        *,
        transport: ResultTransport | None,
        claiming: Claiming,
        timing: Timing,
        region_file: str = "the region file",
    ) -> None:
        self.trust = trust
        self.name = f"results {trust}"
        self._transport = transport
        self._claiming = claiming
        self._timing = timing
        self._region_file = region_file
        self._outage_since: float | None = None

    def step(self) -> float:
        """At most one attempt for the trust's oldest waiting result."""
        with self._claiming.claim() as claim:
            if not outbox.try_lock(claim, self.name):
                return self._timing.poll  # another node is sending this trust's results
            result = outbox.next_result(claim, self.trust)
            if result is None:
                return self._timing.poll
            if self._transport is None:
                self._no_endpoint(claim)
                return self._timing.poll
            wait = (result.next_attempt_at - _now()).total_seconds()
            if wait > 0:
                return min(wait, self._timing.poll)
            return self._attempt(claim, result, self._transport)

    def interrupt(self) -> None:
        if self._transport is not None:
            self._transport.interrupt()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _attempt(
        self, claim: sa.Connection, result: PendingResult, transport: ResultTransport
    ) -> float:
        try:
            receipt = transport.send(result)
        except DeliveryFailed as exc:
            return self._failed(claim, result, str(exc), transport.peer)
        if receipt.acceptance is not Acceptance.ACCEPTED:
            detail = f": {receipt.text}" if receipt.text else ""
            error = f"{transport.peer} answered {receipt.code}{detail}"
            return self._failed(claim, result, error, transport.peer)
        with self._claiming.record(claim) as tx:
            outbox.result_accepted(tx, result, at=_now())
        if self._outage_since is not None:
            log.warning(
                "results listener of %s (%s) accepts results again after %.0f s",
                self.trust,
                transport.peer,
                time.monotonic() - self._outage_since,
            )
            self._outage_since = None
        return 0.0

    def _failed(self, claim: sa.Connection, result: PendingResult, error: str, peer: str) -> float:
        delay = self._timing.backoff(result.attempts + 1)
        with self._claiming.record(claim) as tx:
            outbox.result_failed(
                tx, result, error=error, retry_at=_now() + dt.timedelta(seconds=delay)
            )
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning(
                "results for %s (%s) not delivered: %s; the message waits in the outbox and "
                "is sent again (every %.0f s at most); later results wait behind it",
                self.trust,
                peer,
                error,
                self._timing.retry_max,
            )
        return min(delay, self._timing.poll)

    def _no_endpoint(self, claim: sa.Connection) -> None:
        error = (
            f"trust {self.trust} has no results MLLP endpoint "
            f"([trusts.results_mllp] in {self._region_file}): results wait until one is set"
        )
        with self._claiming.record(claim) as tx:
            held = outbox.results_held(tx, self.trust, error=error)
        if held:
            log.warning("%d results wait: %s", held, error)


class StrayResults:
    """Gives results queued for trusts the region does not name a ``last_error``."""

    name = "results for trusts not in the region"

    def __init__(
        self, trusts: Sequence[str], *, writer: sa.Engine, region_file: str = "the region file"
    ) -> None:
        self._trusts = list(trusts)
        self._writer = writer
        self._region_file = region_file

    def step(self) -> float:
        held = 0
        with self._writer.begin() as tx:
            for trust in sorted(outbox.trusts_waiting(tx, besides=self._trusts)):
                error = (
                    f"trust {trust!r} is not in the region ({self._region_file}): add it with "
                    "its [trusts.results_mllp], and the results wait until then"
                )
                held += outbox.results_held(tx, trust, error=error)
        if held:
            log.warning("%d results are for trusts not in the region file", held)
        return STRAY_CHECK

    def close(self) -> None:
        pass
