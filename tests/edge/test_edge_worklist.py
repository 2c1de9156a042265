"""The Modality Worklist at an edge node (issues 13 and 15): the edge copies its site's
open orders from the core (here every 2 s) and answers ``findscu -W`` from the copy,
with the core's matching and visibility rules, while the link is up and while it is
cut; the core gives an edge its own site's orders only. MPPS sent to the edge reaches
the core in order, also after a cut."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pydicom
import sqlalchemy as sa
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS  # type: ignore

from netpacs.adapters.dimse.requestor import associate
from netpacs.index.schema import imaging_order, performed_step
from tests.adapters.test_mpps import finished, in_progress
from tests.conftest import Netpacs, dcmtk, wait_until
from tests.edge.conftest import TIMEOUT, CoreAndEdge
from tests.edge.test_edge_bounds import edge_token
from tests.hl7.conftest import MllpClient, order

PATIENT = "RXC0001601^^^RXC^MR~9434765919^^^NHS^NH"
SPS = "ScheduledProcedureStepSequence[0]"
#: The edge's copy lags the core by at most its interval (2 s here) and a pull.
SYNC = 20.0


def send_orders(core: Netpacs, *messages: str) -> None:
    client = MllpClient(core.mllp_port)
    try:
        for message in messages:
            ack = client.send(message)
            assert ack.code == "AA", ack.text
    finally:
        client.close()


def worklist(server: Netpacs, tmp_path: Path, aet: str = "EDGH_CT1") -> dict[str, pydicom.Dataset]:
    """``findscu -W`` as a modality at the site asks: every open step, by accession."""
    out = tmp_path / f"wl-{generate_uid()[-8:]}"
    out.mkdir()
    keys = ["AccessionNumber", "PatientName", "PatientID", "StudyInstanceUID", f"{SPS}.Modality",
            f"{SPS}.ScheduledStationAETitle", f"{SPS}.ScheduledProcedureStepStatus"]  # fmt: skip
    args = ["-W", "-aet", aet, "-aec", "NETPACS", "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    result = dcmtk("findscu", *args, "127.0.0.1", str(server.port), timeout=60)
    assert result.returncode == 0, result.stderr
    answers = [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    return {str(a.AccessionNumber): a for a in answers}


def test_an_order_placed_at_the_core_is_on_the_edges_worklist_and_stays_while_cut_off(
    core_and_edge: CoreAndEdge, tmp_path: Path
) -> None:
    core, edge = core_and_edge.core, core_and_edge.edge
    send_orders(
        core,
        order("NW", "EWL001", accession="EWL1", pid3=PATIENT, name="MOSS^ELLEN",
              station_ae="EDGH_CT1"),
        # The site's MR order is copied too, but a CT modality does not see it.
        order("NW", "EWL002", accession="EWL2", pid3=PATIENT, modality="MR",
              procedure="MBRAI^MRI Head^LOCAL", station_ae="EDGH_MR1"),
        # Another site of the trust: not this edge's.
        order("NW", "EWL003", accession="EWL3", pid3=PATIENT, kind="OMI",
              station_ae="CONQ_CT1", facility="RXC", location="GPSURG^^^RXC"),
    )  # fmt: skip
    at_core = worklist(core, tmp_path)
    assert {"EWL1"} <= set(at_core) and "EWL2" not in at_core
    at_edge = wait_until(
        lambda: (found := worklist(edge, tmp_path)) and "EWL1" in found and found,
        timeout=SYNC,
        what="the order on the edge's worklist",
    )
    assert set(at_edge) == set(at_core)  # the same rules: the CT modality's orders
    mine = at_edge["EWL1"]
    assert str(mine.PatientName) == "MOSS^ELLEN" and mine.PatientID == "RXC0001601"
    assert mine.StudyInstanceUID == at_core["EWL1"].StudyInstanceUID
    step = mine.ScheduledProcedureStepSequence[0]
    assert (step.Modality, step.ScheduledStationAETitle) == ("CT", "EDGH_CT1")
    assert step.ScheduledProcedureStepStatus == "SCHEDULED"
    assert "EWL2" in worklist(edge, tmp_path, aet="EDGH_MR1")
    assert "EWL3" not in worklist(edge, tmp_path, aet="EDGH_MR1")

    core_and_edge.link.cut()
    try:
        # Cut off, the edge answers from its copy; what the core does meanwhile (a
        # cancellation) reaches it when the link is back.
        send_orders(core, order("CA", "EWL004", accession="EWL1", pid3=PATIENT))
        cut = worklist(edge, tmp_path)
        assert "EWL1" in cut
        assert cut["EWL1"].StudyInstanceUID == at_core["EWL1"].StudyInstanceUID
        assert "EWL1" not in worklist(core, tmp_path)
    finally:
        core_and_edge.link.restore()
    wait_until(
        lambda: "EWL1" not in worklist(edge, tmp_path),
        timeout=SYNC,
        what="the cancelled order gone from the edge's worklist after the link returned",
    )


def test_the_core_gives_an_edge_its_own_sites_open_orders_and_nobody_else_any(
    core_and_edge: CoreAndEdge,
) -> None:
    core = core_and_edge.core
    send_orders(
        core,
        order("NW", "EWL101", accession="EWL101", pid3=PATIENT, station_ae="EDGH_CT1"),
        order("NW", "EWL102", accession="EWL102", pid3="RTP0001601^^^RTP^MR", facility="ESH",
              location="WARD1^^^ESH", station_ae=""),
    )  # fmt: skip

    def orders(token: str) -> httpx.Response:
        return httpx.get(
            f"{core.base_url}/api/edge/orders",
            headers={"Authorization": f"Bearer {token}"},
            timeout=TIMEOUT,
        )

    mine = orders(edge_token(core))
    assert mine.status_code == 200, mine.text
    accessions = {o["accession_number"] for o in mine.json()["orders"]}
    assert "EWL101" in accessions and "EWL102" not in accessions
    assert {(o["trust"], o["site"]) for o in mine.json()["orders"]} == {("RXC", "EDGH")}
    other = orders(edge_token(core, "edge.rtp"))
    assert other.status_code == 200, other.text
    theirs = {o["accession_number"] for o in other.json()["orders"]}
    assert "EWL102" in theirs and "EWL101" not in theirs
    # A person (even the trust's PACS administrator) is not an edge node.
    person = core.http.get(f"{core.base_url}/api/edge/orders")
    assert person.status_code == 403, person.text


def test_an_order_sent_to_the_edge_is_refused_with_a_reason(core_and_edge: CoreAndEdge) -> None:
    client = MllpClient(core_and_edge.edge.mllp_port)
    try:
        ack = client.send(order("NW", "EWL201", accession="EWL201", pid3=PATIENT))
    finally:
        client.close()
    assert ack.code == "AR", ack.text
    assert "send orders to the regional archive" in ack.text


def step_status(answers: dict[str, pydicom.Dataset], accession: str) -> str | None:
    answer = answers.get(accession)
    if answer is None:
        return None
    return str(answer.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus)


def modality_at(server: Netpacs, aet: str = "EDGH_CT1") -> Association:
    ae = AE(ae_title=aet)
    ae.add_requested_context(MPPS)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = associate(ae, "127.0.0.1", server.port, ae_title="NETPACS")
    assert assoc.is_established
    return assoc


def order_status(core: Netpacs, accession: str) -> str | None:
    engine = sa.create_engine(core.database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(
                sa.select(imaging_order.c.status).where(
                    imaging_order.c.trust == "RXC", imaging_order.c.accession_number == accession
                )
            ).scalar_one_or_none()
    finally:
        engine.dispose()


def test_mpps_at_the_edge_reaches_the_core_in_order_also_after_a_cut(
    core_and_edge: CoreAndEdge, tmp_path: Path
) -> None:
    core, edge = core_and_edge.core, core_and_edge.edge
    send_orders(
        core,
        order("NW", "EWL301", accession="EWL301", pid3=PATIENT, station_ae="EDGH_CT1"),
        order("NW", "EWL302", accession="EWL302", pid3=PATIENT, station_ae="EDGH_CT1"),
    )
    first = worklist(core, tmp_path)["EWL301"].StudyInstanceUID
    second = worklist(core, tmp_path)["EWL302"].StudyInstanceUID
    one, two = generate_uid(), generate_uid()
    assoc = modality_at(edge)
    try:
        status, _ = assoc.send_n_create(in_progress("EWL301", first), MPPS, one)
        assert status.Status == 0x0000
        wait_until(
            lambda: order_status(core, "EWL301") == "in progress",
            timeout=SYNC,
            what="the step started at the core",
        )
        # The edge's worklist shows it started, once its copy follows the core (the
        # copy may not even hold the order yet: the step can reach the core first).
        wait_until(
            lambda: step_status(worklist(edge, tmp_path), "EWL301") == "STARTED",
            timeout=SYNC,
            what="STARTED on the edge's worklist",
        )
        bad, _ = assoc.send_n_create(in_progress("EWL301", first, "COMPLETED"), MPPS, two)
        assert bad.Status == 0x0106  # checked at the edge, as at the core
    finally:
        assoc.release()

    core_and_edge.link.cut()
    try:
        # Cut off: the site's modality is answered at once; the steps wait, in order.
        assoc = modality_at(edge)
        try:
            done, _ = assoc.send_n_set(finished("COMPLETED", generate_uid()), MPPS, one)
            assert done.Status == 0x0000
            status, _ = assoc.send_n_create(in_progress("EWL302", second), MPPS, two)
            assert status.Status == 0x0000
            done, _ = assoc.send_n_set(finished("DISCONTINUED", None), MPPS, two)
            assert done.Status == 0x0000
        finally:
            assoc.release()
        time.sleep(1)
        assert order_status(core, "EWL301") == "in progress"
        assert order_status(core, "EWL302") == "scheduled"
    finally:
        core_and_edge.link.restore()
    wait_until(
        lambda: order_status(core, "EWL301") == "completed",
        timeout=SYNC,
        what="the completed step at the core after the link returned",
    )
    # Created, then discontinued, in that order: the order is back to scheduled.
    wait_until(
        lambda: order_status(core, "EWL302") == "scheduled" and performed(core, two),
        timeout=SYNC,
        what="the discontinued step at the core",
    )


def performed(core: Netpacs, uid: str) -> str | None:
    engine = sa.create_engine(core.database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(
                sa.select(performed_step.c.status).where(performed_step.c.sop_instance_uid == uid)
            ).scalar_one_or_none()
    finally:
        engine.dispose()
