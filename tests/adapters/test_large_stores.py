"""Large C-STOREs on several associations at once (issue 16, section 2): what the server
holds stays bounded, each object is stored intact, and nothing of a large object that
is refused or cut short is left in the data directory.

A real ``netpacs serve`` (one DIMSE worker) fed by the raw DIMSE sender of
``test_resource_bounds``, which makes the pixel data as it sends it. The sizes are
scaled down to keep the test fast (4 x 128 MB); ``bench/large_store.py`` measures
4 x 1 GB.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from netpacs.adapters.dimse import commands as c
from tests.adapters.raw_dimse import process_tree
from tests.adapters.test_resource_bounds import (
    EXPLICIT_VR_LE,
    MB,
    RawScu,
    _then,
    blob_files,
    large_ct,
    peak_rss_growth,
    read_back,
)
from tests.conftest import Netpacs, wait_until

SIZE = 128 * MB
ASSOCIATIONS = 4
# Each association holds at most 32 MB of a data set in memory before it goes to its
# file; everything else (parsing, buffers) is a few megabytes. Holding the objects
# whole would be 512 MB.
RSS_BUDGET = ASSOCIATIONS * 32 * MB + 96 * MB


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, module_region_file: Path) -> Iterator[Netpacs]:
    folder = tmp_path_factory.mktemp("large")
    netpacs = Netpacs(
        data_dir=folder / "data",
        database_url=f"sqlite:///{folder / 'index.sqlite'}",
        region_file=module_region_file,
        processes=1,
        extra_env={"NETPACS_MAX_OBJECT_MB": "256"},
    )
    netpacs.start()
    try:
        yield netpacs
    finally:
        netpacs.stop()


def test_four_associations_each_storing_a_large_object_at_once_hold_little_and_read_back(
    server: Netpacs,
) -> None:
    objects = [large_ct(SIZE) for _ in range(ASSOCIATIONS)]
    statuses: dict[int, int] = {}

    def send(n: int) -> None:
        ds, head, pixels = objects[n]
        scu = RawScu(server.port, str(ds.SOPClassUID), EXPLICIT_VR_LE)
        try:
            rsp = scu.c_store(str(ds.SOPInstanceUID), _then(head, pixels.chunks()))
            statuses[n] = rsp.get_int(c.STATUS)
        finally:
            scu.release()

    threads = [threading.Thread(target=send, args=(n,)) for n in range(ASSOCIATIONS)]
    written = bytes_written(server)
    with peak_rss_growth(server) as growth:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    written = bytes_written(server) - written
    assert statuses == dict.fromkeys(range(ASSOCIATIONS), 0x0000)
    assert growth[0] < RSS_BUDGET, f"server grew by {growth[0] / MB:.0f} MB"
    # Each object is written once, into the file it is kept in (not to a spool file
    # first and then copied).
    total = ASSOCIATIONS * SIZE
    assert total <= written < total * 1.1, f"{written / MB:.0f} MB written for {total / MB} MB"
    for ds, _, pixels in objects:
        assert read_back(server, ds, "7FE00010") == (SIZE, pixels.sha256.hexdigest())
    tmp = server.data_dir / "objects" / "tmp"
    assert not [p.name for p in tmp.iterdir() if not p.name.startswith("check-")]


def test_a_large_object_refused_after_it_arrived_leaves_no_file(server: Netpacs) -> None:
    """The data set names another SOP Instance than its command: refused (A900) once
    received whole, and the file it was received into is gone."""
    ds, head, pixels = large_ct(64 * MB)
    files = blob_files(server)
    scu = RawScu(server.port, str(ds.SOPClassUID), EXPLICIT_VR_LE)
    try:
        rsp = scu.c_store("1.2.826.0.1.3680043.10.543.7", _then(head, pixels.chunks()))
    finally:
        scu.release()
    assert rsp.get_int(c.STATUS) == 0xA900, rsp
    assert rsp.get_str(c.ERROR_COMMENT).startswith("data set has SOP")
    assert blob_files(server) == files


def test_a_large_object_cut_short_by_the_peer_leaves_no_file(server: Netpacs) -> None:
    ds, head, pixels = large_ct(64 * MB)
    files = blob_files(server)
    scu = RawScu(server.port, str(ds.SOPClassUID), EXPLICIT_VR_LE)
    half = iter(_then(head, pixels.chunks()))
    sent = 0
    try:
        # The command and 48 MB of the data set (past the 32 MB held in memory), then
        # the connection is dropped.
        chunks = (piece for piece in half if (sent := sent + len(piece)) <= 48 * MB)
        command = _store_command(str(ds.SOPClassUID), str(ds.SOPInstanceUID))
        scu._pdv(command, 0x03)
        for piece in chunks:
            for at in range(0, len(piece), scu.max_pdu - 6):
                scu._pdv(piece[at : at + scu.max_pdu - 6], 0x00)
        wait_until(lambda: blob_files(server) != files, 10, "the data set going to a file")
    finally:
        scu.sock.close()
    wait_until(lambda: blob_files(server) == files, 10, "the half-received file removed")


def bytes_written(server: Netpacs) -> int:
    """What the server's processes have written to files so far (``wchar``: bytes
    passed to write calls; its DIMSE answers go out with send, not counted)."""
    assert server.proc is not None
    total = 0
    for pid in process_tree(server.proc.pid):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("wchar:"):
                    total += int(line.split()[1])
    return total


def _store_command(sop_class_uid: str, sop_instance_uid: str) -> bytes:
    return c.encode_command(
        {
            c.AFFECTED_SOP_CLASS_UID: sop_class_uid,
            c.COMMAND_FIELD: c.C_STORE_RQ,
            c.MESSAGE_ID: 1,
            c.PRIORITY: 0,
            c.COMMAND_DATA_SET_TYPE: c.HAS_DATA_SET,
            c.AFFECTED_SOP_INSTANCE_UID: sop_instance_uid,
        }
    )
