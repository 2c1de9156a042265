"""What an edge keeps of the core's answer of its site's orders (services.edge.orders):
only its own site's open orders with the fields it knows; anything else is refused whole
and the copy stays as it was."""

from __future__ import annotations

from typing import Any

import pytest

from netpacs.services.edge.orders import COLUMNS, MAX_ORDERS, OrderCopyError, _checked


def an_order(**changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {name: "" for name in COLUMNS}
    values.update(trust="RXC", site="EDGH", status="scheduled", accession_number="A1")
    values.update(changes)
    return values


def test_the_sites_open_orders_are_kept() -> None:
    orders = [an_order(), an_order(accession_number="A2", status="in progress", nhs_number=None)]
    assert _checked({"orders": orders}, "RXC", "EDGH") == orders


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"orders": [an_order(site="CONQ")]}, "another site"),
        ({"orders": [an_order(trust="RTP")]}, "another site"),
        ({"orders": [an_order(status="completed")]}, "not open"),
        ({"orders": [{**an_order(), "extra": "x"}]}, "other fields"),
        ({"orders": [an_order(patient_id=12)]}, "not text"),
        ({"orders": [an_order(reason="x" * 70000)]}, "not text"),
        ({"orders": "all"}, "not a list"),
        ({"orders": [an_order()] * (MAX_ORDERS + 1)}, "not a list"),
        ([], "not a list"),
    ],
)
def test_an_answer_that_is_not_the_sites_open_orders_is_refused(body: Any, why: str) -> None:
    with pytest.raises(OrderCopyError, match=why):
        _checked(body, "RXC", "EDGH")
