"""Audit forwarder: moves the index's audit records to the audit record repository.

IHE ATNA (ITI-20 Record Audit Event): each audit record not yet forwarded goes to the
repository through the transport (syslog), in batches of up to :data:`BATCH` records
in record order. Syslog has no acknowledgement, so a batch counts as delivered only
when it was written to the connection *and* the connection is seen still open a
moment later (:data:`CONFIRM_WAIT`): a repository that went away meanwhile leaves an
end of file or a reset on the connection, and the whole batch is sent again after
reconnecting. A repository that is down delays records; they wait in the index, and
none is lost. Delivery is at least once: after a reconnect the repository may see a
message twice.

On PostgreSQL a batch is claimed with ``FOR UPDATE SKIP LOCKED`` until it is marked
forwarded, so that the forwarders of several nodes share the records instead of each
sending all of them, and a batch held by a node that dies is sent by another.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from typing import Protocol

import sqlalchemy as sa

from netpacs.domain.outbox import AuditEntry
from netpacs.index import outbox
from netpacs.services.jobs.claiming import Claiming

log = logging.getLogger(__name__)

BATCH = 500  # records per batch
CONFIRM_WAIT = 0.3  # seconds between writing a batch and checking the connection
POLL = 0.5  # seconds between looks at the index when nothing waits
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0


class ForwardingFailed(Exception):
    """The repository could not be reached or the connection broke; says how."""


class AuditTransport(Protocol):
    """A connection to the audit record repository that audit records are written to."""

    def connect(self) -> None:
        """(Re)open the connection; :class:`ForwardingFailed` when that fails."""
        ...

    def still_open(self) -> bool:
        """False when there is no connection or the repository closed or reset it."""
        ...

    def send(self, entries: Sequence[AuditEntry]) -> None:
        """Write the records; :class:`ForwardingFailed` when the connection breaks."""
        ...

    def close(self) -> None: ...


class Backoff:
    """Delays between reconnection attempts: 1 s, 2 s, 4 s ... up to 30 s."""

    def __init__(self, first: float = BACKOFF_FIRST, most: float = BACKOFF_MAX) -> None:
        self.first = first
        self.most = most
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.most)
        return delay

    def reset(self) -> None:
        self._next = self.first


class AuditForwarding:
    """Forwards audit records batch by batch (module docstring)."""

    name = "audit forwarding"

    def __init__(
        self,
        *,
        reader: sa.Engine,
        claiming: Claiming,
        transport: AuditTransport,
        repository: str,
        confirm_wait: float = CONFIRM_WAIT,
        backoff: Backoff | None = None,
    ) -> None:
        self._reader = reader
        self._claiming = claiming
        self._transport = transport
        self._repository = repository  # where records go, for people
        self._confirm_wait = confirm_wait
        self._backoff = backoff or Backoff()
        self._outage_since: float | None = None

    def step(self) -> float:
        """Forward one batch if records wait."""
        try:
            with self._reader.connect() as conn:
                if not outbox.audit_waiting(conn):
                    return POLL
        except sa.exc.DBAPIError as exc:
            log.warning("audit forwarder cannot read the index: %s", exc.orig)
            return self._backoff.next()
        if not self._transport.still_open() and not self._reconnect():
            return self._backoff.next()
        try:
            sent = self.forward_batch()
        except sa.exc.DBAPIError as exc:
            # Sent but not marked: the batch goes again (at least once).
            log.warning("audit forwarder cannot mark records forwarded: %s", exc.orig)
            return self._backoff.next()
        except ForwardingFailed as exc:
            self._transport.close()
            log.info("connection to %s lost (%s); resending the batch", self._repository, exc)
            return self._backoff.next()
        if sent:
            self._backoff.reset()
            return 0.0
        return POLL  # every waiting record is claimed by another node's forwarder

    def forward_batch(self) -> int:
        """Send the oldest waiting records and mark them forwarded; how many were sent."""
        with self._claiming.claim() as claim:
            entries = outbox.claim_audit_batch(claim, BATCH)
            if not entries:
                return 0
            self._transport.send(entries)
            time.sleep(self._confirm_wait)
            if not self._transport.still_open():
                raise ForwardingFailed(
                    f"the repository closed the connection after {len(entries)} records"
                )
            with self._claiming.record(claim) as tx:
                outbox.audit_forwarded(tx, entries, at=dt.datetime.now(dt.UTC))
        return len(entries)

    def close(self) -> None:
        self._transport.close()

    def _reconnect(self) -> bool:
        self._transport.close()
        try:
            self._transport.connect()
        except ForwardingFailed as exc:
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                log.warning(
                    "audit record repository %s cannot be reached: %s; audit records wait "
                    "in the index and are sent when it is back (retrying every %.0f s at most)",
                    self._repository,
                    exc,
                    self._backoff.most,
                )
            return False
        if self._outage_since is not None:
            log.warning(
                "audit record repository %s reachable again after %.0f s; sending the "
                "records that waited",
                self._repository,
                time.monotonic() - self._outage_since,
            )
            self._outage_since = None
        return True
