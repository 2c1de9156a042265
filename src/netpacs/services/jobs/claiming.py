"""The transactions a job claims its work in, on PostgreSQL (shared) and on SQLite.

PostgreSQL: one transaction on the writer holds the claim (row or advisory locks) from
the moment the work is read until its outcome is recorded, however long the work is on
the wire; if the node dies, its connection goes and the locks with it. SQLite has one
node and no such locks: the work is read in a read transaction and its outcome written
in a short write transaction of its own, so that no write lock is held while a message
is on the wire (ingest would wait behind it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import sqlalchemy as sa


class Claiming:
    def __init__(self, *, reader: sa.Engine, writer: sa.Engine) -> None:
        self._reader = reader
        self._writer = writer
        self.shared = writer.dialect.name != "sqlite"

    @contextlib.contextmanager
    def claim(self) -> Iterator[sa.Connection]:
        """The transaction that reads (and on PostgreSQL locks) the work."""
        if self.shared:
            with self._writer.begin() as tx:
                yield tx
        else:
            with self._reader.connect() as conn:
                yield conn

    @contextlib.contextmanager
    def record(self, claim: sa.Connection) -> Iterator[sa.Connection]:
        """Where the outcome of claimed work is written: the claim's own transaction
        (committed when the claim ends), or on SQLite a write transaction of its own."""
        if self.shared:
            yield claim
            return
        claim.rollback()  # end the read transaction before SQLite's write lock is taken
        with self._writer.begin() as tx:
            yield tx
