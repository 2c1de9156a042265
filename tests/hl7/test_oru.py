"""The ORU^R01 a queued result renders to, parsed with python-hl7; and the queued value
that it renders from, as the outbox keeps it (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import hl7
import pytest
import sqlalchemy as sa

from netpacs.adapters.hl7.oru import ACK_CODES, read_ack, render_oru
from netpacs.domain.outbox import Acceptance, QueuedResult
from netpacs.domain.region import ResultsHeader
from netpacs.domain.report import SignedReport
from netpacs.index import outbox
from netpacs.index.db import make_engine, migrate
from netpacs.index.schema import report, report_event, result_outbox
from tests.factories import (
    REPORT_NHS_NUMBER,
    REPORT_SIGNED_AT,
    REPORT_TEXT,
    report_with_addendum,
    signed_report,
)

SIGNED_AT = REPORT_SIGNED_AT
TEXT = REPORT_TEXT
NHS = REPORT_NHS_NUMBER


def queued(report_: SignedReport, *, study_date: str = "", study_time: str = "") -> QueuedResult:
    return QueuedResult(
        control_id="NPR1TEST",
        created_at=SIGNED_AT,
        names=ResultsHeader("NETPACS", "REGION", "RIS", "RXC"),
        report=report_,
        study_date=study_date,
        study_time=study_time,
    )


def obx_text(message: Any) -> list[str]:
    return [
        str(message.unescape(str(seg[5]))) for seg in message.segments("OBX") if str(seg[2]) == "TX"
    ]


def test_oru_carries_patient_ids_accession_procedure_status_and_the_text() -> None:
    message = hl7.parse(
        render_oru(queued(signed_report(), study_date="20261129", study_time="101500"))
    )
    msh = message.segment("MSH")
    assert (str(msh[9]), str(msh[10]), str(msh[12])) == ("ORU^R01^ORU_R01", "NPR1TEST", "2.4")
    assert [str(msh[n]) for n in (3, 4, 5, 6)] == ["NETPACS", "REGION", "RIS", "RXC"]
    assert str(message.segment("PID")[3]) == f"RXC5001^^^RXC^MR~{NHS}^^^NHS^NH"
    assert str(message.segment("PID")[5]) == "SMITH^JOAN^^^MRS"
    obr = message.segment("OBR")
    assert (str(obr[2]), str(obr[3]), str(obr[4])) == (
        "RXC-ACC-77",
        "RXC-ACC-77",
        "CT^CT ABDOMEN^L",
    )
    assert (str(obr[7]), str(obr[25])) == ("20261129101500", "F")
    assert str(obr[32]) == "ryr.radiologist&Younger&Ruth&&&Dr&&&RYR"
    assert obx_text(message) == TEXT.split("\n")
    assert {str(seg[11]) for seg in message.segments("OBX")} == {"F"}


def test_oru_after_an_addendum_is_a_corrected_result_with_all_the_text() -> None:
    message = hl7.parse(render_oru(queued(report_with_addendum())))
    assert str(message.segment("OBR")[25]) == "C"
    assert {str(seg[11]) for seg in message.segments("OBX")} == {"C"}
    lines = obx_text(message)
    assert lines[: len(TEXT.split("\n"))] == TEXT.split("\n")
    assert lines[-2].startswith("ADDENDUM (Prof Anna Kay, RXC, 29/11/2026 16:30 UTC)")
    assert lines[-1] == "Addendum: the appendix is normal."


def test_oru_text_with_hl7_separators_arrives_unchanged() -> None:
    text = "FINDINGS:\nA|B ^ C & D ~ E \\ F.\nCONCLUSION:\nNormal."
    message = hl7.parse(render_oru(queued(signed_report(text=text))))
    assert obx_text(message) == text.split("\n")
    assert len(message.segments("OBX")) == 4


def test_oru_without_an_nhs_number_names_the_hospital_number_only() -> None:
    message = hl7.parse(render_oru(queued(signed_report(nhs_number=None))))
    assert str(message.segment("PID")[3]) == "RXC5001^^^RXC^MR"


def test_an_examination_without_a_date_has_an_empty_obr_7() -> None:
    message = hl7.parse(render_oru(queued(signed_report(), study_time="101500")))
    assert str(message.segment("OBR")[7]) == ""


def test_every_acknowledgement_code_has_its_meaning() -> None:
    assert {code: ACK_CODES[code] for code in ("AA", "CA")} == dict.fromkeys(
        ("AA", "CA"), Acceptance.ACCEPTED
    )
    assert {ACK_CODES[code] for code in ("AE", "CE")} == {Acceptance.ERROR}
    assert {ACK_CODES[code] for code in ("AR", "CR")} == {Acceptance.REJECTED}
    unknown = read_ack(b"MSH|^~\\&|RIS|RXC|N|R|20261129||ACK|A1|P|2.4\rMSA|XX|NPR1\r", "NPR1")
    assert unknown.acceptance is Acceptance.ERROR and unknown.code == "XX"


# -- as the outbox keeps it ----------------------------------------------------------------


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    migrate(database_url)
    engine = make_engine(database_url, writer=True)
    yield engine
    engine.dispose()


def report_event_pk(conn: sa.Connection) -> int:
    report_pk = conn.execute(
        sa.insert(report)
        .values(
            study_instance_uid=signed_report().study_instance_uid,
            status="final",
            text=TEXT,
            author="ryr.radiologist",
            author_trust="RYR",
            created_at=SIGNED_AT,
            updated_at=SIGNED_AT,
        )
        .returning(report.c.id)
    ).scalar_one()
    return int(
        conn.execute(
            sa.insert(report_event)
            .values(
                report_fk=report_pk,
                kind="final",
                author="ryr.radiologist",
                author_trust="RYR",
                at=SIGNED_AT,
            )
            .returning(report_event.c.id)
        ).scalar_one()
    )


def test_a_queued_result_renders_to_the_same_message_at_every_attempt(engine: sa.Engine) -> None:
    result = queued(report_with_addendum(), study_date="20261129", study_time="1015")
    with engine.begin() as conn:
        outbox.queue_result(conn, result, trust="RXC", report_event_pk=report_event_pk(conn))
    with engine.connect() as conn:
        first = outbox.next_result(conn, "RXC")
        again = outbox.next_result(conn, "RXC")
    assert first is not None and again is not None
    assert first.content == result  # what the service decided, kept whole
    assert isinstance(first.content, QueuedResult) and isinstance(again.content, QueuedResult)
    assert render_oru(first.content) == render_oru(again.content) == render_oru(result)
    assert str(hl7.parse(render_oru(result)).segment("MSH")[10]) == first.control_id


def test_a_result_queued_as_text_by_an_earlier_version_is_sent_as_it_was(
    engine: sa.Engine,
) -> None:
    text = render_oru(queued(signed_report()))
    with engine.begin() as conn:
        conn.execute(
            sa.insert(result_outbox).values(
                trust="RXC",
                study_instance_uid=signed_report().study_instance_uid,
                report_event_fk=report_event_pk(conn),
                control_id="NPR1TEST",
                message=text,
                created_at=SIGNED_AT,
                next_attempt_at=SIGNED_AT,
            )
        )
    with engine.connect() as conn:
        pending = outbox.next_result(conn, "RXC")
    assert pending is not None and pending.content == text


def test_oru_of_an_ordered_study_carries_placer_filler_and_accession_numbers() -> None:
    result = replace(
        queued(signed_report()),
        placer_order_number="PL-77",
        filler_order_number="FL-88",
        order_accession_number="RXC1234",
    )
    message = hl7.parse(render_oru(result))
    orc, obr = message.segment("ORC"), message.segment("OBR")
    assert (str(orc[2]), str(orc[3])) == ("PL-77", "FL-88")
    assert (str(obr[2]), str(obr[3]), str(obr[18])) == ("PL-77", "FL-88", "RXC1234")
    assert (str(obr[24]), str(obr[25])) == ("RAD", "F")
