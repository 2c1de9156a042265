"""Settings come from NETPACS_* variables over a TOML file; a bad file stops the command."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import NETPACS


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NETPACS_")}
    return subprocess.run(
        [str(NETPACS), *args], env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


def test_missing_config_file_stops_the_command_and_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    result = run({"NETPACS_CONFIG": str(missing)}, "verify")
    assert result.returncode == 2
    assert str(missing) in result.stderr and "not a file" in result.stderr


def test_malformed_config_file_stops_the_command(tmp_path: Path) -> None:
    bad = tmp_path / "netpacs.toml"
    bad.write_text("dimse_port = = 1\n")
    result = run({"NETPACS_CONFIG": str(bad)}, "verify")
    assert result.returncode == 2
    assert "cannot read the configuration file" in result.stderr


def test_config_file_values_apply_and_environment_overrides_them(tmp_path: Path) -> None:
    data = tmp_path / "from-file"
    conf = tmp_path / "netpacs.toml"
    conf.write_text(f'data_dir = "{data}"\nae_title = "FROMFILE"\n')
    result = run({"NETPACS_CONFIG": str(conf)}, "verify")
    assert result.returncode == 0, result.stderr
    assert (data / "index.sqlite").exists()
    other = tmp_path / "from-env"
    result = run({"NETPACS_CONFIG": str(conf), "NETPACS_DATA_DIR": str(other)}, "verify")
    assert result.returncode == 0, result.stderr
    assert (other / "index.sqlite").exists()


def test_unknown_setting_in_config_file_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "netpacs.toml"
    conf.write_text(f'data_dir = "{tmp_path}"\ndimse_prot = 104\n')
    result = run({"NETPACS_CONFIG": str(conf)}, "verify")
    assert result.returncode == 2
    assert "dimse_prot" in result.stderr


def test_serve_stops_naming_netpacs_blob_dir_when_the_object_directory_cannot_be_used(
    tmp_path: Path,
) -> None:
    not_a_directory = tmp_path / "objects"
    not_a_directory.write_text("a file where the shared object directory should be")
    result = run(
        {
            "NETPACS_DATA_DIR": str(tmp_path / "data"),
            "NETPACS_BLOB_DIR": str(not_a_directory),
            "NETPACS_DEMO": "true",
            "NETPACS_HTTP_PORT": "0",
            "NETPACS_DIMSE_PORT": "0",
            "NETPACS_MLLP_PORT": "0",
        },
        "serve",
    )
    assert result.returncode == 2, result.stderr
    assert f"netpacs: NETPACS_BLOB_DIR={str(not_a_directory)!r}: " in result.stderr
    assert "cannot be made (Not a directory)" in result.stderr
