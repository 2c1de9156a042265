"""PostgreSQL reads a reporter's worklist page in order from an index (migration 0019)
instead of sorting every open item, and counts the open items from an index of their
own (migration 0020) instead of looking each one's study up: the worklist's statements
and the indexes' expressions must stay the same, or the indexes are silently never
used."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from netpacs.index.db import make_engine, migrate
from netpacs.index.schema import worklist_item
from netpacs.services.reporting.common import OPEN
from netpacs.services.reporting.worklist import WorklistService, open_order


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_open_worklist_page_is_read_in_order_from_its_index(database_url: str) -> None:
    page = (
        sa.select(worklist_item.c.id)
        .where(worklist_item.c.status.in_(OPEN))
        .order_by(*open_order())
        .limit(500)
    )
    plan = _plan(database_url, page)
    assert "ix_worklist_item_open_order" in plan, plan
    assert "Sort" not in plan, plan


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_open_items_are_counted_from_their_index_without_their_studies(
    database_url: str,
) -> None:
    mine = worklist_item.c.requesting_trust.in_(["RTP", "RYR"])
    plan = _plan(database_url, WorklistService.counts_of(mine))
    assert "Index Only Scan using ix_worklist_item_open_counts" in plan, plan
    assert "on study " not in plan, plan


def _plan(database_url: str, statement: sa.Select[Any]) -> str:
    migrate(database_url)
    engine = make_engine(database_url)
    compiled = statement.compile(engine, compile_kwargs={"render_postcompile": True})
    try:
        with engine.connect() as conn:
            # An empty table is cheapest to scan: tell the planner not to, as it would
            # not at thousands of open items, to see whether the index matches at all.
            conn.exec_driver_sql("SET enable_seqscan = off")
            conn.exec_driver_sql("SET enable_bitmapscan = off")
            return "\n".join(
                row[0] for row in conn.exec_driver_sql(f"EXPLAIN {compiled}", compiled.params)
            )
    finally:
        engine.dispose()
