"""Drafts and report reads (issue 17, item 15): a draft report is read by its author and
the reporting colleagues of its study only (others are answered as FHIR answers them:
no report yet), and every read of a report, of priors and of the reporting page is on
the audit trail.

The region here: radiologists of University Hospitals Sussex (RYR) and of East Kent
(RTK) report every trust's studies; East Sussex's own radiologist (RXC) reports none,
but sees East Sussex's patients like its clinicians and radiographers do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import HttpApp, write_region
from tests.http.conftest import write_and_send_ct

DRAFT = "FINDINGS:\nDraft words nobody else should read yet.\n"
PRELIMINARY = "FINDINGS:\nA small renal cyst.\n\nCONCLUSION:\nBenign.\n"
PATIENT = ("RXC7700001", "RXC")


@pytest.fixture
def http_settings(tmp_path: Path) -> dict[str, Any]:
    path = write_region(tmp_path / "region.toml", {})
    text = path.read_text()
    wide = '[[reporting.agreements]]\nreporters = ["*"]\nfor_trusts = ["*"]\n'
    assert wide in text
    path.write_text(
        text.replace(
            wide, '[[reporting.agreements]]\nreporters = ["RYR", "RTK"]\nfor_trusts = ["*"]\n'
        )
    )
    return {"region_file": path}


def study(app: HttpApp, folder: Path) -> str:
    """A CT of the patient from Eastbourne (East Sussex); its Study Instance UID."""
    sent = write_and_send_ct(
        app, folder, 2, rows=16, columns=16, patient_id=PATIENT[0], issuer=PATIENT[1]
    )
    return sent.study_uid


def report_of(app: HttpApp, user: str, uid: str) -> httpx.Response:
    with app.client(user) as c:
        return c.get(f"/api/reports/{uid}")


def reads(app: HttpApp, user: str) -> list[dict[str, Any]]:
    """The patient's audit entries of reads by ``user`` (as East Sussex's auditor)."""
    with app.client("rxc.auditor") as c:
        r = c.get("/api/audit", params={"patient_id": PATIENT[0], "issuer": PATIENT[1]})
    assert r.status_code == 200, r.text
    return [
        e
        for e in r.json()["entries"]
        if e["user"] == user and e["what"] == "patient record" and e["action"] == "R"
    ]


def test_clinicians_and_radiographers_get_no_draft_text_its_author_and_colleagues_do(
    http_app: HttpApp, tmp_path: Path
) -> None:
    uid = study(http_app, tmp_path / "a")
    with http_app.client("ryr.radiologist") as c:
        saved = c.put(f"/api/reports/{uid}", json={"text": DRAFT, "status": "draft"})
        assert saved.status_code == 200, saved.text

    no_report = report_of(http_app, "rxc.clinician", "1.2.826.0.1.3680043.10.543.404")
    for user in ("rxc.clinician", "rxc.radiographer", "rxc.radiologist"):
        hidden = report_of(http_app, user, uid)
        assert hidden.status_code == 404, (user, hidden.text)
        assert hidden.json() == no_report.json()  # as if there were no report
        assert "Draft words" not in hidden.text
    for user in ("ryr.radiologist", "rtk.radiologist", "rxc.admin"):
        shown = report_of(http_app, user, uid)
        assert shown.status_code == 200, (user, shown.text)
        assert (shown.json()["status"], shown.json()["text"]) == ("draft", DRAFT)
    # The report page and the priors are for reporters only (as before).
    with http_app.client("rxc.clinician") as c:
        assert c.get(f"/report/{uid}").status_code == 403
        assert c.get(f"/api/worklist/{uid}/priors").status_code == 403

    # Once preliminary, the report is everyone's who may see the patient.
    with http_app.client("ryr.radiologist") as c:
        prelim = c.put(f"/api/reports/{uid}", json={"text": PRELIMINARY, "status": "preliminary"})
        assert prelim.status_code == 200, prelim.text
    for user in ("rxc.clinician", "rxc.radiographer", "rxc.radiologist"):
        shown = report_of(http_app, user, uid)
        assert shown.status_code == 200 and shown.json()["text"] == PRELIMINARY


def test_every_read_of_a_report_its_priors_and_its_page_is_on_the_audit_trail(
    http_app: HttpApp, tmp_path: Path
) -> None:
    prior = study(http_app, tmp_path / "prior")
    uid = study(http_app, tmp_path / "a")
    with http_app.client("ryr.radiologist") as c:
        saved = c.put(f"/api/reports/{uid}", json={"text": PRELIMINARY, "status": "preliminary"})
        assert saved.status_code == 200, saved.text
        assert reads(http_app, "ryr.radiologist") == []  # writing is not reading

        assert c.get(f"/api/reports/{uid}").status_code == 200
        priors = c.get(f"/api/worklist/{uid}/priors")
        assert priors.status_code == 200, priors.text
        assert prior in {p["study_instance_uid"] for p in priors.json()["priors"]}
        page = c.get(f"/report/{uid}")
        assert page.status_code == 200
    assert report_of(http_app, "rxc.clinician", uid).status_code == 200
    assert report_of(http_app, "rxc.clinician", uid).status_code == 200

    radiologist = reads(http_app, "ryr.radiologist")
    assert sorted(e["detail"] for e in radiologist) == [
        "preliminary report read",
        "priors read: 1 studies of the person beside this one",
        "reporting page opened",
    ]
    by_detail = {e["detail"]: e for e in radiologist}
    assert by_detail["preliminary report read"]["studies"] == [uid]
    assert set(by_detail["priors read: 1 studies of the person beside this one"]["studies"]) == {
        uid,
        prior,
    }
    assert all(e["trust"] == "RYR" and e["role"] == "radiologist" for e in radiologist)
    clinician = reads(http_app, "rxc.clinician")
    assert [e["detail"] for e in clinician] == ["preliminary report read"] * 2
