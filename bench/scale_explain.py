"""The query plans of what netpacs really ran, for bench/scale.py: PostgreSQL's
``auto_explain`` (EXPLAIN ANALYZE, BUFFERS) switched on for the bench database only,
read back from the server log, the slowest statements of each request kind."""

from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy as sa

PG_LOG = Path("/var/log/postgresql/postgresql-15-main.log")
_SETTINGS = {
    "session_preload_libraries": "auto_explain",
    "auto_explain.log_min_duration": "0",
    "auto_explain.log_analyze": "on",
    "auto_explain.log_buffers": "on",
    "auto_explain.log_nested_statements": "on",
}
_DURATION = re.compile(r"duration: ([0-9.]+) ms\s+plan:")


def switch(admin_url: str, database: str, on: bool) -> None:
    """auto_explain for new sessions of ``database`` only (a superuser's setting)."""
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        for name, value in _SETTINGS.items():
            if on:
                conn.exec_driver_sql(f"ALTER DATABASE \"{database}\" SET {name} = '{value}'")
            else:
                conn.exec_driver_sql(f'ALTER DATABASE "{database}" RESET {name}')
    engine.dispose()


def log_offset() -> int:
    return PG_LOG.stat().st_size if PG_LOG.exists() else 0


# Statements that are not the request's question: its audit record, the account and
# token checks of signing in (timed apart from the queries; issue 16 section 3).
_NOT_QUERIES = ("INSERT INTO", "UPDATE ", "FROM audit_event", "FROM user_account", "revoked_token")


def plans_since(offset: int, database: str, *, keep: int = 3, min_ms: float = 0.0) -> str:
    """The ``keep`` slowest plans (at least ``min_ms``) of the queries logged for
    ``database`` since ``offset`` of the server log, slowest first."""
    if not PG_LOG.exists():
        return f"(no server log at {PG_LOG})\n"
    with PG_LOG.open("rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    blocks: list[tuple[float, str]] = []
    current: list[str] | None = None
    duration = 0.0
    for line in text.splitlines():
        if line[:1] in ("\t", " ") and current is not None:
            current.append(line)
            continue
        if current is not None:
            blocks.append((duration, "\n".join(current)))
            current = None
        match = _DURATION.search(line)
        if match and f"@{database} " in line:
            duration = float(match.group(1))
            current = [line]
    if current is not None:
        blocks.append((duration, "\n".join(current)))
    queries = [b for b in blocks if not any(word in b[1] for word in _NOT_QUERIES)]
    slow = sorted((b for b in queries if b[0] >= min_ms), key=lambda b: -b[0])[:keep]
    if not slow:
        return f"(every statement took under {min_ms} ms)\n"
    return "\n\n".join(b for _, b in slow) + "\n"
