"""The bundled demo region is the region of REGION.md, and bad region files are refused clearly:
the message says which entry (table and key) is wrong and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from netpacs.app.region_file import load_region
from netpacs.app.settings import BUNDLED_DEMO_REGION
from netpacs.domain.peer import Peer, PeerCertificate
from netpacs.domain.region import (
    AEKind,
    Permission,
    RegionError,
    ResultsHeader,
)
from netpacs.domain.region_file import parse_region, parse_region_toml

EXPECTED_SITES = {
    "RTP": {"ESH"},
    "RTK": {"SPH", "ASH"},
    "RXC": {"EDGH", "CONQ"},
    "RPC": {"QVH"},
    "RA2": {"RSCH"},
    "RYR": {"RSUS", "WOR", "SRH", "PRH"},
}
WORKSTATION_PORTS = {
    "RTP": 11201,
    "RTK": 11202,
    "RXC": 11203,
    "RPC": 11204,
    "RA2": 11205,
    "RYR": 11206,
}


def test_bundled_region_has_the_six_trusts_with_their_sites() -> None:
    region = load_region(BUNDLED_DEMO_REGION)
    assert {t.ods_code: {s.code for s in t.sites} for t in region.trusts} == EXPECTED_SITES


def test_every_site_has_ct_mr_cr_us_modality_aes_that_only_send() -> None:
    region = load_region(BUNDLED_DEMO_REGION)
    for ods, sites in EXPECTED_SITES.items():
        for site in sites:
            for kind in ("CT1", "MR1", "CR1", "US1"):
                ae = region.ae(f"{site}_{kind}")
                assert ae is not None, f"{site}_{kind} missing"
                assert (ae.trust, ae.site, ae.kind, ae.port) == (ods, site, AEKind.MODALITY, None)


def test_every_trust_has_one_workstation_on_its_port_and_a_results_listener() -> None:
    region = load_region(BUNDLED_DEMO_REGION)
    for ods, port in WORKSTATION_PORTS.items():
        ws = region.ae(f"{ods}_WS1")
        assert ws is not None and ws.kind is AEKind.WORKSTATION
        assert (ws.trust, ws.host, ws.port) == (ods, "127.0.0.1", port)
        trust = region.trust(ods)
        assert trust is not None and trust.results_endpoint is not None
        assert trust.results_endpoint.port == 12570 + (port - 11200)


def test_bundled_region_file_is_shipped_in_the_package() -> None:
    """The file must be tracked by git, not only present in a developer's checkout."""
    assert BUNDLED_DEMO_REGION.is_file()
    assert BUNDLED_DEMO_REGION.parent.name == "data"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the region file defines no trusts"),
        ("[[trusts]]\nname = 'x'\n", r"^trusts\[0\]: 'ods_code' is missing$"),
        ("[[trusts]]\nods_code = 7\nname = 'x'\n", r"^trusts\[0\]: 'ods_code' must be text$"),
        (
            "[[trusts]]\nods_code='RTP'\nname='x'\n[[trusts.workstations]]\nae_title='A'\nhost='h'\n",
            r"^trusts\[0\]\.workstations\[0\]: 'port' is missing$",
        ),
        (
            "[[trusts]]\nods_code='RTP'\nname='x'\n[[trusts.workstations]]\nae_title='A'\n"
            "port='104'\n",
            r"trusts\[0\]\.workstations\[0\]: 'port' must be a whole number",
        ),
        (
            "[[trusts]]\nods_code='RTP'\nname='x'\n[[trusts.sites]]\ncode='S'\nname='s'\n"
            "modality_aes=['CT1', 'WAY_TOO_LONG_AE_TITLE']\n",
            r"trusts\[0\]\.sites\[0\]: 'modality_aes'\[1\] 'WAY_TOO_LONG_AE_TITLE' is not an AE "
            "title of 1-16 printable characters",
        ),
        (
            "[[trusts]]\nods_code='RTP'\nname='x'\n[[trusts.workstations]]\nae_title='A'\n"
            "port=104\npermissions=['store', 'print']\n",
            r"trusts\[0\]\.workstations\[0\]: 'permissions'\[1\] must be 'store', 'find', 'move', "
            "'get' or 'worklist'",
        ),
        (
            "[[trusts]]\nods_code='RTP'\nname='x'\n[[trusts.sites]]\ncode='S'\nname='s'\n"
            "modality_aes=['A', 'A']\n",
            "defined twice",
        ),
        ("not = toml = at all", "not TOML"),
        (
            "[[trusts]]\nods_code='RTP'\nname='x'\n[trusts.results_mllp]\nhost='h'\nport=1\n"
            "receiving_application='CRIS^RIS'\n",
            r"trusts\[0\]\.results_mllp: 'receiving_application' \(MSH-5\) must be 1 to 20",
        ),
        (
            "[[trusts]]\nods_code='RTP'\nname='x'\n[trusts.results_mllp]\nhost='h'\nport=1\n"
            "sending_facility=''\n",
            r"'sending_facility' \(MSH-4\) must be 1 to 20",
        ),
        (
            "[[trusts]]\nods_code='RTP'\nname='x'\n[trusts.results_mllp]\nhost='h'\nport=1\n"
            "tls='yes'\n",
            r"trusts\[0\]\.results_mllp: 'tls' must be true or false",
        ),
        (
            "[[trusts]]\nods_code='RTP'\nname='x'\n[trusts.results_mllp]\nhost='h'\nport=0\n",
            r"trusts\[0\]\.results_mllp: 'port' must be at least 1",
        ),
        (
            "[[trusts]]\nods_code='RTP'\nname='x'\n[trusts.results_mllp]\nhost='h'\nport=1\n"
            "ca_file='ca.pem'\n",
            r"^trusts\[0\]\.results_mllp: 'ca_file' is set but 'tls' is not true$",
        ),
        (
            "[[trusts]]\nods_code='RTP'\nname='x'\n[[trusts.workstations]]\nae_title='A'\n"
            "port=104\nmove_destinations=['B']\n",
            r"A: move_destinations \['B'\] are not AEs of the region",
        ),
        (
            "[[trusts]]\nods_code='RTP'\nname='x'\n[reporting]\nclaim_minutes=0\n"
            "turnaround_hours={urgent=2}\n[[reporting.agreements]]\nreporters=['RTP']\n"
            "for_trusts=['RTP']\nsubspecialties=['feet']\n",
            # every mistake at once, each where it is
            r"^reporting\.agreements\[0\]: 'subspecialties'\[0\] 'feet' is not one of neuro, .*; "
            r"reporting: 'turnaround_hours' 'urgent' is not one of emergency, .*; "
            r"reporting: 'claim_minutes' must be at least 1$",
        ),
        (
            "[[trusts]]\nods_code='RTP'\nname='x'\n[[reporting.agreements]]\nreporters=['*']\n"
            "for_trusts=['RTP', 'XYZ']\n",
            r"reporting\.agreements\[0\]: 'for_trusts' names trusts not in the region: \['XYZ'\]",
        ),
        (
            "[[trusts]]\nods_code='RTP'\nname='x'\n[[networks]]\nname='Kent'\n"
            "protocol='dicomweb'\n",
            r"networks\[0\]: a DICOMweb network needs 'url'",
        ),
        (
            "[[trusts]]\nods_code='RTP'\nname='x'\n[[networks]]\nname='Wessex'\n"
            "protocol='dimse'\nae_title='WESSEX'\n",
            r"networks\[0\]: a DIMSE network needs 'ae_title', 'host' and 'port'",
        ),
        (
            "[[trusts]]\nods_code='RTP'\nname='x'\n[[networks]]\nname='Kent'\n"
            "protocol='dicomweb'\nurl='http://k'\nshares=['RTP', 'XYZ']\n",
            r"networks\[0\]: 'shares' names trusts not in the region: \['XYZ'\]",
        ),
        (
            "[[trusts]]\nods_code='RTP'\nname='x'\n[[networks]]\nname='Kent'\n"
            "protocol='dicomweb'\nurl='http://k'\nauth='client_credentials'\n",
            r"networks\[0\]: auth 'client_credentials' needs 'token_url'",
        ),
    ],
)
def test_malformed_region_file_is_refused_with_where_it_is_wrong(text: str, message: str) -> None:
    with pytest.raises(RegionError, match=message):
        parse_region_toml(text)


def test_a_misspelt_key_is_refused_rather_than_ignored() -> None:
    # Ignored, a misspelt ``permissions`` would leave the workstation every permission.
    text = BUNDLED_DEMO_REGION.read_text().replace(
        'ae_title = "RTP_WS1"', 'ae_title = "RTP_WS1"\npermisions = ["find"]', 1
    )
    with pytest.raises(RegionError, match=r"'permisions' is not a key of this table"):
        parse_region_toml(text)


def test_a_region_file_that_cannot_be_used_is_refused_naming_its_path(tmp_path: Path) -> None:
    with pytest.raises(RegionError, match=r"cannot read region file .*nowhere\.toml"):
        load_region(tmp_path / "nowhere.toml")
    path = tmp_path / "region.toml"
    path.write_text("[[trusts]]\nname = 'x'\n")
    with pytest.raises(RegionError, match=rf"^region file {path}: trusts\[0\]: 'ods_code' is"):
        load_region(path)
    path.write_text(
        "[[trusts]]\nods_code='RTP'\nname='x'\n[trusts.results_mllp]\nhost='h'\nport=1\n"
        "tls=true\nca_file='nowhere.pem'\n"
    )
    with pytest.raises(RegionError, match=r"'ca_file' '.*nowhere\.pem' is not a file"):
        load_region(path)


def test_a_region_is_parsed_from_a_mapping_with_each_ae_s_permissions() -> None:
    region = parse_region(
        {
            "name": "mapped",
            "trusts": [
                {
                    "ods_code": "RTP",
                    "name": "x",
                    "workstations": [{"ae_title": "WS", "port": 104, "permissions": ["find"]}],
                }
            ],
            "archives": [{"ae_title": "PEER", "trust": "RTP", "move_destinations": ["WS"]}],
        }
    )
    ws, peer = region.ae("WS"), region.ae("PEER")
    assert ws is not None and peer is not None
    assert (ws.may(Permission.FIND), ws.may(Permission.STORE)) == (True, False)
    assert (peer.kind, peer.port, peer.may_move_to("WS"), peer.may_move_to("X")) == (
        AEKind.ARCHIVE,
        None,
        True,
        False,
    )


def test_a_trusts_results_feed_names_the_msh_values_its_interface_engine_expects(
    tmp_path: Path,
) -> None:
    path = tmp_path / "region.toml"
    path.write_text(
        "[[trusts]]\nods_code='RTP'\nname='x'\n[trusts.results_mllp]\nhost='h'\nport=1\n"
        "receiving_application='CRIS'\nreceiving_facility='RTP01'\nsending_facility='SSX'\n"
        "[[trusts]]\nods_code='RTK'\nname='y'\n[trusts.results_mllp]\nhost='h'\nport=2\n"
    )
    region = load_region(path)
    named, default = region.trust("RTP"), region.trust("RTK")
    assert named is not None and default is not None
    assert named.results_header == ResultsHeader("", "SSX", "CRIS", "RTP01")
    assert default.results_header == ResultsHeader("", "REGION", "RIS", "RTK")


def test_a_trusts_results_over_tls_name_a_ca_file_beside_the_region_file(tmp_path: Path) -> None:
    (tmp_path / "rtp-ca.pem").write_text("a CA certificate")
    path = tmp_path / "region.toml"
    path.write_text(
        "[[trusts]]\nods_code='RTP'\nname='x'\n[trusts.results_mllp]\nhost='ris.rtp'\n"
        "port=6661\ntls=true\nca_file='rtp-ca.pem'\n"
    )
    trust = load_region(path).trust("RTP")
    assert trust is not None and trust.results_endpoint is not None
    assert trust.results_endpoint.tls
    assert trust.results_endpoint.ca_file == tmp_path / "rtp-ca.pem"


def test_an_adt_feed_speaks_for_the_trust_of_its_ods_code_site_code_or_named_facility(
    tmp_path: Path,
) -> None:
    path = tmp_path / "region.toml"
    path.write_text(
        "[[trusts]]\nods_code='RXC'\nname='x'\nadt_facilities=['ESHT_PAS']\n"
        "[[trusts.sites]]\ncode='EDGH'\nname='Eastbourne'\n"
        "[[trusts]]\nods_code='RTP'\nname='y'\n"
    )
    region = load_region(path)
    found = {f: region.trust_of_facility(f) for f in ("RXC", "EDGH", "ESHT_PAS", "RTP", "X")}
    assert found == {"RXC": "RXC", "EDGH": "RXC", "ESHT_PAS": "RXC", "RTP": "RTP", "X": None}
    with pytest.raises(RegionError, match=r"trusts\[0\]: 'adt_facilities' must be a list"):
        parse_region_toml("[[trusts]]\nods_code='RXC'\nname='x'\nadt_facilities='ESHT_PAS'\n")
    with pytest.raises(
        RegionError,
        match=r"the region file: 'regional_adt_facilities'\[0\] 'A\^B' is not an MSH-4 namespace",
    ):
        parse_region_toml("regional_adt_facilities=['A^B']\n[[trusts]]\nods_code='RXC'\nname='x'\n")


# -- callers (issue 17) ------------------------------------------------------------------

_FEED_REGION = """
[[trusts]]
ods_code = "RXC"
name = "East Sussex"
[[trusts.sites]]
code = "EDGH"
name = "Eastbourne"
modality_aes = ["EDGH_CR1", { ae_title = "EDGH_CT1", hosts = ["10.1.2.0/24"] }]
[[trusts.workstations]]
ae_title = "RXC_WS1"
port = 104
hosts = ["10.9.9.9", "::ffff:10.9.9.8"]
tls_fingerprint = "sha256:%s"
"""


def test_aes_may_name_their_hosts_and_certificate_and_feeds_must_name_one_of_them() -> None:
    fp = ":".join(["AB"] * 32)
    region = parse_region_toml(
        _FEED_REGION % fp
        + '[[adt_feeds]]\nname = "PAS"\nfacilities = ["RXC", "EDGH"]\n'
        + 'tls_subject = "CN=pas.example,O=RXC"\n'
    )
    ct, cr, ws = region.ae("EDGH_CT1"), region.ae("EDGH_CR1"), region.ae("RXC_WS1")
    assert ct is not None and cr is not None and ws is not None
    assert ct.caller.problem(Peer("10.1.2.77")) is None
    assert "not one of its hosts" in (ct.caller.problem(Peer("10.1.3.1")) or "")
    assert ct.caller.problem(Peer("::ffff:10.1.2.5")) is None  # IPv4-mapped
    assert not cr.caller.is_known and cr.caller.problem(Peer("192.0.2.1")) is None
    good = PeerCertificate("CN=x", "ab" * 32)
    assert ws.caller.problem(Peer("10.9.9.9", good)) is None
    assert "over TLS" in (ws.caller.problem(Peer("10.9.9.9")) or "")
    other = PeerCertificate("CN=x", "0" * 64)
    assert "SHA-256" in (ws.caller.problem(Peer("10.9.9.9", other)) or "")
    (feed,) = region.adt_feeds
    assert feed.facilities == {"RXC", "EDGH"}
    assert region.adt_feeds_of(Peer("10.0.0.1", PeerCertificate("CN=pas.example,O=RXC", ""))) == (
        feed,
    )
    assert region.adt_feeds_of(Peer("10.0.0.1", PeerCertificate("CN=pas.example", ""))) == ()


@pytest.mark.parametrize(
    ("feed", "says"),
    [
        ('name = "PAS"\nfacilities = ["RXC"]\n', "an ADT feed needs 'hosts'"),
        ('name = "PAS"\nfacilities = ["RTK"]\nhosts = ["10.0.0.1"]\n', "['RTK'] are neither"),
        ('name = "PAS"\nfacilities = ["RXC"]\nhosts = ["pas.example"]\n', "not an IP address"),
        ('name = "PAS"\nfacilities = ["RXC"]\ntls_subject = "nonsense"\n', "not a subject name"),
        ('name = "PAS"\nfacilities = ["RXC"]\ntls_fingerprint = "abc"\n', "64 hex digits"),
        ('name = "PAS"\nfacilities = []\nhosts = ["10.0.0.1"]\n', "adt_feeds[0]: 'facilities'"),
    ],
)
def test_a_malformed_adt_feed_is_refused_saying_why(feed: str, says: str) -> None:
    with pytest.raises(RegionError) as refused:
        parse_region_toml(_FEED_REGION % ("ab" * 32) + "[[adt_feeds]]\n" + feed)
    assert says in str(refused.value)


def test_bundled_region_names_london_kent_and_wessex_sharing_only_what_they_list() -> None:
    region = load_region(BUNDLED_DEMO_REGION)
    by_name = {n.name: n for n in region.networks}
    assert set(by_name) == {"London", "Kent", "Wessex"}
    london, wessex = by_name["London"], by_name["Wessex"]
    assert london.dicomweb is not None
    assert london.dicomweb.url == "http://127.0.0.1:8701/dicom-web"
    assert wessex.dimse is not None
    assert (wessex.dimse.ae_title, wessex.dimse.port) == ("WESSEX", 11301)
    assert london.shares == {"RTP", "RXC", "RYR"}
    assert region.network_client("kent") is by_name["Kent"]
    assert all(n.timeout_seconds == 2.0 for n in region.networks)


def test_a_network_shares_nothing_unless_its_table_says() -> None:
    region = parse_region_toml(
        "[[trusts]]\nods_code='RTP'\nname='x'\n[[networks]]\nname='Kent'\n"
        "protocol='dicomweb'\nurl='http://k/dicom-web/'\n"
    )
    (kent,) = region.networks
    assert kent.shares == frozenset()
    assert kent.dicomweb is not None and kent.dicomweb.url == "http://k/dicom-web"


def test_a_modality_aes_modality_is_its_tables_or_the_one_its_title_names() -> None:
    region = parse_region_toml(
        "[[trusts]]\nods_code='RTP'\nname='x'\n[[trusts.sites]]\ncode='ESH'\nname='y'\n"
        "modality_aes=['ESH_CT1', 'ESH_US12', 'PHILIPS', {ae_title='ROOM3', modality='MR'}]\n"
    )
    found = {t: (a.modality if (a := region.ae(t)) else "?") for t in ("ESH_CT1", "ESH_US12")}
    assert found == {"ESH_CT1": "CT", "ESH_US12": "US"}
    assert (region.ae("PHILIPS") or pytest.fail()).modality is None
    assert (region.ae("ROOM3") or pytest.fail()).modality == "MR"
