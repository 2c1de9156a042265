"""Networked reporting over HTTP: a study that arrives becomes a worklist item of the
region, one reporter at a time holds it, a final report is never edited, and only
those who may see the patient read the report.

One server per database serves the whole module: each test sends its own studies (of
its own patients) and looks at those, or at how counts change.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import sqlalchemy as sa
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from netpacs.adapters.http.errors import STATUS
from netpacs.domain.outcomes import Problem
from netpacs.index.schema import worklist_item
from netpacs.synthetic import write_ct_series
from tests.adapters.test_rejection_notes import rejection_note
from tests.conftest import Netpacs, free_port, postgres_database, write_region
from tests.factories import write
from tests.http.conftest import storescu

FINDINGS = "FINDINGS:\nNo acute abnormality.\n\nCONCLUSION:\nNormal study."


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def netpacs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Netpacs]:
    """One netpacs for the module's tests, on each database."""
    folder = tmp_path_factory.mktemp("reporting")
    region = write_region(folder / "region.toml", {"RTP_WS1": free_port()})
    with contextlib.ExitStack() as stack:
        url = (
            f"sqlite:///{folder / 'index.sqlite'}"
            if request.param == "sqlite"
            else stack.enter_context(postgres_database())
        )
        server = Netpacs(data_dir=folder / "data", database_url=url, region_file=region)
        server.start()
        stack.callback(server.stop)
        yield server


def test_every_problem_a_service_refuses_with_has_an_http_status() -> None:
    assert set(STATUS) == set(Problem)
    assert all(400 <= code < 500 for code in STATUS.values())


def send_ct(
    server: Netpacs,
    folder: Path,
    *,
    aet: str = "EDGH_CT1",
    patient_id: str = "RXC1001",
    issuer: str = "RXC",
    **attributes: Any,
) -> str:
    """A 2-slice CT sent by storescu from ``aet`` with extra header attributes; its UID."""
    paths = write_ct_series(folder, 2, rows=16, columns=16, patient_id=patient_id, issuer=issuer)
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    storescu(server, *paths, aet=aet)
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


def client(server: Netpacs, user: str) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers=server.auth(user), timeout=60)


def items(server: Netpacs, user: str, **params: str) -> dict[str, dict[str, Any]]:
    with client(server, user) as c:
        r = c.get("/api/worklist", params=params)
    assert r.status_code == 200, r.text
    return {i["study_instance_uid"]: i for i in r.json()["items"]}


def test_a_ct_from_eastbourne_becomes_a_worklist_item_with_its_trust_site_and_target(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    before = open_counts(netpacs)
    routine = send_ct(netpacs, tmp_path / "a", patient_id="RXC1001")
    emergency = send_ct(
        netpacs,
        tmp_path / "b",
        aet="RSUS_CT1",
        patient_id="K1",
        issuer="RYR",
        RequestedProcedurePriority="STAT",
        BodyPartExamined="HEAD",
    )
    listed = items(netpacs, "ryr.radiologist")
    item = listed[routine]
    assert (item["requesting_trust"], item["requesting_site"]) == ("RXC", "EDGH")
    assert (item["modality"], item["priority"], item["status"]) == (
        "CT",
        "outpatient",
        "unreported",
    )
    assert item["subspecialty"] == "body" and item["claimed_by"] is None
    arrived = dt.datetime.fromisoformat(item["arrived_at"])
    assert dt.datetime.fromisoformat(item["due_at"]) - arrived == dt.timedelta(hours=168)
    urgent = listed[emergency]
    assert (urgent["priority"], urgent["subspecialty"]) == ("emergency", "neuro")
    assert dt.datetime.fromisoformat(urgent["due_at"]) - dt.datetime.fromisoformat(
        urgent["arrived_at"]
    ) == dt.timedelta(hours=1)
    # Emergencies first, then by time to breach.
    order = [uid for uid in listed if uid in (routine, emergency)]
    assert order == [emergency, routine]
    counts = open_counts(netpacs)
    for key in (("RXC", "outpatient"), ("RYR", "emergency")):
        assert counts[key] == before.get(key, 0) + 1
    # The subspecialty view: neuro is Brighton's radiologist's, not Eastbourne's body one.
    ours = {routine, emergency}
    assert ours & set(items(netpacs, "ryr.radiologist", view="subspecialty")) == {emergency}
    assert ours & set(items(netpacs, "rxc.radiologist", view="subspecialty")) == {routine}
    by_trust = items(netpacs, "rxc.radiologist", view="trust", trust="RYR")
    assert ours & set(by_trust) == {emergency}


def test_a_short_worklist_page_is_the_head_of_the_whole_worklist_in_its_order(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    """The page's items are chosen by priority and time to breach before the limit is
    applied (the items that arrived first are not the page)."""
    send_ct(netpacs, tmp_path / "a", patient_id="RXC1201")
    send_ct(
        netpacs,
        tmp_path / "b",
        aet="RSUS_CT1",
        patient_id="K1201",
        issuer="RYR",
        RequestedProcedurePriority="STAT",
        BodyPartExamined="HEAD",
    )
    for status in ("open", "all"):
        whole = list(items(netpacs, "ryr.radiologist", status=status))
        assert len(whole) >= 2
        for n in (1, 2, len(whole) - 1):
            page = items(netpacs, "ryr.radiologist", status=status, limit=str(n))
            assert list(page) == whole[:n]
    emergencies = list(items(netpacs, "ryr.radiologist", priority="emergency"))
    assert (
        emergencies
        and list(items(netpacs, "ryr.radiologist", priority="emergency", limit="1"))
        == emergencies[:1]
    )


def race(
    server: Netpacs, users: tuple[str, str], ask: Callable[[httpx.Client, str], httpx.Response]
) -> dict[str, httpx.Response]:
    """Both users send their request at the same moment; each one's answer."""
    answers: dict[str, httpx.Response] = {}
    start = threading.Barrier(len(users))

    def one(user: str) -> None:
        with client(server, user) as c:
            start.wait()
            answers[user] = ask(c, user)

    threads = [threading.Thread(target=one, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def open_counts(server: Netpacs) -> dict[tuple[str, str], int]:
    """Open worklist items per (requesting trust, priority), as an admin sees them."""
    with client(server, "rxc.admin") as c:
        counts = c.get("/api/worklist").json()["counts"]
    return {(n["trust"], n["priority"]): n["count"] for n in counts}


def test_history_imported_with_netpacs_import_is_not_queued_for_reporting(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    paths = write_ct_series(tmp_path / "old", 1, rows=16, columns=16, issuer="RXC")
    result = netpacs.cli("import", "--trust", "RXC", str(paths[0]))
    assert result.returncode == 0, result.stderr
    uid = str(pydicom.dcmread(paths[0]).StudyInstanceUID)
    assert uid not in items(netpacs, "rxc.admin", status="all")


def test_two_reporters_at_different_trusts_racing_to_claim_exactly_one_wins(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    uids = [send_ct(netpacs, tmp_path / str(n), patient_id=f"R{n}") for n in range(3)]
    for uid in uids:
        answers = race(
            netpacs,
            ("ryr.radiologist", "ra2.radiologist"),
            lambda c, _user, uid=uid: c.post(f"/api/worklist/{uid}/claim"),
        )
        codes = sorted(r.status_code for r in answers.values())
        assert codes == [200, 409], {u: r.text for u, r in answers.items()}
        winner = next(u for u, r in answers.items() if r.status_code == 200)
        loser = next(u for u, r in answers.items() if r.status_code == 409)
        assert "claimed by" in answers[loser].json()["message"]
        assert winner in answers[loser].json()["message"]
        # Everyone in the region sees who has it.
        seen = items(netpacs, "rtp.radiologist")[uid]
        assert seen["claimed_by"] == winner and seen["claimed_at"]
        # The loser cannot write the report either.
        with client(netpacs, loser) as c:
            r = c.put(f"/api/reports/{uid}", json={"text": FINDINGS, "status": "draft"})
        assert r.status_code == 409 and winner in r.json()["message"]


def test_two_reporters_racing_to_sign_final_exactly_one_report_is_signed(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    uids = [send_ct(netpacs, tmp_path / str(n), patient_id=f"F{n}") for n in range(3)]
    for uid in uids:
        answers = race(
            netpacs,
            ("rxc.radiologist", "ryr.radiologist"),
            lambda c, user, uid=uid: c.put(
                f"/api/reports/{uid}", json={"text": f"{FINDINGS}\n{user}", "status": "final"}
            ),
        )
        assert sorted(r.status_code for r in answers.values()) == [200, 409], answers
        winner = next(u for u, r in answers.items() if r.status_code == 200)
        loser = next(u for u, r in answers.items() if r.status_code == 409)
        assert "already signed final" in answers[loser].json()["message"]
        with client(netpacs, "rxc.admin") as c:
            signed = c.get(f"/api/reports/{uid}").json()
        assert signed["status"] == "final" and signed["author"] == winner
        assert signed["text"].endswith(winner)
        assert [h["kind"] for h in signed["history"]] == ["draft", "final"]


def test_a_final_report_is_never_edited_and_later_words_are_addenda(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    uid = send_ct(netpacs, tmp_path / "a", patient_id="RXC1002")
    with client(netpacs, "ryr.radiologist") as c:
        assert c.post(f"/api/worklist/{uid}/claim").status_code == 200
        draft = c.put(
            f"/api/reports/{uid}", json={"text": "FINDINGS:\n", "status": "draft", "template": "CT"}
        )
        assert draft.status_code == 200 and draft.json()["status"] == "draft"
        assert items(netpacs, "ryr.radiologist")[uid]["status"] == "draft"
        stale = draft.json()["version"]
        prelim = c.put(f"/api/reports/{uid}", json={"text": FINDINGS, "status": "preliminary"})
        assert prelim.json()["preliminary_at"]
        # A save over a newer version (another tab) is refused, not silently lost.
        r = c.put(f"/api/reports/{uid}", json={"text": "x", "status": "draft", "version": stale})
        assert r.status_code == 409 and "changed since you loaded it" in r.json()["message"]
        too_short = c.put(f"/api/reports/{uid}", json={"text": " ", "status": "final"})
        assert too_short.status_code == 422
        final = c.put(f"/api/reports/{uid}", json={"text": FINDINGS, "status": "final"})
        assert final.status_code == 200, final.text
        body = final.json()
        assert body["signed_at"] and body["author"] == "ryr.radiologist"
        assert body["author_trust"] == "RYR"
        edit = c.put(f"/api/reports/{uid}", json={"text": "changed", "status": "final"})
        assert edit.status_code == 409 and "addendum" in edit.json()["message"]
    # Another radiologist adds an addendum; the signed text stays as it was.
    with client(netpacs, "rxc.radiologist") as c:
        added = c.post(f"/api/reports/{uid}/addenda", json={"text": "Small left renal cyst."})
        assert added.status_code == 200, added.text
        flagged = c.post(f"/api/reports/{uid}/discrepancy", json={"text": "Missed cyst."})
        assert flagged.json()["discrepancy"] == {"text": "Missed cyst.", "by": "rxc.radiologist"}
    report = flagged.json()
    assert report["text"] == FINDINGS and report["status"] == "final"
    assert [(a["text"], a["author"]) for a in report["addenda"]] == [
        ("Small left renal cyst.", "rxc.radiologist")
    ]
    assert [h["kind"] for h in report["history"]] == [
        "draft",
        "preliminary",
        "final",
        "addendum",
        "discrepancy",
    ]
    item = items(netpacs, "rxc.admin", status="reported")[uid]
    assert (item["status"], item["reported_by"], item["claimed_by"]) == (
        "final",
        "ryr.radiologist",
        None,
    )


def test_only_those_who_may_see_the_patient_read_the_report_and_only_reporters_see_the_worklist(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    uid = send_ct(netpacs, tmp_path / "a", patient_id="RXC1003")
    with client(netpacs, "ra2.radiologist") as c:
        assert (
            c.put(f"/api/reports/{uid}", json={"text": FINDINGS, "status": "final"}).status_code
            == 200
        )
    with client(netpacs, "rxc.clinician") as c:  # Eastbourne cares for the patient
        r = c.get(f"/api/reports/{uid}")
        assert r.status_code == 200 and r.json()["text"] == FINDINGS
        worklist = c.get("/api/worklist")
        assert worklist.status_code == 403 and "radiologists" in worklist.json()["message"]
    with client(netpacs, "rtp.clinician") as c:  # East Surrey does not
        hidden = c.get(f"/api/reports/{uid}")
        missing = c.get("/api/reports/1.2.3.4.5.6.7")
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json() == missing.json()
    # A radiologist of any trust (the demo agreement is region-wide) sees the study.
    with client(netpacs, "rtp.radiologist") as c:
        assert qido_uids(netpacs, c, uid) == [uid]
    with client(netpacs, "rtp.clinician") as c:
        assert qido_uids(netpacs, c, uid) == []


def qido_uids(server: Netpacs, c: httpx.Client, uid: str) -> list[str]:
    found = c.get(f"{server.dicomweb_url}/studies", params={"StudyInstanceUID": uid})
    assert found.status_code in (200, 204), found.text
    return [s["0020000D"]["Value"][0] for s in found.json()] if found.status_code == 200 else []


def test_a_stale_claim_lapses_and_an_admin_can_reassign(netpacs: Netpacs, tmp_path: Path) -> None:
    uid = send_ct(netpacs, tmp_path / "a", patient_id="RXC1004")
    with client(netpacs, "ryr.radiologist") as c:
        assert c.post(f"/api/worklist/{uid}/claim").status_code == 200
    with client(netpacs, "rtk.radiologist") as c:
        assert c.post(f"/api/worklist/{uid}/claim").status_code == 409
    # Thirty-one minutes without a save: the claim has lapsed.
    engine = sa.create_engine(netpacs.database_url)
    with engine.begin() as conn:
        conn.execute(
            sa.update(worklist_item)
            .where(worklist_item.c.study_instance_uid == uid)
            .values(claim_expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
        )
    engine.dispose()
    assert items(netpacs, "rtk.radiologist")[uid]["claimed_by"] is None
    with client(netpacs, "rtk.radiologist") as c:
        taken = c.post(f"/api/worklist/{uid}/claim")
        assert taken.status_code == 200 and taken.json()["claimed_by"] == "rtk.radiologist"
        denied = c.post(f"/api/worklist/{uid}/assign", json={"username": "ryr.radiologist"})
        assert denied.status_code == 403
    with client(netpacs, "rxc.admin") as c:
        moved = c.post(f"/api/worklist/{uid}/assign", json={"username": "ryr.radiologist"})
        assert moved.status_code == 200 and moved.json()["claimed_by"] == "ryr.radiologist"
        wrong = c.post(f"/api/worklist/{uid}/assign", json={"username": "ryr.clinician"})
        assert wrong.status_code == 422 and "radiologist" in wrong.json()["message"]
        urgent = c.post(f"/api/worklist/{uid}/priority", json={"priority": "inpatient"})
        assert urgent.json()["priority"] == "inpatient"
        bad = c.post(f"/api/worklist/{uid}/priority", json={"priority": "soonish"})
        assert bad.status_code == 422 and "emergency" in bad.json()["message"]
    with client(netpacs, "ryr.radiologist") as c:
        assert c.delete(f"/api/worklist/{uid}/claim").json()["claimed_by"] is None


@pytest.mark.parametrize("path", ["/api/worklist/not-a-uid/claim", "/api/reports/1..2"])
def test_a_malformed_study_uid_is_a_400_with_a_message(netpacs: Netpacs, path: str) -> None:
    with client(netpacs, "ryr.radiologist") as c:
        r = c.post(path) if path.endswith("claim") else c.get(path)
    assert r.status_code == 400 and "not a valid Study Instance UID" in r.json()["message"]


def test_fhir_diagnostic_report_is_found_by_patient_identifier_once_it_is_a_result(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    uid = send_ct(netpacs, tmp_path / "a", patient_id="RXC2002")
    search = {"patient.identifier": "urn:netpacs:issuer:RXC|RXC2002"}
    with client(netpacs, "rxc.clinician") as reader, client(netpacs, "ryr.radiologist") as rad:
        assert rad.put(f"/api/reports/{uid}", json={"text": FINDINGS, "status": "draft"})
        empty = reader.get("/fhir/DiagnosticReport", params=search).json()
        assert empty["total"] == 0  # a draft is not a result
        assert reader.get(f"/fhir/DiagnosticReport/{uid}").status_code == 404
        signed = rad.put(f"/api/reports/{uid}", json={"text": FINDINGS, "status": "final"})
        assert signed.status_code == 200, signed.text
        bundle = reader.get("/fhir/DiagnosticReport", params=search).json()
        assert bundle["total"] == 1
        Bundle.model_validate(bundle)
        resource = bundle["entry"][0]["resource"]
        DiagnosticReport.model_validate(resource)
        assert resource["resourceType"] == "DiagnosticReport" and resource["id"] == uid
        assert resource["status"] == "final"
        assert resource["conclusion"] == "Normal study."
        assert resource["imagingStudy"] == [{"reference": f"ImagingStudy/{uid}"}]
        assert resource["subject"]["identifier"] == {
            "system": "urn:netpacs:issuer:RXC",
            "value": "RXC2002",
        }
        assert "ryr.radiologist" in resource["resultsInterpreter"][0]["identifier"]["value"]
        text = base64.b64decode(resource["presentedForm"][0]["data"]).decode()
        assert text.startswith("FINDINGS:\nNo acute abnormality.")
        rad.post(f"/api/reports/{uid}/addenda", json={"text": "Comparison with prior made."})
        amended = reader.get(f"/fhir/DiagnosticReport/{uid}").json()
        DiagnosticReport.model_validate(amended)
        assert amended["status"] == "appended"
        text = base64.b64decode(amended["presentedForm"][0]["data"]).decode()
        assert "ADDENDUM" in text and "Comparison with prior made." in text
    with client(netpacs, "rtp.clinician") as outsider:
        assert outsider.get("/fhir/DiagnosticReport", params=search).json()["total"] == 0
        assert outsider.get(f"/fhir/DiagnosticReport/{uid}").status_code == 404


def test_an_admin_sees_results_waiting_for_a_trust_whose_listener_is_down(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    # East Sussex: nothing listens on its port here
    uid = send_ct(netpacs, tmp_path / "a", patient_id="RXC1005")
    with client(netpacs, "rxc.admin") as c:
        waiting_before = waiting_for(c)["RXC"]["waiting"]
    with client(netpacs, "ryr.radiologist") as c:
        assert c.put(f"/api/reports/{uid}", json={"text": FINDINGS, "status": "final"}).is_success
        assert c.get("/api/results").status_code == 403
    with client(netpacs, "rxc.admin") as c:
        ours = [
            m for m in c.get("/api/results").json()["messages"] if m["study_instance_uid"] == uid
        ]
        waiting = waiting_for(c)
        # Earlier tests' results may be first in line: the sender's attempt on the
        # trust's oldest waiting result is what the admin sees fail.
        deadline = time.monotonic() + 20
        while True:
            tried = c.get("/api/results", params={"trust": "RXC"}).json()["messages"]
            if tried[0]["last_error"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert waiting["RXC"]["waiting"] == waiting_before + 1
    assert waiting["RXC"]["endpoint"] == "127.0.0.1:12573"
    assert len(ours) == 1 and ours[0]["trust"] == "RXC" and ours[0]["sent_at"] is None
    assert tried[0]["attempts"] >= 1 and "12573" in tried[0]["last_error"]
    assert tried[0]["sent_at"] is None and tried[0]["next_attempt_at"]


def waiting_for(c: httpx.Client) -> dict[str, dict[str, Any]]:
    """The results outbox's waiting messages per trust."""
    return {w["trust"]: w for w in c.get("/api/results").json()["waiting_by_trust"]}


def test_a_study_rejected_whole_leaves_the_worklist_and_its_counts_until_the_undo(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    uid = send_ct(netpacs, tmp_path / "ct", patient_id="RXC1301")
    listed = {
        user: (uid in items(netpacs, user), worklist_counts(netpacs, user))
        for user in ("rxc.admin", "rxc.radiologist")
    }
    assert all(shown for shown, _ in listed.values())
    images = [
        pydicom.dcmread(p, stop_before_pixels=True) for p in sorted((tmp_path / "ct").iterdir())
    ]
    note = rejection_note(images)
    netpacs.store(write(note, tmp_path / "note.dcm"), aet="EDGH_CT1")

    for user, (_, counted) in listed.items():
        assert uid not in items(netpacs, user)
        assert worklist_counts(netpacs, user) == counted - 1
    with client(netpacs, "rxc.admin") as c:
        rejections = c.get("/api/rejections").json()["rejections"]
        rid = next(r["id"] for r in rejections if r["note_sop_instance_uid"] == note.SOPInstanceUID)
        undo = c.post(f"/api/rejections/{rid}/undo", json={"reason": "rejected the wrong study"})
        assert undo.status_code == 200, undo.text
    for user, (_, counted) in listed.items():
        assert uid in items(netpacs, user)
        assert worklist_counts(netpacs, user) == counted


def worklist_counts(server: Netpacs, user: str) -> int:
    """The open items a user's worklist counts at Eastbourne and Hastings (RXC)."""
    with client(server, user) as c:
        counts = c.get("/api/worklist").json()["counts"]
    return sum(n["count"] for n in counts if n["trust"] == "RXC")
