"""Storage Commitment Push Model SCP (PS3.4 Annex J, issue 15) with pynetdicom as the
SCU: the N-EVENT-REPORT comes on the same association while the SCU keeps it open, and
on a new association to the SCU's AE (its port in the region file) when it released;
an instance that is not stored is reported failed with 0112."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel

from netpacs.adapters.dimse.requestor import associate
from tests.conftest import Netpacs, free_port, write_region
from tests.factories import ct_dataset, write

WELL_KNOWN = "1.2.840.10008.1.20.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
REQUESTER = "RXC_WS1"  # a workstation of the region, with a port of its own


@pytest.fixture(scope="module")
def requester_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, requester_port: int) -> Iterator[Netpacs]:
    tmp = tmp_path_factory.mktemp("commitment")
    srv = Netpacs(
        data_dir=tmp / "data",
        database_url=f"sqlite:///{tmp / 'index.sqlite'}",
        region_file=write_region(tmp / "region.toml", {REQUESTER: requester_port}),
    )
    srv.start()
    yield srv
    srv.stop()


def _request(*refs: tuple[str, str]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = generate_uid()
    items = []
    for cls, uid in refs:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = cls, uid
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def _stored_ct(server: Netpacs, tmp_path: Path) -> str:
    ds = ct_dataset(PatientID="COMMIT01", IssuerOfPatientID="RXC")
    server.store(write(ds, tmp_path / "ct.dcm"), aet="EDGH_CT1")
    return str(ds.SOPInstanceUID)


class Reports:
    """N-EVENT-REPORTs an SCU received (an EVT_N_EVENT_REPORT handler)."""

    def __init__(self) -> None:
        self.received: list[tuple[int, Dataset]] = []
        self.arrived = threading.Event()

    def handler(self, event: evt.Event) -> tuple[int, None]:
        self.received.append((int(event.event_type), event.event_information))
        self.arrived.set()
        return 0x0000, None


def _ae() -> AE:
    ae = AE(ae_title=REQUESTER)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    return ae


def _n_action(assoc: Any, request: Dataset) -> int:
    status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, WELL_KNOWN)
    return int(status.Status)


def test_the_report_comes_on_the_same_association_and_names_the_unknown_instance_failed(
    server: Netpacs, tmp_path: Path
) -> None:
    stored = _stored_ct(server, tmp_path)
    unknown = generate_uid()
    reports = Reports()
    ae = _ae()
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = associate(
        ae,
        "127.0.0.1",
        server.port,
        ae_title="NETPACS",
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)],
    )
    assert assoc.is_established
    request = _request((CT, stored), (CT, unknown))
    try:
        assert _n_action(assoc, request) == 0x0000
        assert reports.arrived.wait(15), "no N-EVENT-REPORT on the association"
    finally:
        assoc.release()
    ((event_type, ds),) = reports.received
    assert event_type == 2  # some failed
    assert ds.TransactionUID == request.TransactionUID
    assert [i.ReferencedSOPInstanceUID for i in ds.ReferencedSOPSequence] == [stored]
    (failed,) = ds.FailedSOPSequence
    assert (failed.ReferencedSOPInstanceUID, failed.FailureReason) == (unknown, 0x0112)


def test_the_report_comes_on_a_new_association_when_the_requester_released(
    server: Netpacs, tmp_path: Path, requester_port: int
) -> None:
    stored = _stored_ct(server, tmp_path)
    reports = Reports()
    listener = _ae()
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    scp = listener.start_server(
        ("127.0.0.1", requester_port),
        block=False,
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)],
    )
    try:
        ae = _ae()
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = associate(ae, "127.0.0.1", server.port, ae_title="NETPACS")
        assert assoc.is_established
        request = _request((CT, stored))
        assert _n_action(assoc, request) == 0x0000
        assoc.release()  # at once: the report cannot come on this association
        assert reports.arrived.wait(20), "no N-EVENT-REPORT on a new association"
    finally:
        scp.shutdown()
    ((event_type, ds),) = reports.received
    assert event_type == 1  # all committed
    assert ds.TransactionUID == request.TransactionUID
    assert [i.ReferencedSOPInstanceUID for i in ds.ReferencedSOPSequence] == [stored]
    assert "FailedSOPSequence" not in ds
    assert "on a new association to RXC_WS1" in server.log()


def test_a_request_without_a_transaction_uid_is_refused_with_a_reason(server: Netpacs) -> None:
    ae = _ae()
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = associate(ae, "127.0.0.1", server.port, ae_title="NETPACS")
    assert assoc.is_established
    request = _request((CT, generate_uid()))
    del request.TransactionUID
    try:
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, WELL_KNOWN)
    finally:
        assoc.release()
    assert int(status.Status) == 0x0120  # Missing Attribute
    assert "Transaction UID" in str(status.ErrorComment)
