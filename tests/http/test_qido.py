"""QIDO-RS (PS3.18 10.6) through netpacs's HTTP app, on studies stored as a modality sends them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from tests.conftest import HttpApp
from tests.factories import ct_dataset, write
from tests.http.conftest import StoredSeries


@dataclass(frozen=True)
class Studies:
    """Three small studies from a modality: two Smiths and a Jones."""

    smith: str  # SMITH^JOHN, 20260105, CT, one series of two instances
    smith_series: str
    smith_sops: list[str]
    smithson: str  # Smithson^Jane, 20260210, MR, one instance
    jones: str  # JONES^ANN, 20260315, a CT series and a US series


@pytest.fixture
def studies(http_app: HttpApp, tmp_path: Path) -> Studies:
    smith, smith_series, smithson, jones = (generate_uid() for _ in range(4))
    common = {"IssuerOfPatientID": "RTP", "InstitutionName": "East Surrey Hospital"}
    datasets = [
        ct_dataset(
            StudyInstanceUID=smith,
            SeriesInstanceUID=smith_series,
            InstanceNumber=n,
            PatientName="SMITH^JOHN",
            PatientID="RTP0000101",
            StudyDate="20260105",
            AccessionNumber="ACC-SMITH",
            PatientAge="056Y",
            **common,
        )
        for n in (1, 2)
    ]
    datasets.append(
        ct_dataset(
            StudyInstanceUID=smithson,
            PatientName="Smithson^Jane",
            PatientID="RTP0000102",
            StudyDate="20260210",
            Modality="MR",
            **common,
        )
    )
    for modality, number in (("CT", 1), ("US", 2)):
        datasets.append(
            ct_dataset(
                StudyInstanceUID=jones,
                PatientName="JONES^ANN",
                PatientID="RXC0000103",
                IssuerOfPatientID="RXC",
                StudyDate="20260315",
                Modality=modality,
                SeriesNumber=number,
                BodyPartExamined="ABDOMEN",
            )
        )
    paths = [write(ds, tmp_path / "in" / f"{i}.dcm") for i, ds in enumerate(datasets)]
    http_app.store(*paths)
    return Studies(
        smith, smith_series, [str(ds.SOPInstanceUID) for ds in datasets[:2]], smithson, jones
    )


def qido(server: HttpApp, path: str, **headers: str) -> httpx.Response:
    return server.http.get(f"{server.dicomweb_url}{path}", headers=headers)


def first(dataset: dict[str, Any], tag: str) -> Any:
    values = (dataset.get(tag) or {}).get("Value") or [None]
    return values[0]


def study_uids(found: list[dict[str, Any]]) -> list[str]:
    return [first(item, "0020000D") for item in found]


def test_patient_name_wildcard_matches_case_insensitively(
    http_app: HttpApp, studies: Studies
) -> None:
    client = http_app.dicomweb()
    found = client.search_for_studies(search_filters={"PatientName": "smith*"})
    assert sorted(study_uids(found)) == sorted([studies.smith, studies.smithson])
    exact = client.search_for_studies(search_filters={"00100010": "jones^ann"})
    assert study_uids(exact) == [studies.jones]


def test_date_range_and_modalities_in_study_select_studies(
    http_app: HttpApp, studies: Studies
) -> None:
    client = http_app.dicomweb()

    def search(**filters: str) -> list[str]:
        return study_uids(client.search_for_studies(search_filters=filters))

    assert search(StudyDate="20260101-20260228") == [studies.smith, studies.smithson]
    assert search(StudyDate="20260301-") == [studies.jones]
    assert search(ModalitiesInStudy="MR") == [studies.smithson]
    assert search(ModalitiesInStudy="US") == [studies.jones]
    assert search(ModalitiesInStudy="CT", StudyDate="-20260201") == [studies.smith]
    assert search(StudyInstanceUID=f"{studies.smith},{studies.jones}") == [
        studies.smith,
        studies.jones,
    ]


def test_study_answers_carry_the_default_attributes_and_a_retrieve_url(
    http_app: HttpApp, studies: Studies
) -> None:
    response = qido(http_app, f"/studies?StudyInstanceUID={studies.jones}")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    (jones,) = response.json()
    for tag in ("00080020", "00080050", "00080090", "00100030", "00100040", "00200010"):
        assert tag in jones, tag
    assert first(jones, "00100010") == {"Alphabetic": "JONES^ANN"}
    assert first(jones, "00100020") == "RXC0000103"
    assert first(jones, "00100021") == "RXC"
    assert jones["00080061"]["Value"] == ["CT", "US"]
    assert first(jones, "00201206") == 2
    assert first(jones, "00201208") == 2
    assert first(jones, "00081030") == "CT HEAD"
    assert first(jones, "00081190") == f"{http_app.dicomweb_url}/studies/{studies.jones}"


def test_includefield_adds_attributes_by_keyword_tag_list_and_all(
    http_app: HttpApp, studies: Studies
) -> None:
    client = http_app.dicomweb()
    filters = {"StudyInstanceUID": studies.smith}
    (one,) = client.search_for_studies(search_filters=filters, fields=["PatientAge"])
    assert first(one, "00101010") == "056Y"

    listed = qido(
        http_app, f"/studies?StudyInstanceUID={studies.smith}&includefield=00101010,PatientWeight"
    )
    (two,) = listed.json()
    assert first(two, "00101010") == "056Y"
    assert two["00101030"] == {"vr": "DS"}  # asked for, not in the object: present, empty
    (series,) = client.search_for_series(
        study_instance_uid=studies.smith, fields=["InstitutionName"]
    )
    assert first(series, "00080080") == "East Surrey Hospital"

    (every,) = qido(http_app, f"/studies?StudyInstanceUID={studies.smith}&includefield=all").json()
    assert first(every, "00080062") == "1.2.840.10008.5.1.4.1.1.2"  # SOPClassesInStudy


def test_limit_and_offset_page_through_studies_in_a_stable_order(
    http_app: HttpApp, studies: Studies
) -> None:
    client = http_app.dicomweb()
    everything = study_uids(client.search_for_studies())
    pages = [study_uids(client.search_for_studies(limit=2, offset=o)) for o in (0, 2, 4)]

    assert everything == [studies.smith, studies.smithson, studies.jones]
    assert pages == [everything[:2], everything[2:], []]


def test_series_and_instances_are_found_at_every_resource(
    http_app: HttpApp, studies: Studies
) -> None:
    client = http_app.dicomweb()
    jones_series = client.search_for_series(study_instance_uid=studies.jones)
    assert [first(s, "00080060") for s in jones_series] == ["CT", "US"]
    assert all(first(s, "00201209") == 1 for s in jones_series)
    assert "00100010" not in jones_series[0]  # the study is in the URL: no study attributes

    (us,) = client.search_for_series(search_filters={"Modality": "US"})
    assert first(us, "0020000D") == studies.jones
    assert first(us, "00100010") == {"Alphabetic": "JONES^ANN"}  # all series: study attributes

    in_series = client.search_for_instances(
        study_instance_uid=studies.smith, series_instance_uid=studies.smith_series
    )
    assert [first(i, "00080018") for i in in_series] == studies.smith_sops
    assert first(in_series[0], "00280010") == 8
    assert first(in_series[0], "00280100") == 16  # BitsAllocated, from the index's metadata
    assert first(in_series[0], "00081190").endswith(
        f"/studies/{studies.smith}/series/{studies.smith_series}/instances/{studies.smith_sops[0]}"
    )
    in_study = client.search_for_instances(study_instance_uid=studies.smith)
    assert [first(i, "00080018") for i in in_study] == studies.smith_sops
    (anywhere,) = client.search_for_instances(
        search_filters={"SOPInstanceUID": studies.smith_sops[1]}
    )
    assert first(anywhere, "00200013") == 2
    assert first(anywhere, "00100020") == "RTP0000101"
    assert "0008103E" in anywhere  # all instances: series attributes too


def test_a_modalitys_ct_series_is_found_by_patient_id_and_issuer(
    http_app: HttpApp, ct_series: StoredSeries
) -> None:
    client = http_app.dicomweb()
    (study,) = client.search_for_studies(
        search_filters={"PatientID": "RXC0000001", "IssuerOfPatientID": "RXC"}
    )
    assert first(study, "0020000D") == ct_series.study_uid
    assert first(study, "00201208") == len(ct_series.sop_uids)
    assert client.search_for_studies(search_filters={"IssuerOfPatientID": "RTP"}) == []


def test_no_match_is_an_empty_list_and_json_is_answered_to_plain_json_accept(
    http_app: HttpApp, studies: Studies
) -> None:
    nothing = qido(http_app, "/studies?PatientName=NOBODY*")
    assert nothing.status_code == 200 and nothing.json() == []
    plain = qido(http_app, "/studies", Accept="application/json")
    assert plain.headers["content-type"] == "application/json"
    assert len(plain.json()) == 3
    assert qido(http_app, "/series", Accept="text/html, */*;q=0.1").status_code == 200


def test_bad_searches_are_4xx_with_a_message_naming_the_problem(
    http_app: HttpApp, studies: Studies
) -> None:
    cases = {
        "/studies?PatientNaem=SMITH": (400, "PatientNaem"),
        "/studies?includefield=NoSuchKeyword": (400, "NoSuchKeyword"),
        "/studies?limit=-1": (400, "limit"),
        "/studies?limit=ten": (400, "limit"),
        "/studies?offset=x": (400, "offset"),
        "/studies?StudyDate=2026-01": (400, "StudyDate"),
        "/series?SeriesInstanceUID=1.2.*": (400, "wild card"),
        f"/studies/{studies.smith}/series?StudyInstanceUID=1.2.3": (400, "StudyInstanceUID"),
        "/studies?PatientName.FamilyName=X": (400, "FamilyName"),
        "/studies?StudyDescription=CT%00HEAD": (400, "NUL"),
        "/series?SeriesNumber=99999999999999999999": (400, "SeriesNumber"),
        "/studies?offset=99999999999999999999999": (400, "offset"),
        "/studies/*/series": (400, "Study Instance UID"),
    }
    for path, (status, word) in cases.items():
        response = qido(http_app, path)
        assert response.status_code == status, (path, response.text)
        assert word in response.json()["message"], (path, response.text)
    assert len(qido(http_app, "/studies?limit=99999999999999999999999").json()) == 3
    refused = qido(http_app, "/studies", Accept="application/dicom+xml")
    assert refused.status_code == 406
    assert "application/dicom+json" in refused.json()["message"]
