"""A real ``netpacs serve`` whose objects live in S3 (SeaweedFS): C-STORE and STOW-RS in,
WADO-RS, frames, bulk data and C-GET out, byte-identical; a large object uploaded in
parts without the server holding it; ``netpacs verify`` against S3; what happens when
S3 is down or misconfigured."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from netpacs.adapters.dimse import commands as c
from tests.adapters.test_resource_bounds import (
    EXPLICIT_VR_LE,
    MB,
    RSS_BUDGET,
    _then,
    c_store,
    header,
    large_ct,
    part10_head,
    peak_rss_growth,
    read_back,
    single_part,
    stow,
    stow_body,
)
from tests.conftest import NETPACS, Netpacs, dcmtk, free_port, workstation
from tests.factories import ct_dataset, write, write_series
from tests.s3.conftest import SeaweedFS, objects_in, s3_name, seaweedfs_in

DICOM_PART = 'multipart/related; type="application/dicom"'
OCTETS_PART = 'multipart/related; type="application/octet-stream"'


@pytest.fixture(scope="module")
def s3_server(
    tmp_path_factory: pytest.TempPathFactory, module_region_file: Path, seaweedfs: SeaweedFS
) -> Iterator[Netpacs]:
    folder = tmp_path_factory.mktemp("s3-archive")
    netpacs = Netpacs(
        data_dir=folder / "data",
        database_url=f"sqlite:///{folder / 'index.sqlite'}",
        region_file=module_region_file,
        processes=1,
        extra_env={"NETPACS_BLOB_URL": seaweedfs.bucket(), **seaweedfs.credentials()},
    )
    netpacs.start()
    try:
        yield netpacs
    finally:
        netpacs.stop()


def blob_url(server: Netpacs) -> str:
    return server.extra_env["NETPACS_BLOB_URL"]


def stored_object(server: Netpacs, seaweedfs: SeaweedFS, key: str) -> bytes:
    bucket, name = s3_name(blob_url(server), key)
    return bytes(seaweedfs.client().get_object(Bucket=bucket, Key=name)["Body"].read())


def instance_url(server: Netpacs, ds: pydicom.Dataset) -> str:
    return (
        f"{server.dicomweb_url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def retrieve(server: Netpacs, url: str, accept: str) -> bytes:
    with server.http.stream("GET", url, headers={"Accept": accept}, timeout=60) as response:
        assert response.status_code == 200, response.read()
        return b"".join(single_part(response))


def blob_key_of(server: Netpacs, sop_instance_uid: str) -> str:
    import sqlalchemy as sa

    engine = sa.create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            return str(
                conn.execute(
                    sa.text("SELECT blob_key FROM instance WHERE sop_instance_uid = :u"),
                    {"u": sop_instance_uid},
                ).scalar_one()
            )
    finally:
        engine.dispose()


def multiframe(patient: str) -> pydicom.Dataset:
    frames = [bytes([n]) * 128 for n in (1, 2, 3)]
    return ct_dataset(PatientID=patient, NumberOfFrames=3, PixelData=b"".join(frames))


def test_objects_from_c_store_and_stow_live_in_s3_and_are_retrieved_byte_identical(
    s3_server: Netpacs, seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    by_dimse = multiframe("S3ARCH01")
    by_web = multiframe("S3ARCH01")
    by_web.StudyInstanceUID = by_dimse.StudyInstanceUID
    by_web.SeriesInstanceUID = generate_uid()
    files = [write(by_dimse, tmp_path / "dimse.dcm"), write(by_web, tmp_path / "web.dcm")]
    before = objects_in(blob_url(s3_server), seaweedfs.client())
    s3_server.store(files[0])
    answer = stow(s3_server, stow_body([[files[1].read_bytes()]]))
    assert answer.status_code == 200, answer.text

    added = set(objects_in(blob_url(s3_server), seaweedfs.client())) - set(before)
    keys = {blob_key_of(s3_server, str(ds.SOPInstanceUID)) for ds in (by_dimse, by_web)}
    assert added == keys  # both objects are in the bucket ...
    assert not list((s3_server.data_dir / "objects").glob("???/*"))  # ... and not on disk
    for ds in (by_dimse, by_web):
        key = blob_key_of(s3_server, str(ds.SOPInstanceUID))
        got = retrieve(s3_server, instance_url(s3_server, ds), DICOM_PART)
        assert got == stored_object(s3_server, seaweedfs, key)
        assert pydicom.dcmread(pydicom.filebase.DicomBytesIO(got)).PixelData == ds.PixelData
        frame = retrieve(s3_server, instance_url(s3_server, ds) + "/frames/2", OCTETS_PART)
        assert frame == bytes([2]) * 128
        bulk = retrieve(s3_server, instance_url(s3_server, ds) + "/bulk/7FE00010", OCTETS_PART)
        assert bulk == ds.PixelData

    out = tmp_path / "got"
    out.mkdir()
    got = dcmtk(
        "getscu", "-S", "-aet", "RXC_WS1", "-aec", "NETPACS", "-od", str(out),
        "-k", "QueryRetrieveLevel=SERIES", "-k", f"SeriesInstanceUID={by_dimse.SeriesInstanceUID}",
        "127.0.0.1", str(s3_server.port),
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    [received] = list(out.iterdir())
    assert pydicom.dcmread(received).PixelData == by_dimse.PixelData


def test_a_150_mb_stow_is_uploaded_to_s3_in_parts_without_the_server_holding_it(
    s3_server: Netpacs, seaweedfs: SeaweedFS
) -> None:
    ds, head, pixels = large_ct(150 * MB)
    part = _then(part10_head(ds, EXPLICIT_VR_LE) + head, pixels.chunks())
    started = time.monotonic()
    with peak_rss_growth(s3_server) as growth:
        answer = stow(s3_server, stow_body([part]))
    print(f"stored in {time.monotonic() - started:.1f} s")
    assert answer.status_code == 200, answer.text
    assert growth[0] < RSS_BUDGET, f"server grew by {growth[0] / MB:.0f} MB"
    key = blob_key_of(s3_server, str(ds.SOPInstanceUID))
    bucket, name = s3_name(blob_url(s3_server), key)
    etag = seaweedfs.client().head_object(Bucket=bucket, Key=name)["ETag"].strip('"')
    assert int(etag.rpartition("-")[2]) >= 15, etag  # a multipart upload of 8 MiB parts
    with peak_rss_growth(s3_server) as growth:  # read back as it streams from S3
        assert read_back(s3_server, ds, "7FE00010") == (150 * MB, pixels.sha256.hexdigest())
    assert growth[0] < RSS_BUDGET, f"server grew by {growth[0] / MB:.0f} MB reading it"


def test_verify_is_clean_and_names_an_object_corrupted_in_s3(
    s3_server: Netpacs, seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    ds = ct_dataset(PatientID="S3ARCH02")
    s3_server.store(write(ds, tmp_path / "one.dcm"))
    clean = s3_server.cli("verify")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert " 0 missing, 0 damaged" in clean.stdout

    key = blob_key_of(s3_server, str(ds.SOPInstanceUID))
    bucket, name = s3_name(blob_url(s3_server), key)
    original = stored_object(s3_server, seaweedfs, key)
    damaged = original[:-1] + bytes([original[-1] ^ 0xFF])  # same size, one byte flipped
    seaweedfs.client().put_object(Bucket=bucket, Key=name, Body=damaged)
    try:
        found = s3_server.cli("verify")
    finally:
        seaweedfs.client().put_object(Bucket=bucket, Key=name, Body=original)
    assert found.returncode == 1, found.stdout + found.stderr
    assert f"CRC-32 mismatch: SOP Instance {ds.SOPInstanceUID} blob {key}" in found.stdout


def test_with_s3_down_stores_are_refused_out_of_resources_and_nothing_is_acknowledged(
    tmp_path: Path, module_region_file: Path
) -> None:
    with seaweedfs_in(tmp_path / "s3") as s3:
        server = Netpacs(
            data_dir=tmp_path / "data",
            database_url=f"sqlite:///{tmp_path / 'index.sqlite'}",
            region_file=module_region_file,
            processes=1,
            extra_env={"NETPACS_BLOB_URL": s3.bucket(), **s3.credentials()},
        )
        server.start()
        try:
            s3.stop()  # the object store goes away while netpacs runs
            ds, head = header()
            pixels = os.urandom(64 * 1024)
            data = head + b"\xe0\x7f\x10\x00OW\x00\x00" + len(pixels).to_bytes(4, "little")
            rsp = c_store(server, ds, [data, pixels], EXPLICIT_VR_LE)
            assert rsp.get_int(c.STATUS) == 0xA700, rsp  # Out of Resources
            assert "storage write failed" in rsp.get_str(c.ERROR_COMMENT)

            web = ct_dataset(PatientID="BOUNDS01")
            part = write(web, tmp_path / "web.dcm").read_bytes()
            answer = stow(server, stow_body([[part]]))
            assert answer.status_code == 503, answer.text
            assert "storage write failed" in answer.headers["Warning"]
            assert answer.headers["Retry-After"]
            for uid in (ds.SOPInstanceUID, web.SOPInstanceUID):
                found = server.http.get(
                    f"{server.dicomweb_url}/instances", params={"SOPInstanceUID": uid}
                )
                assert found.status_code in (200, 204), found.text
                assert found.status_code == 204 or found.json() == []  # nothing was indexed
        finally:
            server.stop()


def _serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NETPACS), "serve"], env=env, capture_output=True, text=True, timeout=60
    )


def test_serve_refuses_to_start_when_the_s3_endpoint_is_unreachable_or_misconfigured(
    tmp_path: Path, module_region_file: Path, seaweedfs: SeaweedFS
) -> None:
    server = Netpacs(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'index.sqlite'}",
        region_file=module_region_file,
    )
    nowhere = f"s3://netpacs-none/objects?endpoint=http://127.0.0.1:{free_port()}"
    cases = {
        nowhere: "cannot be reached",
        f"s3://no-such-bucket/objects?endpoint={seaweedfs.endpoint}": "does not exist",
        "s3://Not_A_Bucket/objects": "not an S3 bucket name",
    }
    for url, why in cases.items():
        env = {**server.env, **seaweedfs.credentials(), "NETPACS_BLOB_URL": url}
        started = time.monotonic()
        result = _serve(env)
        assert result.returncode == 2, result.stderr
        assert time.monotonic() - started < 30
        named = "NETPACS_BLOB_URL" if "Not_A" not in url else "blob_url"
        assert named in result.stderr and why in result.stderr, result.stderr
    wrong = {**server.env, **seaweedfs.credentials(), "AWS_SECRET_ACCESS_KEY": "wrong"}
    result = _serve({**wrong, "NETPACS_BLOB_URL": seaweedfs.bucket()})
    assert result.returncode == 2 and "credentials are refused" in result.stderr, result.stderr
    assert "NETPACS_BLOB_URL" in result.stderr


def test_frames_of_a_compressed_object_in_s3_are_decoded_from_ranged_reads(
    s3_server: Netpacs, tmp_path: Path
) -> None:
    import numpy as np
    from pydicom.uid import RLELossless

    frames = np.arange(3 * 8 * 8, dtype="<u2").reshape(3, 8, 8)
    ds = ct_dataset(PatientID="S3ARCH03", NumberOfFrames=3, PixelData=frames.tobytes())
    ds.compress(RLELossless, frames)
    path = write(ds, tmp_path / "rle.dcm", RLELossless)
    answer = stow(s3_server, stow_body([[path.read_bytes()]]))
    assert answer.status_code == 200, answer.text
    got = retrieve(s3_server, instance_url(s3_server, ds) + "/frames/2", OCTETS_PART)
    assert got == frames[1].tobytes()


def test_c_move_sends_objects_kept_in_s3_to_a_workstation_byte_identical(
    s3_server: Netpacs, tmp_path: Path, workstation_port: int
) -> None:
    files = write_series(tmp_path / "in", 2, PatientID="S3ARCH04")
    s3_server.store(*files)
    study_uid = pydicom.dcmread(files[0]).StudyInstanceUID
    with workstation(tmp_path / "ws1", workstation_port) as received:
        result = dcmtk(
            "movescu", "-S", "-aet", "RXC_WS1", "-aec", "NETPACS", "-aem", "RTP_WS1",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
            "127.0.0.1", str(s3_server.port),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        got = sorted(received.iterdir())
    assert len(got) == 2
    assert {pydicom.dcmread(f).SOPInstanceUID for f in got} == {
        pydicom.dcmread(f).SOPInstanceUID for f in files
    }
    assert {pydicom.dcmread(f).PixelData for f in got} == {pydicom.dcmread(files[0]).PixelData}
    assert not list(Path(tempfile.gettempdir()).glob("netpacs-blob-*"))  # copies removed
