"""Engines for the index: SQLite (WAL, embedded default) or PostgreSQL (production).

Two engines per process: a writer (SQLite: ``BEGIN IMMEDIATE`` so that a writer never
fails on lock upgrade) and a reader (deferred transactions; WAL lets readers run
beside the writer).

PostgreSQL may be a cluster with automatic failover (deploy/patroni): the URL then
names every node in libpq's multi-host form,
``postgresql+psycopg://user:pw@host1:5432,host2:5432/netpacs?target_session_attrs=read-write``,
so that a new connection finds the current primary, and a write whose transaction
failed because the primary went away is run again on the new one
(:func:`retry_on_failover`, :func:`run_in_transaction`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event

from netpacs.index.revision import (
    MIGRATIONS,
    UnknownSchema,
    code_revisions,
    newer_revision,
    stored_revision,
)

if TYPE_CHECKING:
    from alembic.config import Config

_MIGRATION_LOCK = 0x6E65_7470_6163_7301  # "netpacs" + 1: one migration at a time
DEFAULT_RETRY_SECONDS = 30.0
# Seconds libpq waits for one host of the URL to answer before it tries the next.
CONNECT_TIMEOUT = 5
# PostgreSQL's default random_page_cost (4.0) prices a random read as a spinning disk's.
# The index lives on SSDs and mostly in memory; at that price the planner hashes the
# whole study table to join a few hundred open worklist items (43 ms at a million
# instances, against 8 ms for the look-ups it chooses at 1.1: bench/README.md, issue
# 16). 1.1 is the usual value for SSDs. Sessions run in UTC: psycopg then gives every
# timestamp Python's own UTC time zone instead of a ZoneInfo of the server's zone, whose
# every comparison and conversion looks the offset up again (a tenth of a worklist
# page's CPU); the instants are the same, and no statement depends on the session's
# zone. No parallel plans: the index answers many short requests at once, and from
# about seven million instances PostgreSQL planned the study list's first page with two
# parallel workers, started for each request (7 ms before the first row, 19-22 ms of
# database time and three processes' CPU for one page, against 5.6-6.0 ms without;
# issue 16). A URL that sets ``options`` keeps its own.
SESSION_OPTIONS = "-c random_page_cost=1.1 -c timezone=UTC -c max_parallel_workers_per_gather=0"
# A pooled PostgreSQL connection is handed out without a round trip to check it: the
# server sends nothing to an idle session unless it is ending it (an error on shutdown,
# failover or termination, then the end of the stream), so a connection with something
# to read has lost its server and is replaced. One idle longer than this is also pinged
# (a link that failed silently sends nothing). SQLAlchemy's pre-ping asked the server on
# every checkout: a round trip more for each transaction (issue 16; a QIDO-RS search
# makes two, its query and its audit record).
PING_AFTER_IDLE_SECONDS = 10.0

log = logging.getLogger(__name__)
T = TypeVar("T")

# SQLSTATEs a session sees when its server stops being a writable primary: a standby or
# a demoted primary (read-only transaction), a server shutting down or starting up.
_FAILOVER_SQLSTATES = frozenset({"25006", "57P01", "57P02", "57P03"})


class IndexUnavailable(RuntimeError):
    """The index database stayed out of reach for the whole retry time.

    ``maybe_committed`` is true when a COMMIT was sent and its answer lost: the rows may
    be in the database, so what they point at (a blob) must be kept."""

    def __init__(self, message: str, *, maybe_committed: bool) -> None:
        super().__init__(message)
        self.maybe_committed = maybe_committed


def database_url(url: str) -> str:
    """``url`` as SQLAlchemy takes it: libpq's multi-host form (``@h1:p1,h2:p2/db``,
    which SQLAlchemy cannot parse) becomes the psycopg dialect's ``?host=h1:p1&host=
    h2:p2`` form; any other URL is returned as it is."""
    scheme, sep, rest = url.partition("://")
    if not sep or is_sqlite(url):
        return url
    netloc, _, tail = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if "," not in hosts:
        return url
    path, _, query = tail.partition("?")
    params = [("host", h) for h in hosts.split(",") if h]
    params += urllib.parse.parse_qsl(query, keep_blank_values=True)
    return f"{scheme}://{userinfo}{at}/{path}?{urllib.parse.urlencode(params)}"


def shown_url(url: str) -> str:
    """``url`` without its password, for messages."""
    try:
        return sa.make_url(database_url(url)).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(not a database URL)"


def lost_primary(exc: BaseException) -> bool:
    """Whether ``exc`` says the database server went away or stopped being the
    primary (its connection broke, it shuts down, it is read-only now): a transaction
    that failed so may succeed on the new primary."""
    if isinstance(exc, IndexUnavailable):
        return True
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    state = str(getattr(exc.orig, "sqlstate", "") or "")
    if state == "57014":  # query_canceled: a statement timeout, not a failover
        return False
    if exc.connection_invalidated or isinstance(
        exc, sa.exc.OperationalError | sa.exc.InterfaceError
    ):
        return True
    return state in _FAILOVER_SQLSTATES or state.startswith("08")


def retry_on_failover(
    engine: sa.Engine,
    attempt: Callable[[], T],
    *,
    retry_seconds: float = DEFAULT_RETRY_SECONDS,
    on_retry: Callable[[], None] | None = None,
    committing: Callable[[], bool] | None = None,
) -> T:
    """``attempt()``, run again while it fails because the primary went away.

    Each retry first drops the engine's pooled connections (they lead to the old
    primary, which may be back as a read-only standby), waits 0.1 s, doubling up to
    2 s, and gives up once ``retry_seconds`` have passed since the first failure: then
    :class:`IndexUnavailable` is raised from the last error. ``attempt`` must be a
    whole transaction (safe to run again: netpacs's inserts are ``ON CONFLICT DO
    NOTHING``). ``committing()`` tells, after a failure, whether its COMMIT was sent.
    SQLite engines run ``attempt`` once (a file does not fail over)."""
    if engine.dialect.name == "sqlite":
        return attempt()
    deadline: float | None = None
    delay = 0.1
    maybe_committed = False
    while True:
        try:
            return attempt()
        except Exception as exc:
            if not lost_primary(exc):
                raise
            maybe_committed = maybe_committed or bool(committing and committing())
            now = time.monotonic()
            deadline = deadline if deadline is not None else now + retry_seconds
            if now + delay > deadline:
                raise IndexUnavailable(
                    f"the index database is unreachable or read-only for {retry_seconds:g} s: "
                    f"{_first_line(exc)}",
                    maybe_committed=maybe_committed,
                ) from exc
            log.warning(
                "index database went away (%s); retrying in %.1f s",
                _first_line(exc),
                delay,
            )
            engine.dispose()
            if on_retry is not None:
                on_retry()
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run_in_transaction(
    engine: sa.Engine,
    fn: Callable[[sa.Connection], T],
    *,
    retry_seconds: float = DEFAULT_RETRY_SECONDS,
) -> T:
    """``fn(conn)`` in a committed transaction, run again on a new primary when the old
    one went away (see :func:`retry_on_failover`)."""
    phase = ["run"]

    def attempt() -> T:
        phase[0] = "run"
        with engine.connect() as conn:
            with conn.begin() as trans:
                value = fn(conn)
                phase[0] = "commit"
                trans.commit()
            return value

    return retry_on_failover(
        engine, attempt, retry_seconds=retry_seconds, committing=lambda: phase[0] == "commit"
    )


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str, *, writer: bool = False, pool_size: int = 8) -> sa.Engine:
    """An engine for the index at ``url``; ``writer`` selects the SQLite write mode;
    ``pool_size`` connections are kept (and as many again opened under load)."""
    if is_sqlite(url):
        path = url.split("///", 1)[-1]
        path = path.split("?", 1)[0]
        if path and path != ":memory:" and not path.startswith("file:"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            owner_only(Path(path))
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 60}, pool_size=pool_size
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (savepoints work)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")  # a commit survives power loss
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        begin = "BEGIN IMMEDIATE" if writer else "BEGIN"

        @event.listens_for(engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            conn.exec_driver_sql(begin)

        return engine
    url = database_url(url)
    connect_args: dict[str, Any] = {}
    query = sa.make_url(url).query
    if "connect_timeout" not in query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT
    if "options" not in query:
        connect_args["options"] = SESSION_OPTIONS
    engine = sa.create_engine(
        url, pool_size=pool_size, max_overflow=pool_size, connect_args=connect_args
    )
    _check_on_checkout(engine)
    return engine


def _check_on_checkout(engine: sa.Engine) -> None:
    """Replace a pooled connection whose server has gone (see PING_AFTER_IDLE_SECONDS)."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is None:  # just connected
            return
        if dbapi_conn.closed or _readable(dbapi_conn.fileno()):
            raise sa.exc.DisconnectionError("the database server ended the session")
        if time.monotonic() - since > PING_AFTER_IDLE_SECONDS:
            try:
                engine.dialect.do_ping(dbapi_conn)
            except Exception as exc:
                raise sa.exc.DisconnectionError(f"the database did not answer: {exc}") from exc


def _readable(fd: int) -> bool:
    """Whether ``fd`` has something to read, an error or its end (poll: any fd number)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def owner_only(database: Path) -> None:
    """Make the SQLite index readable and writable by its owner only (it holds patient
    data and password hashes): created 0600 before SQLite opens it, an older file and
    its -wal and -shm set to 0600. SQLite creates -wal and -shm with the database
    file's permissions."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(database, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    for file in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            if file.stat().st_mode & 0o077:
                file.chmod(0o600)


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", database_url(url).replace("%", "%%"))
    return cfg


def migrate(url: str) -> None:
    """Bring the index schema to the newest migration (safe to call on every start).

    On PostgreSQL several nodes may start at once: the first takes an advisory lock for
    the migration's transaction, the others wait for it and then find nothing to do.

    An index a newer release has already migrated is left as it is: during a rolling
    upgrade a node of the release before may restart, and it serves on the newer schema
    (migrations only add, docs/operations.md). A revision that no release made raises
    :class:`UnknownSchema`.
    """
    engine = make_engine(url, writer=True)
    try:
        stored, revisions = stored_revision(engine), code_revisions()
        if stored == revisions.head:
            return  # the usual start: no Alembic to import, no scripts to read
        if stored is not None and stored not in revisions.known:
            if newer_revision(stored, revisions.head):
                log.warning(
                    "the index is at revision %s, newer than this release's %s (a rolling"
                    " upgrade): serving on it unchanged; upgrade this node next",
                    stored,
                    revisions.head,
                )
                return
            raise UnknownSchema(
                f"the database's schema revision {stored!r} is not one netpacs made (this"
                f" release knows up to {revisions.head}): is NETPACS_DATABASE_URL the"
                " index of a netpacs archive?"
            )
        from alembic import command

        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    finally:
        engine.dispose()
