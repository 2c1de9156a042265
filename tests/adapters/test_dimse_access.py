"""DIMSE access: per-AE permissions and C-MOVE destinations from the region file, the
calling AE's trust seeing only the patients it cares for, and the audit trail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
import sqlalchemy as sa
from pynetdicom import AE
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from netpacs.adapters.dimse.requestor import associate
from netpacs.index.schema import audit_event
from tests.conftest import Netpacs, write_region
from tests.hl7.test_regional_record import send_study


def c_find_studies(server: Netpacs, calling_ae: str) -> tuple[set[str], list[int]]:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = associate(ae, "127.0.0.1", server.port, ae_title="NETPACS")
    assert assoc.is_established
    ident = pydicom.Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = ""
    found: set[str] = set()
    statuses: list[int] = []
    for status, answer in assoc.send_c_find(ident, StudyRootQueryRetrieveInformationModelFind):
        statuses.append(int(status.Status))
        if answer is not None and int(status.Status) == 0xFF00:
            found.add(str(answer.StudyInstanceUID))
    assoc.release()
    return found, statuses


def c_move(server: Netpacs, calling_ae: str, destination: str, study: str) -> list[tuple[int, int]]:
    """(status, completed sub-operations) of each response."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = associate(ae, "127.0.0.1", server.port, ae_title="NETPACS")
    ident = pydicom.Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = study
    out = [
        (int(s.Status), int(getattr(s, "NumberOfCompletedSuboperations", 0) or 0))
        for s, _ in assoc.send_c_move(
            ident, destination, StudyRootQueryRetrieveInformationModelMove
        )
    ]
    assoc.release()
    return out


@pytest.fixture(scope="module")
def netpacs(module_netpacs: Netpacs) -> Netpacs:
    """One server for the module: its studies are those of ``two_trusts``."""
    return module_netpacs


@pytest.fixture(scope="module")
def two_trusts(netpacs: Netpacs, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("two-trusts")
    return {
        "RXC": send_study(netpacs, tmp / "a", aet="EDGH_CT1", patient_id="D1", issuer="RXC"),
        "RTP": send_study(netpacs, tmp / "b", aet="ESH_CT1", patient_id="D2", issuer="RTP"),
    }


def test_a_workstation_finds_only_its_trusts_patients_and_a_modality_may_not_query(
    netpacs: Netpacs, two_trusts: dict[str, str]
) -> None:
    assert c_find_studies(netpacs, "RTP_WS1")[0] == {two_trusts["RTP"]}
    assert c_find_studies(netpacs, "RXC_WS1")[0] == {two_trusts["RXC"]}
    found, statuses = c_find_studies(netpacs, "EDGH_CT1")
    assert found == set() and statuses == [0x0124]  # Refused: Not Authorized


def test_c_move_of_a_study_the_ae_may_not_see_moves_nothing(
    netpacs: Netpacs, two_trusts: dict[str, str], storescp: Path
) -> None:
    hidden = c_move(netpacs, "RTP_WS1", "RTP_WS1", two_trusts["RXC"])
    assert hidden[-1] == (0x0000, 0)
    assert list(storescp.iterdir()) == []
    seen = c_move(netpacs, "RTP_WS1", "RTP_WS1", two_trusts["RTP"])
    assert seen[-1] == (0x0000, 2)


def test_move_destinations_of_the_region_file_are_an_allow_list(
    tmp_path: Path, database_url: str, workstation_port: int, storescp: Path
) -> None:
    region = write_region(tmp_path / "region.toml", {"RTP_WS1": workstation_port})
    text = region.read_text()
    text = text.replace(
        'ae_title = "RXC_WS1"\nhost = "127.0.0.1"\nport = 11203\n',
        'ae_title = "RXC_WS1"\nhost = "127.0.0.1"\nport = 11203\nmove_destinations = ["RXC_WS1"]\n',
    )
    region.write_text(text)
    server = Netpacs(data_dir=tmp_path / "data", database_url=database_url, region_file=region)
    server.start()
    try:
        study = send_study(server, tmp_path / "a", aet="EDGH_CT1", patient_id="M1", issuer="RXC")
        refused = c_move(server, "RXC_WS1", "RTP_WS1", study)
        assert refused == [(0xA801, 0)]
        assert list(storescp.iterdir()) == []
    finally:
        server.stop()


def test_stores_and_queries_are_audited_with_the_calling_ae_and_its_trust(
    netpacs: Netpacs, two_trusts: dict[str, str]
) -> None:
    before = audit_rows(netpacs)
    c_find_studies(netpacs, "RTP_WS1")
    rows = audit_rows(netpacs)
    stores = {(r.user_id, r.trust, r.study_uids) for r in rows if r.event_id == "110104"}
    assert ("EDGH_CT1", "RXC", two_trusts["RXC"]) in stores
    assert ("ESH_CT1", "RTP", two_trusts["RTP"]) in stores
    queries = [r for r in rows[len(before) :] if r.event_id == "110112"]
    assert [(q.user_id, q.trust, q.patient_id) for q in queries] == [("RTP_WS1", "RTP", "D2")]


def audit_rows(server: Netpacs) -> list[sa.Row[Any]]:
    """Every audit record, oldest first."""
    engine = sa.create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(
                        audit_event.c.event_id,
                        audit_event.c.user_id,
                        audit_event.c.trust,
                        audit_event.c.patient_id,
                        audit_event.c.study_uids,
                    ).order_by(audit_event.c.id)
                ).all()
            )
    finally:
        engine.dispose()
