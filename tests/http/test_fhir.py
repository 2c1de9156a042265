"""FHIR R4 ImagingStudy through netpacs's HTTP app: search, read, errors, CapabilityStatement.

Resources are validated with the fhir.resources models (R4B: ImagingStudy, Endpoint,
Bundle, OperationOutcome and CapabilityStatement are unchanged from R4 in what is
used here).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import sqlalchemy as sa
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.operationoutcome import OperationOutcome

from netpacs.index.db import make_engine
from netpacs.index.schema import audit_event
from netpacs.synthetic import write_ct_series
from tests.conftest import HttpApp
from tests.http.conftest import StoredSeries

NHS = "https://fhir.nhs.uk/Id/nhs-number"
RXC = "urn:netpacs:issuer:RXC"
FHIR_JSON = "application/fhir+json"


@dataclass(frozen=True)
class Studies:
    east_sussex: StoredSeries  # hospital number H1234567 at RXC
    surrey: StoredSeries  # the same number, another person, at RTP
    nhs: StoredSeries  # NHS number 9434765919


def _send(server: HttpApp, folder: Path, aet: str, **kw: Any) -> StoredSeries:
    paths = write_ct_series(folder, 2, rows=16, columns=16, **kw)
    server.store(*paths, aet=aet)
    head = pydicom.dcmread(paths[0], stop_before_pixels=True)
    sops = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]
    return StoredSeries(paths, str(head.StudyInstanceUID), str(head.SeriesInstanceUID), sops)


@pytest.fixture(scope="module")
def http_app(module_http_app: HttpApp) -> HttpApp:
    """One app for the module: its tests only read the studies of ``studies``."""
    return module_http_app


@pytest.fixture(scope="module")
def studies(http_app: HttpApp, tmp_path_factory: pytest.TempPathFactory) -> Studies:
    tmp_path = tmp_path_factory.mktemp("fhir")
    return Studies(
        east_sussex=_send(
            http_app,
            tmp_path / "rxc",
            "EDGH_CT1",
            patient_id="H1234567",
            issuer="RXC",
            patient_name="EASTBOURNE^Alice",
        ),
        surrey=_send(
            http_app,
            tmp_path / "rtp",
            "ESH_CT1",
            patient_id="H1234567",
            issuer="RTP",
            patient_name="REDHILL^Bob",
            seed=1,
        ),
        nhs=_send(
            http_app,
            tmp_path / "nhs",
            "EDGH_CT1",
            patient_id="9434765919",
            issuer="NHS",
            patient_name="HASTINGS^Carol",
            seed=2,
        ),
    )


def _bundle(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    body: dict[str, Any] = response.json()
    Bundle.model_validate(body)
    assert body["type"] == "searchset"
    return body


def _study_uids(bundle: dict[str, Any]) -> list[str]:
    return [
        e["resource"]["id"]
        for e in bundle.get("entry", [])
        if e["resource"]["resourceType"] == "ImagingStudy"
    ]


def test_search_by_hospital_number_finds_the_trusts_patient_only(
    http_app: HttpApp, studies: Studies
) -> None:
    url = f"{http_app.base_url}/fhir/ImagingStudy"
    with http_app.client() as client:
        found = _bundle(client.get(url, params={"patient.identifier": f"{RXC}|H1234567"}))
        assert found["total"] == 1 and _study_uids(found) == [studies.east_sussex.study_uid]
        entry = found["entry"][0]
        assert entry["search"]["mode"] == "match"
        assert entry["fullUrl"] == f"{url}/{studies.east_sussex.study_uid}"
        study = entry["resource"]
        ImagingStudy.model_validate(study)
        assert study["status"] == "available"
        assert {
            "use": "official",
            "system": "urn:dicom:uid",
            "value": f"urn:oid:{studies.east_sussex.study_uid}",
        } in study["identifier"]
        assert study["subject"]["identifier"] == {"system": RXC, "value": "H1234567"}
        assert study["subject"]["display"] == "EASTBOURNE, Alice"
        assert study["numberOfSeries"] == 1 and study["numberOfInstances"] == 2
        assert study["modality"] == [
            {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}
        ]
        assert study["started"][:10].count("-") == 2 and "T" in study["started"]
        (series,) = study["series"]
        assert series["uid"] == studies.east_sussex.series_uid
        assert series["modality"]["code"] == "CT" and series["numberOfInstances"] == 2
        (endpoint,) = study["contained"]
        assert study["endpoint"] == [{"reference": f"#{endpoint['id']}"}]
        assert endpoint["connectionType"] == {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs",
        }
        assert endpoint["address"] == http_app.dicomweb_url
        # The endpoint answers for the study.
        qido = client.get(f"{endpoint['address']}/studies/{study['id']}/series")
        assert qido.status_code == 200 and len(qido.json()) == 1

        # The same number at the other trust is the other person.
        other = _bundle(
            client.get(url, params={"patient.identifier": "urn:netpacs:issuer:RTP|H1234567"})
        )
        assert _study_uids(other) == [studies.surrey.study_uid]
        # Without a system, the number matches at every issuer; paging by _count.
        first = _bundle(client.get(url, params={"patient.identifier": "H1234567", "_count": "1"}))
        assert first["total"] == 2 and len(_study_uids(first)) == 1
        (next_link,) = [link["url"] for link in first["link"] if link["relation"] == "next"]
        second = _bundle(client.get(next_link))
        assert {*_study_uids(first), *_study_uids(second)} == {
            studies.east_sussex.study_uid,
            studies.surrey.study_uid,
        }

        by_nhs = _bundle(client.get(url, params={"patient.identifier": f"{NHS}|9434765919"}))
        assert _study_uids(by_nhs) == [studies.nhs.study_uid]
        assert by_nhs["entry"][0]["resource"]["subject"]["identifier"] == {
            "system": NHS,
            "value": "9434765919",
        }
        # A wild card is not a pattern here.
        assert _bundle(client.get(url, params={"patient.identifier": "H123*"}))["total"] == 0
        any_issuer = {"patient.identifier": "urn:netpacs:issuer:*|H1234567"}
        assert _bundle(client.get(url, params=any_issuer))["total"] == 0

        unknown = _bundle(client.get(url, params={"patient.identifier": "urn:x:mrn|H1234567"}))
        assert unknown["total"] == 0
        (note,) = unknown["entry"]
        assert note["search"]["mode"] == "outcome"
        assert "not known" in note["resource"]["issue"][0]["diagnostics"]

        by_uid = _bundle(
            client.get(url, params={"identifier": f"urn:dicom:uid|urn:oid:{studies.nhs.study_uid}"})
        )
        assert _study_uids(by_uid) == [studies.nhs.study_uid]


def _audited_since(http_app: HttpApp, after: int) -> list[sa.Row[Any]]:
    engine = make_engine(http_app.database_url)
    try:
        with engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(audit_event)
                    .where(audit_event.c.id > after, audit_event.c.event_id == "110112")
                    .order_by(audit_event.c.id)
                ).all()
            )
    finally:
        engine.dispose()


def test_every_question_of_a_search_and_a_read_is_on_the_audit_trail_when_answered(
    http_app: HttpApp, studies: Studies
) -> None:
    """A search asks which studies match (with their details) and their series; a read,
    the study's details and its series. Each is on record (stored together, once, before
    the answer)."""
    url = f"{http_app.base_url}/fhir/ImagingStudy"
    before = max([0, *(row.id for row in _audited_since(http_app, 0))])
    with http_app.client() as client:
        found = _bundle(client.get(url, params={"patient.identifier": f"{NHS}|9434765919"}))
        assert _study_uids(found) == [studies.nhs.study_uid]
        searched = _audited_since(http_app, before)
        assert sorted(row.detail.split(" level")[0] for row in searched) == ["SERIES", "STUDY"]
        for row in searched:
            assert row.user_id == http_app.user
            assert row.patient_id == "9434765919" and row.study_uids == studies.nhs.study_uid
        read = client.get(f"{url}/{studies.surrey.study_uid}", headers={"accept": FHIR_JSON})
        assert read.status_code == 200, read.text
    read_rows = _audited_since(http_app, searched[-1].id)
    assert [(row.patient_id, row.issuer) for row in read_rows] == [("H1234567", "RTP")] * 2
    assert {row.study_uids for row in read_rows} == {studies.surrey.study_uid}


def _outcome(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    body = response.json()
    OperationOutcome.model_validate(body)
    assert words in body["issue"][0]["diagnostics"], body


def test_read_by_id_and_errors_as_operation_outcomes(http_app: HttpApp, studies: Studies) -> None:
    url = f"{http_app.base_url}/fhir/ImagingStudy"
    with http_app.client() as client:
        read = client.get(f"{url}/{studies.surrey.study_uid}", headers={"accept": FHIR_JSON})
        assert read.status_code == 200
        study = read.json()
        ImagingStudy.model_validate(study)
        assert study["id"] == studies.surrey.study_uid
        assert study["subject"]["identifier"]["system"] == "urn:netpacs:issuer:RTP"

        _outcome(client.get(f"{url}/1.2.3.4"), 404, "no ImagingStudy/1.2.3.4")
        _outcome(client.get(f"{url}/not_an_id"), 400, "not a FHIR id")
        _outcome(client.get(url, params={"patient": "Patient/1"}), 400, "not supported")
        _outcome(client.get(url), 400, "patient.identifier")
        _outcome(
            client.get(url, params={"patient.identifier": "H1234567", "_count": "many"}),
            400,
            "_count",
        )
        _outcome(
            client.get(url, params={"patient.identifier": "H1234567", "_format": "xml"}),
            406,
            "JSON",
        )
        _outcome(client.get(url, params={"patient.identifier": f"{RXC}|"}), 400, "no value")

        metadata = client.get(f"{http_app.base_url}/fhir/metadata")
        assert metadata.status_code == 200
        statement = metadata.json()
        CapabilityStatement.model_validate(statement)
        resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
        assert set(resources) == {"ImagingStudy", "DiagnosticReport"}
        for resource in resources.values():
            assert {i["code"] for i in resource["interaction"]} == {"read", "search-type"}
