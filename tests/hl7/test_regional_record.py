"""One patient across trusts: identities linked by NHS number, found from any trust over
C-FIND, QIDO-RS and FHIR; conflicts go to reconciliation; merges undone exactly.

One server per module and backend: each test has its own hospital and NHS numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset

from netpacs.domain import nhs_number
from netpacs.synthetic import write_ct_series
from tests.adapters.test_dimse import find
from tests.conftest import HttpApp, Netpacs, dcmtk
from tests.hl7.conftest import MllpClient, adt

NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"


@pytest.fixture(scope="module")
def netpacs(module_netpacs: Netpacs) -> Netpacs:
    return module_netpacs


def valid_nhs(first_nine: str) -> str:
    """A valid NHS number starting with ``first_nine`` (its check digit appended)."""
    digit = nhs_number.check_digit(first_nine)
    assert digit != 10, "choose other digits: this prefix has no valid number"
    return first_nine + str(digit)


def send_study(
    server: Netpacs | HttpApp,
    folder: Path,
    *,
    aet: str,
    patient_id: str,
    issuer: str | None,
    name: str = "DOE^JANE",
    birth_date: str = "",
    sex: str = "",
    nhs: str | None = None,
) -> str:
    """A 2-slice CT for a hospital number, sent from modality ``aet``; its Study UID.

    ``nhs`` goes into Other Patient IDs Sequence issued by NHS, as a modality would
    copy it from the worklist.
    """
    paths = write_ct_series(
        folder, 2, rows=16, columns=16, patient_id=patient_id, patient_name=name, issuer=issuer
    )
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PatientBirthDate = birth_date
        ds.PatientSex = sex
        if nhs is not None:
            item = Dataset()
            item.PatientID = nhs
            item.IssuerOfPatientID = "NHS"
            item.TypeOfPatientID = "TEXT"
            ds.OtherPatientIDsSequence = [item]
        ds.save_as(path)
    server.store(*paths, aet=aet)
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


def qido(server: Netpacs, **params: str) -> list[dict[str, Any]]:
    response = server.http.get(f"{server.dicomweb_url}/studies", params=params)
    assert response.status_code in (200, 204), response.text
    return response.json() if response.status_code == 200 else []  # type: ignore[no-any-return]


def local_ids(answers: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(a["00100020"]["Value"][0], a["00100021"]["Value"][0]) for a in answers}


def fhir_study_uids(server: Netpacs, **params: str) -> set[str]:
    response = server.http.get(f"{server.base_url}/fhir/ImagingStudy", params=params)
    assert response.status_code == 200, response.text
    uids = set()
    for entry in response.json().get("entry", []):
        for identifier in entry["resource"].get("identifier", []):
            if identifier.get("system") == "urn:dicom:uid":
                uids.add(identifier["value"].removeprefix("urn:oid:"))
    return uids


def items(server: Netpacs, *patient_ids: str, status: str = "open") -> list[dict[str, Any]]:
    """The reconciliation items about these hospital numbers (the module shares a server)."""
    response = server.http.get(f"{server.base_url}/api/reconciliation", params={"status": status})
    assert response.status_code == 200, response.text
    return [
        item
        for item in response.json()["items"]
        if {item.get("patient_id"), item.get("other_patient_id")} & set(patient_ids)
    ]


def resolve(server: Netpacs, item_id: int, action: str) -> httpx.Response:
    return server.http.post(
        f"{server.base_url}/api/reconciliation/{item_id}/resolve",
        json={"action": action, "note": "checked with the trusts' records"},
    )


def test_one_person_at_three_trusts_is_found_by_nhs_number_over_c_find_qido_and_fhir(
    netpacs: Netpacs, mllp: MllpClient, tmp_path: Path
) -> None:
    number = valid_nhs("943476591")
    # East Sussex registers her with her NHS number (ADT), and scans her at Eastbourne.
    ack = mllp.send(
        adt(
            "A04",
            "R1",
            f"RXC0000101^^^RXC^MR~{number}^^^NHS^NH",
            name="SHAW^ANN",
            birth_date="19700101",
            sex="F",
        )
    )
    assert ack.code == "AA", ack.text
    at_rxc = send_study(
        netpacs,
        tmp_path / "a",
        aet="EDGH_CT1",
        patient_id="RXC0000101",
        issuer="RXC",
        name="SHAW^ANN",
        birth_date="19700101",
        sex="F",
    )
    # East Surrey scans her under its own number; the modality copied the NHS number.
    at_rtp = send_study(
        netpacs,
        tmp_path / "b",
        aet="ESH_CT1",
        patient_id="ESH777",
        issuer="RTP",
        name="SHAW^ANN",
        birth_date="19700101",
        sex="F",
        nhs=number,
    )
    # University Hospitals Sussex knows her from its own ADT feed.
    ack = mllp.send(
        adt(
            "A04",
            "R2",
            f"K555^^^RYR^MR~{number}^^^NHS^NH",
            name="SHAW^ANN",
            birth_date="19700101",
            sex="F",
            facility="RYR",
        )
    )
    assert ack.code == "AA", ack.text
    at_ryr = send_study(
        netpacs,
        tmp_path / "c",
        aet="RSUS_CT1",
        patient_id="K555",
        issuer="RYR",
        name="SHAW^ANN",
    )
    # Someone else has hospital number RXC0000101 at Royal Surrey: another person.
    other = send_study(
        netpacs,
        tmp_path / "d",
        aet="SPH_CT1",
        patient_id="RXC0000101",
        issuer="RTK",
        name="ROE^BOB",
        birth_date="19500505",
        sex="M",
    )
    hers = {at_rxc, at_rtp, at_ryr}
    expected_ids = {("RXC0000101", "RXC"), ("ESH777", "RTP"), ("K555", "RYR")}

    # C-FIND, study root: NHS number with issuer NHS; each answer keeps its local number.
    answers = find(
        netpacs,
        tmp_path,
        "QueryRetrieveLevel=STUDY",
        f"PatientID={number}",
        "IssuerOfPatientID=NHS",
        "StudyInstanceUID",
    )
    assert {str(a.StudyInstanceUID) for a in answers} == hers
    assert {(str(a.PatientID), str(a.IssuerOfPatientID)) for a in answers} == expected_ids
    # C-FIND, patient root, PATIENT level: her three local identities.
    patients = find(
        netpacs,
        tmp_path,
        "QueryRetrieveLevel=PATIENT",
        f"PatientID={number}",
        "IssuerOfPatientID=NHS",
        "NumberOfPatientRelatedStudies",
        model="-P",
    )
    assert {(str(p.PatientID), str(p.IssuerOfPatientID)) for p in patients} == expected_ids

    # QIDO-RS, by NHS number; Other Patient IDs carry the NHS number and her other numbers.
    found = qido(netpacs, PatientID=number, IssuerOfPatientID="NHS", includefield="00101002")
    assert {a["0020000D"]["Value"][0] for a in found} == hers
    assert local_ids(found) == expected_ids
    at_east_sussex = next(a for a in found if a["0020000D"]["Value"][0] == at_rxc)
    others = {
        (i["00100020"]["Value"][0], i["00100021"]["Value"][0])
        for i in at_east_sussex["00101002"]["Value"]
    }
    assert others == {(number, "NHS"), ("ESH777", "RTP"), ("K555", "RYR")}

    # A hospital number stays within its trust, unless linked identities are asked for.
    assert local_ids(qido(netpacs, PatientID="RXC0000101", IssuerOfPatientID="RXC")) == {
        ("RXC0000101", "RXC")
    }
    assert local_ids(qido(netpacs, PatientID="RXC0000101", IssuerOfPatientID="RTK")) == {
        ("RXC0000101", "RTK")
    }
    linked = qido(netpacs, PatientID="ESH777", IssuerOfPatientID="RTP", linked="true")
    assert {a["0020000D"]["Value"][0] for a in linked} == hers
    assert other not in {a["0020000D"]["Value"][0] for a in linked}

    # FHIR ImagingStudy: NHS number system, or a local number with linked=true.
    assert fhir_study_uids(netpacs, **{"patient.identifier": f"{NHS_SYSTEM}|{number}"}) == hers
    by_local = {"patient.identifier": "urn:netpacs:issuer:RYR|K555"}
    assert fhir_study_uids(netpacs, **by_local) == {at_ryr}
    assert fhir_study_uids(netpacs, **by_local, linked="true") == hers
    assert items(netpacs, "RXC0000101", "ESH777", "K555") == []  # nothing contradicted anything


def test_same_hospital_number_at_two_trusts_stays_two_people(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    a = send_study(
        netpacs,
        tmp_path / "a",
        aet="EDGH_CT1",
        patient_id="H100",
        issuer="RXC",
        name="ONE^AMY",
        nhs=valid_nhs("401023213"),
    )
    b = send_study(
        netpacs,
        tmp_path / "b",
        aet="ESH_CT1",
        patient_id="H100",
        issuer="RTP",
        name="TWO^BEN",
        nhs=valid_nhs("450557710"),
    )
    for issuer, uid in (("RXC", a), ("RTP", b)):
        for linked in ("false", "true"):
            found = qido(netpacs, PatientID="H100", IssuerOfPatientID=issuer, linked=linked)
            assert [s["0020000D"]["Value"][0] for s in found] == [uid]


def test_nhs_number_arriving_with_another_birth_date_is_not_linked_until_a_person_links_it(
    netpacs: Netpacs, mllp: MllpClient, tmp_path: Path
) -> None:
    number = valid_nhs("485777345")
    assert (
        mllp.send(
            adt(
                "A04",
                "C1",
                f"RXC0000201^^^RXC^MR~{number}^^^NHS^NH",
                name="KEY^LIZ",
                birth_date="19800202",
                sex="F",
            )
        ).code
        == "AA"
    )
    first = send_study(
        netpacs,
        tmp_path / "a",
        aet="EDGH_CT1",
        patient_id="RXC0000201",
        issuer="RXC",
        name="KEY^LIZ",
    )
    # East Surrey's PAS gives the same NHS number to someone born 1985: a typo, or not?
    ack = mllp.send(
        adt(
            "A04",
            "C2",
            f"ESH0201^^^RTP^MR~{number}^^^NHS^NH",
            name="KEY^LIZ",
            birth_date="19850202",
            sex="F",
            facility="RTP",
        )
    )
    assert ack.code == "AA", ack.text
    second = send_study(
        netpacs, tmp_path / "b", aet="ESH_CT1", patient_id="ESH0201", issuer="RTP", name="KEY^LIZ"
    )
    by_number = {"PatientID": number, "IssuerOfPatientID": "NHS"}
    assert {s["0020000D"]["Value"][0] for s in qido(netpacs, **by_number)} == {first}

    (item,) = items(netpacs, "RXC0000201", "ESH0201")
    assert item["kind"] == "nhs-number-conflict"
    assert (item["patient_id"], item["issuer"], item["nhs_number"]) == ("ESH0201", "RTP", number)
    assert (item["other_patient_id"], item["other_issuer"]) == ("RXC0000201", "RXC")
    assert "1985-02-02" in item["detail"] and "1980-02-02" in item["detail"]
    assert item["actions"] == ["link", "unlink", "reject"]

    refused = resolve(netpacs, item["id"], "merge")
    assert refused.status_code == 400 and "not merge" in refused.json()["message"]
    done = resolve(netpacs, item["id"], "link")
    assert done.status_code == 200 and done.json()["status"] == "resolved"
    assert {s["0020000D"]["Value"][0] for s in qido(netpacs, **by_number)} == {first, second}
    again = resolve(netpacs, item["id"], "reject")
    assert again.status_code == 409 and "resolved already" in again.json()["message"]
    assert items(netpacs, "RXC0000201", "ESH0201") == []


def test_rejected_link_is_not_made_again_when_the_number_arrives_again(
    netpacs: Netpacs, mllp: MllpClient, tmp_path: Path
) -> None:
    number = valid_nhs("612345678")
    assert (
        mllp.send(
            adt(
                "A04",
                "J1",
                f"RXC0000301^^^RXC^MR~{number}^^^NHS^NH",
                birth_date="19600303",
                sex="M",
            )
        ).code
        == "AA"
    )
    assert (
        mllp.send(
            adt(
                "A04",
                "J2",
                f"ESH0301^^^RTP^MR~{number}^^^NHS^NH",
                birth_date="19600303",
                sex="F",
                facility="RTP",
            )
        ).code
        == "AA"
    )
    (item,) = items(netpacs, "RXC0000301", "ESH0301")
    assert "sex F differs from M" in item["detail"]
    assert resolve(netpacs, item["id"], "unlink").status_code == 200
    # The same registration is sent again, and a study arrives with the number.
    assert (
        mllp.send(
            adt(
                "A08",
                "J3",
                f"ESH0301^^^RTP^MR~{number}^^^NHS^NH",
                birth_date="19600303",
                sex="F",
                facility="RTP",
            )
        ).code
        == "AA"
    )
    send_study(
        netpacs, tmp_path / "a", aet="ESH_CT1", patient_id="ESH0301", issuer="RTP", nhs=number
    )
    patients = find(
        netpacs,
        tmp_path,
        "QueryRetrieveLevel=PATIENT",
        f"PatientID={number}",
        "IssuerOfPatientID=NHS",
        model="-P",
    )
    assert [(str(p.PatientID), str(p.IssuerOfPatientID)) for p in patients] == [
        ("RXC0000301", "RXC")
    ]
    assert items(netpacs, "RXC0000301", "ESH0301") == []


def test_second_nhs_number_for_a_linked_hospital_number_keeps_the_first_link(
    netpacs: Netpacs, mllp: MllpClient, tmp_path: Path
) -> None:
    first, second = valid_nhs("999000011"), valid_nhs("999000012")
    assert mllp.send(adt("A04", "T1", f"RXC0000401^^^RXC^MR~{first}^^^NHS^NH")).code == "AA"
    uid = send_study(
        netpacs, tmp_path / "a", aet="EDGH_CT1", patient_id="RXC0000401", issuer="RXC", nhs=second
    )
    found = qido(netpacs, PatientID=first, IssuerOfPatientID="NHS")
    assert [s["0020000D"]["Value"][0] for s in found] == [uid]
    assert qido(netpacs, PatientID=second, IssuerOfPatientID="NHS") == []
    (item,) = items(netpacs, "RXC0000401")
    assert item["kind"] == "two-nhs-numbers" and item["nhs_number"] == second
    assert "C-STORE from EDGH_CT1 (RXC)" in item["source"]


def test_study_whose_name_disagrees_with_the_adt_record_is_raised_for_a_person(
    netpacs: Netpacs, mllp: MllpClient, tmp_path: Path
) -> None:
    assert (
        mllp.send(
            adt(
                "A04",
                "M1",
                "RXC0000501^^^RXC^MR",
                name="SMITH^JOHN",
                birth_date="19900909",
                sex="M",
            )
        ).code
        == "AA"
    )
    send_study(
        netpacs,
        tmp_path / "same",
        aet="EDGH_CT1",
        patient_id="RXC0000501",
        issuer="RXC",
        name="Smith^John^^Mr",
        birth_date="19900909",
    )
    assert items(netpacs, "RXC0000501") == []  # case and prefixes are no disagreement
    uid = send_study(
        netpacs,
        tmp_path / "other",
        aet="EDGH_CT1",
        patient_id="RXC0000501",
        issuer="RXC",
        name="SMYTHE^JOAN",
        birth_date="19900909",
    )
    (item,) = items(netpacs, "RXC0000501")
    assert item["kind"] == "study-mismatch" and item["study_instance_uid"] == uid
    assert "SMYTHE^JOAN" in item["detail"] and item["actions"] == ["reject"]


def test_merging_a_duplicate_registration_then_undoing_it_restores_every_answer(
    netpacs: Netpacs, mllp: MllpClient, tmp_path: Path
) -> None:
    number = valid_nhs("999000013")
    assert (
        mllp.send(
            adt(
                "A04",
                "D1",
                f"RXC0000601^^^RXC^MR~{number}^^^NHS^NH",
                name="DUPE^DORA",
                birth_date="19450101",
                sex="F",
            )
        ).code
        == "AA"
    )
    older = send_study(
        netpacs,
        tmp_path / "a",
        aet="EDGH_CT1",
        patient_id="RXC0000601",
        issuer="RXC",
        name="DUPE^DORA",
    )
    # Registered again at the same trust under a new number.
    assert (
        mllp.send(
            adt(
                "A04",
                "D2",
                f"RXC0000699^^^RXC^MR~{number}^^^NHS^NH",
                name="DUPE^DORA",
                birth_date="19450101",
                sex="F",
            )
        ).code
        == "AA"
    )
    newer = send_study(
        netpacs,
        tmp_path / "b",
        aet="CONQ_CT1",
        patient_id="RXC0000699",
        issuer="RXC",
        name="DUPE^DORA",
    )
    fields = {"includefield": "all"}

    def answers() -> list[Any]:
        return [
            sorted(
                qido(netpacs, PatientID=p, IssuerOfPatientID="RXC", **fields),
                key=lambda s: s["0020000D"]["Value"][0],
            )
            for p in ("RXC0000601", "RXC0000699")
        ] + [
            find(
                netpacs,
                tmp_path,
                "QueryRetrieveLevel=PATIENT",
                f"PatientID={number}",
                "IssuerOfPatientID=NHS",
                "NumberOfPatientRelatedStudies",
                "PatientName",
                model="-P",
            )
        ]

    before = answers()
    (item,) = items(netpacs, "RXC0000601", "RXC0000699")
    assert item["kind"] == "duplicate-registration"
    assert (item["patient_id"], item["other_patient_id"]) == ("RXC0000699", "RXC0000601")

    merged = resolve(netpacs, item["id"], "merge")
    assert merged.status_code == 200, merged.text
    merge_id = merged.json()["merge_id"]
    moved = qido(netpacs, PatientID="RXC0000601", IssuerOfPatientID="RXC")
    assert {s["0020000D"]["Value"][0] for s in moved} == {older, newer}
    assert qido(netpacs, PatientID="RXC0000699", IssuerOfPatientID="RXC") == []

    undone = netpacs.http.post(f"{netpacs.base_url}/api/merges/{merge_id}/undo")
    assert undone.status_code == 200, undone.text
    assert answers() == before
    (reopened,) = items(netpacs, "RXC0000601", "RXC0000699")
    assert reopened["id"] == item["id"] and reopened["actions"] == ["merge", "unlink", "reject"]
    twice = netpacs.http.post(f"{netpacs.base_url}/api/merges/{merge_id}/undo")
    assert twice.status_code == 409 and "undone already" in twice.json()["message"]
    missing = netpacs.http.post(f"{netpacs.base_url}/api/merges/999999/undo")
    assert missing.status_code == 404


def test_c_get_by_nhs_number_retrieves_the_persons_studies_from_every_trust(
    netpacs: Netpacs, mllp: MllpClient, tmp_path: Path
) -> None:
    number = valid_nhs("999000015")
    # East Sussex's PAS registers her NHS number: its AEs see her imaging at every trust
    # (a number only an image header gives opens nothing: issue 17).
    ack = mllp.send(adt("A04", "G1", f"G1^^^RXC^MR~{number}^^^NHS^NH"))
    assert ack.code == "AA", ack.text
    hers = {
        send_study(
            netpacs, tmp_path / "a", aet="EDGH_CT1", patient_id="G1", issuer="RXC", nhs=number
        ),
        send_study(
            netpacs, tmp_path / "b", aet="RSCH_CT1", patient_id="G2", issuer="RA2", nhs=number
        ),
    }
    send_study(netpacs, tmp_path / "c", aet="ESH_CT1", patient_id="G1", issuer="RTP")
    out = tmp_path / "got"
    out.mkdir()
    result = dcmtk(
        "getscu",
        "-P",
        "-aet",
        "RXC_WS1",
        "-aec",
        "NETPACS",
        "-od",
        str(out),
        "-k",
        "QueryRetrieveLevel=PATIENT",
        "-k",
        f"PatientID={number}",
        "-k",
        "IssuerOfPatientID=NHS",
        "127.0.0.1",
        str(netpacs.port),
    )
    assert result.returncode == 0, result.stderr
    got = [pydicom.dcmread(p, stop_before_pixels=True) for p in out.iterdir()]
    assert len(got) == 4
    assert {str(ds.StudyInstanceUID) for ds in got} == hers
