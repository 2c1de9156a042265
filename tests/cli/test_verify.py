"""``netpacs verify``: damaged and missing blobs fail it by name; orphans are swept on request."""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path

import pydicom

from tests.cli.conftest import Cli, write_study


def imported(cli: Cli, tmp_path: Path, n: int = 4) -> list[str]:
    """Import ``n`` objects; their SOP Instance UIDs."""
    files = write_study(tmp_path / "in", 1, n)
    result = cli.run("import", tmp_path / "in")
    assert result.returncode == 0, result.stdout + result.stderr
    return [pydicom.dcmread(f).SOPInstanceUID for f in files]


def test_verify_of_an_empty_archive_is_clean(sqlite_cli: Cli) -> None:
    result = sqlite_cli.run("verify")
    assert result.returncode == 0, result.stderr
    assert "verified 0 objects" in result.stdout


def test_one_corrupted_byte_fails_verify_naming_the_instance(cli: Cli, tmp_path: Path) -> None:
    uids = imported(cli, tmp_path)
    victim = uids[2]
    path = cli.blob_path(cli.blob_key(victim))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    result = cli.run("verify")

    assert result.returncode == 1
    assert "verified 4 objects: 3 intact, 0 missing, 1 damaged" in result.stdout
    line = next(ln for ln in result.stdout.splitlines() if victim in ln)
    assert line.startswith("CRC-32 mismatch: SOP Instance " + victim)
    assert sum(uid in result.stdout for uid in uids) == 1


def test_truncated_blob_is_a_size_mismatch(cli: Cli, tmp_path: Path) -> None:
    uids = imported(cli, tmp_path, 2)
    path = cli.blob_path(cli.blob_key(uids[0]))
    path.write_bytes(path.read_bytes()[:-10])

    result = cli.run("verify")

    assert result.returncode == 1
    assert f"size mismatch: SOP Instance {uids[0]}" in result.stdout


def test_deleted_blob_is_reported_missing(cli: Cli, tmp_path: Path) -> None:
    uids = imported(cli, tmp_path)
    key = cli.blob_key(uids[0])
    cli.blob_path(key).unlink()

    result = cli.run("verify")

    assert result.returncode == 1
    assert "1 missing" in result.stdout
    assert f"missing: SOP Instance {uids[0]} blob {key}: no blob is stored" in result.stdout


def test_orphan_blob_is_reported_and_swept_only_when_old_enough(cli: Cli, tmp_path: Path) -> None:
    uids = imported(cli, tmp_path, 2)
    orphan_key = uuid.uuid4().hex
    cli.put_blob(orphan_key, cli.blob_path(cli.blob_key(uids[0])).read_bytes())
    orphan = cli.blob_path(orphan_key)

    reported = cli.run("verify")
    assert reported.returncode == 0, reported.stdout  # orphans waste space, lose nothing
    assert "orphan blobs (no index row): 1, swept: 0" in reported.stdout
    assert f"orphan: blob {orphan_key}" in reported.stdout
    assert orphan.exists()

    young = cli.run("verify", "--sweep-orphans")  # default age: an hour
    assert "swept: 0" in young.stdout
    assert orphan.exists()

    hour_ago = time.time() - 7200
    os.utime(orphan, (hour_ago, hour_ago))
    swept = cli.run("verify", "--sweep-orphans")
    assert swept.returncode == 0
    assert re.search(rf"^orphan: blob {orphan_key} \(72\d\d s old\) swept$", swept.stdout, re.M)
    assert not orphan.exists()
    after = cli.run("verify")
    assert "verified 2 objects: 2 intact" in after.stdout
    assert "orphan blobs (no index row): 0" in after.stdout


def test_sweep_age_zero_removes_fresh_orphans(sqlite_cli: Cli, tmp_path: Path) -> None:
    uids = imported(sqlite_cli, tmp_path, 1)
    orphan_key = uuid.uuid4().hex
    sqlite_cli.put_blob(orphan_key, sqlite_cli.blob_path(sqlite_cli.blob_key(uids[0])).read_bytes())
    orphan = sqlite_cli.blob_path(orphan_key)

    result = sqlite_cli.run("verify", "--sweep-orphans", "0")

    assert "swept: 1" in result.stdout
    assert not orphan.exists()


def test_negative_sweep_age_is_a_usage_error(sqlite_cli: Cli) -> None:
    result = sqlite_cli.run("verify", "--sweep-orphans", "-1")
    assert result.returncode == 2
    assert "--sweep-orphans" in result.stderr
