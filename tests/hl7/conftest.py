"""MLLP clients for the HL7 tests: real TCP sockets against the running netpacs."""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

from netpacs.index.schema import adt_identity
from tests.conftest import Netpacs

VT, END = b"\x0b", b"\x1c\r"


@dataclass
class Ack:
    """An acknowledgement as received: its segments split into fields."""

    text: str

    def field(self, segment: str, n: int) -> str:
        for line in self.text.split("\r"):
            fields = line.split("|")
            if fields[0] == segment:
                # MSH-1 is the separator itself: MSH-n is fields[n - 1].
                index = n - 1 if segment == "MSH" else n
                return fields[index] if index < len(fields) else ""
        raise AssertionError(f"no {segment} segment in {self.text!r}")

    @property
    def code(self) -> str:
        return self.field("MSA", 1)


class MllpClient:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buffer = b""

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> Ack:
        while END not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed by netpacs; unread {self.buffer!r}")
            self.buffer += chunk
        frame, _, self.buffer = self.buffer.partition(END)
        assert frame.startswith(VT), frame
        return Ack(frame[1:].decode("utf-8"))

    def send(self, message: str) -> Ack:
        self.send_raw(VT + message.encode("utf-8") + END)
        return self.receive()

    def closed_by_peer(self) -> bool:
        return self.sock.recv(1) == b""

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def mllp(netpacs: Netpacs) -> Iterator[MllpClient]:
    client = MllpClient(netpacs.mllp_port)
    yield client
    client.close()


def adt(
    trigger: str,
    control_id: str,
    pid3: str,
    *,
    name: str = "",
    birth_date: str = "",
    sex: str = "",
    mrg1: str | None = None,
    version: str = "2.4",
    facility: str = "RXC",
) -> str:
    """A synthetic ADT message from East Sussex's patient administration system."""
    now = dt.datetime.now().strftime("%Y%m%d%H%M%S")
    segments = [
        f"MSH|^~\\&|PAS|{facility}|NETPACS|REGION|{now}||ADT^{trigger}|{control_id}|P|{version}",
        f"EVN|{trigger}|{now}",
        f"PID|1||{pid3}||{name}||{birth_date}|{sex}",
    ]
    if mrg1 is not None:
        segments.append(f"MRG|{mrg1}")
    return "\r".join(segments) + "\r"


def identity(server: Netpacs, patient_id: str, issuer: str) -> dict[str, Any]:
    """The ADT identity row netpacs holds for a hospital number (read from its index)."""
    engine = sa.create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.select(adt_identity).where(
                    adt_identity.c.patient_id == patient_id, adt_identity.c.issuer == issuer
                )
            ).one()
    finally:
        engine.dispose()
    return dict(row._mapping)


def order(
    control: str,
    control_id: str,
    *,
    accession: str,
    pid3: str,
    name: str = "ORDER^PATIENT",
    birth_date: str = "19700101",
    sex: str = "F",
    procedure: str = "CTCHE^CT Chest^LOCAL",
    modality: str = "CT",
    priority: str = "R",
    when: str = "",
    station_ae: str = "",
    placer: str = "",
    filler: str = "",
    clinician: str = "C1234567^JONES^ANNA^^^DR",
    location: str = "WARD7^12^B^EDGH",
    patient_class: str = "I",
    reason: str = "^Cough for six weeks, smoker",
    order_status: str = "",
    facility: str = "EDGH",
    kind: str = "ORM",
) -> str:
    """A synthetic order from a trust's RIS: ORM^O01 (accession in OBR-18, station AE in
    OBR-21) or, with ``kind="OMI"``, OMI^O23 (accession in IPC-1, station AE in IPC-9)."""
    now = dt.datetime.now().strftime("%Y%m%d%H%M%S")
    when = when or dt.datetime.now().strftime("%Y%m%d%H%M")
    placer = placer or f"P{accession}"
    filler = filler or f"F{accession}"
    trigger = "O01" if kind == "ORM" else "O23"
    obr18, obr21 = (accession, station_ae) if kind == "ORM" else ("", "")
    segments = [
        f"MSH|^~\\&|RIS|{facility}|NETPACS|REGION|{now}||{kind}^{trigger}|{control_id}|P|2.5",
        f"PID|1||{pid3}||{name}||{birth_date}|{sex}",
        f"PV1|1|{patient_class}|{location}",
        f"ORC|{control}|{placer}|{filler}||{order_status}||||{now}|||{clinician}",
        f"TQ1|1||||||{when}||{priority}",
        f"OBR|1|{placer}|{filler}|{procedure}||||||||||||{clinician}||{obr18}|||{obr21}"
        f"|||{modality}|||||||{reason}",
    ]
    if kind == "OMI":
        segments.append(f"IPC|{accession}|RP{accession}||SPS{accession}|{modality}||||{station_ae}")
    return "\r".join(segments) + "\r"
