"""The time one query may work (issue 17): stopped in the database and between rows.

A query is charged for the time it works, not for the time its caller takes to use
the answers (a C-FIND sends each match before asking for the next). When the limit is
spent, SQLite is interrupted by a progress handler and PostgreSQL by its own
``statement_timeout``; either becomes :class:`~netpacs.domain.query.QueryTimeout`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from netpacs.domain.query import QueryTimeout

# SQLite calls the progress handler every this many virtual machine instructions
# (about a tenth of a millisecond of work).
_SQLITE_STEPS = 10_000
_PG_QUERY_CANCELED = "57014"


class QueryBudget:
    """The work time of one query, against its limit (None: no limit)."""

    def __init__(self, limit: float | None) -> None:
        self._limit = limit
        self._spent = 0.0
        self._since: float | None = None

    def resume(self) -> None:
        """The query works again (its caller asked for the next answer)."""
        if self._since is None:
            self._since = time.monotonic()

    def pause(self) -> None:
        """The query waits for its caller (an answer was handed over)."""
        if self._since is not None:
            self._spent += time.monotonic() - self._since
            self._since = None

    def spent(self) -> float:
        running = time.monotonic() - self._since if self._since is not None else 0.0
        return self._spent + running

    def exceeded(self) -> bool:
        return self._limit is not None and self.spent() > self._limit

    def check(self) -> None:
        """Raise :class:`QueryTimeout` when the limit is spent."""
        if self.exceeded():
            raise self.error()

    def error(self) -> QueryTimeout:
        # The essential words first: a C-FIND Error Comment keeps 64 characters.
        return QueryTimeout(
            f"query stopped: over its {self._limit:g} s work limit; narrow it with a "
            "patient, a date range or fewer wild cards"
        )

    @contextmanager
    def guard(self, conn: sa.Connection, *, sqlite: bool) -> Iterator[None]:
        """The database stops a statement of ``conn`` once the limit is spent."""
        if self._limit is None:
            yield
            return
        if sqlite:
            raw = conn.connection.driver_connection
            raw.set_progress_handler(self.exceeded, _SQLITE_STEPS)  # type: ignore[union-attr]
            try:
                yield
            except sa.exc.OperationalError:
                if self.exceeded():
                    raise self.error() from None
                raise
            finally:
                raw.set_progress_handler(None, 0)  # type: ignore[union-attr]
            return
        # Each statement (each FETCH of a server-side cursor) at most the whole limit;
        # what is spent between them is checked by the reader.
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {max(1, int(self._limit * 1000))}")
        try:
            yield
        except sa.exc.DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) == _PG_QUERY_CANCELED:
                raise self.error() from None
            raise
