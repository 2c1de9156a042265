"""A DICOM peer on a raw socket, for tests that send what no toolkit would: PDUs with
lying lengths, requests that stop half way, stalls. And the server's memory, as the
kernel counts it (the resident set of the supervisor and every worker it forked)."""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import time
from pathlib import Path

A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
Contexts = tuple[tuple[int, str, tuple[str, ...]], ...]  # (id, abstract syntax, transfer syntaxes)


def _item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def associate_rq(
    calling: str = "EDGH_CT1",
    called: str = "NETPACS",
    contexts: Contexts = ((1, VERIFICATION, (IMPLICIT_VR_LE,)),),
    max_pdu: int = 16384,
) -> bytes:
    """A whole A-ASSOCIATE-RQ PDU (PS3.8 9.3.2)."""
    items = [_item(0x10, b"1.2.840.10008.3.1.1.1")]
    for ctx_id, abstract, syntaxes in contexts:
        sub = _item(0x30, abstract.encode()) + b"".join(_item(0x40, ts.encode()) for ts in syntaxes)
        items.append(_item(0x20, bytes([ctx_id, 0, 0, 0]) + sub))
    user = _item(0x51, struct.pack(">I", max_pdu)) + _item(0x52, b"1.2.826.0.1.3680043.10.543.99")
    items.append(_item(0x50, user))
    fixed = (
        struct.pack(">HH", 1, 0)
        + called.encode().ljust(16)
        + calling.encode().ljust(16)
        + bytes(32)
    )
    body = fixed + b"".join(items)
    return struct.pack(">BBI", A_ASSOCIATE_RQ, 0, len(body)) + body


def p_data(ctx_id: int, payload: bytes, *, command: bool, last: bool) -> bytes:
    """One P-DATA-TF PDU carrying one PDV."""
    mch = (1 if command else 0) | (2 if last else 0)
    return (
        struct.pack(">BBIIBB", P_DATA_TF, 0, len(payload) + 6, len(payload) + 2, ctx_id, mch)
        + payload
    )


class Peer:
    """One connection to the server's DIMSE port."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: bytes) -> bool:
        """False when the server has closed the connection already."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def _exactly(self, n: int, deadline: float) -> bytes | None:
        buf = b""
        while len(buf) < n:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(n - len(buf))
            except TimeoutError:
                raise
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    def read_pdu(self, timeout: float = 5.0) -> tuple[int, bytes] | None:
        """The next PDU (type, body); None when the connection closed first.
        TimeoutError when neither happened within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        header = self._exactly(6, deadline)
        if header is None:
            return None
        pdu_type, _, length = struct.unpack(">BBI", header)
        body = self._exactly(length, deadline)
        if body is None:
            return None
        return pdu_type, body

    def associate(self, rq: bytes | None = None) -> tuple[int, bytes] | None:
        self.send(rq or associate_rq())
        return self.read_pdu()

    def closed_within(self, timeout: float) -> bool:
        """True when the server closes the connection (after any PDUs) within ``timeout``."""
        deadline = time.monotonic() + timeout
        try:
            while self.read_pdu(max(0.01, deadline - time.monotonic())) is not None:
                pass
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    pids = [pid]
    for one in pids:
        found = subprocess.run(
            ["pgrep", "-P", str(one)], capture_output=True, text=True, check=False
        )
        pids.extend(int(p) for p in found.stdout.split())
    return pids


def rss(pid: int) -> int:
    """Bytes resident in ``pid`` and every process it forked (0 for those gone)."""
    total = 0
    for one in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


MB = 1_000_000
