"""DIMSE callers are who their AE title says (issue 17): the region file ties an AE to
the addresses it calls from (``hosts``) and to its TLS client certificate; a known AE
title from elsewhere is refused (A-ASSOCIATE-RJ, audited), and the plain DIMSE port can
be closed when the DICOM TLS port is configured. DCMTK and pynetdicom as real peers."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import sqlalchemy as sa
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from netpacs.adapters.dimse.requestor import associate
from netpacs.app.settings import BUNDLED_DEMO_REGION, Settings
from netpacs.index.schema import audit_event
from netpacs.synthetic import write_ct_series
from tests.certificates import Pair, TestCa
from tests.conftest import NETPACS, Netpacs, dcmtk, free_port, wait_until

EDGH_SUBJECT = "CN=EDGH_CT1,O=East Sussex Healthcare"


def region_text() -> str:
    """The demo region with RXC_WS1 tied to 127.0.0.2 and modality EDGH_CT1 to its
    client certificate."""
    text = BUNDLED_DEMO_REGION.read_text()
    for old, new in [
        (
            'ae_title = "RXC_WS1"\nhost = "127.0.0.1"\nport = 11203\n',
            'ae_title = "RXC_WS1"\nhost = "127.0.0.1"\nport = 11203\nhosts = ["127.0.0.2"]\n',
        ),
        (
            'modality_aes = ["EDGH_CT1", ',
            f'modality_aes = [{{ ae_title = "EDGH_CT1", tls_subject = "{EDGH_SUBJECT}" }}, ',
        ),
    ]:
        assert old in text
        text = text.replace(old, new)
    return text


@dataclass
class Pki:
    ca: TestCa
    server: Pair
    edgh: Pair
    other: Pair  # the region's CA, another subject


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = TestCa(folder)
    return Pki(
        ca,
        ca.issue("netpacs", cn="localhost", server=True),
        ca.issue("edgh", cn="EDGH_CT1", o="East Sussex Healthcare"),
        ca.issue("other", cn="EDGH_CT1", o="Somewhere Else"),
    )


def start(folder: Path, pki: Pki, **env: str) -> Netpacs:
    region = folder / "region.toml"
    region.write_text(region_text())
    tls_port = free_port()
    server = Netpacs(
        data_dir=folder / "data",
        database_url=f"sqlite:///{folder / 'index.sqlite'}",
        region_file=region,
        processes=1,
        extra_env={
            "NETPACS_DIMSE_TLS_PORT": str(tls_port),
            "NETPACS_DIMSE_TLS_CERT_FILE": str(pki.server.cert),
            "NETPACS_DIMSE_TLS_KEY_FILE": str(pki.server.key),
            "NETPACS_DIMSE_TLS_CA_FILE": str(pki.ca.path),
            **env,
        },
    )
    if env.get("NETPACS_DIMSE_PLAIN_PORT") == "false":
        server.port = tls_port  # what the fixture waits for
        server.extra_env["NETPACS_DIMSE_PORT"] = str(free_port())
    return server.start()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Netpacs]:
    started = start(tmp_path_factory.mktemp("callers"), pki, NETPACS_DIMSE_REQUIRE_AE_HOSTS="true")
    try:
        yield started
    finally:
        started.stop()


def tls_args(pki: Pki, pair: Pair | None) -> list[str]:
    if pair is None:
        return ["+tla", "+cf", str(pki.ca.path)]
    return ["+tls", str(pair.key), str(pair.cert), "+cf", str(pki.ca.path)]


def tls_port(server: Netpacs) -> str:
    return server.extra_env["NETPACS_DIMSE_TLS_PORT"]


def find_studies(server: Netpacs, calling_ae: str, source: str) -> set[str] | None:
    """Study UIDs a C-FIND from ``source`` finds; None when the association is rejected."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(Verification)
    assoc = associate(ae, "127.0.0.1", server.port, ae_title="NETPACS", bind_address=(source, 0))
    if not assoc.is_established:
        return None
    ident = pydicom.Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = ""
    found = {
        str(answer.StudyInstanceUID)
        for status, answer in assoc.send_c_find(ident, StudyRootQueryRetrieveInformationModelFind)
        if answer is not None and int(status.Status) == 0xFF00
    }
    assoc.release()
    return found


def security_alerts(server: Netpacs) -> list[sa.Row[Any]]:
    engine = sa.create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(audit_event.c.user_id, audit_event.c.source, audit_event.c.detail)
                    .where(audit_event.c.event_id == "110113")
                    .order_by(audit_event.c.id)
                ).all()
            )
    finally:
        engine.dispose()


def test_an_ae_tied_to_its_certificate_stores_over_tls_only_with_that_certificate(
    server: Netpacs, pki: Pki, tmp_path: Path
) -> None:
    files = write_ct_series(tmp_path / "ct", 2, rows=16, columns=16, patient_id="CI1", issuer="RXC")
    sent = dcmtk(
        "storescu", *tls_args(pki, pki.edgh), "-aet", "EDGH_CT1", "-aec", "NETPACS",
        "127.0.0.1", tls_port(server), *map(str, files),
    )  # fmt: skip
    assert sent.returncode == 0, sent.stdout + sent.stderr
    plain = dcmtk("echoscu", "-aet", "EDGH_CT1", "-aec", "NETPACS", "127.0.0.1", str(server.port))
    assert plain.returncode != 0
    assert "Calling AE Title Not Recognized" in plain.stdout + plain.stderr
    other = dcmtk(
        "echoscu", *tls_args(pki, pki.other), "-aet", "EDGH_CT1", "-aec", "NETPACS",
        "127.0.0.1", tls_port(server),
    )  # fmt: skip
    assert other.returncode != 0

    def alerted() -> bool:  # audited in a worker thread, after the A-ASSOCIATE-RJ
        details = " ".join(a.detail for a in security_alerts(server) if a.user_id == "EDGH_CT1")
        return (
            "must connect over TLS with its client certificate" in details
            and "presented certificate 'CN=EDGH_CT1,O=Somewhere Else'" in details
        )

    wait_until(alerted, what="the security alerts of both refusals")


def test_getscu_as_rxc_ws1_from_an_address_not_among_its_hosts_is_refused(
    server: Netpacs, pki: Pki, tmp_path: Path
) -> None:
    files = write_ct_series(tmp_path / "ct", 1, rows=16, columns=16, patient_id="CI2", issuer="RXC")
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    sent = dcmtk(
        "storescu", *tls_args(pki, pki.edgh), "-aet", "EDGH_CT1", "-aec", "NETPACS",
        "127.0.0.1", tls_port(server), *map(str, files),
    )  # fmt: skip
    assert sent.returncode == 0, sent.stdout + sent.stderr
    out = tmp_path / "got"
    out.mkdir()
    got = dcmtk(
        "getscu", "-aet", "RXC_WS1", "-aec", "NETPACS", "-od", str(out), "-k",
        "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1",
        str(server.port),
    )  # fmt: skip
    assert got.returncode != 0
    assert "Association Rejected" in got.stdout + got.stderr
    assert list(out.iterdir()) == []
    assert find_studies(server, "RXC_WS1", "127.0.0.3") is None
    assert study in (find_studies(server, "RXC_WS1", "127.0.0.2") or set())

    def alerted() -> bool:
        refused = [a for a in security_alerts(server) if a.user_id == "RXC_WS1"]
        return {a.source for a in refused} >= {"127.0.0.1", "127.0.0.3"} and (
            "calling AE RXC_WS1 connects from 127.0.0.3, not one of its hosts"
            in " ".join(a.detail for a in refused)
        )

    wait_until(alerted, what="the security alerts of both refusals")


def test_with_hosts_required_an_ae_without_hosts_or_certificate_is_refused(
    server: Netpacs,
) -> None:
    echo = dcmtk("echoscu", "-aet", "RTP_WS1", "-aec", "NETPACS", "127.0.0.1", str(server.port))
    assert echo.returncode != 0
    wait_until(
        lambda: any(
            "RTP_WS1 has neither hosts nor a TLS certificate" in a.detail
            for a in security_alerts(server)
        ),
        what="the security alert",
    )


def test_the_plain_dimse_port_can_be_closed_when_the_tls_port_is_configured(
    tmp_path: Path, pki: Pki
) -> None:
    server = start(tmp_path, pki, NETPACS_DIMSE_PLAIN_PORT="false")
    try:
        plain_port = int(server.extra_env["NETPACS_DIMSE_PORT"])
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", plain_port)) != 0
        echo = dcmtk(
            "echoscu", *tls_args(pki, pki.edgh), "-aet", "EDGH_CT1", "-aec", "NETPACS",
            "127.0.0.1", tls_port(server),
        )  # fmt: skip
        assert echo.returncode == 0, echo.stdout + echo.stderr
    finally:
        server.stop()


def test_a_certificate_named_for_an_ae_without_a_tls_ca_file_stops_serve(tmp_path: Path) -> None:
    region = tmp_path / "region.toml"
    region.write_text(region_text())
    server = Netpacs(data_dir=tmp_path / "data", database_url="sqlite://", region_file=region)
    result = subprocess.run(
        [str(NETPACS), "serve"], env=server.env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "names TLS client certificates for EDGH_CT1" in result.stderr


def test_closing_the_plain_port_needs_a_tls_port() -> None:
    with pytest.raises(ValueError, match="dimse_plain_port = false needs dimse_tls_port"):
        Settings(dimse_plain_port=False)
