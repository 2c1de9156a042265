"""The rules of what a partner network may ask (services/partners.py), one by one; the
same rules through HTTP and DIMSE on a real server are in tests/http/test_partner_access.py."""

from __future__ import annotations

from typing import Any

import pytest

from netpacs.domain.networks import DicomwebAccess, DimseAccess, Network, Protocol
from netpacs.domain.query import QueryLevel
from netpacs.services import partners
from netpacs.services.access import Capability, Role
from netpacs.services.audit import Purpose

NHS = "9990002010"
LONDON = Network(
    "London",
    Protocol.DICOMWEB,
    dicomweb=DicomwebAccess("http://127.0.0.1:8701/dicom-web"),
    shares=frozenset({"RTP"}),
    client_id="london",
)
WESSEX = Network(
    "Wessex",
    Protocol.DIMSE,
    dimse=DimseAccess("WESSEX", "127.0.0.1", 11301),
    shares=frozenset({"RA2"}),
    client_id="wessex",
)


def keys(**values: Any) -> dict[str, Any]:
    tags = {"PatientID": "00100020", "Issuer": "00100021", "Study": "0020000D"}
    return {tags[k]: {"vr": "LO", "Value": [v]} for k, v in values.items()}


@pytest.mark.parametrize(
    ("identifier", "level", "search"),
    [
        (keys(PatientID=NHS, Issuer="NHS"), QueryLevel.STUDY, True),
        (keys(PatientID=NHS, Issuer="2.16.840.1.113883.2.1.4.1"), QueryLevel.STUDY, True),
        (keys(Study="1.2.3"), QueryLevel.STUDY, False),  # a study it found, again
        (keys(Study="1.2.3"), QueryLevel.SERIES, False),
        (keys(Study="1.2.3"), QueryLevel.IMAGE, False),
    ],
)
def test_a_search_by_nhs_number_finds_and_a_question_by_study_stays_within_what_was_found(
    identifier: dict[str, Any], level: QueryLevel, search: bool
) -> None:
    assert partners.check_find(identifier, level) is search


@pytest.mark.parametrize(
    ("identifier", "level", "says"),
    [
        (keys(PatientID=NHS, Issuer="NHS"), QueryLevel.PATIENT, "study level"),
        (keys(PatientID=NHS, Issuer="NHS"), QueryLevel.SERIES, "within a study it found"),
        ({"00100010": {"vr": "PN", "Value": [{"Alphabetic": "SM?TH"}]}}, QueryLevel.STUDY, "wild"),
        (keys(PatientID=NHS, Issuer="NHS", Study="1.2.*"), QueryLevel.STUDY, "wildcards"),
        (keys(PatientID="9990002011", Issuer="NHS"), QueryLevel.STUDY, "wrong check digit"),
        (keys(PatientID="12345", Issuer="NHS"), QueryLevel.STUDY, "is not 10 digits"),
        (keys(PatientID=NHS, Issuer="RTP"), QueryLevel.STUDY, "IssuerOfPatientID=NHS"),
        ({}, QueryLevel.STUDY, "browsing"),
    ],
)
def test_anything_else_is_refused_saying_why(
    identifier: dict[str, Any], level: QueryLevel, says: str
) -> None:
    with pytest.raises(partners.PartnerRefused, match=says):
        partners.check_find(identifier, level)


def _other_id(patient_id: str, issuer: str) -> dict[str, Any]:
    return {
        "00100020": {"vr": "LO", "Value": [patient_id]},
        "00100021": {"vr": "LO", "Value": [issuer]},
    }


def test_other_patient_ids_keep_the_nhs_number_only() -> None:
    items = [_other_id(NHS, "NHS"), _other_id("RA2001", "RA2")]
    answer = {"00101002": {"vr": "SQ", "Value": items}}
    kept = partners.redact(answer)["00101002"]["Value"]
    assert [item["00100020"]["Value"] for item in kept] == [[NHS]]


def test_a_network_signs_in_with_the_demo_password_only_in_demo_mode() -> None:
    demo = partners.PartnerClients([LONDON], demo_password="demo")
    principal = demo.sign_in("london", "demo", address="10.0.0.1")
    assert principal is not None and principal.role is Role.PARTNER
    assert principal.partner is not None and principal.partner.shares == {"RTP"}
    assert principal.trust is None and not principal.may(Capability.BREAK_GLASS)
    assert demo.sign_in("london", "wrong", address=None) is None
    assert demo.sign_in("wessex", "demo", address=None) is None  # not listed here
    production = partners.PartnerClients([LONDON], demo_password=None)
    assert production.sign_in("london", "demo", address=None) is None


def test_the_stated_user_and_purpose_are_checked_and_kept() -> None:
    principal = partners.PartnerClients([LONDON], demo_password="demo").principal(
        "london", session="t1", address=None
    )
    assert principal is not None
    said = partners.stated(principal, user=" dr.jones ", purpose="coc")
    assert said.partner is not None
    assert (said.partner.user, said.partner.purpose) == ("dr.jones", Purpose.COC)
    assert said.actor().remote_user == "dr.jones" and said.actor().network == "London"
    for user, purpose in (("x" * 129, None), ("a\nb", None), (None, "CURIOSITY")):
        with pytest.raises(partners.PartnerHeaderError):
            partners.stated(principal, user=user, purpose=purpose)


def test_a_dimse_network_is_admitted_from_its_host_only() -> None:
    admitted = partners.dimse_caller([LONDON, WESSEX], "WESSEX", "127.0.0.1")
    assert not isinstance(admitted, str) and admitted is not None
    assert admitted.partner is not None and admitted.partner.network == "Wessex"
    assert admitted.role is Role.PARTNER
    refused = partners.dimse_caller([WESSEX], "WESSEX", "10.9.9.9")
    assert isinstance(refused, str) and "127.0.0.1" in refused
    assert partners.dimse_caller([WESSEX], "RXC_WS1", "127.0.0.1") is None


def test_a_partner_may_use_dicomweb_and_fhir_only() -> None:
    principal = partners.PartnerClients([LONDON], demo_password="demo").principal(
        "london", session="t1", address=None
    )
    assert principal is not None
    assert partners.interface_refusal(principal, "dicomweb") is None
    assert partners.interface_refusal(principal, "fhir") is None
    for interface in ("studies", "viewer", "api", ""):
        assert partners.interface_refusal(principal, interface) is not None
