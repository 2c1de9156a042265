"""Who may send ADT (issue 17): each feed of the region file is recognised by its source
address (plain MLLP) or its client certificate (MLLP over TLS), and MSH-4 must be one of
that feed's facilities; anything else gets an AR and a Security Alert. Also the MLLP
listener's bound on whitespace between frames. Real sockets against a running netpacs."""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from netpacs.app.settings import BUNDLED_DEMO_REGION
from netpacs.index.schema import adt_identity, audit_event
from tests.certificates import Pair, TestCa
from tests.conftest import Netpacs, free_port
from tests.hl7.conftest import Ack, MllpClient, adt

RXC_FEED = 'facilities = ["RXC", "EDGH", "CONQ"]\nhosts = ["127.0.0.1"]'
RTK_FEED = 'facilities = ["RTK", "SPH", "ASH"]\nhosts = ["127.0.0.1"]'
EMPI_FEED = 'facilities = ["SSX_EMPI"]\nhosts = ["127.0.0.1"]'
RTK_SUBJECT = "CN=rtk-pas.example,O=Ashford and St Peter's"


def region_text() -> str:
    """The demo region with RXC's feed at 127.0.0.2, the regional EMPI at 127.0.0.4 and
    RTK's feed over TLS only (its client certificate); the other trusts at 127.0.0.1."""
    text = BUNDLED_DEMO_REGION.read_text()
    for old, new in [
        (RXC_FEED, RXC_FEED.replace("127.0.0.1", "127.0.0.2")),
        (EMPI_FEED, EMPI_FEED.replace("127.0.0.1", "127.0.0.4")),
        (RTK_FEED, RTK_FEED.replace('hosts = ["127.0.0.1"]', f'tls_subject = "{RTK_SUBJECT}"')),
    ]:
        assert old in text
        text = text.replace(old, new)
    return text


class Client(MllpClient):
    """An MLLP client from a chosen loopback address, over TLS when given a context."""

    def __init__(
        self, port: int, *, source: str = "127.0.0.1", tls: ssl.SSLContext | None = None
    ) -> None:
        sock = socket.create_connection(("127.0.0.1", port), 30, source_address=(source, 0))
        self.sock = tls.wrap_socket(sock, server_hostname="localhost") if tls else sock
        self.buffer = b""


class Feeds:
    def __init__(self, server: Netpacs, ca: TestCa, rtk: Pair, stranger: Pair) -> None:
        self.server, self.ca, self.rtk, self.stranger = server, ca, rtk, stranger

    @property
    def tls_port(self) -> int:
        return int(self.server.extra_env["NETPACS_MLLP_TLS_PORT"])

    def plain(self, source: str = "127.0.0.1") -> Client:
        return Client(self.server.mllp_port, source=source)

    def tls(self, pair: Pair | None, source: str = "127.0.0.1") -> Client:
        return Client(self.tls_port, source=source, tls=self.ca.client_context(pair))


def start(folder: Path, **env: str) -> Feeds:
    ca = TestCa(folder)
    ours = ca.issue("netpacs", cn="localhost", server=True)
    rtk = ca.issue("rtk", cn="rtk-pas.example", o="Ashford and St Peter's")
    stranger = ca.issue("stranger", cn="somebody.example", o="Ashford and St Peter's")
    region = folder / "region.toml"
    region.write_text(region_text())
    server = Netpacs(
        data_dir=folder / "data",
        database_url=f"sqlite:///{folder / 'index.sqlite'}",
        region_file=region,
        extra_env={
            "NETPACS_MLLP_TLS_PORT": str(free_port()),
            "NETPACS_MLLP_TLS_CERT_FILE": str(ours.cert),
            "NETPACS_MLLP_TLS_KEY_FILE": str(ours.key),
            "NETPACS_MLLP_TLS_CA_FILE": str(ca.path),
            **env,
        },
        processes=1,
    ).start()
    return Feeds(server, ca, rtk, stranger)


@pytest.fixture(scope="module")
def feeds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Feeds]:
    started = start(tmp_path_factory.mktemp("feeds"))
    try:
        yield started
    finally:
        started.server.stop()


def identities(server: Netpacs, patient_id: str) -> list[dict[str, Any]]:
    engine = sa.create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(adt_identity).where(adt_identity.c.patient_id == patient_id)
            ).all()
    finally:
        engine.dispose()
    return [dict(r._mapping) for r in rows]


def security_alerts(server: Netpacs, control_id: str) -> list[sa.Row[Any]]:
    engine = sa.create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(audit_event.c.source, audit_event.c.detail).where(
                        audit_event.c.event_id == "110113",
                        audit_event.c.detail.contains(control_id),
                    )
                ).all()
            )
    finally:
        engine.dispose()


def test_an_a04_naming_rxc_from_an_address_that_is_not_rxcs_feed_is_refused_and_audited(
    feeds: Feeds,
) -> None:
    message = adt(
        "A04", "ID-A04-1", "RXC777001^^^RXC^MR~9434765919^^^NHS^NH", name="VICTIM^VERA",
        birth_date="19700101", facility="RXC",
    )  # fmt: skip
    # From 127.0.0.1: other trusts' feeds, which may not speak for RXC.
    other = feeds.plain()
    refused = other.send(message)
    assert refused.code == "AR"
    assert "'RXC' is not one that" in refused.field("MSA", 3)
    assert other.send(message).code == "AR"  # the connection stays: it is a feed
    other.close()
    # From 127.0.0.3: no feed at all. Refused, and the connection closed.
    stranger = feeds.plain("127.0.0.3")
    nobody = stranger.send(message)
    assert nobody.code == "AR"
    assert "127.0.0.3 is not an ADT feed of the region file" in nobody.field("MSA", 3)
    assert stranger.closed_by_peer()
    assert identities(feeds.server, "RXC777001") == []
    alerts = security_alerts(feeds.server, "ID-A04-1")
    assert {a.source for a in alerts} == {"127.0.0.1", "127.0.0.3"}
    assert all("refused HL7 ADT^A04" in a.detail for a in alerts)
    # RXC's feed (127.0.0.2) sends the same message: applied; the refusals did not use
    # up its control id.
    rxc = feeds.plain("127.0.0.2")
    assert rxc.send(message).code == "AA"
    rxc.close()
    assert identities(feeds.server, "RXC777001")[0]["patient_name"] == "VICTIM^VERA"


def test_an_a40_claiming_the_regional_empi_merges_only_from_the_empis_address(
    feeds: Feeds,
) -> None:
    rtp = feeds.plain()
    for n in ("1", "2"):
        ack = rtp.send(adt("A04", f"ID-RTP-{n}", f"RTP88800{n}^^^RTP^MR", name=f"TWO^{n}",
                           facility="RTP"))  # fmt: skip
        assert ack.code == "AA", ack.text
    merge = adt("A40", "ID-A40-1", "RTP888001^^^RTP^MR", mrg1="RTP888002^^^RTP^MR",
                facility="SSX_EMPI")  # fmt: skip
    refused = rtp.send(merge)
    assert refused.code == "AR"
    assert "'SSX_EMPI' is not one that" in refused.field("MSA", 3)
    rtp.close()
    assert security_alerts(feeds.server, "ID-A40-1")
    empi = feeds.plain("127.0.0.4")
    merged = empi.send(merge)
    empi.close()
    assert merged.code == "AA", merged.text
    assert "moved to RTP888001 at RTP" in merged.field("MSA", 3)


def test_mllp_over_tls_recognises_a_feed_by_its_client_certificate(feeds: Feeds) -> None:
    register = adt("A04", "ID-TLS-1", "RTK999001^^^RTK^MR", name="TLS^TINA", facility="RTK")
    # Plain MLLP for RTK: its feed must present its certificate.
    plain = feeds.plain()
    assert plain.send(register).code == "AR"
    plain.close()
    # A certificate of the region's CA that is no feed's, from an address of no feed.
    stranger = feeds.tls(feeds.stranger, source="127.0.0.5")
    ack = stranger.send(register)
    assert ack.code == "AR"
    assert "(certificate CN=somebody.example" in ack.field("MSA", 3)
    assert "is not an ADT feed" in ack.field("MSA", 3)
    assert stranger.closed_by_peer()
    # The same certificate from 127.0.0.1 is taken for the feeds there (hosts only, any
    # certificate), which do not speak for RTK.
    local = feeds.tls(feeds.stranger)
    assert local.send(register).code == "AR"
    local.close()
    # No certificate at all: the handshake fails.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        feeds.tls(None).send(register)
    # RTK's feed: applied; but it may not speak for RXC.
    rtk = feeds.tls(feeds.rtk)
    assert rtk.send(register).code == "AA"
    other = rtk.send(adt("A04", "ID-TLS-2", "RXC999002^^^RXC^MR", name="X^Y", facility="RXC"))
    assert other.code == "AR"
    rtk.close()
    assert identities(feeds.server, "RTK999001")[0]["patient_name"] == "TLS^TINA"
    assert identities(feeds.server, "RXC999002") == []


def _rss_kb(pid: int) -> int:
    """Resident memory of a process and all its descendants (kB)."""
    total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total += int(line.split()[1])
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += _rss_kb(int(child))
    return total


def _answer_within(sock: socket.socket, seconds: float) -> bytes:
    ready, _, _ = select.select([sock], [], [], seconds)
    return sock.recv(65536) if ready else b""


def test_whitespace_before_a_start_block_is_capped_and_the_connection_dropped(
    feeds: Feeds,
) -> None:
    assert feeds.server.proc is not None
    before = _rss_kb(feeds.server.proc.pid)
    started = time.monotonic()
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", feeds.server.mllp_port), 10) as sock:
            sent, answer = 0, b""
            while not answer and sent < 8 << 20 and time.monotonic() - started < 20:
                sock.sendall(b" \r\n" * 4096)
                sent += 3 * 4096
                answer = _answer_within(sock, 0.2)
            assert b"MSA|AR" in answer, f"no NAK after {sent} bytes of whitespace"
            assert b"whitespace" in answer
            assert sent <= 64 * 1024
            assert _answer_within(sock, 5) == b""  # closed
    # Another sender is answered meanwhile, and the listener holds nothing.
    ok = feeds.plain().send(adt("A08", "ID-WS-1", "RTP888003^^^RTP^MR", facility="RTP"))
    assert isinstance(ok, Ack) and ok.code == "AA"
    assert _rss_kb(feeds.server.proc.pid) - before < 300 * 1024
    assert time.monotonic() - started < 20


def test_the_plain_mllp_port_can_be_closed_leaving_mllp_over_tls(tmp_path: Path) -> None:
    tls_only = start(tmp_path, NETPACS_MLLP_PLAIN_PORT="false")
    try:
        with pytest.raises(ConnectionRefusedError):
            tls_only.plain()
        rtk = tls_only.tls(tls_only.rtk)
        ack = rtk.send(adt("A04", "ID-TLS-ONLY", "RTK999100^^^RTK^MR", name="A^B", facility="RTK"))
        rtk.close()
        assert ack.code == "AA", ack.text
    finally:
        tls_only.server.stop()
