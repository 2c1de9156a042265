"""ADT rules over real MLLP: demographics in queries, NHS numbers, merges and their undo.

One server per module and backend: each test has its own hospital numbers and control IDs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from netpacs.services.adt import MergeService, Outcome
from tests.adapters.test_dimse import find
from tests.conftest import Netpacs
from tests.hl7.conftest import MllpClient, adt, identity
from tests.http.conftest import write_and_send_ct


@pytest.fixture(scope="module")
def netpacs(module_netpacs: Netpacs) -> Netpacs:
    return module_netpacs


def studies(server: Netpacs, patient_id: str) -> list[dict[str, Any]]:
    response = server.http.get(
        f"{server.dicomweb_url}/studies",
        params={
            "PatientID": patient_id,
            "IssuerOfPatientID": "RXC",
            "includefield": "00100030,00100040",
        },
    )
    assert response.status_code in (200, 204), response.text
    found: list[dict[str, Any]] = response.json() if response.status_code == 200 else []
    return sorted(found, key=lambda s: str(s["0020000D"]["Value"][0]))


def test_a08_demographics_show_in_qido_and_c_find_for_a_stored_study(
    netpacs: Netpacs, mllp: MllpClient, tmp_path: Path
) -> None:
    stored = write_and_send_ct(netpacs, tmp_path / "ct", 2, patient_id="RXC0000042", issuer="RXC")
    ack = mllp.send(
        adt(
            "A08",
            "CTRL0100",
            "RXC0000042^^^RXC^MR~9434765919^^^NHS^NH",
            name="PARKER^MARY^JANE^^DR",
            birth_date="19811224",
            sex="F",
        )
    )
    assert ack.code == "AA", ack.text
    (study,) = studies(netpacs, "RXC0000042")
    assert study["00100010"]["Value"] == [{"Alphabetic": "PARKER^MARY^JANE^DR"}]
    assert study["00100030"]["Value"] == ["19811224"]
    assert study["00100040"]["Value"] == ["F"]
    (answer,) = find(
        netpacs,
        tmp_path,
        "QueryRetrieveLevel=STUDY",
        f"StudyInstanceUID={stored.study_uid}",
        "PatientName",
        "PatientBirthDate",
    )
    assert (str(answer.PatientName), answer.PatientBirthDate) == ("PARKER^MARY^JANE^DR", "19811224")
    assert identity(netpacs, "RXC0000042", "RXC")["nhs_number"] == "9434765919"


def test_invalid_nhs_number_is_accepted_stored_as_received_and_flagged(
    netpacs: Netpacs, mllp: MllpClient
) -> None:
    ack = mllp.send(adt("A04", "CTRL0200", "RXC0000043^^^RXC^MR~943 476 5918^^^NHS^NH"))
    assert ack.code == "AA"
    assert "wrong check digit" in ack.field("MSA", 3)
    row = identity(netpacs, "RXC0000043", "RXC")
    assert (row["nhs_number"], row["nhs_number_problem"]) == (
        "943 476 5918",
        "has the wrong check digit",
    )


def test_a40_moves_studies_to_the_survivor_and_undo_restores_query_results(
    netpacs: Netpacs, mllp: MllpClient, tmp_path: Path
) -> None:
    write_and_send_ct(netpacs, tmp_path / "a", 1, patient_id="RXC0000050", issuer="RXC")
    write_and_send_ct(netpacs, tmp_path / "b", 1, patient_id="RXC0000051", issuer="RXC")
    before = (studies(netpacs, "RXC0000050"), studies(netpacs, "RXC0000051"))
    ack = mllp.send(
        adt("A40", "CTRL0300", "RXC0000050^^^RXC^MR", name="NEW^NAME", mrg1="RXC0000051^^^RXC^MR")
    )
    assert ack.code == "AA", ack.text
    assert studies(netpacs, "RXC0000051") == []
    merged = studies(netpacs, "RXC0000050")
    assert [s["00100010"]["Value"][0]["Alphabetic"] for s in merged] == ["NEW^NAME"] * 2

    engine = sa.create_engine(netpacs.database_url)
    try:
        merge_id = int(ack.field("MSA", 3).rsplit("merge ", 1)[1].rstrip(")"))
        result = MergeService(engine).undo_merge(merge_id)
    finally:
        engine.dispose()
    assert result.outcome is Outcome.APPLIED, result.detail
    assert (studies(netpacs, "RXC0000050"), studies(netpacs, "RXC0000051")) == before


def names_found(server: Netpacs, name: str) -> set[str]:
    """Study UIDs a QIDO-RS search by name and a study date range finds (as a clinician
    at a desk would search: surname prefix, a month)."""
    response = server.http.get(
        f"{server.dicomweb_url}/studies",
        params={"PatientName": name, "StudyDate": "20240101-20240131"},
    )
    assert response.status_code in (200, 204), response.text
    found = response.json() if response.status_code == 200 else []
    return {str(s["0020000D"]["Value"][0]) for s in found}


def test_a_name_search_follows_a_renamed_patient_and_a_merge_at_once(
    netpacs: Netpacs, mllp: MllpClient, tmp_path: Path
) -> None:
    first = write_and_send_ct(
        netpacs, tmp_path / "a", 1, patient_id="RXC0000180", issuer="RXC",
        patient_name="QUILLFEATHER^ANN",
    )  # fmt: skip
    other = write_and_send_ct(
        netpacs, tmp_path / "b", 1, patient_id="RXC0000181", issuer="RXC",
        patient_name="QUILLSTONE^BEN",
    )  # fmt: skip
    assert names_found(netpacs, "QUILL*") == {first.study_uid, other.study_uid}
    assert names_found(netpacs, "quillfeather^ann") == {first.study_uid}  # case folded

    renamed = mllp.send(adt("A08", "CTRL0600", "RXC0000180^^^RXC^MR", name="WRENFIELD^ANN"))
    assert renamed.code == "AA", renamed.text
    assert names_found(netpacs, "QUILL*") == {other.study_uid}
    assert names_found(netpacs, "WREN*") == {first.study_uid}
    (answer,) = find(
        netpacs, tmp_path, "QueryRetrieveLevel=STUDY", "PatientName=WREN*", "StudyDate=20240101-"
    )
    assert str(answer.PatientName) == "WRENFIELD^ANN"

    merged = mllp.send(
        adt("A40", "CTRL0601", "RXC0000180^^^RXC^MR", name="WRENFIELD^ANN",
            mrg1="RXC0000181^^^RXC^MR")
    )  # fmt: skip
    assert merged.code == "AA", merged.text
    assert names_found(netpacs, "QUILL*") == set()
    assert names_found(netpacs, "WREN*") == {first.study_uid, other.study_uid}


def test_merge_across_trusts_or_of_an_unknown_identity_is_refused(
    netpacs: Netpacs, mllp: MllpClient, tmp_path: Path
) -> None:
    write_and_send_ct(netpacs, tmp_path / "a", 1, patient_id="RXC0000060", issuer="RXC")
    assert mllp.send(adt("A04", "CTRL0400", "RTP0000060^^^RTP^MR", facility="RTP")).code == "AA"
    across = mllp.send(adt("A40", "CTRL0401", "RXC0000060^^^RXC^MR", mrg1="RTP0000060^^^RTP^MR"))
    assert across.code == "AE" and "different trusts" in across.field("MSA", 3)
    unknown = mllp.send(adt("A40", "CTRL0402", "RXC0000060^^^RXC^MR", mrg1="RXC9999999^^^RXC"))
    assert unknown.code == "AE" and "not known" in unknown.field("MSA", 3)
    assert len(studies(netpacs, "RXC0000060")) == 1


def test_a47_moves_studies_to_the_new_hospital_number_and_refuses_one_in_use(
    netpacs: Netpacs, mllp: MllpClient, tmp_path: Path
) -> None:
    write_and_send_ct(netpacs, tmp_path / "a", 1, patient_id="RXC0000070", issuer="RXC")
    assert mllp.send(adt("A04", "CTRL0500", "RXC0000072^^^RXC^MR")).code == "AA"
    in_use = mllp.send(adt("A47", "CTRL0501", "RXC0000072^^^RXC^MR", mrg1="RXC0000070^^^RXC"))
    assert in_use.code == "AE" and "already in use" in in_use.field("MSA", 3)
    moved = mllp.send(adt("A47", "CTRL0502", "RXC0000071^^^RXC^MR", mrg1="RXC0000070^^^RXC"))
    assert moved.code == "AA", moved.text
    assert studies(netpacs, "RXC0000070") == []
    assert len(studies(netpacs, "RXC0000071")) == 1


def test_a_registration_without_a_name_takes_the_name_of_the_first_study_and_serves_it(
    netpacs: Netpacs, mllp: MllpClient, tmp_path: Path
) -> None:
    assert mllp.send(adt("A04", "CTRL0900", "RXC0000900^^^RXC^MR", sex="F")).code == "AA"
    stored = write_and_send_ct(
        netpacs, tmp_path / "ct", 1, patient_id="RXC0000900", issuer="RXC", patient_name="NEW^NELL"
    )
    (study,) = studies(netpacs, "RXC0000900")
    assert study["00100010"]["Value"] == [{"Alphabetic": "NEW^NELL"}]
    assert study["00100040"]["Value"] == ["F"]  # what ADT said is kept
    metadata = netpacs.http.get(f"{netpacs.dicomweb_url}/studies/{stored.study_uid}/metadata")
    assert metadata.json()[0]["00100010"]["Value"] == [{"Alphabetic": "NEW^NELL"}]


def test_a_trusts_adt_feed_may_change_only_the_hospital_numbers_that_trust_issues(
    netpacs: Netpacs, mllp: MllpClient
) -> None:
    registered = adt("A04", "CTRL1000", "RTP0000090^^^RTP^MR", name="OWN^ANNA", facility="RTP")
    assert mllp.send(registered).code == "AA"
    # East Sussex's PAS (MSH-4 RXC) tries to rename a Surrey and Sussex patient.
    other = mllp.send(adt("A08", "CTRL1001", "RTP0000090^^^RTP^MR", name="WRONG^NAME"))
    assert other.code == "AE"
    assert "'RXC' is RXC's: it may not change RTP0000090 at RTP" in other.field("MSA", 3)
    stranger = mllp.send(
        adt("A08", "CTRL1002", "RTP0000090^^^RTP^MR", name="WRONG^NAME", facility="ELSEWHERE")
    )
    assert stranger.code == "AE"
    assert "'ELSEWHERE' is not a trust of the region" in stranger.field("MSA", 3)
    assert identity(netpacs, "RTP0000090", "RTP")["patient_name"] == "OWN^ANNA"
    # A site of the trust (East Surrey Hospital, ESH) speaks for it.
    site = adt("A08", "CTRL1003", "RTP0000090^^^RTP^MR", name="OWN^ANNE", facility="ESH")
    assert mllp.send(site).code == "AA"
    assert identity(netpacs, "RTP0000090", "RTP")["patient_name"] == "OWN^ANNE"
    # So does the region's master patient index (regional_adt_facilities), for every trust.
    empi = adt("A08", "CTRL1004", "RTP0000090^^^RTP^MR", name="OWN^ANNIE", facility="SSX_EMPI")
    assert mllp.send(empi).code == "AA"
    assert identity(netpacs, "RTP0000090", "RTP")["patient_name"] == "OWN^ANNIE"
