"""A neighbouring network asking us (issue 14, inbound federation), through HTTP on a
real ``netpacs serve``: London, Kent and Wessex of the demo region sign in with client
credentials (``london``/``demo``...), ask by NHS number only, see the studies of the
trusts their agreement shares (London: RTP, RXC, RYR; Kent: RXC, RPC), retrieve only
what they found, and every request is in our audit with the network's name.

The patient has an NHS number and a study at two trusts: Surrey and Sussex (RTP,
shared with London) and Royal Surrey (RA2, shared with nobody).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
import sqlalchemy as sa

from netpacs.index.schema import audit_event
from netpacs.synthetic import write_ct_series
from tests.conftest import Netpacs, dcmtk
from tests.http.conftest import storescu
from tests.services.test_audit_messages import assert_valid

NHS_NUMBER = "9990002010"  # test range, valid check digit
OTHER_NHS_NUMBER = "9990002029"  # a patient of RXC only
BAD_CHECK_DIGIT = "9990002011"
NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"


@dataclass(frozen=True)
class Studies:
    shared: str  # RTP (ESH_CT1), the patient's
    unshared: str  # RA2 (RSCH_CT1), the same patient's
    elsewhere: str  # RXC (EDGH_CT1), another patient


def _send(server: Netpacs, folder: Path, aet: str, nhs: str, **kw: object) -> str:
    paths = write_ct_series(folder, 2, rows=16, columns=16, **kw)  # type: ignore[arg-type]
    for path in paths:
        ds = pydicom.dcmread(path)
        other = pydicom.Dataset()
        other.PatientID = nhs
        other.IssuerOfPatientID = "NHS"
        other.TypeOfPatientID = "TEXT"
        ds.OtherPatientIDsSequence = [other]
        ds.save_as(path, enforce_file_format=True)
    storescu(server, *paths, aet=aet)
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture(scope="module")
def studies(module_netpacs: Netpacs, tmp_path_factory: pytest.TempPathFactory) -> Studies:
    folder = tmp_path_factory.mktemp("partner")
    server = module_netpacs
    return Studies(
        shared=_send(
            server, folder / "rtp", "ESH_CT1", NHS_NUMBER, patient_id="RTP7000001", issuer="RTP"
        ),
        unshared=_send(
            server, folder / "ra2", "RSCH_CT1", NHS_NUMBER, patient_id="RA27000001", issuer="RA2"
        ),
        elsewhere=_send(
            server, folder / "rxc", "EDGH_CT1", OTHER_NHS_NUMBER, patient_id="RXC7000001",
            issuer="RXC", seed=9,
        ),
    )  # fmt: skip


def partner_token(server: Netpacs, client_id: str, secret: str = "demo") -> str:
    response = httpx.post(
        f"{server.base_url}/auth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


@pytest.fixture
def london(module_netpacs: Netpacs) -> Iterator[httpx.Client]:
    """London's client with a fresh token (a session of its own), stating its user."""
    token = partner_token(module_netpacs, "london")
    headers = {
        "Authorization": f"Bearer {token}",
        "X-Netpacs-Partner-User": "dr.jones",
        "X-Netpacs-Purpose-Of-Use": "TREAT",
    }
    with httpx.Client(base_url=module_netpacs.base_url, headers=headers, timeout=60) as client:
        yield client


def by_nhs_number(number: str = NHS_NUMBER) -> dict[str, str]:
    return {"PatientID": number, "IssuerOfPatientID": "NHS"}


def found_uids(response: httpx.Response) -> set[str]:
    assert response.status_code == 200, response.text
    return {m["0020000D"]["Value"][0] for m in response.json()}


def audit_rows(server: Netpacs, user: str, after: int) -> list[sa.Row[object]]:
    engine = sa.create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(audit_event)
                    .where(audit_event.c.user_id == user, audit_event.c.id > after)
                    .order_by(audit_event.c.id)
                )
            )
    finally:
        engine.dispose()


def last_audit_id(server: Netpacs) -> int:
    engine = sa.create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(audit_event.c.id))).scalar() or 0)
    finally:
        engine.dispose()


# -- finding ------------------------------------------------------------------------------


def test_london_finds_by_nhs_number_only_the_studies_of_the_trusts_its_agreement_shares(
    module_netpacs: Netpacs, studies: Studies, london: httpx.Client
) -> None:
    # Our own administrator sees both of the patient's studies.
    everything = module_netpacs.http.get(
        f"{module_netpacs.dicomweb_url}/studies", params=by_nhs_number()
    )
    assert found_uids(everything) == {studies.shared, studies.unshared}

    qido = london.get("/dicomweb/studies", params=by_nhs_number())
    assert found_uids(qido) == {studies.shared}

    # Other Patient IDs: the NHS number, not the patient's hospital number at RA2.
    other_ids = {**by_nhs_number(), "includefield": "OtherPatientIDsSequence"}
    ours = module_netpacs.http.get(f"{module_netpacs.dicomweb_url}/studies", params=other_ids)
    assert "RA27000001" in ours.text
    theirs = london.get("/dicomweb/studies", params=other_ids)
    assert found_uids(theirs) == {studies.shared}
    assert NHS_NUMBER in theirs.text and "RA27000001" not in theirs.text

    fhir = london.get(
        "/fhir/ImagingStudy", params={"patient.identifier": f"{NHS_SYSTEM}|{NHS_NUMBER}"}
    )
    assert fhir.status_code == 200, fhir.text
    ids = [e["resource"]["id"] for e in fhir.json().get("entry", []) if "id" in e["resource"]]
    assert ids == [studies.shared]


def test_kent_sees_none_of_the_trusts_it_has_no_agreement_with(
    module_netpacs: Netpacs, studies: Studies
) -> None:
    headers = {"Authorization": f"Bearer {partner_token(module_netpacs, 'kent')}"}
    qido = httpx.get(
        f"{module_netpacs.dicomweb_url}/studies", params=by_nhs_number(), headers=headers
    )
    assert found_uids(qido) == set()  # RTP and RA2 are not Kent's to see
    other = httpx.get(
        f"{module_netpacs.dicomweb_url}/studies",
        params=by_nhs_number(OTHER_NHS_NUMBER),
        headers=headers,
    )
    assert found_uids(other) == {studies.elsewhere}  # RXC is


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"PatientName": "SMITH*"}, "wildcards"),
        ({"PatientName": "SMITH^JOHN"}, "name searches"),
        ({"PatientID": "999*", "IssuerOfPatientID": "NHS"}, "wildcards"),
        ({}, "browsing"),
        ({"StudyDate": "20200101-20301231"}, "browsing"),
        ({"PatientID": "RTP7000001", "IssuerOfPatientID": "RTP"}, "IssuerOfPatientID=NHS"),
        ({"PatientID": NHS_NUMBER}, "IssuerOfPatientID=NHS"),
        ({"PatientID": BAD_CHECK_DIGIT, "IssuerOfPatientID": "NHS"}, "wrong check digit"),
        ({**by_nhs_number(), "OtherPatientIDsSequence.PatientID": NHS_NUMBER}, "Other Patient"),
    ],
)
def test_a_search_not_by_one_nhs_number_is_refused_with_a_400_saying_why(
    studies: Studies, london: httpx.Client, params: dict[str, str], says: str
) -> None:
    response = london.get("/dicomweb/studies", params=params)
    assert response.status_code == 400, response.text
    assert says in response.json()["message"]
    assert "NHS number" in response.json()["message"]


def test_series_searches_and_fhir_wildcards_are_refused_too(
    studies: Studies, london: httpx.Client
) -> None:
    series = london.get("/dicomweb/series", params={"Modality": "CT"})
    assert series.status_code == 400
    assert "within a study it found" in series.json()["message"]
    fhir = london.get("/fhir/ImagingStudy", params={"patient.identifier": "999*"})
    assert fhir.status_code == 400
    assert "wildcards" in fhir.json()["issue"][0]["diagnostics"]


# -- retrieving ---------------------------------------------------------------------------


def test_london_retrieves_what_it_found_and_nothing_else(
    studies: Studies, london: httpx.Client
) -> None:
    shared = f"/dicomweb/studies/{studies.shared}"
    # Not found yet with this token: answered as not stored.
    assert london.get(f"{shared}/metadata").status_code == 404
    assert found_uids(london.get("/dicomweb/studies", params=by_nhs_number())) == {studies.shared}

    metadata = london.get(f"{shared}/metadata")
    assert metadata.status_code == 200, metadata.text
    assert len(metadata.json()) == 2
    series = london.get(f"{shared}/series")
    assert series.status_code == 200 and len(series.json()) == 1
    retrieve = london.get(shared, headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert retrieve.status_code == 200
    assert retrieve.content.count(b"DICM") == 2

    # The same patient's study at a trust London has no agreement with.
    unshared = f"/dicomweb/studies/{studies.unshared}"
    assert london.get(f"{unshared}/metadata").status_code == 404
    assert london.get(unshared).status_code == 404
    assert london.get(f"{unshared}/series").status_code == 200
    assert london.get(f"{unshared}/series").json() == []
    assert london.get(f"/fhir/ImagingStudy/{studies.unshared}").status_code == 404


# -- audit --------------------------------------------------------------------------------


def test_every_partner_request_is_audited_with_the_network_its_user_and_purpose(
    module_netpacs: Netpacs, studies: Studies, london: httpx.Client
) -> None:
    before = last_audit_id(module_netpacs)
    assert london.get("/dicomweb/studies", params=by_nhs_number()).status_code == 200
    assert london.get(f"/dicomweb/studies/{studies.shared}/metadata").status_code == 200
    assert london.get(f"/dicomweb/studies/{studies.unshared}/metadata").status_code == 404
    assert london.get("/dicomweb/studies", params={"PatientName": "SMITH"}).status_code == 400

    rows = audit_rows(module_netpacs, "london", before)
    said = "[partner network London, its user dr.jones, purpose TREAT]"
    assert [r.event_id for r in rows] == ["110112", "110103", "110113", "110113"]
    assert all(said in r.detail and r.role == "partner" for r in rows)
    assert all(r.purpose_of_use == "TREAT" for r in rows)
    for row in rows:  # PS3.15 A.5.1, with the partner's user as a second requestor
        assert_valid(row.message_xml)
    query, access, miss, refused = rows
    assert query.outcome == 0 and query.study_uids == studies.shared
    assert 'UserID="dr.jones"' in query.message_xml  # the partner's user, a participant
    assert access.outcome == 0 and access.study_uids == studies.shared
    assert miss.outcome == 4 and miss.study_uids == studies.unshared
    assert refused.outcome == 4 and "name searches" in refused.detail


# -- sign-in and what a partner token cannot do --------------------------------------------


def test_a_wrong_or_unknown_client_secret_gets_no_token(
    module_netpacs: Netpacs, studies: Studies
) -> None:
    for client_id, secret in (("wessex", "not-demo"), ("paris", "demo"), ("wessex", "")):
        response = httpx.post(
            f"{module_netpacs.base_url}/auth/token",
            data={"grant_type": "client_credentials", "client_id": client_id},
            auth=(client_id, secret),
            timeout=60,
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_client"


def test_a_partner_token_opens_no_page_api_or_break_glass(
    module_netpacs: Netpacs, studies: Studies, london: httpx.Client
) -> None:
    for path in ("/", "/studies", "/viewer", "/worklist", "/api/worklist", "/audit"):
        response = london.get(path)
        assert response.status_code == 403, (path, response.status_code)
        assert "/dicomweb and /fhir only" in response.text
    glass = london.post(
        "/api/break-glass",
        json={"patient_id": "RA27000001", "issuer": "RA2", "reason": "emergency in London A&E"},
    )
    assert glass.status_code == 403
    # Emergency treatment, stated, grants nothing more.
    emergency = london.get(
        "/dicomweb/studies", params=by_nhs_number(), headers={"X-Netpacs-Purpose-Of-Use": "ETREAT"}
    )
    assert found_uids(emergency) == {studies.shared}


def test_a_stated_purpose_we_cannot_record_is_a_400_and_a_revoked_token_is_refused(
    module_netpacs: Netpacs, studies: Studies
) -> None:
    token = partner_token(module_netpacs, "london")
    url = f"{module_netpacs.dicomweb_url}/studies"
    bad = httpx.get(
        url,
        params=by_nhs_number(),
        headers={"Authorization": f"Bearer {token}", "X-Netpacs-Purpose-Of-Use": "CURIOSITY"},
    )
    assert bad.status_code == 400
    assert "X-Netpacs-Purpose-Of-Use" in bad.json()["message"]
    revoked = httpx.post(f"{module_netpacs.base_url}/auth/revoke", data={"token": token})
    assert revoked.status_code == 200
    after = httpx.get(url, params=by_nhs_number(), headers={"Authorization": f"Bearer {token}"})
    assert after.status_code == 401


# -- Wessex asks over DIMSE ---------------------------------------------------------------


def wessex_find(
    server: Netpacs, folder: Path, *keys: str, aet: str = "WESSEX"
) -> tuple[str, list[pydicom.Dataset]]:
    """C-FIND (Study Root, STUDY level) from Wessex's AE: findscu's log and its answers."""
    out = folder / f"find-{len(list(folder.iterdir()))}"
    out.mkdir()
    args = ["-S", "-d", "-aet", aet, "-aec", "NETPACS", "-X", "-od", str(out)]
    for key in ("QueryRetrieveLevel=STUDY", "StudyInstanceUID", *keys):
        args += ["-k", key]
    result = dcmtk("findscu", *args, "127.0.0.1", str(server.port), timeout=30)
    return result.stdout + result.stderr, [pydicom.dcmread(p) for p in sorted(out.glob("rsp*"))]


def wessex_get(server: Netpacs, folder: Path, study_uid: str) -> int:
    """C-GET of a study by Wessex's AE: how many objects it received."""
    out = folder / f"get-{len(list(folder.iterdir()))}"
    out.mkdir()
    dcmtk(
        "getscu", "-S", "-aet", "WESSEX", "-aec", "NETPACS", "-od", str(out),
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
        "127.0.0.1", str(server.port), timeout=30,
    )  # fmt: skip
    return len(list(out.iterdir()))


def test_wessex_finds_by_nhs_number_over_dimse_within_its_agreement(
    module_netpacs: Netpacs, studies: Studies, tmp_path: Path
) -> None:
    assert wessex_get(module_netpacs, tmp_path, studies.unshared) == 0  # not found yet
    log, answers = wessex_find(
        module_netpacs, tmp_path, f"PatientID={NHS_NUMBER}", "IssuerOfPatientID=NHS"
    )
    # Wessex shares RYR and RA2: the Royal Surrey study, not Surrey and Sussex's.
    assert [str(a.StudyInstanceUID) for a in answers] == [studies.unshared], log
    assert wessex_get(module_netpacs, tmp_path, studies.unshared) == 2  # found: retrieved
    assert wessex_get(module_netpacs, tmp_path, studies.shared) == 0  # not Wessex's

    log, answers = wessex_find(module_netpacs, tmp_path, "PatientName=SMITH*")
    assert answers == []
    assert "DIMSE Status                  : 0xa900" in log, log
    assert "wildcards are not answered to partner networks" in log  # the Error Comment
