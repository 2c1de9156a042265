"""A query's time limit stops a statement inside the database (issue 17): SQLite through
a progress handler, PostgreSQL through statement_timeout; the connection stays usable."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from netpacs.domain.query import QueryTimeout
from netpacs.index.db import is_sqlite, make_engine
from netpacs.index.query.budget import QueryBudget

SLOW = {
    # about ten seconds of work for SQLite
    "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
    "WHERE x < 300000000) SELECT count(*) FROM c",
    "postgresql": "SELECT pg_sleep(10)",
}


def test_a_statement_over_the_limit_is_stopped_by_the_database(database_url: str) -> None:
    engine = make_engine(database_url, pool_size=1)
    sqlite = is_sqlite(database_url)
    try:
        budget = QueryBudget(0.2)
        budget.resume()
        start = time.monotonic()
        with (
            pytest.raises(QueryTimeout, match=r"over its 0\.2 s work limit"),
            engine.connect() as conn,
            budget.guard(conn, sqlite=sqlite),
        ):
            conn.exec_driver_sql(SLOW["sqlite" if sqlite else "postgresql"]).all()
        assert time.monotonic() - start < 2
        with engine.connect() as conn:  # the same connection, handler gone
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
