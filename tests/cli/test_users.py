"""Accounts from the command line, and the secure defaults outside demo mode."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import NETPACS, Netpacs


def closed_region(region_file: Path) -> Path:
    """The region with each workstation allowed to C-MOVE only to itself."""
    text, n = re.subn(
        r'(\[\[trusts\.workstations\]\]\nae_title = "(\w+)"\nhost = "127.0.0.1"\nport = \d+\n)',
        r'\1move_destinations = ["\2"]\n',
        region_file.read_text(),
    )
    assert n == 6
    closed = region_file.with_name("closed-region.toml")
    closed.write_text(text)
    return closed


# One backend: what is tested is the start-up rules and the CLI, not the index.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_server_outside_demo_mode_refuses_to_start_while_demo_users_exist_and_takes_real_users(
    tmp_path: Path, database_url: str, region_file: Path
) -> None:
    demo = Netpacs(data_dir=tmp_path / "data", database_url=database_url, region_file=region_file)
    demo.start()  # demo mode: creates rxc.clinician and the rest
    demo.stop()
    real = Netpacs(
        data_dir=tmp_path / "data",
        database_url=database_url,
        region_file=region_file,
        extra_env={"NETPACS_DEMO": "false"},
    )
    # The demo region lets every workstation C-MOVE to any AE of the region.
    refused = subprocess.run(
        [str(NETPACS), "serve"], env=real.env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2
    assert "C-MOVE destinations are open to any AE for 6 AEs (RTP_WS1" in refused.stderr
    assert "move_destinations" in refused.stderr
    real.region_file = closed_region(region_file)
    refused = subprocess.run(
        [str(NETPACS), "serve"], env=real.env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2
    assert "demo users" in refused.stderr and "remove-demo" in refused.stderr

    env = {**real.env, "NETPACS_NEW_PASSWORD": "a long enough passphrase"}
    cli = lambda *a: subprocess.run(  # noqa: E731
        [str(NETPACS), "user", *a], env=env, capture_output=True, text=True, timeout=60
    )
    assert cli("remove-demo").stdout.startswith("removed 30 demo users")
    made = cli("add", "dr.jones", "--trust", "RYR", "--role", "radiologist", "--name", "Dr Jones")
    assert made.returncode == 0, made.stderr
    assert cli("add", "dr.jones", "--trust", "RYR", "--role", "radiologist").returncode == 2
    weak = cli("add", "dr.weak", "--trust", "RYR", "--role", "clinician")
    assert weak.returncode == 0  # the env password is long enough
    short = subprocess.run(
        [str(NETPACS), "user", "add", "dr.short", "--trust", "RYR", "--role", "clinician"],
        env={**real.env, "NETPACS_NEW_PASSWORD": "demo"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert short.returncode == 2 and "at least 12 characters" in short.stderr

    real.start()
    try:
        demo_user = httpx.post(
            f"{real.base_url}/auth/token", data={"username": "rxc.clinician", "password": "demo"}
        )
        assert demo_user.status_code == 400
        token = httpx.post(
            f"{real.base_url}/auth/token",
            data={"username": "dr.jones", "password": "a long enough passphrase"},
        )
        assert token.status_code == 200
        me = httpx.get(
            f"{real.base_url}/api/me",
            headers={"Authorization": f"Bearer {token.json()['access_token']}"},
        )
        assert me.json()["trust"] == "RYR" and me.json()["name"] == "Dr Jones"
    finally:
        real.stop()
