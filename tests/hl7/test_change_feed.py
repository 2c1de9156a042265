"""The core's change feed for its edges (``GET /edge/changes``): what ADT, merges and
deletions append, in order, and who may read it. The edges' use of it is in tests/edge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Netpacs
from tests.hl7.conftest import MllpClient, adt
from tests.http.conftest import write_and_send_ct

NHS = "9434765919"


@pytest.fixture(scope="module")
def netpacs(module_netpacs: Netpacs) -> Netpacs:
    return module_netpacs


def feed(server: Netpacs, after: int | None = None, user: str | None = None) -> httpx.Response:
    params = {} if after is None else {"after": after}
    return httpx.get(
        f"{server.base_url}/edge/changes", params=params, headers=server.auth(user), timeout=30
    )


def entries(server: Netpacs, after: int) -> list[dict[str, Any]]:
    response = feed(server, after)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["changes"]
    return found


def test_admissions_updates_merges_and_deletions_are_listed_in_order(
    netpacs: Netpacs, mllp: MllpClient, tmp_path: Path
) -> None:
    start = feed(netpacs).json()
    assert start["changes"] == []
    head = int(start["cursor"])
    kept = write_and_send_ct(netpacs, tmp_path / "a", 1, patient_id="RXC0000900", issuer="RXC")
    moved = write_and_send_ct(netpacs, tmp_path / "b", 1, patient_id="RXC0000901", issuer="RXC")
    assert mllp.send(adt("A04", "FEED01", f"RXC0000900^^^RXC^MR~{NHS}^^^NHS^NH")).code == "AA"
    assert mllp.send(adt("A08", "FEED02", "RXC0000900^^^RXC^MR", name="NEW^NAME")).code == "AA"
    ack = mllp.send(adt("A40", "FEED03", "RXC0000900^^^RXC^MR", mrg1="RXC0000901^^^RXC^MR"))
    assert ack.code == "AA", ack.text
    deleted = httpx.request(
        "DELETE",
        f"{netpacs.base_url}/api/studies/{kept.study_uid}",
        json={"reason": "a test acquisition sent by mistake"},
        headers=netpacs.auth(),
        timeout=30,
    )
    assert deleted.status_code == 200, deleted.text

    seen = [
        (
            e["kind"],
            e["patient_id"],
            e["issuer"],
            e["nhs_number"],
            e["prior_patient_id"],
            e["study_uids"],
        )
        for e in entries(netpacs, head)
    ]
    assert seen == [
        ("admit", "RXC0000900", "RXC", NHS, None, []),
        ("patient", "RXC0000900", "RXC", NHS, None, []),
        ("merge", "RXC0000900", "RXC", None, "RXC0000901", [moved.study_uid]),
        ("delete", "RXC0000900", "RXC", None, None, [kept.study_uid]),
    ]


def test_the_feed_is_for_edge_nodes_and_says_what_is_wrong_with_a_bad_cursor(
    netpacs: Netpacs,
) -> None:
    refused = feed(netpacs, 0, user="rxc.clinician")
    assert refused.status_code == 403
    assert "edge nodes" in refused.json()["message"]
    bad = httpx.get(
        f"{netpacs.base_url}/edge/changes",
        params={"after": "-1"},
        headers=netpacs.auth(),
        timeout=30,
    )
    assert bad.status_code == 400
