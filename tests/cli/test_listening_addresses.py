"""Listening addresses (issue 17): demo mode (demo users, demo passwords) listens on
loopback only unless told otherwise; an address set is used, and every listening
address is logged at start."""

from __future__ import annotations

from pathlib import Path

from netpacs.app.settings import Settings
from tests.conftest import Netpacs


def listening(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp shows them) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].partition(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


LOOPBACK = "0100007F"  # 127.0.0.1, little-endian hex


def test_demo_mode_listens_on_loopback_and_an_address_set_is_used_and_logged(
    tmp_path: Path, region_file: Path
) -> None:
    server = Netpacs(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'index.sqlite'}",
        region_file=region_file,
        processes=1,
        extra_env={"NETPACS_MLLP_HOST": "127.0.0.2"},
    ).start()
    try:
        assert listening(server.port) == {LOOPBACK}
        assert listening(server.http_port) == {LOOPBACK}
        assert listening(server.mllp_port) == {"0200007F"}
        log = server.log()
        assert f"DIMSE 127.0.0.1:{server.port}" in log
        assert f"HTTP 127.0.0.1:{server.http_port}" in log
        assert f"MLLP 127.0.0.2:{server.mllp_port}" in log
    finally:
        server.stop()


def test_outside_demo_mode_every_interface_unless_an_address_is_set() -> None:
    production = Settings(demo=False)
    assert production.effective_dimse_host == "0.0.0.0"
    assert production.effective_http_host == "0.0.0.0"
    assert Settings(demo=False, mllp_host="10.1.2.3").effective_mllp_host == "10.1.2.3"
    assert Settings(demo=True).effective_http_host == "127.0.0.1"
    assert Settings(demo=True, http_host="0.0.0.0").effective_http_host == "0.0.0.0"
