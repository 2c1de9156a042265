"""``netpacs serve`` and SIGTERM: every process gone within 30 s, whatever a worker was
waiting on, and in-flight stores finished (answered and kept) or refused (issue 17)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

from netpacs.adapters.dimse import commands as c
from netpacs.index.db import make_engine
from netpacs.index.schema import instance
from tests.adapters.raw_dimse import (
    A_ABORT,
    A_ASSOCIATE_AC,
    CT_IMAGE_STORAGE,
    EXPLICIT_VR_LE,
    P_DATA_TF,
    Peer,
    associate_rq,
    p_data,
    process_tree,
)
from tests.adapters.test_dimse import dataset_bytes
from tests.conftest import Netpacs, free_port, wait_until, write_region
from tests.factories import ct_dataset, write
from tests.hl7.test_results import queue

BOUND = 30.0  # seconds from SIGTERM until every process of the tree is gone


def alive(pids: list[int]) -> list[int]:
    running = []
    for pid in pids:
        with contextlib.suppress(OSError):
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z":
                running.append(pid)
    return running


def terminate(server: Netpacs) -> tuple[float, list[int]]:
    """SIGTERM to the supervisor; the seconds until its whole tree was gone (or BOUND + 5
    and the pids still running, which are then killed)."""
    assert server.proc is not None
    pids = process_tree(server.proc.pid)
    assert len(pids) >= 4  # the supervisor, DIMSE, HTTP, MLLP and job workers
    start = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    while (left := alive(pids)) and time.monotonic() - start < BOUND + 5:
        server.proc.poll()
        time.sleep(0.1)
    took = time.monotonic() - start
    print(f"every process gone {took:.1f} s after SIGTERM" if not left else f"left: {left}")
    if left:
        server.kill()
    server.proc = None
    return took, left


@contextlib.contextmanager
def silent_listener(port: int) -> Iterator[list[bytes]]:
    """A results listener that takes every message and never answers."""
    received: list[bytes] = []
    server = socket.create_server(("127.0.0.1", port))
    server.settimeout(0.1)
    stop = threading.Event()
    conns: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.settimeout(0.1)
            conns.append(conn)
            threading.Thread(target=read, args=(conn,), daemon=True).start()

    def read(conn: socket.socket) -> None:
        while not stop.is_set():
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            received.append(chunk)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in conns:
            conn.close()
        server.close()


def test_sigterm_stops_every_process_within_30_s_while_a_results_listener_never_answers(
    tmp_path: Path, database_url: str, workstation_port: int
) -> None:
    results_port = free_port()
    region_file = write_region(tmp_path / "region.toml", {"RTP_WS1": workstation_port})
    text, n = re.subn(
        r'(\[trusts.results_mllp\]\nhost = "127.0.0.1"\nport = )12573',
        rf"\g<1>{results_port}",
        region_file.read_text(),
    )
    assert n == 1
    region_file.write_text(text)
    server = Netpacs(
        data_dir=tmp_path / "data",
        database_url=database_url,
        region_file=region_file,
        processes=1,
        # A patient trust: two minutes for each ACK, and the listener sends none.
        extra_env={"NETPACS_RESULTS_ACK_TIMEOUT_SECONDS": "120"},
    )
    with silent_listener(results_port) as received:
        server.start()
        try:
            engine = make_engine(database_url, writer=True)
            queue(engine, "RXC", 2)
            engine.dispose()
            wait_until(lambda: b"ORU^R01" in b"".join(received), what="a result on the wire")
            took, left = terminate(server)
        finally:
            server.stop()
    assert not left, f"still running {BOUND + 5:g} s after SIGTERM: {left}\n{server.log()}"
    assert took < BOUND, f"{took:.1f} s"


def store_data(tmp_path: Path, patient_id: str) -> tuple[str, bytes]:
    ds = ct_dataset(PatientID=patient_id, Rows=256, Columns=256, PixelData=bytes(256 * 256 * 2))
    data = dataset_bytes(write(ds, tmp_path / f"{patient_id}.dcm"))
    return str(ds.SOPInstanceUID), data


def test_sigterm_finishes_a_c_store_in_flight_and_aborts_idle_associations(
    tmp_path: Path, region_file: Path
) -> None:
    database_url = f"sqlite:///{tmp_path / 'index.sqlite'}"  # the drain is the adapter's
    server = Netpacs(
        data_dir=tmp_path / "data", database_url=database_url, region_file=region_file, processes=1
    ).start()
    try:
        contexts = ((1, CT_IMAGE_STORAGE, (EXPLICIT_VR_LE,)),)
        idle = Peer(server.port)
        storing = Peer(server.port)
        for peer in (idle, storing):
            answer = peer.associate(associate_rq(contexts=contexts))
            assert answer is not None and answer[0] == A_ASSOCIATE_AC, answer
        sop_uid, data = store_data(tmp_path, "H170001")
        command = c.encode_command(
            {
                c.AFFECTED_SOP_CLASS_UID: CT_IMAGE_STORAGE,
                c.COMMAND_FIELD: c.C_STORE_RQ,
                c.MESSAGE_ID: 7,
                c.PRIORITY: 0,
                c.COMMAND_DATA_SET_TYPE: c.HAS_DATA_SET,
                c.AFFECTED_SOP_INSTANCE_UID: sop_uid,
            }
        )
        half = len(data) // 2
        storing.send(p_data(1, command, command=True, last=True))
        storing.send(p_data(1, data[:half], command=False, last=False))
        time.sleep(0.5)  # the first half is in the worker

        assert server.proc is not None
        pids = process_tree(server.proc.pid)
        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        # The idle association is aborted at once.
        answer = idle.read_pdu(timeout=5)
        assert answer is not None and answer[0] == A_ABORT, answer
        # The store in flight is finished: the rest of its data is taken, it is stored
        # and answered, and then the association is aborted.
        time.sleep(1)
        assert storing.send(p_data(1, data[half:], command=False, last=True))
        answer = storing.read_pdu(timeout=10)
        assert answer is not None and answer[0] == P_DATA_TF, answer
        response = c.decode_command(answer[1][6:])
        assert response.get_int(c.STATUS) == 0x0000, response.values
        answer = storing.read_pdu(timeout=10)
        assert answer is not None and answer[0] == A_ABORT, answer
        # Nothing is accepted any more, and every process ends within the bound.
        wait_until(lambda: not alive(pids), timeout=BOUND, what="the end of every process")
        assert time.monotonic() - start < BOUND
        server.proc.wait()
        server.proc = None
    finally:
        server.stop()
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(
                sa.select(instance.c.sop_instance_uid).where(instance.c.sop_instance_uid == sop_uid)
            ).all()
    finally:
        engine.dispose()
    assert len(stored) == 1


def test_a_worker_that_overstays_the_shutdown_timeout_is_killed_by_the_supervisor(
    tmp_path: Path, region_file: Path
) -> None:
    server = Netpacs(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'index.sqlite'}",
        region_file=region_file,
        processes=1,
        extra_env={"NETPACS_SHUTDOWN_TIMEOUT": "5"},
    ).start()
    try:
        assert server.proc is not None
        workers = process_tree(server.proc.pid)[1:]
        # A worker stuck where no signal reaches it (as if blocked in a lock wait).
        os.kill(workers[0], signal.SIGSTOP)
        took, left = terminate(server)
    finally:
        server.stop()
    assert not left
    # Killed at the bound, and the rest of the tree gone soon after (a loaded machine
    # takes a few seconds to let Python processes exit).
    assert 5 <= took < 5 + 10, f"{took:.1f} s"
    assert "still running 5 s after SIGTERM; killing it" in server.log()
