"""A clinician's QIDO-RS search by NHS number across the neighbouring networks
(``includenetworks=true``, issue 14): London and Kent (Orthanc over DICOMweb) and Wessex
(Orthanc over DIMSE) answer in the same list as our region; a network that is stopped,
hung, answers garbage or a huge body is named in a Warning, the search still answers in
time, and nothing of theirs is stored."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from netpacs.index.schema import audit_event, study
from tests.conftest import HttpApp, _IndexTemplates, free_port, http_app_on
from tests.federation.conftest import Networks, cared_for_patient
from tests.federation.peers import (
    MIXED_STUDY,
    NHS,
    BadPeer,
    Silent,
    dicomweb_network,
    garbage,
    huge,
    mixed,
)

SEARCH = {"PatientID": NHS, "IssuerOfPatientID": "NHS", "includenetworks": "true"}
_RETRIEVE_URL, _RETRIEVE_AE, _STUDY_UID, _PATIENT_ID = (
    "00081190",
    "00080054",
    "0020000D",
    "00100020",
)


def _uids(answer: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {m[_STUDY_UID]["Value"][0]: m for m in answer}  # type: ignore[index]


def test_a_clinician_finds_the_patients_studies_here_and_at_every_network_in_one_answer(
    federated_app: tuple[HttpApp, str], networks: Networks
) -> None:
    app, local = federated_app
    with app.client("rtp.clinician") as client:
        response = client.get("/dicomweb/studies", params=SEARCH)
    assert response.status_code == 200, response.text
    assert "warning" not in response.headers, response.headers.get("warning")
    found = _uids(response.json())
    remote = {uid: name for name, uids in networks.studies.items() for uid in uids}
    assert set(found) == {local, *remote}
    assert found[local][_RETRIEVE_URL]["Value"][0].endswith(f"/dicomweb/studies/{local}")  # type: ignore[index]
    for uid, name in remote.items():
        match = found[uid]
        assert match[_PATIENT_ID]["Value"] == [NHS]  # type: ignore[index]
        if name == "Wessex":
            assert match[_RETRIEVE_AE]["Value"] == ["WESSEX"]  # type: ignore[index]
        else:
            url = match[_RETRIEVE_URL]["Value"][0]  # type: ignore[index]
            assert url.endswith(f"/dicomweb/networks/{name}/studies/{uid}")
    # Audited with the patient and every network asked.
    with sa.create_engine(app.database_url).connect() as conn:
        rows = conn.execute(
            sa.select(audit_event.c.detail, audit_event.c.patient_id).where(
                audit_event.c.user_id == "rtp.clinician",
                audit_event.c.detail.like("federated study search%"),
            )
        ).all()
    assert rows, "the federated search is not in the audit trail"
    detail, patient_id = rows[-1]
    assert "London 1 studies" in detail and "Kent 2 studies" in detail
    assert "Wessex 1 studies" in detail
    assert patient_id == NHS


def test_a_search_of_a_dimse_network_writes_no_patient_data_to_the_log(
    federated_app: tuple[HttpApp, str], caplog: pytest.LogCaptureFixture
) -> None:
    # pynetdicom logs every C-FIND identifier it sends and receives at INFO, netpacs's
    # default level: the NHS number asked and the names and birth dates answered.
    app, _ = federated_app
    with caplog.at_level(logging.INFO), app.client("rtp.clinician") as client:
        response = client.get("/dicomweb/studies", params=SEARCH)
    assert response.status_code == 200, response.text
    assert any(r.name.startswith("pynetdicom") for r in caplog.records)  # Wessex was asked
    leaked = [r.getMessage() for r in caplog.records if NHS in r.getMessage()]
    assert not leaked, leaked


def test_a_clinician_without_a_care_relationship_asks_no_network(
    federated_app: tuple[HttpApp, str],
) -> None:
    app, _ = federated_app
    with app.client("rtk.clinician") as client:
        response = client.get("/dicomweb/studies", params=SEARCH)
    assert response.status_code == 403
    assert "a patient you care for" in response.text


def test_includenetworks_without_an_nhs_number_is_a_400(
    federated_app: tuple[HttpApp, str],
) -> None:
    app, _ = federated_app
    with app.client("rtp.clinician") as client:
        by_name = client.get(
            "/dicomweb/studies", params={"PatientName": "FED*", "includenetworks": "true"}
        )
        bad_number = client.get(
            "/dicomweb/studies",
            params={
                "PatientID": "9990001236",
                "IssuerOfPatientID": "NHS",
                "includenetworks": "true",
            },
        )
    assert by_name.status_code == 400 and "NHS number" in by_name.text
    assert bad_number.status_code == 400 and "check digit" in bad_number.text


@pytest.fixture(scope="module")
def troubled_app(
    networks: Networks,
    tmp_path_factory: pytest.TempPathFactory,
    index_templates: _IndexTemplates,
) -> Iterator[tuple[HttpApp, str, BadPeer, BadPeer]]:
    """London answers; Kent hangs; Wessex is stopped (nothing listens); Dover answers
    garbage; Hastings starts a 10 GB answer; Rye mixes another patient's study and
    unreadable items with one of ours."""
    folder = tmp_path_factory.mktemp("troubled")
    held_here: list[str] = []  # Rye holds a copy of our study too (an image exchange)
    silent, rubbish, endless = Silent(), BadPeer(garbage), BadPeer(huge)
    rye = BadPeer(lambda handler: mixed(handler, held_here))
    closed = free_port()
    region = networks.region(folder / "region.toml")
    text = region.read_text()
    start = text.index("[[networks]]")
    region.write_text(
        text[:start]
        + dicomweb_network("London", networks.london.dicomweb)
        + dicomweb_network("Kent", silent.url)
        + f'[[networks]]\nname = "Wessex"\nprotocol = "dimse"\nae_title = "WESSEX"\n'
        f'host = "127.0.0.1"\nport = {closed}\n\n'
        + dicomweb_network("Dover", rubbish.url)
        + dicomweb_network("Hastings", endless.url)
        + dicomweb_network("Rye", rye.url)
    )
    try:
        with http_app_on(index_templates, "sqlite", folder / "app", region_file=region) as app:
            local = cared_for_patient(app, folder / "local")
            held_here.append(local)
            yield app, local, rubbish, endless
    finally:
        for peer in (silent, rubbish, endless, rye):
            peer.stop()


def test_networks_that_fail_are_named_and_the_search_answers_within_2_5_s(
    troubled_app: tuple[HttpApp, str, BadPeer, BadPeer], networks: Networks
) -> None:
    app, local, rubbish, endless = troubled_app
    with sa.create_engine(app.database_url).connect() as conn:
        studies_before = conn.execute(sa.select(sa.func.count()).select_from(study)).scalar()
    with app.client("rtp.clinician") as client:
        started = time.monotonic()
        response = client.get("/dicomweb/studies", params=SEARCH)
        elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert elapsed < 2.5, f"the search took {elapsed:.2f} s"
    answer = response.json()
    found = _uids(answer)
    assert set(found) == {local, *networks.studies["London"], MIXED_STUDY}
    assert len(answer) == len(found)  # our study once, though Rye holds it too
    assert found[local]["00081190"]["Value"][0].endswith(f"/dicomweb/studies/{local}")  # type: ignore[index]
    assert set(found[MIXED_STUDY]) == {  # only study attributes, cleaned
        "0020000D", "00100020", "00081030", "00100010", "00201208", "00100021", "00081190"
    }  # fmt: skip
    assert found[MIXED_STUDY]["00201208"]["Value"] == [12]  # type: ignore[index]
    warning = response.headers["warning"]
    assert '"Rye: 2 answers that could not be read were left out; 1 answers of another' in warning
    assert '"Kent: no answer' in warning  # its client's timeout, or the search's
    assert '"Wessex: ' in warning
    assert '"Dover: answered something that is not JSON"' in warning
    assert '"Hastings: answer larger than' in warning
    assert "London" not in warning
    assert rubbish.requests >= 1 and endless.requests >= 1
    with sa.create_engine(app.database_url).connect() as conn:
        studies_after = conn.execute(sa.select(sa.func.count()).select_from(study)).scalar()
    assert studies_after == studies_before  # nothing of theirs stored


def test_qido_without_includenetworks_asks_no_network(
    troubled_app: tuple[HttpApp, str, BadPeer, BadPeer], tmp_path: Path
) -> None:
    app, local, rubbish, _ = troubled_app
    before = rubbish.requests
    with app.client("rtp.clinician") as client:
        response = client.get(
            "/dicomweb/studies", params={"PatientID": NHS, "IssuerOfPatientID": "NHS"}
        )
    assert response.status_code == 200
    assert set(_uids(response.json())) == {local}
    assert rubbish.requests == before


def test_fhir_imaging_study_with_include_networks_gives_each_remote_study_its_endpoint(
    federated_app: tuple[HttpApp, str], networks: Networks
) -> None:
    app, local = federated_app
    params = {
        "patient.identifier": f"https://fhir.nhs.uk/Id/nhs-number|{NHS}",
        "_include-networks": "true",
    }
    with app.client("rtp.clinician") as client:
        bundle = client.get("/fhir/ImagingStudy", params=params).json()
        without = client.get(
            "/fhir/ImagingStudy", params={"patient.identifier": params["patient.identifier"]}
        ).json()
    studies = {
        e["resource"]["id"]: e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "ImagingStudy"
    }
    remote = {uid: name for name, uids in networks.studies.items() for uid in uids}
    assert set(studies) == {local, *remote}
    assert bundle["total"] == 1 + len(remote)
    assert [e["resource"]["id"] for e in without["entry"]] == [local]
    for uid, name in remote.items():
        resource = studies[uid]
        assert resource["subject"]["identifier"]["value"] == NHS
        assert name in resource["note"][0]["text"]
        if name == "Wessex":
            assert "endpoint" not in resource
        else:
            address = resource["contained"][0]["address"]
            assert address.endswith(f"/dicomweb/networks/{name}")
            assert resource["endpoint"] == [{"reference": "#dicomweb"}]
    assert not [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]


def test_the_report_pages_priors_include_the_other_networks_by_default(
    federated_app: tuple[HttpApp, str], networks: Networks
) -> None:
    app, local = federated_app
    with app.client("rtp.radiologist") as client:
        answer = client.get(f"/api/worklist/{local}/priors")
        ours_only = client.get(f"/api/worklist/{local}/priors", params={"networks": "false"})
    assert answer.status_code == 200, answer.text
    held = {p["study_instance_uid"]: p.get("network") for p in answer.json()["priors"]}
    remote = {uid: name for name, uids in networks.studies.items() for uid in uids}
    assert held == remote
    assert "networks_note" not in answer.json()
    assert ours_only.json()["priors"] == []
