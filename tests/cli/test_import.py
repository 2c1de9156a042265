"""``netpacs import``: every file is stored or refused with a reason; exit status says which."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from netpacs import __version__
from tests.cli.conftest import Cli, ct_dataset, summary, write_part10, write_study


def pydicom_test_files() -> Path:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    return Path(path).parent


def test_version_prints_the_package_version(sqlite_cli: Cli) -> None:
    result = sqlite_cli.run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"netpacs {__version__}"


def test_import_of_a_folder_stores_every_file_and_verify_is_clean(cli: Cli, tmp_path: Path) -> None:
    files = write_study(tmp_path / "in" / "a") + write_study(tmp_path / "in" / "b", 1, 2)

    result = cli.run("import", tmp_path / "in")

    assert result.returncode == 0, result.stdout + result.stderr
    counts = summary(result.stdout)
    assert counts["files"] == counts["stored"] == len(files) == 8
    assert counts["refused"] == counts["failed"] == 0
    uids = {pydicom.dcmread(f).SOPInstanceUID for f in files}
    assert {row[4] for row in cli.identities()} == uids
    verify = cli.run("verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "verified 8 objects: 8 intact, 0 missing" in verify.stdout


def test_reimport_of_the_same_files_reports_already_stored(cli: Cli, tmp_path: Path) -> None:
    write_study(tmp_path / "in", 1, 4)
    assert cli.run("import", tmp_path / "in").returncode == 0
    before = cli.identities()

    again = cli.run("import", tmp_path / "in")

    assert again.returncode == 0, again.stdout + again.stderr
    counts = summary(again.stdout)
    assert counts["already stored"] == 4
    assert counts["stored"] == counts["refused"] == 0
    assert cli.identities() == before
    assert len(list((cli.data_dir / "objects").glob("???/*"))) == 4  # no copies kept


def test_trust_is_the_issuer_of_patient_ids_without_one(cli: Cli, tmp_path: Path) -> None:
    bare = write_part10(ct_dataset(PatientID="H123"), tmp_path / "in" / "bare.dcm")
    own = write_part10(
        ct_dataset(PatientID="K999", IssuerOfPatientID="RTK"), tmp_path / "in" / "own.dcm"
    )

    result = cli.run("import", "--trust", "RYR", bare, own)

    assert result.returncode == 0, result.stdout + result.stderr
    issuers = {(row[0], row[1]) for row in cli.identities()}
    assert issuers == {("H123", "RYR"), ("K999", "RTK")}
    from netpacs.index.schema import instance, study

    assert cli.rows(study.c.origin_trust, instance.c.origin_protocol) == {("RYR", "import")}


def test_trust_is_matched_without_regard_to_case(sqlite_cli: Cli, tmp_path: Path) -> None:
    f = write_part10(ct_dataset(PatientID="H1"), tmp_path / "x.dcm")
    assert sqlite_cli.run("import", "--trust", "ryr", f).returncode == 0
    assert {row[1] for row in sqlite_cli.identities()} == {"RYR"}


def test_unknown_trust_is_a_usage_error_naming_the_known_ones(
    sqlite_cli: Cli, tmp_path: Path
) -> None:
    f = write_part10(ct_dataset(), tmp_path / "x.dcm")

    result = sqlite_cli.run("import", "--trust", "XYZ", f)

    assert result.returncode == 2
    assert "--trust 'XYZ' is not a trust of the region" in result.stderr
    assert "RYR" in result.stderr
    assert not (sqlite_cli.data_dir / "index.sqlite").exists()  # nothing was started


def test_missing_path_is_a_usage_error(sqlite_cli: Cli, tmp_path: Path) -> None:
    result = sqlite_cli.run("import", tmp_path / "nowhere")
    assert result.returncode == 2
    assert "no such file or directory" in result.stderr


def test_non_dicom_files_are_refused_with_a_reason_not_a_crash(cli: Cli, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    write_part10(ct_dataset(), folder / "good.dcm")
    (folder / "README").write_text("scanned at East Surrey\n")
    (folder / "notes.txt").write_text("x" * 500)
    (folder / "empty.dcm").write_bytes(b"")

    result = cli.run("import", folder)

    assert result.returncode == 1
    counts = summary(result.stdout)
    assert counts == {
        "files": 4,
        "stored": 1,
        "replaced": 0,
        "already stored": 0,
        "refused": 3,
        "failed": 0,
    }
    for name in ("README", "notes.txt", "empty.dcm"):
        line = next(
            ln
            for ln in result.stdout.splitlines()
            if ln.endswith("not a DICOM Part 10 file (no 'DICM' after the preamble)") and name in ln
        )
        assert line.startswith("invalid: ")
    assert re.search(r"^\s+3\s+not a DICOM Part 10 file", result.stdout, re.MULTILINE)


def test_object_without_study_uid_is_refused_naming_the_attribute(
    sqlite_cli: Cli, tmp_path: Path
) -> None:
    ds = ct_dataset()
    del ds.StudyInstanceUID
    f = write_part10(ds, tmp_path / "nostudy.dcm")

    result = sqlite_cli.run("import", f)

    assert result.returncode == 1
    assert f"invalid: {f}: Study Instance UID (0020,000D) is missing" in result.stdout


def test_every_pydicom_test_file_is_stored_or_refused_with_a_reason(cli: Cli) -> None:
    folder = pydicom_test_files()
    files = {Path(root) / f for root, _, names in os.walk(folder) for f in names}

    result = cli.run("import", folder)

    out = result.stdout
    counts = summary(out)
    assert counts["files"] == len(files)
    accounted = sum(counts[k] for k in ("stored", "replaced", "already stored", "refused"))
    assert accounted + counts["failed"] == len(files), out
    assert counts["failed"] == 0, out
    assert result.returncode == (1 if counts["refused"] else 0)
    refused = re.findall(r"^(?:invalid|conflict): (.+?): (.+)$", out, re.MULTILINE)
    assert len(refused) == counts["refused"]
    assert {Path(p) for p, _ in refused} <= files
    assert all(reason.strip() for _, reason in refused)
    assert len(cli.identities()) == counts["stored"]
    ct_small = pydicom.dcmread(folder / "CT_small.dcm").SOPInstanceUID
    assert ct_small in {row[4] for row in cli.identities()}
    assert any(p.endswith("README.txt") for p, _ in refused)


@pytest.mark.parametrize("workers", ["1", "8"])
def test_import_result_does_not_depend_on_the_number_of_workers(
    sqlite_cli: Cli, tmp_path: Path, workers: str
) -> None:
    write_study(tmp_path / "in", 3, 5)
    result = sqlite_cli.run("import", "--workers", workers, tmp_path / "in")
    assert result.returncode == 0
    assert summary(result.stdout)["stored"] == 15
    assert len(sqlite_cli.identities()) == 15


def test_a_file_larger_than_the_largest_object_is_refused_naming_the_limit(
    sqlite_cli: Cli, tmp_path: Path
) -> None:
    small = write_part10(ct_dataset(), tmp_path / "in" / "small.dcm")
    large = write_part10(
        ct_dataset(Rows=1024, Columns=1024, PixelData=bytes(2 * 1024 * 1024)),
        tmp_path / "in" / "large.dcm",
    )
    sqlite_cli.extra_env["NETPACS_MAX_OBJECT_MB"] = "1"

    result = sqlite_cli.run("import", small, large)

    assert result.returncode == 1, result.stdout + result.stderr
    assert summary(result.stdout)["stored"] == 1
    assert f"invalid: {large}: object larger than NETPACS_MAX_OBJECT_MB (1 MB)" in result.stdout
    assert len(list((sqlite_cli.data_dir / "objects").glob("???/*"))) == 1
