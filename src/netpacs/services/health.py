"""Whether this node can take work, for load balancers (``GET /readyz``).

A node is ready when

* **the index takes a write**: a write in a transaction that is rolled back
  (:func:`netpacs.index.revision.write_probe`); a read-only standby after a failover,
  a full disk or an unreachable database fails it;
* **the object store takes a write**: the store's own ``check()`` (a small file
  written and removed; an S3 store its bucket);
* **the schema is current**: the database's migration is this code's newest. A
  database at an older migration fails; one at a migration this code does not know
  is a newer release's during a rolling upgrade (migrations stay compatible with the
  previous release's code), so the node stays ready and says so.

Every check is bounded: it runs in a thread and is reported as failed when it has not
answered within ``timeout`` seconds (a database host that vanished without a reset
leaves a connection waiting much longer). A check still running is not started again,
so load balancers asking every second never pile up threads or connections, and an
answer is reused for ``max_age`` seconds (the checks write; anyone may ask).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import sqlalchemy as sa

from netpacs.index.revision import Revisions, code_revisions, newer_revision, write_probe
from netpacs.storage.blobstore import BlobStore

log = logging.getLogger(__name__)

DATABASE = "database"
OBJECT_STORE = "object store"
MIGRATIONS = "migrations"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Readiness:
    checks: tuple[Check, ...]

    @property
    def ready(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def reason(self) -> str:
        """What failed, for people and logs (empty when ready)."""
        return "; ".join(f"{c.name}: {c.detail}" for c in self.checks if not c.ok)


def _one_line(exc: BaseException) -> str:
    """An exception's own words without the SQL or a traceback (a DBAPI error's
    driver message, first line)."""
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip().splitlines()
    return (text[0] if text else inner.__class__.__name__)[:300]


class HealthService:
    def __init__(
        self,
        *,
        engine: sa.Engine,
        blobs: BlobStore,
        timeout: float = 1.0,
        max_age: float = 1.0,
        revisions: Revisions | None = None,
    ) -> None:
        self._engine = engine
        self._blobs = blobs
        self._timeout = timeout
        self._max_age = max_age
        self._revisions = revisions or code_revisions()
        self._lock = threading.Lock()
        self._running: dict[str, Future[str | None]] = {}
        self._last: tuple[float, Readiness] | None = None

    def readiness(self) -> Readiness:
        with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last[0] < self._max_age:
                return self._last[1]
            database = self._start(DATABASE, self._database)
            objects = self._start(OBJECT_STORE, self._object_store)
            deadline = now + self._timeout
            db_check, revision = self._outcome(DATABASE, database, deadline)
            checks = [db_check, self._outcome(OBJECT_STORE, objects, deadline)[0]]
            if db_check.ok:
                checks.append(self._migrations(revision))
            result = Readiness(tuple(checks))
            was = self._last[1] if self._last is not None else None
            if not result.ready and (was is None or was.reason != result.reason):
                log.warning("not ready: %s", result.reason)
            elif result.ready and was is not None and not was.ready:
                log.warning("ready again (was: %s)", was.reason)
            self._last = (time.monotonic(), result)
            return result

    def _start(self, name: str, probe: Callable[[], str | None]) -> Future[str | None]:
        """The check's thread: a daemon of its own, so that one stuck check neither
        holds up the other nor the process's exit."""
        running = self._running.get(name)
        if running is None or running.done():
            future: Future[str | None] = Future()

            def run() -> None:
                try:
                    future.set_result(probe())
                except BaseException as exc:  # reported as the check's failure
                    future.set_exception(exc)

            threading.Thread(target=run, name=f"readiness {name}", daemon=True).start()
            self._running[name] = running = future
        return running

    def _outcome(
        self, name: str, future: Future[str | None], deadline: float
    ) -> tuple[Check, str | None]:
        try:
            value = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            return Check(name, False, f"no answer within {self._timeout:g} s"), None
        except Exception as exc:
            return Check(name, False, _one_line(exc)), None
        return Check(name, True, "ok"), value

    def _database(self) -> str | None:
        return write_probe(self._engine, timeout=self._timeout)

    def _object_store(self) -> None:
        self._blobs.check()
        return None

    def _migrations(self, revision: str | None) -> Check:
        head = self._revisions.head
        if revision == head:
            return Check(MIGRATIONS, True, f"at {head}")
        if revision is None:
            return Check(MIGRATIONS, False, f"the database has no schema; this code needs {head}")
        if revision in self._revisions.known:
            return Check(
                MIGRATIONS,
                False,
                f"the database is at {revision}, this code needs {head} "
                "(`netpacs serve` migrates at start)",
            )
        if newer_revision(revision, head):
            return Check(
                MIGRATIONS,
                True,
                f"the database is at {revision}, newer than this code's {head} "
                "(a rolling upgrade: migrations stay compatible with the previous release)",
            )
        return Check(
            MIGRATIONS, False, f"the database is at {revision}, a revision netpacs never made"
        )
