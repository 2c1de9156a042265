"""What a STOW-RS store may do to patients (issue 17, items 2 and 3), through the HTTP app:
storing under another trust's hospital number gives the storing trust no access (until a
reconciliation grant, or break-glass) and alerts that trust's auditors; an object whose
patient contradicts the study it names is refused with 409 and added to nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pydicom
from pydicom.uid import generate_uid

from tests.conftest import HttpApp
from tests.factories import ct_dataset
from tests.hl7.conftest import Ack, adt
from tests.hl7.test_regional_record import send_study, valid_nhs
from tests.http.test_stow import STOW_TYPE, encode, multipart, values

PATIENT_CONTRADICTS_STUDY = 0xC003


def stow(http_app: HttpApp, user: str, *datasets: pydicom.Dataset) -> httpx.Response:
    body = multipart(*(("application/dicom", encode(ds)) for ds in datasets))
    with http_app.client(user) as client:
        return client.post("/dicomweb/studies", content=body, headers={"Content-Type": STOW_TYPE})


def can_read(http_app: HttpApp, user: str, study_uid: str) -> bool:
    """Whether ``user`` finds the study over QIDO-RS and reads it over WADO-RS."""
    with http_app.client(user) as client:
        found = client.get("/dicomweb/studies", params={"StudyInstanceUID": study_uid})
        metadata = client.get(f"/dicomweb/studies/{study_uid}/metadata")
    listed = found.status_code == 200 and bool(found.json())
    assert listed == (metadata.status_code == 200), (found.status_code, metadata.status_code)
    return listed


def alerts_for(http_app: HttpApp, auditor: str) -> list[dict[str, Any]]:
    """The security alerts on ``auditor``'s trust's report (what their audit page lists)."""
    with http_app.client(auditor) as client:
        response = client.get("/api/audit", params={"alerts": "true", "days": "1"})
    assert response.status_code == 200, response.text
    return response.json()["entries"]  # type: ignore[no-any-return]


def items(http_app: HttpApp, kind: str) -> list[dict[str, Any]]:
    response = http_app.http.get("/api/reconciliation", params={"status": "all"})
    assert response.status_code == 200, response.text
    return [i for i in response.json()["items"] if i["kind"] == kind]


def blob_files(http_app: HttpApp) -> set[Path]:
    return {p for p in http_app.settings.effective_blob_dir.rglob("*") if p.is_file()}


def rtp_patient(http_app: HttpApp, folder: Path, number: str) -> str:
    """An East Surrey patient, registered by its PAS and scanned at East Surrey."""
    ack = Ack(
        http_app.adt(
            adt(
                "A04",
                f"A{number}",
                f"{number}^^^RTP^MR",
                name="PRICE^PAT",
                birth_date="19580303",
                sex="F",
                facility="RTP",
            )
        )
    )
    assert ack.code == "AA", ack.text
    return send_study(
        http_app,
        folder,
        aet="ESH_CT1",
        patient_id=number,
        issuer="RTP",
        name="PRICE^PAT",
        birth_date="19580303",
        sex="F",
    )


def test_a_stow_under_another_trusts_hospital_number_gives_no_access_until_granted_and_alerts_its_auditors(  # noqa: E501
    http_app: HttpApp, tmp_path: Path
) -> None:
    theirs = rtp_patient(http_app, tmp_path / "rtp", "RTP7001")
    assert not can_read(http_app, "rxc.clinician", theirs)
    # East Sussex's radiographer stores one object under East Surrey's hospital number,
    # with the right name and birth date.
    typed = ct_dataset(
        PatientID="RTP7001",
        IssuerOfPatientID="RTP",
        PatientName="PRICE^PAT",
        PatientBirthDate="19580303",
        PatientSex="F",
    )
    response = stow(http_app, "rxc.radiographer", typed)
    assert response.status_code == 200, response.text  # kept
    ours = str(typed.StudyInstanceUID)

    # No care relationship came of it: East Sussex's clinicians see neither study.
    for uid in (theirs, ours):
        assert not can_read(http_app, "rxc.clinician", uid)
        assert can_read(http_app, "rtp.clinician", uid)
    with http_app.client("rxc.clinician") as client:
        by_number = client.get("/dicomweb/studies", params={"PatientID": "RTP7001"})
    assert by_number.status_code == 204 or by_number.json() == []

    # East Surrey's auditors are alerted, on their trust's audit report and page.
    alert = next(e for e in alerts_for(http_app, "rtp.auditor") if ours in e["studies"])
    assert alert["user"] == "rxc.radiographer" and alert["what"] == "security alert"
    assert "RTP7001" in alert["detail"] and "hospital number of RTP" in alert["detail"]
    assert (alert["patient_id"], alert["issuer"]) == ("RTP7001", "RTP")
    with http_app.client("rtp.auditor") as client:
        page = client.get("/audit", headers={"Accept": "text/html"})
    assert page.status_code == 200 and "rxc.radiographer" in page.text
    assert not any(ours in e["studies"] for e in alerts_for(http_app, "rpc.auditor"))

    # Break-glass opens the patient for the one user who asked, for a while.
    with http_app.client("rxc.radiologist") as client:
        opened = client.post(
            "/api/break-glass",
            json={"patient_id": "RTP7001", "issuer": "RTP", "reason": "seen in ED at Eastbourne"},
        )
    assert opened.status_code == 200, opened.text
    assert can_read(http_app, "rxc.radiologist", theirs)
    assert not can_read(http_app, "rxc.clinician", theirs)

    # A PACS administrator decides East Sussex does care for them: its staff see them.
    item = next(i for i in items(http_app, "foreign-identity") if i["patient_id"] == "RTP7001")
    assert (item["issuer"], item["other_issuer"], item["study_instance_uid"]) == (
        "RTP",
        "RXC",
        ours,
    )
    assert item["actions"] == ["grant", "reject"]
    page = http_app.http.get("/reconciliation", headers={"Accept": "text/html"})
    assert f'id="item-{item["id"]}" data-kind="foreign-identity"' in page.text
    assert 'value="grant">Grant care' in page.text
    decided = http_app.http.post(
        f"/api/reconciliation/{item['id']}/resolve",
        json={"action": "grant", "note": "transferred to Eastbourne for surgery"},
    )
    assert decided.status_code == 200, decided.text
    for uid in (theirs, ours):
        assert can_read(http_app, "rxc.clinician", uid)
    assert not can_read(http_app, "rpc.clinician", theirs)


def test_a_trusts_own_hospital_number_still_gives_its_staff_what_they_store(
    http_app: HttpApp,
) -> None:
    ds = ct_dataset(PatientID="RXC7101", IssuerOfPatientID="RXC")
    bare = ct_dataset(PatientID="RXC7102")  # no issuer: the storing trust's number
    assert stow(http_app, "rxc.radiographer", ds, bare).status_code == 200
    assert can_read(http_app, "rxc.clinician", str(ds.StudyInstanceUID))
    assert can_read(http_app, "rxc.clinician", str(bare.StudyInstanceUID))
    assert items(http_app, "foreign-identity") == []


def test_stow_of_another_patients_instance_into_a_study_is_409_and_nothing_is_added(
    http_app: HttpApp, tmp_path: Path
) -> None:
    theirs = rtp_patient(http_app, tmp_path / "rtp", "RTP7002")
    before = http_app.http.get(f"/dicomweb/studies/{theirs}/metadata").json()
    blobs = blob_files(http_app)
    slipped = ct_dataset(
        PatientID="RXC555002",
        IssuerOfPatientID="RXC",
        PatientName="SLIP^IN",
        StudyInstanceUID=theirs,
    )
    response = stow(http_app, "rxc.radiographer", slipped)
    assert response.status_code == 409, response.text
    body = response.json()
    assert "00081199" not in body
    (failed,) = values(body, "00081198")
    assert values(failed, "00081155") == [slipped.SOPInstanceUID]
    assert values(failed, "00081197") == [PATIENT_CONTRADICTS_STUDY]

    # Nothing was added to the study, and no blob was left behind.
    after = http_app.http.get(f"/dicomweb/studies/{theirs}/metadata").json()
    assert len(after) == len(before) == 2
    assert slipped.SOPInstanceUID not in {values(i, "00080018")[0] for i in after}
    assert (
        http_app.http.get(
            f"/dicomweb/studies/{theirs}/series/{slipped.SeriesInstanceUID}/metadata"
        ).status_code
        == 404
    )
    assert blob_files(http_app) == blobs
    found = http_app.http.get("/dicomweb/studies", params={"PatientID": "RXC555002"})
    assert found.status_code == 204 or found.json() == []

    # A person sees it as a reconciliation item; East Surrey's auditors are alerted.
    (item,) = items(http_app, "patient-contradicts-study")
    assert (item["patient_id"], item["issuer"]) == ("RXC555002", "RXC")
    assert (item["other_patient_id"], item["other_issuer"]) == ("RTP7002", "RTP")
    assert item["study_instance_uid"] == theirs and item["status"] == "open"
    alert = next(e for e in alerts_for(http_app, "rtp.auditor") if theirs in e["studies"])
    assert alert["user"] == "rxc.radiographer" and "refused" in alert["detail"]

    # Sent again: refused again, still one item.
    again = stow(http_app, "rxc.radiographer", slipped)
    assert again.status_code == 409
    assert len(items(http_app, "patient-contradicts-study")) == 1


def test_an_instance_naming_its_own_study_but_another_studys_series_is_refused(
    http_app: HttpApp, tmp_path: Path
) -> None:
    theirs = rtp_patient(http_app, tmp_path / "rtp", "RTP7003")
    (series,) = {
        values(i, "0020000E")[0]
        for i in http_app.http.get(f"/dicomweb/studies/{theirs}/metadata").json()
    }
    blobs = blob_files(http_app)
    own_study = generate_uid()
    slipped = ct_dataset(
        PatientID="RXC555003", StudyInstanceUID=own_study, SeriesInstanceUID=series
    )
    response = stow(http_app, "rxc.radiographer", slipped)
    assert response.status_code == 409, response.text
    (failed,) = values(response.json(), "00081198")
    assert values(failed, "00081197") == [PATIENT_CONTRADICTS_STUDY]
    assert len(http_app.http.get(f"/dicomweb/studies/{theirs}/metadata").json()) == 2
    assert http_app.http.get(f"/dicomweb/studies/{own_study}/metadata").status_code == 404
    found = http_app.http.get("/dicomweb/studies", params={"StudyInstanceUID": own_study})
    assert found.status_code == 204 or found.json() == []
    assert blob_files(http_app) == blobs


def test_objects_that_name_the_studys_patient_are_added_to_it(
    http_app: HttpApp, tmp_path: Path
) -> None:
    """Not contradictions: the same identity sent by another trust, a Patient ID without
    issuer (only the sender's trust was assumed), a hospital number merged into the
    study's by the trust's PAS."""
    theirs = rtp_patient(http_app, tmp_path / "rtp", "RTP7004")
    same = ct_dataset(PatientID="RTP7004", IssuerOfPatientID="RTP", StudyInstanceUID=theirs)
    no_issuer = ct_dataset(PatientID="RTP7004", StudyInstanceUID=theirs)
    assert stow(http_app, "rxc.radiologist", same, no_issuer).status_code == 200
    # East Surrey's PAS merges RTP7004 into RTP7005: the study is RTP7005's now.
    registered = Ack(
        http_app.adt(adt("A04", "A7005", "RTP7005^^^RTP^MR", name="PRICE^PAT", facility="RTP"))
    )
    assert registered.code == "AA", registered.text
    ack = Ack(
        http_app.adt(
            adt("A40", "M7005", "RTP7005^^^RTP^MR", mrg1="RTP7004^^^RTP^MR", facility="RTP")
        )
    )
    assert ack.code == "AA", ack.text
    old_number = ct_dataset(PatientID="RTP7004", IssuerOfPatientID="RTP", StudyInstanceUID=theirs)
    new_number = ct_dataset(PatientID="RTP7005", IssuerOfPatientID="RTP", StudyInstanceUID=theirs)
    assert stow(http_app, "rtp.radiographer", old_number, new_number).status_code == 200
    metadata = http_app.http.get(f"/dicomweb/studies/{theirs}/metadata").json()
    assert len(metadata) == 6
    assert items(http_app, "patient-contradicts-study") == []


def test_an_nhs_number_typed_under_the_trusts_own_number_opens_nothing_until_its_pas_registers_it(
    http_app: HttpApp, tmp_path: Path
) -> None:
    number = valid_nhs("401023214")
    # East Surrey's PAS registers its patient with the NHS number; scanned at East Surrey.
    ack = Ack(
        http_app.adt(
            adt(
                "A04",
                "A7201",
                f"RTP7201^^^RTP^MR~{number}^^^NHS^NH",
                name="PRICE^PAT",
                birth_date="19580303",
                sex="F",
                facility="RTP",
            )
        )
    )
    assert ack.code == "AA", ack.text
    theirs = send_study(
        http_app, tmp_path / "rtp", aet="ESH_CT1", patient_id="RTP7201", issuer="RTP"
    )
    # East Sussex's radiographer stores under a new East Sussex number, with that NHS
    # number (and the right birth date and sex) in Other Patient IDs.
    ours = send_study(
        http_app,
        tmp_path / "rxc",
        aet="EDGH_CT1",
        patient_id="RXC7201",
        issuer="RXC",
        name="PRICE^PAT",
        birth_date="19580303",
        sex="F",
        nhs=number,
    )
    with http_app.client("rxc.admin") as admin:
        linked = admin.get(
            "/dicomweb/studies", params={"PatientID": number, "IssuerOfPatientID": "NHS"}
        )
    assert {values(s, "0020000D")[0] for s in linked.json()} == {theirs, ours}  # one person
    assert can_read(http_app, "rxc.clinician", ours)
    assert not can_read(http_app, "rxc.clinician", theirs)
    # East Sussex's own PAS registers the number: now the person's imaging is theirs too.
    ack = Ack(
        http_app.adt(
            adt(
                "A04",
                "A7202",
                f"RXC7201^^^RXC^MR~{number}^^^NHS^NH",
                name="PRICE^PAT",
                birth_date="19580303",
                sex="F",
                facility="RXC",
            )
        )
    )
    assert ack.code == "AA", ack.text
    assert can_read(http_app, "rxc.clinician", theirs)
