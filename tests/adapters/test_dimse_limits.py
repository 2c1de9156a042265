"""What a hostile DICOM peer can make a DIMSE worker hold, and for how long (issue 17).

Raw sockets against a real ``netpacs serve`` (one DIMSE worker, short timeouts): lying
PDU and PDV lengths, oversized or unfinished A-ASSOCIATE-RQs, PDUs dripped a few bytes
at a time, and hundreds of stalled connections. Each is answered with an A-ABORT (or
an A-ASSOCIATE-RJ) or closed within a bound, and the server's resident memory (the
supervisor and all its workers) grows by less than 300 MB.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netpacs.adapters.dimse import commands as c
from tests.adapters.raw_dimse import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_ASSOCIATE_RQ,
    CT_IMAGE_STORAGE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    MB,
    P_DATA_TF,
    VERIFICATION,
    Peer,
    associate_rq,
    p_data,
    rss,
)
from tests.conftest import Netpacs, dcmtk, wait_until

IDLE = 4.0  # NETPACS_DIMSE_TIMEOUT
ARTIM = 1.5  # NETPACS_DIMSE_ASSOCIATE_TIMEOUT
CAP = 20  # NETPACS_DIMSE_MAX_ASSOCIATIONS
STORE_CONTEXT = ((1, CT_IMAGE_STORAGE, (EXPLICIT_VR_LE,)),)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, module_region_file: Path) -> Iterator[Netpacs]:
    folder = tmp_path_factory.mktemp("limits")
    one = Netpacs(
        data_dir=folder / "data",
        database_url=f"sqlite:///{folder / 'index.sqlite'}",
        region_file=module_region_file,
        processes=1,
        extra_env={
            "NETPACS_DIMSE_TIMEOUT": str(IDLE),
            "NETPACS_DIMSE_ASSOCIATE_TIMEOUT": str(ARTIM),
            "NETPACS_DIMSE_MAX_ASSOCIATIONS": str(CAP),
        },
    )
    one.start()
    try:
        yield one
    finally:
        one.stop()


def echo(server: Netpacs) -> bool:
    result = dcmtk("echoscu", "-aet", "EDGH_CT1", "-aec", "NETPACS", "127.0.0.1", str(server.port))
    return result.returncode == 0


def associated(server: Netpacs, contexts: tuple[tuple[int, str, tuple[str, ...]], ...]) -> Peer:
    peer = Peer(server.port)
    answer = peer.associate(associate_rq(contexts=contexts))
    assert answer is not None and answer[0] == A_ASSOCIATE_AC, answer
    return peer


def c_store_command(sop_instance_uid: str = "1.2.826.0.1.3680043.10.543.17.1") -> bytes:
    return c.encode_command(
        {
            c.AFFECTED_SOP_CLASS_UID: CT_IMAGE_STORAGE,
            c.COMMAND_FIELD: c.C_STORE_RQ,
            c.MESSAGE_ID: 1,
            c.PRIORITY: 0,
            c.COMMAND_DATA_SET_TYPE: c.HAS_DATA_SET,
            c.AFFECTED_SOP_INSTANCE_UID: sop_instance_uid,
        }
    )


def test_pdv_claiming_two_gigabytes_is_aborted_without_allocating_it(server: Netpacs) -> None:
    assert server.proc is not None
    before = rss(server.proc.pid)
    peers = []
    for _ in range(2):
        peer = associated(server, STORE_CONTEXT)
        peers.append(peer)
        peer.send(p_data(1, c_store_command(), command=True, last=True))
        # A P-DATA-TF PDU that claims 2 GB and a PDV in it that claims the same; no data.
        peer.send(struct.pack(">BBIIBB", P_DATA_TF, 0, 0x8000_0006, 0x8000_0002, 1, 0))
    for peer in peers:
        answer = peer.read_pdu(timeout=3)
        assert answer is not None and answer[0] == A_ABORT, answer
        assert peer.closed_within(2)
        peer.close()
    grown = rss(server.proc.pid) - before
    print(f"RSS growth: {grown / MB:.1f} MB")
    assert grown < 300 * MB, f"the server grew by {grown / MB:.0f} MB"
    assert echo(server)


def test_p_data_longer_than_our_maximum_pdu_is_aborted(server: Netpacs) -> None:
    peer = associated(server, STORE_CONTEXT)
    # One byte over the 262144 we announced (the PDU's variable field, PS3.8 9.3.5).
    peer.send(struct.pack(">BBIIBB", P_DATA_TF, 0, 262_145, 262_141, 1, 1))
    answer = peer.read_pdu(timeout=3)
    assert answer is not None and answer[0] == A_ABORT, answer
    peer.close()


def test_a_command_set_of_endless_fragments_is_aborted(server: Netpacs) -> None:
    peer = associated(server, STORE_CONTEXT)
    for _ in range(5):  # 80 kB of a command set that has not ended
        peer.send(p_data(1, bytes(16_000), command=True, last=False))
    answer = peer.read_pdu(timeout=3)
    assert answer is not None and answer[0] == A_ABORT, answer
    peer.close()


def test_associate_requests_announcing_a_mebibyte_are_aborted_at_once(server: Netpacs) -> None:
    assert server.proc is not None
    before = rss(server.proc.pid)
    peers = []
    start = time.monotonic()
    for _ in range(300):
        peer = Peer(server.port)
        # A 1 MiB A-ASSOCIATE-RQ: its header and the first 64 KiB.
        peer.send(struct.pack(">BBI", A_ASSOCIATE_RQ, 0, 1 << 20) + bytes(64 * 1024))
        peers.append(peer)
    for peer in peers:
        # An A-ABORT, or a reset that overtook it (the server did not read the rest).
        answer = peer.read_pdu(timeout=3)
        assert answer is None or answer[0] == A_ABORT, answer
        peer.close()
    assert time.monotonic() - start < ARTIM, "aborted by a timer, not for the length"
    grown = rss(server.proc.pid) - before
    print(f"RSS growth: {grown / MB:.1f} MB")
    assert grown < 300 * MB, f"the server grew by {grown / MB:.0f} MB"


def test_an_associate_request_not_whole_within_the_artim_timeout_is_aborted(
    server: Netpacs,
) -> None:
    peer = Peer(server.port)
    rq = associate_rq()
    start = time.monotonic()
    closed_at = None
    for byte in rq:  # a byte every 0.2 s: never idle, never finished
        if not peer.send(bytes([byte])):
            break
        try:
            answer = peer.read_pdu(timeout=0.2)
        except TimeoutError:
            continue
        assert answer is None or answer[0] == A_ABORT, answer
        closed_at = time.monotonic() - start
        break
    peer.close()
    assert closed_at is not None, "the request was dripped to its end"
    assert ARTIM - 0.3 <= closed_at < ARTIM + 1.5  # (the timer starts as we connect)


def test_a_pdu_dripped_a_header_at_a_time_is_aborted_after_the_idle_timeout(
    server: Netpacs,
) -> None:
    peer = associated(server, STORE_CONTEXT)
    # A P-DATA-TF of 200 kB made of empty command fragments, one every 0.3 s: every
    # piece arrives in time, the PDU never ends.
    peer.send(struct.pack(">BBI", P_DATA_TF, 0, 200_000))
    start = time.monotonic()
    closed_at = None
    while time.monotonic() - start < 3 * IDLE:
        if not peer.send(struct.pack(">IBB", 2, 1, 1)):
            closed_at = time.monotonic() - start
            break
        try:
            answer = peer.read_pdu(timeout=0.3)
        except TimeoutError:
            continue
        assert answer is None or answer[0] == A_ABORT, answer
        closed_at = time.monotonic() - start
        break
    peer.close()
    assert closed_at is not None, f"still open after {3 * IDLE:g} s"
    assert IDLE - 0.5 <= closed_at < IDLE + 2


def test_five_hundred_stalled_connections_are_capped_dropped_and_hold_no_memory(
    server: Netpacs,
) -> None:
    assert server.proc is not None
    before = rss(server.proc.pid)
    silent, half_request, mid_store = [], [], []
    accepted = rejected_transient = shut_out = 0
    rq = associate_rq(contexts=STORE_CONTEXT)
    for i in range(500):
        try:
            peer = Peer(server.port, timeout=2)
        except OSError:
            shut_out += 1
            continue
        if i % 5 == 0:  # associates, starts a C-STORE and stops in its data
            peer.send(rq)
            try:
                answer = peer.read_pdu(timeout=2)
            except TimeoutError:
                answer = (0, b"")
            if answer is None:
                shut_out += 1  # over the cap of connections negotiating: closed at once
                peer.close()
                continue
            if answer[0] == A_ASSOCIATE_RJ:
                assert answer[1][1:4] == bytes([2, 3, 2]), answer  # transient, local limit
                rejected_transient += 1
                peer.close()
                continue
            assert answer[0] == A_ASSOCIATE_AC, answer
            accepted += 1
            peer.send(p_data(1, c_store_command(), command=True, last=True))
            # A PDV that announces the largest fragment we allow and sends 1 kB of it.
            peer.send(struct.pack(">BBIIBB", P_DATA_TF, 0, 262_144, 262_140, 1, 0) + bytes(1000))
            mid_store.append(peer)
        elif i % 5 == 1:
            peer.send(rq[:40])
            half_request.append(peer)
        else:
            silent.append(peer)
    assert 0 < accepted <= CAP
    assert rejected_transient + shut_out > 0
    grown = rss(server.proc.pid) - before
    print(f"RSS growth: {grown / MB:.1f} MB")
    assert grown < 300 * MB, f"the server grew by {grown / MB:.0f} MB"
    # Every stalled connection is dropped: ARTIM before association, the idle timeout after.
    deadline = time.monotonic() + IDLE + 2
    for peer in [*silent, *half_request, *mid_store]:
        assert peer.closed_within(max(deadline - time.monotonic(), 0.1))
        peer.close()
    assert echo(server)


def test_a_peer_that_sends_echoes_and_reads_no_answer_is_not_read_from_and_is_dropped(
    server: Netpacs,
) -> None:
    peer = associated(server, ((1, VERIFICATION, (IMPLICIT_VR_LE,)),))
    echo_rq = p_data(
        1,
        c.encode_command(
            {
                c.AFFECTED_SOP_CLASS_UID: VERIFICATION,
                c.COMMAND_FIELD: c.C_ECHO_RQ,
                c.MESSAGE_ID: 1,
                c.COMMAND_DATA_SET_TYPE: c.NO_DATA_SET,
            }
        ),
        command=True,
        last=True,
    )
    batch = echo_rq * 1000  # ~80 kB of requests, whose answers we never read
    peer.sock.settimeout(1.0)
    sent = 0
    start = time.monotonic()
    with contextlib.suppress(OSError):  # a send that blocks for a second: not read from
        while sent < 200 * MB and time.monotonic() - start < 3 * IDLE:
            peer.sock.sendall(batch)
            sent += len(batch)
    print(f"sent {sent / MB:.1f} MB in {time.monotonic() - start:.1f} s")
    # The server stopped reading once its answers piled up: a few socket buffers' worth.
    assert sent < 40 * MB, f"{sent / MB:.0f} MB of requests were read"
    # And, nothing more arriving, the association ends within the idle timeout (the
    # bound also covers reading the answers already on their way, PDU by PDU, which
    # takes seconds on a loaded 2-core machine).
    assert peer.closed_within(IDLE + 15)
    peer.close()
    assert echo(server)


def test_a_peer_that_drops_its_connection_without_release_or_abort_is_logged(
    server: Netpacs,
) -> None:
    """Work owed to such a peer (a storage commitment report) cannot reach it on this
    association any more: the log says who went and how."""
    dropped = associated(server, STORE_CONTEXT)
    released = associated(server, STORE_CONTEXT)
    dropped_port = dropped.sock.getsockname()[1]
    released_port = released.sock.getsockname()[1]
    dropped.close()  # a FIN, no A-RELEASE-RQ, no A-ABORT
    released.send(struct.pack(">BBI", 5, 0, 4) + b"\x00" * 4)  # A-RELEASE-RQ
    answer = released.read_pdu()
    assert answer is not None and answer[0] == 6, answer  # A-RELEASE-RP
    released.close()
    said = "the peer closed the connection without A-RELEASE or A-ABORT"

    def lines_of(port: int) -> list[str]:
        return [line for line in server.log().splitlines() if said in line and f":{port})" in line]

    wait_until(lambda: lines_of(dropped_port), timeout=10, what="the log line of the dropped peer")
    time.sleep(0.5)
    assert lines_of(released_port) == [], "a released association was logged as dropped"
    assert echo(server)
