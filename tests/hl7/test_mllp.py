"""MLLP round trips: ACKs, NAKs, framing, duplicates (real sockets, running netpacs).

One server per module and backend; each test has its own control IDs.
"""

from __future__ import annotations

import pytest

from tests.conftest import Netpacs
from tests.hl7.conftest import END, VT, MllpClient, adt, identity

MRN = "RXC0000001^^^RXC^MR"


@pytest.fixture(scope="module")
def netpacs(module_netpacs: Netpacs) -> Netpacs:
    return module_netpacs


def test_a01_is_acknowledged_with_its_control_id_and_swapped_sender(mllp: MllpClient) -> None:
    ack = mllp.send(adt("A01", "CTRL0001", MRN, name="SMITH^JOHN", birth_date="19700102", sex="M"))
    assert ack.code == "AA"
    assert ack.field("MSA", 2) == "CTRL0001"
    assert ack.field("MSH", 9).startswith("ACK^A01")
    assert [ack.field("MSH", n) for n in (3, 4, 5, 6)] == ["NETPACS", "REGION", "PAS", "RXC"]


def test_malformed_message_gets_a_nak_with_reason_and_the_connection_stays_usable(
    mllp: MllpClient,
) -> None:
    no_msh = mllp.send("PID|1||RXC0000001^^^RXC\r")
    assert no_msh.code == "AR"
    assert "MSH" in no_msh.field("MSA", 3)
    bad_date = mllp.send(adt("A08", "CTRL0002", MRN, birth_date="19701399"))
    assert (bad_date.code, bad_date.field("MSA", 2)) == ("AE", "CTRL0002")
    assert "PID-7" in bad_date.field("MSA", 3) and bad_date.field("ERR", 0) == "ERR"
    unknown_trust = mllp.send(adt("A08", "CTRL0003", "X1^^^ZZZ^MR"))
    assert unknown_trust.code == "AE" and "'ZZZ'" in unknown_trust.field("MSA", 3)
    assert mllp.send(adt("A08", "CTRL0004", MRN, name="SMITH^JOHN")).code == "AA"


def test_unsupported_trigger_and_message_type_are_rejected_with_ar(mllp: MllpClient) -> None:
    a02 = mllp.send(adt("A02", "CTRL0005", MRN))
    assert (a02.code, a02.field("MSA", 2)) == ("AR", "CTRL0005")
    assert "'A02' is not supported" in a02.field("MSA", 3)
    oru = mllp.send(adt("A01", "CTRL0006", MRN).replace("ADT^A01", "ORU^R01"))
    assert oru.code == "AR" and "'ORU'" in oru.field("MSA", 3)
    no_id = mllp.send(adt("A01", "", MRN))
    assert no_id.code == "AR" and "MSH-10" in no_id.field("MSA", 3)


def test_messages_split_over_reads_and_sent_back_to_back_are_answered_in_order(
    mllp: MllpClient,
) -> None:
    first = VT + adt("A04", "CTRL0010", MRN, name="JONES^ANN").encode() + END
    second = VT + adt("A08", "CTRL0011", MRN, name="JONES^ANNE").encode() + END
    mllp.send_raw(first[:7])
    mllp.send_raw(first[7:] + second[:30])
    mllp.send_raw(second[30:])
    assert [mllp.receive().field("MSA", 2) for _ in range(2)] == ["CTRL0010", "CTRL0011"]


def test_frame_without_start_block_or_over_one_mib_gets_a_nak_and_is_closed(
    netpacs: Netpacs,
) -> None:
    client = MllpClient(netpacs.mllp_port)
    client.send_raw(adt("A01", "CTRL0020", MRN).encode() + END)
    nak = client.receive()
    assert nak.code == "AR" and "start block" in nak.field("MSA", 3)
    assert client.closed_by_peer()
    client.close()

    client = MllpClient(netpacs.mllp_port)
    client.send_raw(VT + b"MSH|" + b"x" * (1 << 20) + b"|")
    nak = client.receive()
    assert nak.code == "AR" and "longer than" in nak.field("MSA", 3)
    assert client.closed_by_peer()
    client.close()
    assert "Traceback" not in netpacs.log()
    assert MllpClient(netpacs.mllp_port).send(adt("A01", "CTRL0021", MRN)).code == "AA"


def test_repeated_control_id_gets_the_same_ack_and_is_applied_once(
    netpacs: Netpacs, mllp: MllpClient
) -> None:
    message = adt("A08", "CTRL0030", MRN, name="TAYLOR^EVE")
    first = mllp.send(message)
    assert mllp.send(adt("A08", "CTRL0031", MRN, name="TAYLOR^EVELYN")).code == "AA"
    again = mllp.send(message)
    assert again.text == first.text
    assert identity(netpacs, "RXC0000001", "RXC")["patient_name"] == "TAYLOR^EVELYN"
    reused = mllp.send(adt("A08", "CTRL0030", MRN, name="SOMEONE^ELSE"))
    assert reused.code == "AE" and "different message" in reused.field("MSA", 3)
