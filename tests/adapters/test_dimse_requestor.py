"""Associations netpacs requests (C-MOVE and C-GET sub-operations, forwarding, storage
commitment reports, federated queries) get every response their peer sends, even when
pynetdicom's reactor thread is slow to pause (the race described in requestor.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from netpacs.adapters.dimse import requestor
from tests.conftest import free_port, workstation


class SlowToPause(requestor.Checkpoint):
    """The reactor descheduled between leaving its checkpoint and noting it runs: the
    moment in which pynetdicom's own pause lets a sender go on while the reactor is
    about to read the association's queue."""

    def wait(self, timeout: float | None = None) -> bool:
        woke = super().wait(timeout)
        time.sleep(0.03)
        return woke


def _slow_after_sending(assoc: Any) -> None:
    """The sender descheduled after its request went out, so the answer is queued
    before it asks for it."""
    send = assoc.dimse.send_msg

    def send_then_stall(*args: Any) -> None:
        send(*args)
        if threading.current_thread() is not assoc:
            time.sleep(0.06)

    assoc.dimse.send_msg = send_then_stall


def _ct(n: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.7777.{n}"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.7777"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.7777.1"
    ds.PatientID = "RACE"
    ds.Modality = "CT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


@pytest.fixture
def peer(tmp_path: Path) -> Any:
    port = free_port()
    with workstation(tmp_path / "ws", port) as out:
        yield port, out


def test_every_store_and_echo_gets_its_response_when_the_reactor_is_slow_to_pause(
    peer: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, out = peer
    monkeypatch.setattr(requestor, "Checkpoint", SlowToPause)
    ae = AE(ae_title="NETPACS")
    ae.dimse_timeout = 5
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    assoc = requestor.associate(ae, "127.0.0.1", port, ae_title="RTP_WS1")
    assert assoc.is_established
    _slow_after_sending(assoc)
    started = time.monotonic()
    try:
        statuses = []
        for n in range(6):
            time.sleep(0.01)  # reading the next file: the reactor runs its loop meanwhile
            echo = assoc.send_c_echo()
            time.sleep(0.01)
            store = assoc.send_c_store(_ct(n))
            statuses += [getattr(echo, "Status", None), getattr(store, "Status", None)]
    finally:
        assoc.release()
    assert statuses == [0x0000] * 12
    assert time.monotonic() - started < 4  # no response waited for until the timeout
    assert len(list(out.iterdir())) == 6


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_release_returns_when_the_reactor_thread_has_ended_while_associated(
    peer: tuple[int, Path],
) -> None:
    """A reactor that ends while the association is still established (here: an error
    reading its queue) leaves pynetdicom's pause flag false; its release spun on that
    flag for ever (a suite run stuck five minutes in ``release``)."""
    port, _ = peer
    ae = AE(ae_title="NETPACS")
    ae.acse_timeout = ae.dimse_timeout = 5
    ae.add_requested_context(Verification)
    assoc = requestor.associate(ae, "127.0.0.1", port, ae_title="RTP_WS1")
    assert assoc.is_established

    def broken(*args: Any, **kw: Any) -> Any:
        raise OSError("queue unreadable")

    assoc.dimse.get_msg = broken
    assoc.join(5)
    assert not assoc.is_alive() and assoc.is_established  # the state the fix is for
    releasing = threading.Thread(target=assoc.release, daemon=True)
    releasing.start()
    releasing.join(10)
    assert not releasing.is_alive(), "release still waiting for a reactor that has ended"
    assert not assoc.is_established


def test_associations_we_request_send_without_nagles_delay(peer: tuple[int, Path]) -> None:
    """pynetdicom leaves Nagle's algorithm on: a request written as two PDUs waits for
    the peer's delayed acknowledgement (about 40 ms a C-FIND)."""
    import socket

    port, _ = peer
    ae = AE(ae_title="NETPACS")
    ae.add_requested_context(Verification)
    assoc = requestor.associate(ae, "127.0.0.1", port, ae_title="RTP_WS1")
    try:
        sock = assoc.dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
