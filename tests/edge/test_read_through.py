"""Reading through the edge (issue 13): the core answers while it can, the cache
answers when it cannot and says so; sign-in at the edge while cut off; the edge's
audit records reach the core."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from netpacs.adapters.dimse.requestor import associate
from tests.conftest import Netpacs, dcmtk, wait_until
from tests.edge.conftest import CoreAndEdge
from tests.get_scu import get_association
from tests.http.conftest import StoredSeries, write_and_send_ct

BANNER = "Regional archive unreachable since"


@pytest.fixture(scope="module")
def at_core(core_and_edge: CoreAndEdge, tmp_path_factory: pytest.TempPathFactory) -> StoredSeries:
    """A study of an East Sussex patient that reached the core by another way (not
    through this edge): the edge does not hold it."""
    folder = tmp_path_factory.mktemp("core-ct")
    return write_and_send_ct(core_and_edge.core, folder, 3, patient_id="RXC0000301", issuer="RXC")


def sign_in(edge: Netpacs, user: str = "rxc.clinician", password: str = "demo") -> httpx.Response:
    return httpx.post(
        f"{edge.base_url}/auth/token", data={"username": user, "password": password}, timeout=30
    )


def client(edge: Netpacs, user: str = "rxc.clinician") -> httpx.Client:
    answer = sign_in(edge, user)
    assert answer.status_code == 200, answer.text
    token = answer.json()["access_token"]
    return httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30)


def payload(answer: httpx.Response) -> bytes:
    """A multipart answer's body without its (random) boundary."""
    boundary = answer.headers["content-type"].split("boundary=")[1].strip('"').encode()
    return answer.content.replace(boundary, b"")


def studies(http: httpx.Client, edge: Netpacs, patient_id: str) -> httpx.Response:
    return http.get(f"{edge.dicomweb_url}/studies", params={"PatientID": patient_id})


def uids(answer: httpx.Response) -> set[str]:
    return {m["0020000D"]["Value"][0] for m in answer.json()}


def test_qido_at_the_edge_answers_from_the_core_for_the_signed_in_user(
    core_and_edge: CoreAndEdge, at_core: StoredSeries
) -> None:
    edge, core = core_and_edge.edge, core_and_edge.core
    with client(edge) as http:
        answer = studies(http, edge, "RXC0000301")
    assert answer.status_code == 200, answer.text
    assert uids(answer) == {at_core.study_uid}
    assert "warning" not in answer.headers
    url = answer.json()[0]["00081190"]["Value"][0]
    assert url.startswith(edge.dicomweb_url), url  # retrieved through the edge too
    # The core's audit trail names the user the edge acted for.
    trail = core.http.get(
        f"{core.base_url}/api/audit", params={"patient_id": "RXC0000301", "issuer": "RXC"}
    )
    assert trail.status_code == 200, trail.text
    queries = [e for e in trail.json()["entries"] if e["what"] == "query"]
    assert any(e["user"] == "rxc.clinician" for e in queries), queries


def test_pixel_data_not_held_is_fetched_from_the_core_kept_and_served_while_cut(
    core_and_edge: CoreAndEdge, at_core: StoredSeries
) -> None:
    edge = core_and_edge.edge
    first = at_core.sop_uids[0]
    path = f"/studies/{at_core.study_uid}/series/{at_core.series_uid}/instances/{first}"
    with client(edge) as http:
        frames = http.get(f"{edge.dicomweb_url}{path}/frames/1")
        assert frames.status_code == 200, frames.text
        metadata = http.get(f"{edge.dicomweb_url}/studies/{at_core.study_uid}/metadata")
        assert metadata.status_code == 200, metadata.text
        assert len(metadata.json()) == 3
        core_and_edge.link.cut()
        try:
            started = time.monotonic()
            again = http.get(f"{edge.dicomweb_url}{path}/frames/1")
            assert again.status_code == 200, again.text
            assert payload(again) == payload(frames)
            assert time.monotonic() - started < 2.5
            # An instance never fetched is not there while cut off.
            other = path.replace(first, at_core.sop_uids[1])
            missing = http.get(f"{edge.dicomweb_url}{other}/frames/1")
            assert missing.status_code == 404
            # Metadata comes from the cache, and says so.
            cached = http.get(f"{edge.dicomweb_url}/studies/{at_core.study_uid}/metadata")
            assert cached.status_code == 200, cached.text
            assert len(cached.json()) == 1
            assert BANNER in cached.headers.get("warning", "")
        finally:
            core_and_edge.heal()


def test_qido_and_c_find_answer_from_the_cache_with_a_warning_when_the_link_is_cut(
    core_and_edge: CoreAndEdge, at_core: StoredSeries, tmp_path: Path
) -> None:
    edge = core_and_edge.edge
    held = write_and_send_ct(edge, tmp_path / "ct", 2, patient_id="RXC0000302", issuer="RXC")
    with client(edge) as http:
        core_and_edge.link.cut()
        try:
            started = time.monotonic()
            answer = http.get(f"{edge.dicomweb_url}/studies", params={"PatientID": "RXC00003*"})
            took = time.monotonic() - started
            assert answer.status_code == 200, answer.text
            assert took < 4, f"the fallback took {took:.1f} s"
            assert answer.headers["warning"].startswith('299 netpacs "' + BANNER)
            # What this hospital holds: its own study, and what it fetched before.
            assert held.study_uid in uids(answer)
            # C-FIND: the same matches, and a warning status saying where they come from.
            statuses, matches = c_find(edge, "RXC0000302")
            assert [m.StudyInstanceUID for m in matches] == [held.study_uid]
            final = statuses[-1]
            assert final.Status == 0xB000, hex(final.Status)
            assert "core unreachable since" in str(final.get("ErrorComment", ""))
        finally:
            core_and_edge.heal()
        # Link back: the core answers again, without a warning.
        wait_until(
            lambda: "warning" not in studies(http, edge, "RXC0000301").headers,
            timeout=15,
            what="answers from the core again",
        )


def c_find(edge: Netpacs, patient_id: str) -> tuple[list[Dataset], list[Dataset]]:
    ae = AE(ae_title="RXC_WS1")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = associate(ae, "127.0.0.1", edge.port, ae_title="NETPACS")
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = patient_id
    query.StudyInstanceUID = ""
    statuses, matches = [], []
    try:
        for status, identifier in assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind
        ):
            statuses.append(status)
            if identifier is not None and status.Status in (0xFF00, 0xFF01):
                matches.append(identifier)
    finally:
        assoc.release()
    return statuses, matches


def test_sign_in_while_cut_off_only_for_users_the_core_confirmed_here(
    core_and_edge: CoreAndEdge,
) -> None:
    edge = core_and_edge.edge
    wrong = sign_in(edge, "rxc.radiographer", "not the password")
    assert wrong.status_code == 400  # refused by the core
    right = sign_in(edge, "rxc.radiographer")
    assert right.status_code == 200, right.text  # confirmed by the core
    other_trust = sign_in(edge, "rtp.clinician")
    assert other_trust.status_code == 400
    assert "not a user of RXC" in other_trust.json()["error_description"]
    core_and_edge.link.cut()
    try:
        again = sign_in(edge, "rxc.radiographer")
        assert again.status_code == 200, again.text
        token = again.json()["access_token"]
        me = httpx.get(f"{edge.base_url}/api/me", headers={"Authorization": f"Bearer {token}"})
        assert me.json()["role"] == "radiographer"
        # Never signed in here: the edge cannot tell, and says why.
        never = sign_in(edge, "rxc.radiologist")
        assert never.status_code == 400
        assert "last 12 hours" in never.json()["error_description"]
        # A wrong password is refused by the edge alone too.
        assert sign_in(edge, "rxc.radiographer", "not the password").status_code == 400
    finally:
        core_and_edge.heal()


def test_banner_on_every_page_while_the_core_is_away(
    core_and_edge: CoreAndEdge, at_core: StoredSeries
) -> None:
    edge = core_and_edge.edge
    with client(edge) as http:
        page = http.get(f"{edge.base_url}/studies", headers={"Accept": "text/html"})
        assert page.status_code == 200
        assert BANNER not in page.text
        # The study list reads through too: the region's studies, not only the cache's.
        assert at_core.study_uid in page.text
        core_and_edge.link.cut()
        try:
            http.get(f"{edge.dicomweb_url}/studies", params={"PatientID": "X"})
            down = http.get(f"{edge.base_url}/studies", headers={"Accept": "text/html"})
            assert BANNER in down.text and "showing what this hospital holds" in down.text
            link = http.get(f"{edge.base_url}/api/edge/link").json()
            assert link["up"] is False and link["banner"].startswith(BANNER)
        finally:
            core_and_edge.heal()


def test_audit_records_made_at_the_edge_during_a_cut_reach_the_core(
    core_and_edge: CoreAndEdge, tmp_path: Path
) -> None:
    edge, core = core_and_edge.edge, core_and_edge.core
    write_and_send_ct(edge, tmp_path / "ct", 1, patient_id="RXC0000399", issuer="RXC")
    with client(edge, "rxc.clinician") as http:
        core_and_edge.link.cut()
        try:
            answer = http.get(f"{edge.dicomweb_url}/studies", params={"PatientID": "RXC0000399"})
            assert "warning" in answer.headers and len(answer.json()) == 1
        finally:
            core_and_edge.heal()

    def at_core() -> bool:
        trail = core.http.get(
            f"{core.base_url}/api/audit", params={"patient_id": "RXC0000399", "issuer": "RXC"}
        )
        return any(
            e["user"] == "rxc.clinician" and "recorded at edge" in e["detail"]
            for e in trail.json()["entries"]
        )

    wait_until(at_core, timeout=30, what="the edge's audit record at the core")


def test_c_get_at_the_edge_fetches_from_the_core_what_the_cache_lacks(
    core_and_edge: CoreAndEdge, tmp_path: Path
) -> None:
    edge, core = core_and_edge.edge, core_and_edge.core
    sent = write_and_send_ct(core, tmp_path / "ct", 3, patient_id="RXC0000304", issuer="RXC")
    out = tmp_path / "got"
    out.mkdir()
    result = dcmtk(
        "getscu", "-S", "-aet", "RXC_WS1", "-aec", "NETPACS", "-od", str(out),
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={sent.study_uid}",
        "127.0.0.1", str(edge.port),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    got = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in out.iterdir()}
    assert got == set(sent.sop_uids)


def c_get(edge: Netpacs, study_uid: str) -> tuple[list[Dataset], set[str]]:
    """The C-GET's responses and the SOP Instance UIDs it sent back (pynetdicom)."""
    got: set[str] = set()

    def on_store(event: evt.Event) -> int:
        got.add(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    assoc = get_association("RXC_WS1", edge.port, CTImageStorage, on_store)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    try:
        answers = assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)
        statuses = [status for status, _ in answers]
    finally:
        assoc.release()
    return statuses, got


def test_c_get_at_the_edge_while_cut_off_says_it_sent_only_what_the_edge_holds(
    core_and_edge: CoreAndEdge, tmp_path: Path
) -> None:
    """Not a silent success: the workstation learns the core was not asked."""
    edge = core_and_edge.edge
    held = write_and_send_ct(edge, tmp_path / "ct", 2, patient_id="RXC0000306", issuer="RXC")
    at_core = write_and_send_ct(
        core_and_edge.core, tmp_path / "core", 2, patient_id="RXC0000307", issuer="RXC"
    )
    core_and_edge.link.cut()
    try:
        statuses, got = c_get(edge, at_core.study_uid)  # at the core only
        assert got == set()
        final = statuses[-1]
        assert final.Status == 0xA702, hex(final.Status)
        assert "core unreachable since" in final.ErrorComment
        assert "holds none of it" in final.ErrorComment

        statuses, got = c_get(edge, held.study_uid)  # stored here
        assert got == set(held.sop_uids)
        final = statuses[-1]
        assert final.Status == 0xB000, hex(final.Status)
        assert int(final.NumberOfCompletedSuboperations) == 2
        assert "sent what this edge holds" in final.ErrorComment
    finally:
        core_and_edge.heal()
    statuses, got = c_get(edge, at_core.study_uid)  # the core back: fetched, then sent
    assert got == set(at_core.sop_uids) and statuses[-1].Status == 0x0000


def test_only_an_edge_node_sends_audit_records_to_the_core(core_and_edge: CoreAndEdge) -> None:
    core, edge = core_and_edge.core, core_and_edge.edge
    record = {"id": 1, "event_time": "2026-01-01T00:00:00+00:00", "event_id": "110112"}
    refused = core.http.post(f"{core.base_url}/api/edge/audit", json={"records": [record]})
    assert refused.status_code == 403, refused.text
    assert "only an edge node" in refused.json()["message"]
    # An edge answers no edge's questions: it is not a core.
    with client(edge) as http:
        answer = http.post(
            f"{edge.base_url}/api/edge/find", json={"identifier": {}, "level": "STUDY"}
        )
    assert answer.status_code == 404, answer.text


def test_what_the_core_has_not_confirmed_is_listed_with_the_cores_answers(
    core_and_edge: CoreAndEdge, tmp_path: Path
) -> None:
    """An object stored here that the core does not confirm (it holds other content under
    the same SOP Instance UID) stays in the backlog: the edge lists its study along with
    what the core answers."""
    edge, core = core_and_edge.edge, core_and_edge.core
    at_core = write_and_send_ct(core, tmp_path / "a", 1, patient_id="RXC0000305", issuer="RXC")
    clash = pydicom.dcmread(at_core.paths[0])
    clash.StudyInstanceUID = pydicom.uid.generate_uid()
    clash.SeriesInstanceUID = pydicom.uid.generate_uid()
    clash.StudyDescription = "stored at the edge only"
    path = tmp_path / "clash.dcm"
    clash.save_as(path)
    edge.store(path)
    with client(edge) as http:
        answer = studies(http, edge, "RXC0000305")
    assert answer.status_code == 200 and "warning" not in answer.headers
    assert uids(answer) == {at_core.study_uid, str(clash.StudyInstanceUID)}
