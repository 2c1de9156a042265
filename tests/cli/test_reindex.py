"""``netpacs reindex``: the index rebuilt from the blobs alone answers as before (invariant 6)."""

from __future__ import annotations

import uuid
from pathlib import Path

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from netpacs.adapters.dimse.requestor import associate
from netpacs.index.schema import instance, study
from tests.cli.conftest import Cli, ct_dataset, write_part10, write_study
from tests.conftest import free_port


def import_mixed(cli: Cli, tmp_path: Path) -> None:
    """Two studies, one patient with an Issuer of Patient ID, one without."""
    write_study(tmp_path / "in" / "a", 2, 3, PatientID="A1", IssuerOfPatientID="RTK")
    write_study(tmp_path / "in" / "b", 1, 2, PatientID="B2", PatientName="Other^Pat")
    result = cli.run("import", tmp_path / "in")
    assert result.returncode == 0, result.stdout + result.stderr


def test_reindex_after_losing_the_index_gives_the_same_answers(cli: Cli, tmp_path: Path) -> None:
    import_mixed(cli, tmp_path)
    identities, snapshot = cli.identities(), cli.snapshot()
    assert len(identities) == 8
    cli.lose_index()

    result = cli.run("reindex")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "blobs: 8\nindexed: 8\n" in result.stdout
    assert cli.identities() == identities
    assert cli.snapshot() == snapshot
    assert cli.run("verify").returncode == 0


def _os_user() -> str:
    import getpass

    return getpass.getuser()


def test_reindex_over_a_live_index_replaces_it(cli: Cli, tmp_path: Path) -> None:
    import_mixed(cli, tmp_path)
    snapshot = cli.snapshot()

    result = cli.run("reindex")

    assert result.returncode == 0, result.stdout + result.stderr
    assert cli.snapshot() == snapshot
    # The import recorded its origin (protocol, user) in each file's meta: reindex
    # gives it back rather than "reindex".
    assert cli.rows(instance.c.origin_protocol, instance.c.origin_user) == {("import", _os_user())}


def test_reindex_recovers_the_sending_trust_of_dimse_objects(cli: Cli, tmp_path: Path) -> None:
    """The sending AE kept in the file meta gives the issuer, as it did on receipt."""
    port = free_port()
    ds = ct_dataset(PatientID="W42")  # no Issuer of Patient ID: RSUS_CT1's trust, RYR
    write_part10(ds, tmp_path / "w42.dcm")  # gives it a transfer syntax to send in
    with cli.serve(port):
        ae = AE(ae_title="RSUS_CT1")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = associate(ae, "127.0.0.1", port, ae_title="NETPACS")
        assert assoc.is_established
        status = assoc.send_c_store(ds)
        assoc.release()
        assert status.Status == 0x0000
    before = cli.snapshot()
    assert {(r[0], r[1]) for r in cli.identities()} == {("W42", "RYR")}
    cli.lose_index()

    result = cli.run("reindex")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "origin from file meta (received over DIMSE): 1" in result.stdout
    assert cli.snapshot() == before
    assert cli.rows(instance.c.origin_protocol, instance.c.origin_ae, study.c.origin_site) == {
        ("dimse", "RSUS_CT1", "RSUS")
    }


def test_reindex_keeps_the_import_trust_as_issuer(sqlite_cli: Cli, tmp_path: Path) -> None:
    f = write_part10(ct_dataset(PatientID="H7"), tmp_path / "h7.dcm")
    assert sqlite_cli.run("import", "--trust", "RYR", f).returncode == 0
    before = sqlite_cli.identities()
    sqlite_cli.lose_index()

    assert sqlite_cli.run("reindex").returncode == 0

    assert sqlite_cli.identities() == before


def test_unparsable_blob_is_reported_and_kept(cli: Cli, tmp_path: Path) -> None:
    import_mixed(cli, tmp_path)
    junk_key = uuid.uuid4().hex
    cli.put_blob(junk_key, b"not dicom at all")
    junk = cli.blob_path(junk_key)
    cli.lose_index()

    result = cli.run("reindex")

    assert result.returncode == 1
    assert "indexed: 8\n" in result.stdout
    assert f"unindexable: blob {junk_key}: not a DICOM Part 10 file" in result.stdout
    assert junk.exists()


def test_second_blob_of_one_instance_is_reported_as_duplicate(
    sqlite_cli: Cli, tmp_path: Path
) -> None:
    f = write_part10(ct_dataset(), tmp_path / "one.dcm")
    assert sqlite_cli.run("import", f).returncode == 0
    (original,) = sqlite_cli.identities()
    copy_key = uuid.uuid4().hex
    sqlite_cli.put_blob(copy_key, sqlite_cli.blob_path(original[5]).read_bytes())
    sqlite_cli.lose_index()

    result = sqlite_cli.run("reindex")

    assert result.returncode == 0, result.stdout
    assert "indexed: 1\n" in result.stdout
    assert "duplicate: 1\n" in result.stdout
    assert "(identical content); this blob was left unindexed" in result.stdout
    (row,) = sqlite_cli.identities()
    assert row[:5] == original[:5]
    assert sqlite_cli.blob_path(original[5]).exists()
    assert sqlite_cli.blob_path(copy_key).exists()
