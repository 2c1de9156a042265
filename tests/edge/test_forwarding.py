"""Store and forward (issue 13): what the site stores at its edge reaches the core.

Fault tests 3 (the edge SIGKILLed during a cut), 4 (forward part: after the link
returns, the core holds every object, byte for byte, and its worklist shows the study)
and 5 (the core stopped instead of the link cut), on one core and edge per module.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import httpx
import pydicom
from dicomweb_client import DICOMwebClient

from netpacs.adapters.dimse.requestor import associate
from tests.conftest import wait_until
from tests.edge.conftest import EDGE_CLIENT, TIMEOUT, CoreAndEdge
from tests.edge.helpers import assert_byte_identical_at_core, core_holds, ct_study, metric, uids

WITHIN = 60.0  # seconds after the link returns (issue 13, fault test 4)


def worklist_item(core_and_edge: CoreAndEdge, study: str) -> dict[str, object] | None:
    core = core_and_edge.core
    answer = core.http.get(f"{core.base_url}/api/worklist/{study}")
    return answer.json() if answer.status_code == 200 else None


def test_with_the_link_up_what_the_site_stores_reaches_the_core_and_its_worklist(
    core_and_edge: CoreAndEdge, tmp_path: Path
) -> None:
    core, edge = core_and_edge.core, core_and_edge.edge
    paths = ct_study(tmp_path, 4, "RXC7100001")
    edge.store(*paths, aet="EDGH_CT1")
    wait_until(lambda: core_holds(core, paths), timeout=30, what="the study at the core")
    assert_byte_identical_at_core(core, paths)
    study, _, _ = uids(paths)
    item = wait_until(lambda: worklist_item(core_and_edge, study), what="the worklist item")
    assert item["requesting_trust"] == "RXC" and item["requesting_site"] == "EDGH"
    wait_until(lambda: metric(edge, "netpacs_edge_forward_backlog") == 0, what="an empty backlog")
    assert metric(edge, "netpacs_edge_link_up") == 1


def test_the_core_lists_its_edge_with_its_last_report(core_and_edge: CoreAndEdge) -> None:
    core = core_and_edge.core

    def reported() -> dict[str, object] | None:
        edges = core.http.get(f"{core.base_url}/api/edges").json()["edges"]
        mine = next(e for e in edges if e["client_id"] == EDGE_CLIENT)
        return mine if mine["report"] else None

    mine = wait_until(reported, what="a heartbeat from the edge")
    assert mine["link"] == "up" and mine["trust"] == "RXC"
    assert mine["report"]["link_up"] is True and "backlog" in mine["report"]
    page = core.http.get(f"{core.base_url}/edges", headers={"Accept": "text/html"})
    assert page.status_code == 200 and EDGE_CLIENT in page.text
    # Only PACS administrators see it.
    clinician = httpx.get(
        f"{core.base_url}/api/edges", headers=core.auth("rxc.clinician"), timeout=TIMEOUT
    )
    assert clinician.status_code == 403


def test_a_backlog_built_during_a_cut_survives_a_sigkill_and_reaches_the_core_emergency_first(
    core_and_edge: CoreAndEdge, tmp_path: Path
) -> None:
    core, edge, link = core_and_edge.core, core_and_edge.edge, core_and_edge.link
    link.cut()
    try:
        routine = ct_study(tmp_path / "routine", 6, "RXC7100002")
        edge.store(*routine, aet="EDGH_CT1")  # acknowledged by the edge alone
        emergency = ct_study(
            tmp_path / "emergency", 3, "RXC7100003", RequestedProcedurePriority="STAT"
        )
        edge.store(*emergency, aet="EDGH_CT1")
        wait_until(lambda: metric(edge, "netpacs_edge_link_up") == 0, what="the link down")
        assert metric(edge, "netpacs_edge_forward_backlog") == 9
        core_and_edge.restart_edge(kill=True)  # fault test 3
        assert metric(edge, "netpacs_edge_forward_backlog") == 9
        assert not core_holds(core, routine) and not core_holds(core, emergency)
    finally:
        link.restore()
    restored = dt.datetime.now(dt.UTC)
    wait_until(
        lambda: core_holds(core, routine) and core_holds(core, emergency),
        timeout=WITHIN,
        what="the backlog at the core",
    )
    assert_byte_identical_at_core(core, routine + emergency)
    first = worklist_item(core_and_edge, uids(emergency)[0])
    then = worklist_item(core_and_edge, uids(routine)[0])
    assert first is not None and then is not None
    assert first["priority"] == "emergency"
    assert str(first["arrived_at"]) < str(then["arrived_at"]), "emergency first"
    assert dt.datetime.fromisoformat(str(then["arrived_at"])) >= restored
    wait_until(lambda: metric(edge, "netpacs_edge_forward_backlog") == 0, what="no backlog")


def test_with_the_core_stopped_the_edge_keeps_storing_and_forwards_when_it_returns(
    core_and_edge: CoreAndEdge, tmp_path: Path
) -> None:
    core, edge = core_and_edge.core, core_and_edge.edge
    core.stop()  # fault test 5
    try:
        paths = ct_study(tmp_path, 5, "RXC7100004")
        edge.store(*paths, aet="EDGH_CT1")
        wait_until(lambda: metric(edge, "netpacs_edge_link_up") == 0, what="the link down")
        assert metric(edge, "netpacs_edge_forward_backlog") == 5
    finally:
        core.start()
    wait_until(lambda: core_holds(core, paths), timeout=WITHIN, what="the study at the core")
    assert_byte_identical_at_core(core, paths)


def test_a_study_that_reached_the_core_by_another_path_is_reconciled_instance_by_instance(
    core_and_edge: CoreAndEdge, tmp_path: Path
) -> None:
    core, edge, link = core_and_edge.core, core_and_edge.edge, core_and_edge.link
    paths = ct_study(tmp_path, 6, "RXC7100005")
    link.cut()
    try:
        edge.store(*paths, aet="EDGH_CT1")
        core.store(*paths[:4], aet="EDGH_CT1")  # the modality also sent four to the core
    finally:
        link.restore()
    wait_until(lambda: core_holds(core, paths), timeout=WITHIN, what="the study at the core")
    wait_until(lambda: metric(edge, "netpacs_edge_forward_backlog") == 0, what="no backlog")
    assert_byte_identical_at_core(core, paths)
    assert "4 objects of study" in edge.log() and "were at the core already" in edge.log()


# Last in the module: it leaves one object the core will never confirm in the edge's
# backlog (the tests above count the backlog).
def test_an_object_the_core_holds_with_other_content_is_not_counted_as_forwarded(
    core_and_edge: CoreAndEdge, tmp_path: Path
) -> None:
    core, edge = core_and_edge.core, core_and_edge.edge
    (ours,) = ct_study(tmp_path / "ours", 1, "RXC7100006")
    theirs = pydicom.dcmread(ours)
    theirs.PixelData = bytes(reversed(theirs.PixelData))  # same SOP Instance UID
    other = tmp_path / "theirs.dcm"
    theirs.save_as(other, enforce_file_format=True)
    core.store(other, aet="EDGH_CT1")
    edge.store(ours, aet="EDGH_CT1")
    wait_until(lambda: metric(edge, "netpacs_edge_forward_failing") >= 1, what="a failure")
    assert metric(edge, "netpacs_edge_forward_backlog") >= 1
    assert "the core holds other content under this SOP Instance UID" in edge.log()
    client = DICOMwebClient(core.dicomweb_url, headers=core.auth())
    held = client.retrieve_instance(
        str(theirs.StudyInstanceUID),
        str(theirs.SeriesInstanceUID),
        str(theirs.SOPInstanceUID),
        media_types=(("application/dicom", "*"),),
    )
    assert held.PixelData == theirs.PixelData  # the core's copy is left as it is


def test_storage_commitment_at_the_edge_waits_for_the_core_to_confirm(
    core_and_edge: CoreAndEdge, tmp_path: Path
) -> None:
    """Issue 15: an edge commits an instance only once the core holds it."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StorageCommitmentPushModel

    from tests.adapters.test_storage_commitment import WELL_KNOWN, Reports, _request

    core, edge = core_and_edge.core, core_and_edge.edge
    core.stop()
    reports = Reports()
    try:
        paths = ct_study(tmp_path, 1, "RXC7100009")
        edge.store(*paths, aet="EDGH_CT1")
        _, _, (sop,) = uids(paths)
        ae = AE(ae_title="EDGH_CT1")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 90
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = associate(
            ae,
            "127.0.0.1",
            edge.port,
            ae_title="NETPACS",
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)],
        )
        assert assoc.is_established
        request = _request(("1.2.840.10008.5.1.4.1.1.2", sop))
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, WELL_KNOWN)
        assert int(status.Status) == 0x0000
        assert not reports.arrived.wait(4), "committed before the core held it"
    finally:
        core.start()
    try:
        assert reports.arrived.wait(WITHIN), "no report after the core came back"
    finally:
        assoc.release()
    ((event_type, ds),) = reports.received
    assert event_type == 1
    assert [i.ReferencedSOPInstanceUID for i in ds.ReferencedSOPSequence] == [sop]
    assert core_holds(core, paths)
