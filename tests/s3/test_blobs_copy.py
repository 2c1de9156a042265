"""``netpacs blobs copy --to s3://...``: a file archive moved into S3, resumably and
verified, audited; the server then serves the same objects from S3."""

from __future__ import annotations

from pathlib import Path

import pydicom
import sqlalchemy as sa

from tests.conftest import Netpacs
from tests.factories import write_series
from tests.s3.conftest import SeaweedFS, objects_in, s3_name
from tests.s3.test_s3_archive import DICOM_PART, instance_url, retrieve


def test_blobs_copy_moves_a_file_archive_into_s3_resumably_and_the_server_serves_it_from_there(
    tmp_path: Path, region_file: Path, seaweedfs: SeaweedFS
) -> None:
    server = Netpacs(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'index.sqlite'}",
        region_file=region_file,
        processes=1,
        extra_env=seaweedfs.credentials(),
    )
    files = write_series(tmp_path / "in", 3, PatientID="S3COPY01")
    imported = server.cli("import", "--trust", "RXC", str(tmp_path / "in"))  # a file archive
    assert imported.returncode == 0, imported.stdout + imported.stderr
    on_disk = {p.name: p.read_bytes() for p in (server.data_dir / "objects").glob("???/*")}
    assert len(on_disk) == 3
    url = seaweedfs.bucket("regional/objects")

    first = server.cli("blobs", "copy", "--to", url)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "3 copied" in first.stdout and f"NETPACS_BLOB_URL={url}" in first.stdout
    client = seaweedfs.client()
    assert objects_in(url, client) == {key: len(data) for key, data in on_disk.items()}

    # Resumable: an object lost from the bucket (an interrupted run) is copied again,
    # and only that one.
    lost = sorted(on_disk)[1]
    client.delete_object(Bucket=s3_name(url, lost)[0], Key=s3_name(url, lost)[1])
    second = server.cli("blobs", "copy", "--to", url)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 copied" in second.stdout and "2 already in" in second.stdout

    engine = sa.create_engine(server.database_url)
    with engine.connect() as conn:
        audited = conn.execute(
            sa.text(
                "SELECT event_id, outcome, detail FROM audit_event "
                "WHERE detail LIKE 'blobs copy to%' ORDER BY id"
            )
        ).all()
    engine.dispose()
    assert [(row.event_id, row.outcome) for row in audited] == [("110106", 0), ("110106", 0)]
    assert "3 copied" in audited[0].detail and "1 copied" in audited[1].detail

    # The operator switches NETPACS_BLOB_URL; the files are moved out of the way.
    (server.data_dir / "objects").rename(tmp_path / "objects-moved")
    server.extra_env["NETPACS_BLOB_URL"] = url
    server.start()
    try:
        for path in files:
            ds = pydicom.dcmread(path)
            served = retrieve(server, instance_url(server, ds), DICOM_PART)
            assert served in on_disk.values()
        verified = server.cli("verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "verified 3 objects: 3 intact" in verified.stdout
    finally:
        server.stop()
    rebuilt = server.cli("reindex")  # the index rebuilt from the objects in S3 alone
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "indexed: 3" in rebuilt.stdout


def test_blobs_copy_to_an_unreachable_store_stops_saying_so(
    tmp_path: Path, region_file: Path, seaweedfs: SeaweedFS
) -> None:
    server = Netpacs(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'index.sqlite'}",
        region_file=region_file,
        extra_env=seaweedfs.credentials(),
    )
    missing = f"s3://no-such-bucket/objects?endpoint={seaweedfs.endpoint}"
    result = server.cli("blobs", "copy", "--to", missing)
    assert result.returncode == 2
    assert "does not exist" in result.stderr, result.stderr
