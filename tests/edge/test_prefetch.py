"""Prefetch on admission and catch-up after a cut (issue 13, fault tests 1 and 4's merge
part): a core and an edge as real processes, ADT over real MLLP, the link cut and
restored through the proxy. What the edge holds is read from its own index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import sqlalchemy as sa

from netpacs.domain.query import QueryLevel, QueryModel
from netpacs.index.schema import edge_cursor, patient, study
from netpacs.services.access import Principal, Role
from netpacs.services.query import QueryService
from tests.conftest import Netpacs, wait_until
from tests.edge.conftest import CoreAndEdge
from tests.factories import write_series
from tests.hl7.conftest import MllpClient, adt

#: The time this edge promises for a few priors on a working link ("within minutes").
PREFETCH_SECONDS = 60
#: Fault test 4: after the link is restored, what changed at the core shows within this.
CATCH_UP_SECONDS = 60


def held(edge: Netpacs) -> dict[str, tuple[str, str, str]]:
    """Study UID -> (patient ID, issuer, patient name) as the edge's index has them."""
    engine = sa.create_engine(edge.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    study.c.study_instance_uid,
                    patient.c.patient_id,
                    patient.c.issuer,
                    patient.c.patient_name,
                ).join(patient, patient.c.id == study.c.patient_fk)
            ).all()
    finally:
        engine.dispose()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def follows_the_core(edge: Netpacs) -> bool:
    """Whether the edge's catch-up has its place in the core's change feed."""
    engine = sa.create_engine(edge.database_url)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                sa.select(edge_cursor.c.position).where(edge_cursor.c.name == "core-changes")
            ).first()
    finally:
        engine.dispose()
    return found is not None


@pytest.fixture(scope="module")
def pair(core_and_edge: CoreAndEdge) -> CoreAndEdge:
    core_and_edge.heal()
    wait_until(lambda: follows_the_core(core_and_edge.edge), 60, "the edge following the core")
    return core_and_edge


def captured(server: Netpacs, folder: Path, n: int, aet: str, **attrs: str) -> str:
    """A study of ``n`` CT images sent by modality ``aet``; its Study Instance UID."""
    paths = write_series(folder, n, **attrs)
    server.store(*paths, aet=aet)
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


def seen_at_the_edge_by(edge: Netpacs, principal: Principal, patient_id: str) -> set[str]:
    """The studies of the person the edge's own index shows ``principal`` (its access
    rules, as when the core is away) for the hospital number ``patient_id`` at RXC."""
    engine = sa.create_engine(edge.database_url)
    try:
        answers = QueryService(engine, principal=principal).find(
            {
                "00100020": {"vr": "LO", "Value": [patient_id]},
                "00100021": {"vr": "LO", "Value": ["RXC"]},
                "0020000D": {"vr": "UI"},
            },
            level=QueryLevel.STUDY,
            model=QueryModel.STUDY_ROOT,
            linked=True,
        )
        return {str(a["0020000D"]["Value"][0]) for a in answers}
    finally:
        engine.dispose()


def send_adt(server: Netpacs, *messages: str) -> None:
    client = MllpClient(server.mllp_port)
    try:
        for message in messages:
            ack = client.send(message)
            assert ack.code == "AA", ack.text
    finally:
        client.close()


def prefetch_status(edge: Netpacs, patient_id: str) -> dict[str, Any] | None:
    response = httpx.get(
        f"{edge.base_url}/admin/prefetch", headers=edge.auth("rxc.admin"), timeout=30
    )
    assert response.status_code == 200, response.text
    rows = [r for r in response.json()["patients"] if r["patient_id"] == patient_id]
    return rows[0] if rows else None


def test_an_admission_at_the_trust_brings_the_priors_from_two_other_trusts_into_the_cache(
    pair: CoreAndEdge, tmp_path: Path
) -> None:
    core, edge = pair.core, pair.edge
    nhs = "9434765919"
    at_rtp = captured(
        core, tmp_path / "rtp", 2, "ESH_CT1", PatientID="RTP0000700",
        IssuerOfPatientID="RTP", StudyDate="20260310", BodyPartExamined="CHEST",
    )  # fmt: skip
    at_rtk = captured(
        core, tmp_path / "rtk", 3, "SPH_CT1", PatientID="RTK0000700",
        IssuerOfPatientID="RTK", StudyDate="20251120", BodyPartExamined="HEAD",
    )  # fmt: skip
    send_adt(
        core,
        adt("A04", "PF-RTP-1", f"RTP0000700^^^RTP^MR~{nhs}^^^NHS^NH", facility="RTP"),
        adt("A04", "PF-RTK-1", f"RTK0000700^^^RTK^MR~{nhs}^^^NHS^NH", facility="RTK"),
    )
    assert at_rtp not in held(edge)

    # The patient arrives at Eastbourne's emergency department: the trust's PAS tells
    # the regional core, which relays the admission to RXC's edge.
    send_adt(
        core,
        adt(
            "A04", "PF-RXC-1", f"RXC0000700^^^RXC^MR~{nhs}^^^NHS^NH",
            name="PRIOR^PATIENCE", facility="RXC",
        ),
    )  # fmt: skip

    wanted = {at_rtp, at_rtk}
    wait_until(
        lambda: wanted <= held(edge).keys(), PREFETCH_SECONDS, "the priors in the edge's cache"
    )
    cache = held(edge)
    assert cache[at_rtp][:2] == ("RTP0000700", "RTP")
    assert cache[at_rtk][:2] == ("RTK0000700", "RTK")
    status = wait_until(
        lambda: (s := prefetch_status(edge, "RXC0000700")) and s["status"] == "done" and s,
        30,
        "the prefetch done on the admin page",
    )
    assert (status["studies_found"], status["studies_cached"]) == (2, 2)
    assert status["instances_fetched"] == 5
    assert status["nhs_number"] == nhs
    # While the core is away, the edge's own rules show the priors to the trust's
    # clinicians (the person's identities linked as at the core), and to nobody else.
    clinician = Principal("rxc.clinician", Role.CLINICIAN, "RXC")
    assert seen_at_the_edge_by(edge, clinician, "RXC0000700") == wanted
    outsider = Principal("rpc.clinician", Role.CLINICIAN, "RPC")
    assert seen_at_the_edge_by(edge, outsider, "RXC0000700") == set()
    page = httpx.get(
        f"{edge.base_url}/admin/prefetch",
        headers={**edge.auth("rxc.admin"), "Accept": "text/html"},
        timeout=30,
    )
    assert page.status_code == 200 and "RXC0000700 at RXC" in page.text
    refused = httpx.get(
        f"{edge.base_url}/admin/prefetch", headers=edge.auth("rxc.clinician"), timeout=30
    )
    assert refused.status_code == 403


def test_a_merge_and_a_deletion_made_at_the_core_during_a_cut_show_at_the_edge_after_restore(
    pair: CoreAndEdge, tmp_path: Path
) -> None:
    core, edge = pair.core, pair.edge
    cached = captured(
        core, tmp_path / "ct", 1, "EDGH_CT1", PatientID="RXC0000710", IssuerOfPatientID="RXC"
    )
    wrong = captured(
        core, tmp_path / "wrong", 1, "EDGH_CT1", PatientID="RXC0000710", IssuerOfPatientID="RXC"
    )
    send_adt(
        core,
        adt("A04", "PF-MRG-1", "RXC0000710^^^RXC^MR", name="DUPLICATE^RECORD", facility="RXC"),
        adt("A04", "PF-MRG-2", "RXC0000711^^^RXC^MR", name="KEPT^RECORD", facility="RXC"),
    )
    wait_until(
        lambda: {cached, wrong} <= held(edge).keys(),
        PREFETCH_SECONDS,
        "the studies in the edge's cache",
    )
    assert held(edge)[cached][:2] == ("RXC0000710", "RXC")

    pair.link.cut()
    try:
        send_adt(
            core,
            adt(
                "A40", "PF-MRG-3", "RXC0000711^^^RXC^MR", name="KEPT^RECORD",
                mrg1="RXC0000710^^^RXC^MR", facility="RXC",
            ),
        )  # fmt: skip
        deleted = httpx.request(
            "DELETE",
            f"{core.base_url}/api/studies/{wrong}",
            json={"reason": "sent to the wrong patient's record"},
            headers=core.auth("rxc.admin"),
            timeout=30,
        )
        assert deleted.status_code == 200, deleted.text
        # Cut off, the edge cannot know yet.
        assert held(edge)[cached][:2] == ("RXC0000710", "RXC")
        assert wrong in held(edge)
    finally:
        pair.link.restore()

    wait_until(
        lambda: held(edge)[cached] == ("RXC0000711", "RXC", "KEPT^RECORD"),
        CATCH_UP_SECONDS,
        "the merge at the edge",
    )
    wait_until(lambda: wrong not in held(edge), CATCH_UP_SECONDS, "the deletion at the edge")


def test_an_admission_sent_to_the_edge_itself_is_prefetched_too(
    pair: CoreAndEdge, tmp_path: Path
) -> None:
    core, edge = pair.core, pair.edge
    nhs = "9876543210"
    prior = captured(
        core, tmp_path / "ra2", 1, "RSCH_CT1", PatientID="RA20000720", IssuerOfPatientID="RA2"
    )
    # The core knows the person at both trusts (no admission: updates, A08).
    send_adt(
        core,
        adt("A08", "PF-DIR-1", f"RA20000720^^^RA2^MR~{nhs}^^^NHS^NH", facility="RA2"),
        adt("A08", "PF-DIR-2", f"RXC0000720^^^RXC^MR~{nhs}^^^NHS^NH", facility="RXC"),
    )
    # The PAS sends the pre-admission to the edge's own MLLP listener.
    send_adt(edge, adt("A05", "PF-DIR-3", f"RXC0000720^^^RXC^MR~{nhs}^^^NHS^NH", facility="RXC"))
    wait_until(lambda: prior in held(edge), PREFETCH_SECONDS, "the prior in the edge's cache")
    status = prefetch_status(edge, "RXC0000720")
    assert status is not None and "received by this edge" in status["reason"]


def test_an_admission_during_a_cut_is_prefetched_as_soon_as_the_link_returns(
    pair: CoreAndEdge, tmp_path: Path
) -> None:
    core, edge = pair.core, pair.edge
    nhs = "4010232137"
    prior = captured(
        core, tmp_path / "rpc", 1, "QVH_CT1", PatientID="RPC0000730", IssuerOfPatientID="RPC"
    )
    send_adt(
        core,
        adt("A08", "PF-CUT-1", f"RPC0000730^^^RPC^MR~{nhs}^^^NHS^NH", facility="RPC"),
        adt("A08", "PF-CUT-2", f"RXC0000730^^^RXC^MR~{nhs}^^^NHS^NH", facility="RXC"),
    )
    pair.link.cut()
    try:
        send_adt(edge, adt("A01", "PF-CUT-3", f"RXC0000730^^^RXC^MR~{nhs}^^^NHS^NH"))
        # Tried three times while cut off: the next try would be 20 s away. (An attempt
        # counts from its start: during the third the status is "running".)
        waiting = wait_until(
            lambda: (
                (s := prefetch_status(edge, "RXC0000730"))
                and s["attempts"] >= 3
                and s["status"] != "running"
                and s
            ),
            60,
            "three tries of the prefetch while cut off",
        )
        assert waiting["status"] == "queued"
        assert "unreachable" in waiting["last_error"]
    finally:
        pair.link.restore()
    wait_until(lambda: prior in held(edge), 15, "the prior soon after the link returned")
