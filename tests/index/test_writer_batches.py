"""The index writer's group commit: concurrent writes share one transaction, and a
write that fails fails alone (its caller gets the error, every other caller's row is
committed), on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa

from netpacs.index.db import make_engine, migrate
from netpacs.index.writer import IndexWriter

_notes = sa.table("writer_note", sa.column("id", sa.Integer), sa.column("text", sa.String))


def _writer(url: str) -> tuple[IndexWriter, sa.Engine]:
    migrate(url)
    engine = make_engine(url, writer=True, pool_size=2)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE writer_note (id INTEGER PRIMARY KEY, text TEXT)")
    return IndexWriter(engine, max_batch=64), engine


def test_a_failing_write_in_a_batch_fails_alone_and_the_others_are_committed(
    database_url: str,
) -> None:
    writer, engine = _writer(database_url)
    gate = threading.Event()
    try:
        # A first job holds the writer thread so that the next 20 form one batch.
        blocker = threading.Thread(target=writer.execute, args=(lambda conn: gate.wait(5),))
        blocker.start()

        def write(i: int) -> Any:
            def job(conn: sa.Connection) -> int:
                conn.execute(sa.insert(_notes).values(id=i, text=f"note {i}"))
                if i == 7:  # a duplicate key: this write, and only this one, fails
                    conn.execute(sa.insert(_notes).values(id=i, text="again"))
                return i

            return writer.execute(job)

        with ThreadPoolExecutor(20) as pool:
            futures = [pool.submit(write, i) for i in range(20)]
            gate.set()
            outcomes = []
            for f in futures:
                try:
                    outcomes.append(f.result(timeout=30))
                except sa.exc.IntegrityError:
                    outcomes.append("failed")
        blocker.join(10)
        assert outcomes == [i if i != 7 else "failed" for i in range(20)]
        with engine.connect() as conn:
            stored = conn.execute(sa.select(_notes.c.id).order_by(_notes.c.id)).scalars().all()
        assert stored == [i for i in range(20) if i != 7]
    finally:
        writer.close()
        engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_batch_without_failures_is_committed_in_one_transaction(database_url: str) -> None:
    writer, engine = _writer(database_url)
    savepoints: list[str] = []

    @sa.event.listens_for(engine, "savepoint")
    def _count(conn: sa.Connection, name: str) -> None:
        savepoints.append(name)

    gate = threading.Event()
    try:
        blocker = threading.Thread(target=writer.execute, args=(lambda conn: gate.wait(5),))
        blocker.start()
        with ThreadPoolExecutor(10) as pool:
            futures = [
                pool.submit(
                    writer.execute,
                    lambda conn, i=i: conn.execute(sa.insert(_notes).values(id=i, text="n")),
                )
                for i in range(10)
            ]
            gate.set()
            for f in futures:
                f.result(timeout=30)
        blocker.join(10)
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(_notes)).scalar() == 10
        assert savepoints == []  # no SAVEPOINT round trips when nothing fails
    finally:
        writer.close()
        engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_write_while_the_writer_is_idle_is_committed_without_a_hand_off(
    database_url: str,
) -> None:
    """Alone, a write runs in its caller's thread (no wake-up of the writer thread and
    back); one that arrives while a batch runs waits for the writer thread's next."""
    writer, engine = _writer(database_url)
    gate = threading.Event()
    try:
        ran_in = writer.execute(lambda conn: threading.current_thread())
        assert ran_in is threading.current_thread()
        running = threading.Event()

        def hold(conn: sa.Connection) -> None:
            running.set()
            gate.wait(5)

        blocker = threading.Thread(target=writer.execute, args=(hold,))
        blocker.start()
        assert running.wait(5)
        threading.Timer(0.3, gate.set).start()
        queued_in = writer.execute(lambda conn: threading.current_thread())
        assert queued_in.name == "index-writer"
        blocker.join(10)
    finally:
        writer.close()
        engine.dispose()
