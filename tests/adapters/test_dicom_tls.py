"""DICOM TLS (PS3.15 B.1): a second DIMSE port over TLS 1.2+, optionally requiring
client certificates; DCMTK as the real peer."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from netpacs.synthetic import write_ct_series
from tests.adapters.test_dimse import find
from tests.conftest import NETPACS, Netpacs, dcmtk, free_port


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # signed by another CA
    stranger_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(
    folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    c, k = folder / f"{stem}.pem", folder / f"{stem}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return c, k


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    cn: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, usage: x509.ObjectIdentifier
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, ca_key = _ca("netpacs test region CA")
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server = _write(
        folder, "server", *_leaf("NETPACS", ca, ca_key, ExtendedKeyUsageOID.SERVER_AUTH)
    )
    client = _write(
        folder, "client", *_leaf("EDGH_CT1", ca, ca_key, ExtendedKeyUsageOID.CLIENT_AUTH)
    )
    other, other_key = _ca("somebody else's CA")
    stranger = _write(
        folder, "stranger", *_leaf("EDGH_CT1", other, other_key, ExtendedKeyUsageOID.CLIENT_AUTH)
    )
    return Pki(folder / "ca.pem", *server, *client, *stranger)


def _server(
    tmp_path: Path, database_url: str, region_file: Path, pki: Pki, *, peers: bool
) -> Netpacs:
    env = {
        "NETPACS_DIMSE_TLS_PORT": str(free_port()),
        "NETPACS_DIMSE_TLS_CERT_FILE": str(pki.server_cert),
        "NETPACS_DIMSE_TLS_KEY_FILE": str(pki.server_key),
    }
    if peers:
        env["NETPACS_DIMSE_TLS_CA_FILE"] = str(pki.ca)
    return Netpacs(
        data_dir=tmp_path / "data",
        database_url=database_url,
        region_file=region_file,
        extra_env=env,
    ).start()


def _tls_port(server: Netpacs) -> str:
    return server.extra_env["NETPACS_DIMSE_TLS_PORT"]


def test_a_modality_stores_over_tls_and_a_plain_connection_to_the_tls_port_fails(
    tmp_path: Path, database_url: str, region_file: Path, pki: Pki
) -> None:
    server = _server(tmp_path, database_url, region_file, pki, peers=False)
    try:
        files = write_ct_series(
            tmp_path / "ct", 3, rows=16, columns=16, patient_id="T1", issuer="RXC"
        )
        sent = dcmtk(
            "storescu",
            "+tla",
            "+cf",
            str(pki.ca),
            "-aet",
            "EDGH_CT1",
            "-aec",
            "NETPACS",
            "127.0.0.1",
            _tls_port(server),
            *map(str, files),
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
        (answer,) = find(
            server,
            tmp_path,
            "QueryRetrieveLevel=STUDY",
            f"StudyInstanceUID={study}",
            "NumberOfStudyRelatedInstances",
        )
        assert int(answer.NumberOfStudyRelatedInstances) == 3
        plain = dcmtk(
            "echoscu",
            "-to",
            "10",
            "-aet",
            "EDGH_CT1",
            "-aec",
            "NETPACS",
            "127.0.0.1",
            _tls_port(server),
        )
        assert plain.returncode != 0
        untrusted = dcmtk(
            "echoscu", "+tla", "-aet", "EDGH_CT1", "-aec", "NETPACS", "127.0.0.1", _tls_port(server)
        )  # no CA: cannot trust us
        assert untrusted.returncode != 0
    finally:
        server.stop()


def test_with_a_ca_file_only_peers_with_a_certificate_of_that_ca_get_in(
    tmp_path: Path, database_url: str, region_file: Path, pki: Pki
) -> None:
    server = _server(tmp_path, database_url, region_file, pki, peers=True)
    try:
        port = _tls_port(server)
        ok = dcmtk(
            "echoscu",
            "+tls",
            str(pki.client_key),
            str(pki.client_cert),
            "+cf",
            str(pki.ca),
            "-aet",
            "EDGH_CT1",
            "-aec",
            "NETPACS",
            "127.0.0.1",
            port,
        )
        assert ok.returncode == 0, ok.stdout + ok.stderr
        anonymous = dcmtk(
            "echoscu",
            "+tla",
            "+cf",
            str(pki.ca),
            "-aet",
            "EDGH_CT1",
            "-aec",
            "NETPACS",
            "127.0.0.1",
            port,
        )
        assert anonymous.returncode != 0
        stranger = dcmtk(
            "echoscu",
            "+tls",
            str(pki.stranger_key),
            str(pki.stranger_cert),
            "+cf",
            str(pki.ca),
            "-aet",
            "EDGH_CT1",
            "-aec",
            "NETPACS",
            "127.0.0.1",
            port,
        )
        assert stranger.returncode != 0
    finally:
        server.stop()


def test_tls_port_without_a_loadable_certificate_stops_serve_with_a_message(
    tmp_path: Path, database_url: str, region_file: Path, pki: Pki
) -> None:
    server = Netpacs(
        data_dir=tmp_path / "data",
        database_url=database_url,
        region_file=region_file,
        extra_env={
            "NETPACS_DIMSE_TLS_PORT": str(free_port()),
            "NETPACS_DIMSE_TLS_CERT_FILE": str(pki.server_cert),
            "NETPACS_DIMSE_TLS_KEY_FILE": str(tmp_path / "missing.key"),
        },
    )
    result = subprocess.run(
        [str(NETPACS), "serve"], env=server.env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "NETPACS_DIMSE_TLS_CERT_FILE/KEY_FILE" in result.stderr
