"""Resource bounds on the way in (issue 17, items 6, 9, 10), through the real interfaces.

A real ``netpacs serve`` (one DIMSE and one HTTP worker) with the largest object
accepted set to 640 MB and STOW-RS uploads closed after 2 s of silence. Objects are
made on the fly by the test (a raw DIMSE sender, a generated STOW-RS body); the
server's memory is its processes' peak RSS (``VmHWM``, reset through ``clear_refs``
before each measured step), summed over the parent and its workers.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from netpacs.adapters.dimse import commands as c
from netpacs.domain.dicom.part10 import build_file_meta
from tests.conftest import Netpacs
from tests.factories import ct_dataset

MB = 1024 * 1024
MAX_OBJECT_MB = 640
RSS_BUDGET = 300 * MB
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
BOUNDARY = "netpacs-bounds-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, module_region_file: Path) -> Iterator[Netpacs]:
    folder = tmp_path_factory.mktemp("bounds")
    netpacs = Netpacs(
        data_dir=folder / "data",
        database_url=f"sqlite:///{folder / 'index.sqlite'}",
        region_file=module_region_file,
        processes=1,
        extra_env={
            "NETPACS_MAX_OBJECT_MB": str(MAX_OBJECT_MB),
            "NETPACS_UPLOAD_IDLE_SECONDS": "2",
        },
    )
    netpacs.start()
    try:
        yield netpacs
    finally:
        netpacs.stop()


# -- the server's memory -------------------------------------------------------------------


def _pids(root: int) -> list[int]:
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo.extend(int(p) for p in f.read().split())
    return pids


def _status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def peak_rss_growth(server: Netpacs) -> Iterator[list[int]]:
    """Yields a list that holds, after the block, the summed growth of every server
    process's peak RSS over its RSS before the block."""
    assert server.proc is not None
    pids = _pids(server.proc.pid)
    before = {}
    for pid in pids:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM) to the current RSS
        before[pid] = _status(pid, "VmRSS")
    result: list[int] = []
    yield result
    result.append(sum(max(0, _status(pid, "VmHWM") - rss) for pid, rss in before.items()))
    print(f"server peak RSS growth: {result[0] / MB:.0f} MB")  # shown with -s


# -- objects ---------------------------------------------------------------------------------


def _encode(ds: pydicom.Dataset) -> bytes:
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return out.getvalue()


def header(**attrs: object) -> tuple[pydicom.Dataset, bytes]:
    """A CT data set without pixel data, and its Explicit VR Little Endian encoding."""
    ds = ct_dataset(PatientID="BOUNDS01", **attrs)
    del ds.PixelData
    return ds, _encode(ds)


def _long(tag: int, vr: bytes, length: int) -> bytes:
    return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, length)


def deflate_bomb(inflated_zeros: int, *attrs: object) -> tuple[pydicom.Dataset, bytes]:
    """A deflated data set (raw deflate, PS3.5 A.5) whose pixel data is
    ``inflated_zeros`` zero bytes: about a thousandth of that on the wire. Built with
    zlib directly: a zero block compressed after a full flush is the same bytes every
    time, so it is compressed once and repeated."""
    ds, head = header(NumberOfFrames=inflated_zeros // (8 * 8 * 2))
    block = 16 * MB
    assert inflated_zeros % block == 0
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    start = packer.compress(head + _long(0x7FE00010, b"OW", inflated_zeros))
    start += packer.flush(zlib.Z_FULL_FLUSH)
    zeros = packer.compress(bytes(block)) + packer.flush(zlib.Z_FULL_FLUSH)
    end = packer.flush(zlib.Z_FINISH)
    data = start + zeros * (inflated_zeros // block) + end
    return ds, data + (b"\0" if len(data) % 2 else b"")


def deflated(encoded: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = packer.compress(encoded) + packer.flush()
    return data + (b"\0" if len(data) % 2 else b"")


def nested(depth: int) -> tuple[pydicom.Dataset, bytes]:
    """A data set with Content Sequences nested ``depth`` deep (undefined lengths)."""
    ds, head = header()
    opening = _long(0x0040A730, b"SQ", 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return ds, head + opening * depth + closing * depth


class Pattern:
    """``size`` bytes of pixel data made as they are sent (a random megabyte repeated),
    with their SHA-256."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.block = os.urandom(MB)
        self.sha256 = hashlib.sha256()

    def chunks(self) -> Iterator[bytes]:
        left = self.size
        while left:
            piece = self.block[: min(MB, left)]
            self.sha256.update(piece)
            left -= len(piece)
            yield piece


def large_ct(size: int) -> tuple[pydicom.Dataset, bytes, Pattern]:
    """A multi-frame CT of ``size`` bytes of pixel data (512x512, 16 bits a frame)."""
    frame = 512 * 512 * 2
    assert size % frame == 0
    ds, head = header(Rows=512, Columns=512, NumberOfFrames=size // frame)
    return ds, head + _long(0x7FE00010, b"OW", size), Pattern(size)


# -- a raw DIMSE sender ------------------------------------------------------------------------


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


class RawScu:
    """A DIMSE requester over a plain socket: one presentation context, C-STORE with a
    data set given as chunks (sent as they come, in PDVs of the acceptor's maximum)."""

    def __init__(self, port: int, abstract: str, transfer: str, calling: str = "EDGH_CT1") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        context = _item(
            0x20,
            bytes([1, 0, 0, 0]) + _item(0x30, abstract.encode()) + _item(0x40, transfer.encode()),
        )
        user = _item(0x50, _item(0x51, struct.pack(">I", 0)) + _item(0x52, b"1.2.826.0.1.3680043"))
        body = (
            struct.pack(">HH", 1, 0)
            + b"NETPACS".ljust(16)
            + calling.encode().ljust(16)
            + bytes(32)
            + _item(0x10, b"1.2.840.10008.3.1.1.1")
            + context
            + user
        )
        self.sock.sendall(struct.pack(">BBI", 0x01, 0, len(body)) + body)
        kind, answer = self._pdu()
        assert kind == 0x02, f"association not accepted (PDU type {kind:#04x})"
        self.max_pdu = 16384
        pos = 68
        while pos < len(answer):
            item, length = answer[pos], struct.unpack_from(">H", answer, pos + 2)[0]
            if item == 0x21:
                assert answer[pos + 6] == 0, "presentation context refused"
            if item == 0x50:
                sub = answer[pos + 4 : pos + 4 + length]
                if sub[0] == 0x51:
                    self.max_pdu = struct.unpack_from(">I", sub, 4)[0] or 1 << 20
            pos += 4 + length
        self.abstract = abstract

    def _recv(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            got = self.sock.recv(n - len(out))
            if not got:
                raise ConnectionError("the server closed the connection")
            out += got
        return bytes(out)

    def _pdu(self) -> tuple[int, bytes]:
        kind, _, length = struct.unpack(">BBI", self._recv(6))
        return kind, self._recv(length)

    def _pdv(self, payload: bytes | memoryview, mch: int) -> None:
        self.sock.sendmsg(
            [struct.pack(">BBIIBB", 0x04, 0, 6 + len(payload), 2 + len(payload), 1, mch), payload]
        )

    def c_store(self, sop_instance_uid: str, chunks: Iterable[bytes]) -> c.Command:
        self.send_store(1, sop_instance_uid, chunks)
        return self.response()

    def send_store(self, message_id: int, sop_instance_uid: str, chunks: Iterable[bytes]) -> None:
        """A C-STORE-RQ and its data set, without waiting for the answer."""
        command = c.encode_command(
            {
                c.AFFECTED_SOP_CLASS_UID: self.abstract,
                c.COMMAND_FIELD: c.C_STORE_RQ,
                c.MESSAGE_ID: message_id,
                c.PRIORITY: 0,
                c.COMMAND_DATA_SET_TYPE: c.HAS_DATA_SET,
                c.AFFECTED_SOP_INSTANCE_UID: sop_instance_uid,
            }
        )
        self._pdv(command, 0x03)
        room = self.max_pdu - 6
        pending = bytearray()
        for chunk in chunks:
            pending += chunk
            while len(pending) > room:
                self._pdv(memoryview(pending)[:room], 0x00)
                del pending[:room]
        self._pdv(pending, 0x02)

    def response(self) -> c.Command:
        fragments = b""
        while True:
            kind, body = self._pdu()
            assert kind == 0x04, f"expected P-DATA, got PDU type {kind:#04x}"
            pos = 0
            while pos < len(body):
                length, _ctx, mch = struct.unpack_from(">IBB", body, pos)
                fragments += body[pos + 6 : pos + 4 + length]
                pos += 4 + length
                if mch & 0x03 == 0x03:
                    return c.decode_command(fragments)

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(struct.pack(">BBI", 0x05, 0, 4) + bytes(4))
            self._pdu()
        self.sock.close()


def c_store(server: Netpacs, ds: pydicom.Dataset, chunks: Iterable[bytes], ts: str) -> c.Command:
    scu = RawScu(server.port, str(ds.SOPClassUID), ts)
    try:
        return scu.c_store(str(ds.SOPInstanceUID), chunks)
    finally:
        scu.release()


# -- STOW-RS --------------------------------------------------------------------------------


def part10_head(ds: pydicom.Dataset, ts: str) -> bytes:
    return build_file_meta(
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        transfer_syntax_uid=ts,
    )


def stow_body(parts: Iterable[Iterable[bytes]]) -> Iterator[bytes]:
    for part in parts:
        yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        yield from part
        yield b"\r\n"
    yield f"--{BOUNDARY}--\r\n".encode()


def stow(server: Netpacs, body: Iterable[bytes]) -> httpx.Response:
    return server.http.post(
        f"{server.dicomweb_url}/studies",
        content=iter(body),
        headers={"Content-Type": STOW_TYPE, "Accept": "application/dicom+json"},
        timeout=120,
    )


def failure_reasons(response: httpx.Response) -> list[int]:
    failed = response.json().get("00081198", {}).get("Value", [])
    return [item["00081197"]["Value"][0] for item in failed]


# -- the archive's files --------------------------------------------------------------------


def blob_files(server: Netpacs) -> set[str]:
    """Every stored object file and unfinished write in the data directory."""
    objects = server.data_dir / "objects"
    found = {p.name for p in objects.glob("???/*")}
    return found | {p.name for p in (objects / "tmp").glob("*")}


def instance_count(server: Netpacs, sop_instance_uid: str) -> int:
    answer = server.http.get(
        f"{server.dicomweb_url}/instances", params={"SOPInstanceUID": sop_instance_uid}
    )
    assert answer.status_code in (200, 204), answer.text
    return len(answer.json()) if answer.status_code == 200 else 0


def bulk_url(server: Netpacs, ds: pydicom.Dataset, tag: str) -> str:
    return (
        f"{server.dicomweb_url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/bulk/{tag}"
    )


def single_part(response: httpx.Response) -> Iterator[bytes]:
    """The content of a one-part multipart/related answer, as it streams."""
    boundary = response.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
    closing = f"\r\n--{boundary}--".encode()
    buf = bytearray()
    started = False
    for chunk in response.iter_bytes(MB):
        buf += chunk
        if not started:
            at = buf.find(b"\r\n\r\n")
            if at < 0:
                continue
            del buf[: at + 4]
            started = True
        keep = len(closing) + 8
        if len(buf) > keep:
            yield bytes(buf[:-keep])
            del buf[:-keep]
    end = buf.rfind(closing)
    assert end >= 0, "no closing delimiter"
    yield bytes(buf[:end])


def read_back(server: Netpacs, ds: pydicom.Dataset, tag: str) -> tuple[int, str]:
    """Size and SHA-256 of a bulk data value, read through WADO-RS."""
    digest, size = hashlib.sha256(), 0
    with server.http.stream(
        "GET",
        bulk_url(server, ds, tag),
        headers={"Accept": 'multipart/related; type="application/octet-stream"'},
        timeout=120,
    ) as response:
        assert response.status_code == 200, response.read()
        for piece in single_part(response):
            digest.update(piece)
            size += len(piece)
    return size, digest.hexdigest()


# -- item 6: deflate bombs ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bomb() -> tuple[pydicom.Dataset, bytes]:
    """About 1 MB of deflate that inflates to a gigabyte of zeros."""
    return deflate_bomb(1024 * MB)


def test_deflate_bomb_by_c_store_is_refused_out_of_resources_without_inflating_it(
    server: Netpacs, bomb: tuple[pydicom.Dataset, bytes]
) -> None:
    ds, data = bomb
    assert len(data) < 2 * MB
    files = blob_files(server)
    with peak_rss_growth(server) as growth:
        rsp = c_store(server, ds, [data], DEFLATED)
    assert rsp.get_int(c.STATUS) == 0xA700, rsp
    comment = rsp.get_str(c.ERROR_COMMENT)
    assert "inflates beyond 640 MB" in comment and "NETPACS_MAX_OBJECT_MB" in comment
    assert growth[0] < RSS_BUDGET, f"server grew by {growth[0] / MB:.0f} MB"
    assert blob_files(server) == files
    assert instance_count(server, ds.SOPInstanceUID) == 0


def test_deflate_bomb_by_stow_is_a_failed_part_out_of_resources_without_inflating_it(
    server: Netpacs, bomb: tuple[pydicom.Dataset, bytes]
) -> None:
    ds, data = bomb
    files = blob_files(server)
    with peak_rss_growth(server) as growth:
        answer = stow(server, stow_body([[part10_head(ds, DEFLATED), data]]))
    assert answer.status_code == 409, answer.text
    assert failure_reasons(answer) == [0xA700]
    assert growth[0] < RSS_BUDGET, f"server grew by {growth[0] / MB:.0f} MB"
    assert blob_files(server) == files
    assert "inflates beyond 640 MB" in answer.headers["warning"]


def test_bulk_data_and_frames_of_a_deflated_object_are_read_without_inflating_it_whole(
    server: Netpacs,
) -> None:
    """A small deflated object whose data set inflates to 400 MB (a private value of
    zeros before the pixel data): stored, and its pixel data and frame are answered
    holding only what is asked for."""
    ds, head = header(Rows=8, Columns=8, BitsAllocated=8, BitsStored=8, HighBit=7)
    pixels = bytes(range(64))
    private = struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 12) + b"NETPACS TEST"
    zeros = 400 * MB
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    start = packer.compress(head[: head.index(b"\x10\x00\x10\x00PN")])  # up to (0010,0010)
    # Elements stay in tag order: group 0009 goes between groups 0008 and 0010.
    data = start
    data += packer.compress(private + _long(0x00091000, b"OB", zeros))
    data += packer.flush(zlib.Z_FULL_FLUSH)
    block = packer.compress(bytes(16 * MB)) + packer.flush(zlib.Z_FULL_FLUSH)
    data += block * (zeros // (16 * MB))
    rest = head[head.index(b"\x10\x00\x10\x00PN") :]
    data += packer.compress(rest + _long(0x7FE00010, b"OB", len(pixels)) + pixels)
    data += packer.flush()
    data += b"\0" if len(data) % 2 else b""
    with peak_rss_growth(server) as stored:
        answer = stow(server, stow_body([[part10_head(ds, DEFLATED), data]]))
    assert answer.status_code == 200, answer.text
    assert stored[0] < RSS_BUDGET, f"server grew by {stored[0] / MB:.0f} MB storing it"

    with peak_rss_growth(server) as growth:
        value = server.http.get(
            bulk_url(server, ds, "7FE00010"),
            headers={"Accept": 'multipart/related; type="application/octet-stream"'},
        )
        frame = server.http.get(
            bulk_url(server, ds, "x").replace("/bulk/x", "/frames/1"),
            headers={"Accept": 'multipart/related; type="application/octet-stream"'},
        )
    assert value.status_code == 200 and frame.status_code == 200, (value.text, frame.text)
    assert pixels in value.content and pixels in frame.content
    assert growth[0] < RSS_BUDGET, f"server grew by {growth[0] / MB:.0f} MB"


# -- item 10: deep nesting --------------------------------------------------------------------


def test_sequences_nested_2000_deep_by_stow_are_refused_and_leave_no_blob(
    server: Netpacs,
) -> None:
    ds, data = nested(2000)
    files = blob_files(server)
    answer = stow(server, stow_body([[part10_head(ds, EXPLICIT_VR_LE), data]]))
    assert answer.status_code == 409, answer.text
    assert failure_reasons(answer) == [0xC000]
    assert "nested more than 64 deep" in answer.headers["warning"]
    assert blob_files(server) == files
    assert instance_count(server, ds.SOPInstanceUID) == 0


def test_sequences_nested_5000_deep_by_c_store_are_refused_with_the_reason(
    server: Netpacs,
) -> None:
    ds, data = nested(5000)
    files = blob_files(server)
    rsp = c_store(server, ds, [data], EXPLICIT_VR_LE)
    assert rsp.get_int(c.STATUS) == 0xC000, rsp
    assert "nested more than 64 deep" in rsp.get_str(c.ERROR_COMMENT)
    assert blob_files(server) == files


# -- item 9: whole objects in memory, stalled uploads --------------------------------------


def test_a_600_mb_c_store_is_stored_without_holding_it_and_reads_back_intact(
    server: Netpacs,
) -> None:
    ds, head, pixels = large_ct(600 * MB)
    started = time.monotonic()
    with peak_rss_growth(server) as growth:
        rsp = c_store(server, ds, _then(head, pixels.chunks()), EXPLICIT_VR_LE)
    took = time.monotonic() - started
    print(f"stored in {took:.1f} s")
    assert rsp.get_int(c.STATUS) == 0x0000, rsp
    assert growth[0] < RSS_BUDGET, f"server grew by {growth[0] / MB:.0f} MB in {took:.1f} s"
    assert read_back(server, ds, "7FE00010") == (600 * MB, pixels.sha256.hexdigest())


def test_a_600_mb_stow_is_stored_without_holding_it_and_reads_back_intact(
    server: Netpacs,
) -> None:
    ds, head, pixels = large_ct(600 * MB)
    part = _then(part10_head(ds, EXPLICIT_VR_LE) + head, pixels.chunks())
    started = time.monotonic()
    with peak_rss_growth(server) as growth:
        answer = stow(server, stow_body([part]))
    print(f"stored in {time.monotonic() - started:.1f} s")
    assert answer.status_code == 200, answer.text
    assert growth[0] < RSS_BUDGET, f"server grew by {growth[0] / MB:.0f} MB"
    assert read_back(server, ds, "7FE00010") == (600 * MB, pixels.sha256.hexdigest())


def test_a_c_store_beyond_the_largest_object_is_refused_out_of_resources(
    server: Netpacs,
) -> None:
    ds, head, pixels = large_ct(660 * MB)
    files = blob_files(server)
    with peak_rss_growth(server) as growth:
        rsp = c_store(server, ds, _then(head, pixels.chunks()), EXPLICIT_VR_LE)
    assert rsp.get_int(c.STATUS) == 0xA700, rsp
    assert "NETPACS_MAX_OBJECT_MB (640 MB)" in rsp.get_str(c.ERROR_COMMENT)
    assert growth[0] < RSS_BUDGET, f"server grew by {growth[0] / MB:.0f} MB"
    assert blob_files(server) == files


def test_a_peer_sending_stores_without_waiting_for_answers_is_not_buffered_without_end(
    server: Netpacs,
) -> None:
    """600 C-STOREs of 1 MB sent back to back, answers read only at the end: the server
    reads no further while 64 MB wait for its handler."""
    count, size = 600, 512 * 512 * 4
    block = os.urandom(size)
    first, _ = header()
    scu = RawScu(server.port, str(first.SOPClassUID), EXPLICIT_VR_LE)
    scu.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MB)
    try:
        with peak_rss_growth(server) as growth:
            for n in range(count):
                ds, head = header(Rows=512, Columns=512, BitsAllocated=32, SeriesNumber=n)
                scu.send_store(
                    n + 1, str(ds.SOPInstanceUID), [head + _long(0x7FE00010, b"OW", size), block]
                )
            statuses = [scu.response().get_int(c.STATUS) for _ in range(count)]
    finally:
        scu.release()
    assert statuses == [0] * count
    assert growth[0] < RSS_BUDGET, f"server grew by {growth[0] / MB:.0f} MB"


def test_a_stow_part_beyond_the_largest_object_is_413_and_the_rest_is_not_read(
    server: Netpacs,
) -> None:
    ds, head, pixels = large_ct(660 * MB)
    body = b"".join(stow_body([[part10_head(ds, EXPLICIT_VR_LE) + head]]))
    body = body[: body.rindex(b"\r\n--")]  # the pixel data follows
    request = (
        f"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {server.token()}\r\nContent-Type: {STOW_TYPE}\r\n"
        f"Content-Length: {len(body) + pixels.size + len(BOUNDARY) + 8}\r\n\r\n"
    ).encode()
    files = blob_files(server)
    sent = 0
    with peak_rss_growth(server) as growth:
        sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=30)
        try:
            sock.sendall(request + body)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for piece in pixels.chunks():
                    sock.sendall(piece)
                    sent += len(piece)
            answer = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    answer += chunk
        finally:
            sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"NETPACS_MAX_OBJECT_MB (640 MB)" in answer
    assert sent < pixels.size, "the server read the whole body"
    assert growth[0] < RSS_BUDGET, f"server grew by {growth[0] / MB:.0f} MB"
    assert blob_files(server) == files


def test_stalled_stow_uploads_are_answered_408_and_closed_within_the_idle_limit(
    server: Netpacs,
) -> None:
    ds, _ = header()
    token = server.token()
    request = (
        f"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: {STOW_TYPE}\r\n"
        f"Content-Length: {10 * MB}\r\n\r\n"
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n"
    ).encode() + part10_head(ds, EXPLICIT_VR_LE)[:100]
    sockets = []
    started = time.monotonic()
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=15)
        sock.sendall(request)
        sockets.append(sock)
    try:
        for sock in sockets:
            answer = b""
            while chunk := sock.recv(65536):  # until the server closes the connection
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
            assert b"stalled" in answer
        took = time.monotonic() - started
        assert took < 10, f"stalled uploads were closed after {took:.1f} s"
    finally:
        for sock in sockets:
            sock.close()


def _then(first: bytes, rest: Iterable[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def test_deflate_bomb_helper_really_inflates_to_a_gigabyte(
    bomb: tuple[pydicom.Dataset, bytes],
) -> None:
    """The bomb the tests send is what they say (checked here, not in the server)."""
    _, data = bomb
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    view = io.BytesIO(data)
    while piece := view.read(MB):
        while piece and not inflater.eof:  # the stream is padded to an even length
            total += len(inflater.decompress(piece, MB))
            piece = inflater.unconsumed_tail
    assert total > 1024 * MB


def test_nested_helper_is_what_pydicom_reads_as_deep_sequences() -> None:
    _, data = nested(10)
    ds = pydicom.dcmread(io.BytesIO(part10_head(ct_dataset(), EXPLICIT_VR_LE) + data), force=True)
    depth, item = 0, ds
    while "ContentSequence" in item:
        item = item.ContentSequence[0]
        depth += 1
    assert depth == 10
