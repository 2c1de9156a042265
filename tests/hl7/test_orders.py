"""Orders over real MLLP (ORM^O01, OMI^O23): what is kept, and what is refused with a
NAK that says why and changes nothing.

One server per module and backend: each test has its own accession numbers and control
IDs. What the orders look like to a modality is tested through the worklist
(tests/adapters/test_worklist.py); here the index row is read as the ADT tests do.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from netpacs.index.schema import imaging_order
from tests.conftest import Netpacs
from tests.hl7.conftest import MllpClient, order


@pytest.fixture(scope="module")
def netpacs(module_netpacs: Netpacs) -> Netpacs:
    return module_netpacs


PATIENT = "RXC0001501^^^RXC^MR~9434765919^^^NHS^NH"


def kept(server: Netpacs, accession: str, trust: str = "RXC") -> dict[str, Any] | None:
    engine = sa.create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.select(imaging_order).where(
                    imaging_order.c.trust == trust, imaging_order.c.accession_number == accession
                )
            ).first()
    finally:
        engine.dispose()
    return None if row is None else dict(row._mapping)


def test_new_orm_order_keeps_numbers_procedure_priority_requester_location_and_schedule(
    netpacs: Netpacs, mllp: MllpClient
) -> None:
    ack = mllp.send(
        order(
            "NW",
            "ORD0001",
            accession="RXC1001",
            pid3=PATIENT,
            name="MOSS^ELLEN^^^MRS",
            priority="S",
            when="202612021430",
            station_ae="EDGH_CT1",
            placer="PL555",
            filler="FL777",
            reason="^Suspected pulmonary embolism",
            patient_class="E",
            location="ED^MAJORS^3^EDGH",
        )
    )
    assert ack.code == "AA", ack.text
    assert ack.field("MSA", 2) == "ORD0001"
    row = kept(netpacs, "RXC1001")
    assert row is not None
    assert {k: row[k] for k in (
        "status", "patient_id", "issuer", "nhs_number", "patient_name", "patient_sex",
        "placer_order_number", "filler_order_number", "procedure_code", "procedure_text",
        "procedure_scheme", "modality", "priority", "requesting_clinician",
        "requesting_location", "patient_class", "reason", "site", "scheduled_at",
        "scheduled_station_ae", "requested_procedure_id", "scheduled_step_id",
    )} == {
        "status": "scheduled", "patient_id": "RXC0001501", "issuer": "RXC",
        "nhs_number": "9434765919", "patient_name": "MOSS^ELLEN^^MRS", "patient_sex": "F",
        "placer_order_number": "PL555", "filler_order_number": "FL777",
        "procedure_code": "CTCHE", "procedure_text": "CT Chest", "procedure_scheme": "LOCAL",
        "modality": "CT", "priority": "stat", "requesting_clinician": "JONES^ANNA^^DR",
        "requesting_location": "ED MAJORS 3", "patient_class": "E",
        "reason": "Suspected pulmonary embolism", "site": "EDGH",
        "scheduled_at": "20261202143000", "scheduled_station_ae": "EDGH_CT1",
        "requested_procedure_id": "RXC1001", "scheduled_step_id": "RXC1001",
    }  # fmt: skip
    assert row["study_instance_uid"].count(".") > 3


def test_new_omi_order_reads_the_ipc_segment_and_takes_the_site_of_its_station(
    netpacs: Netpacs, mllp: MllpClient
) -> None:
    ack = mllp.send(
        order(
            "NW",
            "ORD0002",
            accession="RXC1002",
            pid3=PATIENT,
            kind="OMI",
            modality="MR",
            procedure="MBRAI^MRI Head^LOCAL",
            station_ae="CONQ_MR1",
            facility="RXC",
            location="GPSURG^^^RXC",
            patient_class="O",
        )
    )
    assert ack.code == "AA", ack.text
    row = kept(netpacs, "RXC1002")
    assert row is not None
    assert (row["modality"], row["site"], row["scheduled_station_ae"]) == ("MR", "CONQ", "CONQ_MR1")
    assert (row["requested_procedure_id"], row["scheduled_step_id"]) == ("RPRXC1002", "SPSRXC1002")


def test_modality_comes_from_the_procedure_when_obr_24_is_empty(
    netpacs: Netpacs, mllp: MllpClient
) -> None:
    ack = mllp.send(
        order(
            "NW", "ORD0003", accession="RXC1003", pid3=PATIENT, modality="",
            procedure="U123^Ultrasound abdomen^LOCAL",
        )
    )  # fmt: skip
    assert ack.code == "AA", ack.text
    assert (kept(netpacs, "RXC1003") or {})["modality"] == "US"


def test_change_cancel_and_discontinue_follow_the_order_through_its_life(
    netpacs: Netpacs, mllp: MllpClient
) -> None:
    assert mllp.send(order("NW", "ORD0010", accession="RXC1010", pid3=PATIENT)).code == "AA"
    ack = mllp.send(order("XO", "ORD0011", accession="RXC1010", pid3=PATIENT, priority="S"))
    assert ack.code == "AA", ack.text
    assert (kept(netpacs, "RXC1010") or {})["priority"] == "stat"
    assert mllp.send(order("CA", "ORD0012", accession="RXC1010", pid3=PATIENT)).code == "AA"
    assert (kept(netpacs, "RXC1010") or {})["status"] == "cancelled"

    assert mllp.send(order("NW", "ORD0013", accession="RXC1011", pid3=PATIENT)).code == "AA"
    started = order("SC", "ORD0014", accession="RXC1011", pid3=PATIENT, order_status="IP")
    assert mllp.send(started).code == "AA"
    assert mllp.send(order("DC", "ORD0015", accession="RXC1011", pid3=PATIENT)).code == "AA"
    assert (kept(netpacs, "RXC1011") or {})["status"] == "discontinued"


def test_a_resent_order_message_is_answered_as_before_and_applied_once(
    netpacs: Netpacs, mllp: MllpClient
) -> None:
    message = order("NW", "ORD0020", accession="RXC1020", pid3=PATIENT)
    first = mllp.send(message)
    again = mllp.send(message)
    assert (first.code, again.code) == ("AA", "AA")
    assert again.field("MSA", 3) == first.field("MSA", 3)


REFUSED = [
    pytest.param(
        [], order("XO", "BAD0001", accession="RXC9001", pid3=PATIENT, priority="S"),
        "RXC9001", "no such order", id="change-of-unknown-order",
    ),
    pytest.param(
        [], order("CA", "BAD0002", accession="RXC9002", pid3=PATIENT),
        "RXC9002", "no such order", id="cancel-of-unknown-order",
    ),
    pytest.param(
        [
            order("NW", "BAD0003A", accession="RXC9003", pid3=PATIENT),
            order("SC", "BAD0003B", accession="RXC9003", pid3=PATIENT, order_status="CM"),
        ],
        order("CA", "BAD0003", accession="RXC9003", pid3=PATIENT),
        "RXC9003", "is completed: only a scheduled order can be cancelled",
        id="cancel-after-completion",
    ),
    pytest.param(
        [
            order("NW", "BAD0004A", accession="RXC9004", pid3=PATIENT),
            order("SC", "BAD0004B", accession="RXC9004", pid3=PATIENT, order_status="CM"),
        ],
        order("XO", "BAD0004", accession="RXC9004", pid3=PATIENT, priority="S"),
        "RXC9004", "is completed: it cannot be changed", id="change-after-completion",
    ),
    pytest.param(
        [], order("NW", "BAD0005", accession="", pid3=PATIENT),
        None, "accession number is missing", id="missing-accession",
    ),
    pytest.param(
        [order("NW", "BAD0006A", accession="RXC9006", pid3=PATIENT)],
        order("NW", "BAD0006", accession="RXC9006", pid3=PATIENT, priority="S"),
        "RXC9006", "exists already", id="new-order-with-an-accession-in-use",
    ),
    pytest.param(
        [], order("NW", "BAD0007", accession="RXC9007", pid3=PATIENT, facility="RTP"),
        "RXC9007", "may not change", id="another-trusts-feed",
    ),
    pytest.param(
        [], order("NW", "BAD0008", accession="RXC9008", pid3=PATIENT, modality="",
                  procedure="Z1^Something^LOCAL"),
        "RXC9008", "no modality", id="no-modality",
    ),
    pytest.param(
        [], order("NW", "BAD0009", accession="RXC9009", pid3=PATIENT, priority="Q"),
        "RXC9009", "not one of S, A, R", id="unknown-priority",
    ),
    pytest.param(
        [order("NW", "BAD0010A", accession="RXC9010", pid3=PATIENT)],
        order("XO", "BAD0010", accession="RXC9010", pid3="RXC0009999^^^RXC^MR", priority="S"),
        "RXC9010", "not RXC0009999 at RXC", id="change-naming-another-patient",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("before", "message", "accession", "reason"), REFUSED)
def test_an_order_message_that_cannot_apply_gets_a_nak_with_the_reason_and_changes_nothing(
    netpacs: Netpacs,
    mllp: MllpClient,
    before: list[str],
    message: str,
    accession: str | None,
    reason: str,
) -> None:
    for earlier in before:
        assert mllp.send(earlier).code == "AA"
    state = kept(netpacs, accession) if accession else None
    ack = mllp.send(message)
    assert ack.code == "AE", ack.text
    assert reason in ack.field("MSA", 3)
    assert reason in ack.field("ERR", 8)
    if accession:
        assert kept(netpacs, accession) == state


def test_an_unknown_order_control_code_is_rejected(netpacs: Netpacs, mllp: MllpClient) -> None:
    ack = mllp.send(order("RP", "BAD0100", accession="RXC9100", pid3=PATIENT))
    assert ack.code == "AR"
    assert "ORC-1 order control 'RP' is not supported" in ack.field("MSA", 3)
