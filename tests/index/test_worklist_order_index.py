"""PostgreSQL reads a reporter's worklist page in order from an index (migration 0019)
instead of sorting every open item: the worklist's ORDER BY and the index's expression
must stay the same, or the index is silently never used."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from netpacs.index.db import make_engine, migrate
from netpacs.index.schema import worklist_item
from netpacs.services.reporting.common import OPEN
from netpacs.services.reporting.worklist import open_order


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_open_worklist_page_is_read_in_order_from_its_index(database_url: str) -> None:
    migrate(database_url)
    engine = make_engine(database_url)
    page = (
        sa.select(worklist_item.c.id)
        .where(worklist_item.c.status.in_(OPEN))
        .order_by(*open_order())
        .limit(500)
    )
    compiled = page.compile(engine, compile_kwargs={"render_postcompile": True})
    try:
        with engine.connect() as conn:
            # An empty table is cheapest to scan: tell the planner not to, as it would
            # not at thousands of open items, to see whether the index matches at all.
            conn.exec_driver_sql("SET enable_seqscan = off")
            conn.exec_driver_sql("SET enable_bitmapscan = off")
            plan = "\n".join(
                row[0] for row in conn.exec_driver_sql(f"EXPLAIN {compiled}", compiled.params)
            )
    finally:
        engine.dispose()
    assert "ix_worklist_item_open_order" in plan, plan
    assert "Sort" not in plan, plan
