"""Audit messages validate against the DICOM audit message schema (PS3.15 A.5.1).

Every :class:`Event` is built in several shapes (a signed-in person with trust, role and
purpose of use; a DICOM AE; a failure; many patients and studies; a query) and validated
with lxml's RELAX NG validator against ``netpacs/data/dicom-audit-message.rng``.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from functools import cache

import pytest
import sqlalchemy as sa
from lxml import etree

from netpacs.index.db import make_engine, migrate
from netpacs.index.schema import audit_event
from netpacs.services.audit import (
    SCHEMA_FILE,
    Actor,
    AuditRecord,
    AuditService,
    Event,
    Outcome,
    Purpose,
    build_message,
)

WHEN = dt.datetime(2026, 3, 1, 9, 30, 15, 250_000, tzinfo=dt.UTC)
RADIOLOGIST = Actor(
    "rxc.radiologist",
    trust="RXC",
    role="radiologist",
    address="10.1.2.3",
    name="Dr Ada Lovelace",
)
MODALITY = Actor("ESH_CT1", trust="RTP", address="10.9.8.7", is_application=True)
PATIENTS = [("100001", "RTP"), ("100001", "RYR"), ("400004", "")]
STUDIES = ["1.2.826.0.1.3680043.10.543.1.1", "1.2.826.0.1.3680043.10.543.1.2"]


@cache
def schema() -> etree.RelaxNG:
    return etree.RelaxNG(etree.parse(str(SCHEMA_FILE)))


def assert_valid(xml: str) -> etree._Element:
    doc = etree.fromstring(xml.encode("utf-8"))
    validator = schema()
    assert validator.validate(doc), f"{validator.error_log}\n{xml}"
    return doc


def shapes(event: Event) -> Iterator[AuditRecord]:
    yield AuditRecord(
        event,
        RADIOLOGIST,
        purpose=Purpose.TREAT,
        patients=PATIENTS,
        study_uids=STUDIES,
        query="PatientID=100001&issuer=RTP&includefield=all",
        detail="what happened, for people",
        when=WHEN,
    )
    yield AuditRecord(
        event,
        MODALITY,
        outcome=Outcome.MINOR_FAILURE,
        patients=PATIENTS[:1],
        study_uids=STUDIES[:1],
        detail="refused: calling AE not allowed",
        when=WHEN,
    )
    yield AuditRecord(event, Actor("anonymous"), outcome=Outcome.MAJOR_FAILURE, when=WHEN)
    yield AuditRecord(
        event,
        Actor("rxc.admin", trust="RXC", role="admin"),
        outcome=Outcome.SERIOUS_FAILURE,
        purpose=Purpose.ETREAT,
        patients=[(str(n), "RXC") for n in range(250)],
        study_uids=[f"1.2.3.{n}" for n in range(250)],
        query="",
        when=WHEN,
    )


@pytest.mark.parametrize("event", list(Event), ids=lambda e: e.name)
def test_every_event_validates_against_the_ps3_15_schema(event: Event) -> None:
    for record in shapes(event):
        doc = assert_valid(build_message(record, source_id="NETPACS", site_id="RTP"))
        ident = doc.find("EventIdentification")
        assert ident is not None
        assert ident.find("EventID").get("csd-code") == event.event_id.code
        assert ident.get("EventActionCode") == event.action
        assert ident.get("EventOutcomeIndicator") == str(int(record.outcome))


def test_message_carries_who_from_which_trust_why_and_what() -> None:
    record = next(shapes(Event.QUERY))
    doc = assert_valid(build_message(record, source_id="NETPACS"))
    ident = doc.find("EventIdentification")
    assert ident.get("EventDateTime") == "2026-03-01T09:30:15.250+00:00"
    assert ident.find("EventOutcomeDescription").text == "what happened, for people"
    purpose = ident.find("PurposeOfUse")
    assert (purpose.get("csd-code"), purpose.get("codeSystemName")) == (
        "TREAT",
        "2.16.840.1.113883.5.8",
    )
    requestor, archive = doc.findall("ActiveParticipant")
    assert requestor.get("UserID") == "rxc.radiologist"
    assert requestor.get("AlternativeUserID") == "rxc.radiologist@RXC"
    assert requestor.get("UserName") == "Dr Ada Lovelace"
    assert requestor.get("NetworkAccessPointID") == "10.1.2.3"
    assert [c.get("csd-code") for c in requestor.findall("RoleIDCode")] == ["radiologist"]
    assert archive.get("UserID") == "NETPACS" and archive.get("UserIsRequestor") == "false"
    assert doc.find("AuditSourceIdentification").get("AuditSourceID") == "NETPACS"
    objects = doc.findall("ParticipantObjectIdentification")
    ids = [o.get("ParticipantObjectID") for o in objects]
    assert ids[:3] == ["100001^^^RTP", "100001^^^RYR", "400004"]
    assert ids[3:5] == STUDIES
    query = objects[-1].find("ParticipantObjectQuery").text
    assert base64.b64decode(query).decode() == "PatientID=100001&issuer=RTP&includefield=all"


@pytest.mark.parametrize(
    ("event", "requestor_role", "archive_role"),
    [
        (Event.STORE, "110153", "110152"),  # the modality sends, the archive receives
        (Event.RETRIEVE, "110152", "110153"),  # the archive sends to the requestor
        (Event.EXPORT, "110152", "110153"),
        (Event.QUERY, "110153", "110152"),  # PS3.15 A.5.3.12: issuer of the query is source
    ],
)
def test_transfer_roles_follow_the_direction_of_the_data(
    event: Event, requestor_role: str, archive_role: str
) -> None:
    doc = assert_valid(build_message(AuditRecord(event, MODALITY), source_id="NETPACS"))
    requestor, archive = doc.findall("ActiveParticipant")
    assert [c.get("csd-code") for c in requestor.findall("RoleIDCode")] == [requestor_role]
    assert [c.get("csd-code") for c in archive.findall("RoleIDCode")] == [archive_role]


def test_objects_past_the_limit_are_counted_in_the_description() -> None:
    record = list(shapes(Event.ACCESS))[3]
    doc = assert_valid(build_message(record, source_id="NETPACS"))
    assert len(doc.findall("ParticipantObjectIdentification")) == 200 + 200 + 1
    description = doc.find("EventIdentification/EventOutcomeDescription").text
    assert description == "(100 more patients and studies not listed)"


def test_characters_xml_cannot_carry_are_replaced_not_sent() -> None:
    """A user name tried at sign-in is whatever the client sent, control bytes included."""
    record = AuditRecord(
        Event.LOGIN,
        Actor("admin\x00\x1b[31m", address="127.0.0.1"),
        outcome=Outcome.MINOR_FAILURE,
        detail="wrong password for 'admin\x07'",
        patients=[("1\x0b", "RXC")],
    )
    doc = assert_valid(build_message(record, source_id="NETPACS"))
    assert doc.find("ActiveParticipant").get("UserID") == "admin\ufffd\ufffd[31m"


def test_markup_in_what_users_type_is_recorded_as_typed() -> None:
    """Quotes, angle brackets, ampersands, tabs and line breaks in a user name, a
    patient ID, a description or a query read back unchanged: escaped, never markup."""
    typed = 'o"brien <b>&amp;\t\r\nx'
    record = AuditRecord(
        Event.QUERY,
        Actor(typed, trust="RTP", name=typed, address="127.0.0.1"),
        patients=[(typed, "RTP")],
        study_uids=["1.2.3"],
        query=typed,
        detail=typed,
    )
    doc = assert_valid(build_message(record, source_id="NETPACS"))
    person = doc.find("ActiveParticipant")
    assert person.get("UserID") == typed and person.get("UserName") == typed
    assert doc.find("EventIdentification/EventOutcomeDescription").text == typed
    patient, _study, query = doc.findall("ParticipantObjectIdentification")
    assert patient.get("ParticipantObjectID") == f"{typed}^^^RTP"
    assert patient.find("ParticipantObjectName").text == f"Patient ID {typed} of RTP"
    assert base64.b64decode(query.find("ParticipantObjectQuery").text).decode() == typed


def test_schema_rejects_a_message_that_breaks_it() -> None:
    """The validation can fail: missing, misplaced and misnamed parts are each refused."""
    good = build_message(next(shapes(Event.ACCESS)), source_id="NETPACS")
    assert_valid(good)
    broken = {
        "no EventID": good.replace("<EventID ", "<EventCode ", 1),
        "outcome 3": good.replace('EventOutcomeIndicator="0"', 'EventOutcomeIndicator="3"'),
        "code attribute": good.replace('csd-code="110103"', 'code="110103"'),
        "no source": _drop(good, "AuditSourceIdentification"),
        "participant object without name or query": _drop(good, "ParticipantObjectName"),
        "purpose before description": _swap_purpose_and_description(good),
        "time without date": good.replace("2026-03-01T", ""),
    }
    validator = schema()
    for reason, xml in broken.items():
        assert xml != good, reason
        assert not validator.validate(etree.fromstring(xml.encode())), reason


def _drop(xml: str, tag: str) -> str:
    doc = etree.fromstring(xml.encode())
    for element in doc.iter(tag):
        element.getparent().remove(element)
    return etree.tostring(doc, encoding="unicode")


def _swap_purpose_and_description(xml: str) -> str:
    doc = etree.fromstring(xml.encode())
    ident = doc.find("EventIdentification")
    purpose = ident.find("PurposeOfUse")
    ident.remove(purpose)
    ident.insert(1, purpose)
    return etree.tostring(doc, encoding="unicode")


def test_recorded_rows_hold_valid_messages(database_url: str) -> None:
    migrate(database_url)
    engine = make_engine(database_url, writer=True)
    try:
        service = AuditService(
            AuditService.in_own_transaction(engine), source_id="NETPACS", site_id="RTP"
        )
        for event in Event:
            for record in shapes(event):
                service.record(record)
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(audit_event.c.event_id, audit_event.c.message_xml).order_by(
                    audit_event.c.id
                )
            ).all()
    finally:
        engine.dispose()
    assert len(rows) == 4 * len(Event)
    for event_id, xml in rows:
        doc = assert_valid(xml)
        assert doc.find("EventIdentification/EventID").get("csd-code") == event_id


def test_messages_held_for_one_answer_are_stored_together_when_it_is_ready(
    database_url: str,
) -> None:
    """Inside ``held`` nothing is written until the block ends; then every message is,
    also when the block ended with an error (what was reached stays on record)."""
    migrate(database_url)
    engine = make_engine(database_url, writer=True)

    def stored() -> int:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(audit_event)).scalar())

    try:
        service = AuditService(
            AuditService.in_own_transaction(engine), source_id="NETPACS", site_id="RTP"
        )
        first = stored()
        query = list(shapes(Event.QUERY))
        with service.held():
            service.record(query[0])
            with service.held():  # an inner block: the outer one stores
                service.record(query[1])
            assert stored() == first
        assert stored() == first + 2
        with pytest.raises(RuntimeError), service.held():
            service.record(query[2])
            raise RuntimeError("the answer failed after the question")
        assert stored() == first + 3
        service.record(query[3])  # outside a block: at once
        assert stored() == first + 4
    finally:
        engine.dispose()
