"""Deleting a study (PACS administrators, with a reason) and exporting one as a ZIP,
each audited (issue 5 item 3), through netpacs's HTTP app."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pydicom
import sqlalchemy as sa

from netpacs.domain.dicom.part10 import read_file_meta
from netpacs.index.schema import audit_event, instance, patient, series, study, worklist_item
from tests.conftest import HttpApp
from tests.http.conftest import StoredSeries

REASON = "sent to the wrong patient's record"
MISSING = "1.2.826.0.1.3680043.8.498.99999999999999999999"
ZIP = "application/zip"


def data_set(part10: bytes) -> bytes:
    return part10[read_file_meta(part10).dataset_offset :]


def client(server: HttpApp, user: str) -> httpx.Client:
    return server.client(user)


def delete(server: HttpApp, user: str, uid: str, body: Any = None) -> httpx.Response:
    with client(server, user) as c:
        if body is None:
            return c.request("DELETE", f"/api/studies/{uid}")
        return c.request("DELETE", f"/api/studies/{uid}", json=body)


def index(server: HttpApp, stmt: Any) -> list[Any]:
    engine = sa.create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(stmt).all())
    finally:
        engine.dispose()


def blob_keys(server: HttpApp, study_uid: str) -> list[str]:
    rows = index(
        server,
        sa.select(instance.c.blob_key)
        .select_from(instance.join(series).join(study))
        .where(study.c.study_instance_uid == study_uid),
    )
    return [r[0] for r in rows]


def blob_path(server: HttpApp, key: str) -> Path:
    return server.data_dir / "objects" / key[:3] / key


def audit_rows(server: HttpApp, event_id: str, study_uid: str) -> list[Any]:
    return index(
        server,
        sa.select(audit_event)
        .where(audit_event.c.event_id == event_id, audit_event.c.study_uids.contains(study_uid))
        .order_by(audit_event.c.id),
    )


def qido_studies(server: HttpApp, uid: str) -> list[Any]:
    r = server.http.get(f"{server.dicomweb_url}/studies", params={"StudyInstanceUID": uid})
    assert r.status_code in (200, 204), r.text
    return r.json() if r.status_code == 200 else []


def test_an_admin_deletes_a_study_with_a_reason(http_app: HttpApp, ct_series: StoredSeries) -> None:
    uid = ct_series.study_uid
    keys = blob_keys(http_app, uid)
    assert len(keys) == 5 and all(blob_path(http_app, k).is_file() for k in keys)

    r = delete(http_app, "rxc.admin", uid, {"reason": f"  {REASON} "})
    assert r.status_code == 200, r.text
    done = r.json()
    assert (done["instances"], done["series"], done["blobs_removed"]) == (5, 1, 5)
    assert (done["patient_id"], done["issuer"]) == ("RXC0000001", "RXC")

    assert qido_studies(http_app, uid) == []
    assert http_app.http.get(f"{http_app.dicomweb_url}/studies/{uid}").status_code == 404
    assert not any(blob_path(http_app, k).exists() for k in keys)
    assert blob_keys(http_app, uid) == []
    assert (
        index(http_app, sa.select(worklist_item).where(worklist_item.c.study_instance_uid == uid))
        == []
    )
    # The patient stays: other studies, ADT identities and history may refer to it.
    assert index(http_app, sa.select(patient.c.id).where(patient.c.patient_id == "RXC0000001"))

    (record,) = audit_rows(http_app, "110105", uid)
    assert (record.action, record.outcome, record.user_id) == ("D", 0, "rxc.admin")
    assert (record.patient_id, record.issuer, record.trust) == ("RXC0000001", "RXC", "RXC")
    assert REASON in record.detail and "5 instances" in record.detail
    assert "110105" in record.message_xml and REASON in record.message_xml
    with client(http_app, "rxc.auditor") as c:
        trail = c.get("/api/audit", params={"patient_id": "RXC0000001", "issuer": "RXC"})
    assert trail.status_code == 200, trail.text
    assert REASON in trail.text

    # Deleting it again: it is not there.
    assert delete(http_app, "rxc.admin", uid, {"reason": REASON}).status_code == 404


def test_a_deleted_study_can_be_sent_again(http_app: HttpApp, ct_series: StoredSeries) -> None:
    uid = ct_series.study_uid
    assert delete(http_app, "rxc.admin", uid, {"reason": REASON}).status_code == 200
    # Sent again by the modality (corrected, as after a wrong-patient study): stored.
    http_app.store(*ct_series.paths)
    (found,) = qido_studies(http_app, uid)
    assert found["00201208"]["Value"] == [5]
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    again = http_app.http.get(f"{http_app.dicomweb_url}/studies/{uid}", headers={"Accept": accept})
    assert again.status_code == 200
    assert all(blob_path(http_app, k).is_file() for k in blob_keys(http_app, uid))


def test_only_admins_delete_and_others_learn_nothing(
    http_app: HttpApp, ct_series: StoredSeries
) -> None:
    uid = ct_series.study_uid
    # East Sussex's clinician sees the study but may not delete it.
    refused = delete(http_app, "rxc.clinician", uid, {"reason": REASON})
    assert refused.status_code == 403, refused.text
    assert "administrator" in refused.json()["message"]
    # Brighton's clinician may not see it: the answer for a study that does not exist.
    hidden = delete(http_app, "rtp.clinician", uid, {"reason": REASON})
    missing = delete(http_app, "rtp.clinician", MISSING, {"reason": REASON})
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["message"].replace(uid, "X") == missing.json()["message"].replace(
        MISSING, "X"
    )
    # An auditor reads the trail only.
    assert delete(http_app, "rxc.auditor", uid, {"reason": REASON}).status_code == 404

    # An admin must say why.
    for body in (None, {}, {"reason": ""}, {"reason": "   mistake "}):
        answer = delete(http_app, "rxc.admin", uid, body)
        assert answer.status_code in (400, 422), answer.text
        assert "reason" in answer.json()["message"]
    bad_uid = delete(http_app, "rxc.admin", "1.2.3.*", {"reason": REASON})
    assert bad_uid.status_code == 400 and "not a valid" in bad_uid.json()["message"]
    with client(http_app, "rxc.admin") as c:
        not_json = c.request(
            "DELETE",
            f"/api/studies/{uid}",
            content=b"reason=nope",
            headers={"Content-Type": "application/json"},
        )
    assert not_json.status_code == 400, not_json.text

    # Nothing was lost, and the refusal is on record.
    assert len(qido_studies(http_app, uid)) == 1
    assert all(blob_path(http_app, k).is_file() for k in blob_keys(http_app, uid))
    refusals = [r for r in audit_rows(http_app, "110105", uid) if r.outcome == 4]
    assert [r.user_id for r in refusals] == ["rxc.clinician"]


def test_a_study_with_a_signed_report_is_kept(http_app: HttpApp, ct_series: StoredSeries) -> None:
    uid = ct_series.study_uid
    with client(http_app, "ryr.radiologist") as c:
        signed = c.put(
            f"/api/reports/{uid}", json={"text": "FINDINGS:\nNormal study here.", "status": "final"}
        )
    assert signed.status_code == 200, signed.text
    keys = blob_keys(http_app, uid)

    refused = delete(http_app, "rxc.admin", uid, {"reason": REASON})
    assert refused.status_code == 409, refused.text
    assert "final report" in refused.json()["message"]
    assert blob_keys(http_app, uid) == keys
    assert all(blob_path(http_app, k).is_file() for k in keys)
    assert qido_studies(http_app, uid)[0]["00201208"]["Value"][0] >= 5
    with client(http_app, "ryr.radiologist") as c:
        assert c.get(f"/api/reports/{uid}").json()["status"] == "final"
    (record,) = audit_rows(http_app, "110105", uid)
    assert record.outcome == 4 and "final report" in record.detail


def test_a_draft_report_goes_with_its_study(http_app: HttpApp, ct_series: StoredSeries) -> None:
    uid = ct_series.study_uid
    with client(http_app, "ryr.radiologist") as c:
        draft = c.put(f"/api/reports/{uid}", json={"text": "FINDINGS:\nSo far.", "status": "draft"})
    assert draft.status_code == 200, draft.text
    r = delete(http_app, "rxc.admin", uid, {"reason": REASON})
    assert r.status_code == 200, r.text
    assert r.json()["reports"] == 1
    with client(http_app, "ryr.radiologist") as c:
        assert c.get(f"/api/reports/{uid}").status_code == 404


def _zip(response: httpx.Response) -> dict[str, bytes]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == ZIP
    assert "attachment" in response.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(response.content)) as zf:
        assert zf.testzip() is None
        return {name: zf.read(name) for name in zf.namelist()}


def test_a_study_exported_as_a_zip_holds_every_object_as_stored(
    http_app: HttpApp, ct_series: StoredSeries
) -> None:
    uid, series_uid = ct_series.study_uid, ct_series.series_uid
    stored = {
        str(pydicom.dcmread(blob_path(http_app, k), stop_before_pixels=True).SOPInstanceUID): (
            blob_path(http_app, k).read_bytes()
        )
        for k in blob_keys(http_app, uid)
    }
    sent = {
        str(pydicom.dcmread(p).SOPInstanceUID): data_set(p.read_bytes()) for p in ct_series.paths
    }

    with client(http_app, "rxc.clinician") as c:
        whole = _zip(c.get(f"/dicomweb/studies/{uid}", headers={"Accept": ZIP}))
        by_param = _zip(c.get(f"/dicomweb/studies/{uid}", params={"accept": ZIP}))
        one_series = _zip(
            c.get(
                f"/dicomweb/studies/{uid}/series/{series_uid}",
                headers={"Accept": f"{ZIP}, multipart/related; q=0.5"},
            )
        )
    expected = {f"{series_uid}/{sop}.dcm" for sop in ct_series.sop_uids}
    assert set(whole) == set(by_param) == set(one_series) == expected
    for name, body in whole.items():
        sop = name.split("/")[1].removesuffix(".dcm")
        assert body == stored[sop]  # the stored file, byte for byte
        assert data_set(body) == sent[sop]  # the data set as the modality sent it
        assert one_series[name] == body

    records = audit_rows(http_app, "110106", uid)
    assert len(records) == 3
    assert {(r.user_id, r.trust, r.action) for r in records} == {("rxc.clinician", "RXC", "R")}
    assert {(r.patient_id, r.issuer) for r in records} == {("RXC0000001", "RXC")}
    assert "ZIP" in records[0].detail and "5 instances" in records[0].detail
    # An export is not also recorded as a plain access.
    assert audit_rows(http_app, "110103", uid) == []


def test_a_zip_export_reveals_nothing_to_those_who_may_not_see_the_study(
    http_app: HttpApp, ct_series: StoredSeries
) -> None:
    uid = ct_series.study_uid
    with client(http_app, "rtp.clinician") as c:
        hidden = c.get(f"/dicomweb/studies/{uid}", headers={"Accept": ZIP})
        missing = c.get(f"/dicomweb/studies/{MISSING}", headers={"Accept": ZIP})
        unknown_series = c.get(
            f"/dicomweb/studies/{uid}/series/{ct_series.series_uid}", headers={"Accept": ZIP}
        )
    assert hidden.status_code == missing.status_code == unknown_series.status_code == 404
    assert hidden.json()["message"].replace(uid, "X") == missing.json()["message"].replace(
        MISSING, "X"
    )
    assert audit_rows(http_app, "110106", uid) == []
    with client(http_app, "rxc.admin") as c:
        bad = c.get("/dicomweb/studies/1.2.x", headers={"Accept": ZIP})
        assert bad.status_code == 400
        # Asked for nothing it can give: 406 naming what it can.
        refused = c.get(f"/dicomweb/studies/{uid}", headers={"Accept": "text/csv"})
    assert refused.status_code == 406 and ZIP in refused.json()["message"]


def test_a_zip_export_through_break_glass_is_audited_as_emergency_treatment(
    http_app: HttpApp, ct_series: StoredSeries
) -> None:
    uid = ct_series.study_uid
    with client(http_app, "rtp.clinician") as c:  # no care relationship with RXC0000001
        assert c.get(f"/dicomweb/studies/{uid}", headers={"Accept": ZIP}).status_code == 404
        opened = c.post(
            "/api/break-glass",
            json={"patient_id": "RXC0000001", "issuer": "RXC", "reason": "ED, unconscious"},
        )
        assert opened.status_code == 200, opened.text
        assert len(_zip(c.get(f"/dicomweb/studies/{uid}", headers={"Accept": ZIP}))) == 5
    with client(http_app, "rxc.clinician") as c:  # their own trust's patient
        assert len(_zip(c.get(f"/dicomweb/studies/{uid}", headers={"Accept": ZIP}))) == 5
    purposes = {(r.user_id, r.purpose_of_use) for r in audit_rows(http_app, "110106", uid)}
    assert purposes == {("rtp.clinician", "ETREAT"), ("rxc.clinician", "TREAT")}
