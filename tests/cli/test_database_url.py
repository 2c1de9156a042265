"""An unreachable or misconfigured index database stops `netpacs serve` at start, with a
message naming NETPACS_DATABASE_URL (and never the password in it)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import NETPACS, free_port


def serve(tmp_path: Path, url: str) -> tuple[subprocess.CompletedProcess[str], float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NETPACS_")}
    env = {
        **clean,
        "NETPACS_DEMO": "true",
        "NETPACS_DATA_DIR": str(tmp_path / "data"),
        "NETPACS_DATABASE_URL": url,
        "NETPACS_DIMSE_PORT": str(free_port()),
        "NETPACS_HTTP_PORT": str(free_port()),
        "NETPACS_MLLP_PORT": str(free_port()),
    }
    started = time.monotonic()
    result = subprocess.run(
        [str(NETPACS), "serve"], env=env, capture_output=True, text=True, timeout=90
    )
    return result, time.monotonic() - started


@pytest.mark.parametrize("hosts", ["one", "several"])
def test_serve_with_an_unreachable_database_stops_naming_the_setting(
    tmp_path: Path, hosts: str
) -> None:
    ports = [free_port() for _ in range(1 if hosts == "one" else 2)]  # nothing listens
    where = ",".join(f"127.0.0.1:{p}" for p in ports)
    url = f"postgresql+psycopg://netpacs:s3cret-pw@{where}/netpacs?target_session_attrs=read-write"
    result, took = serve(tmp_path, url)
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()
    message = next(line for line in last if line.startswith("netpacs: "))
    assert "cannot use the index database" in message and "NETPACS_DATABASE_URL" in message
    assert all(str(p) in result.stderr for p in ports)  # which hosts it tried
    assert "s3cret-pw" not in result.stderr
    assert "Traceback" not in result.stderr
    assert took < 60


@pytest.mark.parametrize(
    "url",
    ["postgres://netpacs:s3cret-pw@127.0.0.1:5432/netpacs", "not a url at all"],
    ids=["no-such-dialect", "unparseable"],
)
def test_serve_with_a_malformed_database_url_stops_naming_the_setting(
    tmp_path: Path, url: str
) -> None:
    result, _ = serve(tmp_path, url)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "NETPACS_DATABASE_URL is not a usable database URL" in result.stderr
    assert "s3cret-pw" not in result.stderr
    assert "Traceback" not in result.stderr
