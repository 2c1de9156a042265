"""The S3 BlobStore against a real S3 service (SeaweedFS): what the archive relies on."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from netpacs.storage.blobstore import BlobNotFound, BlobStoreUnavailable, new_blob_key
from netpacs.storage.fs import FileSystemBlobStore
from netpacs.storage.s3 import PART_SIZE, S3BlobStore, S3Location, S3UrlError
from tests.conftest import free_port
from tests.s3.conftest import SeaweedFS, s3_name

MB = 1 << 20


@pytest.fixture
def store(seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> S3BlobStore:
    for name, value in seaweedfs.credentials().items():
        monkeypatch.setenv(name, value)
    return S3BlobStore(S3Location.parse(seaweedfs.bucket("archive/objects")))


def pieces(total: int, seed: bytes) -> Iterator[bytes]:
    block = hashlib.sha256(seed).digest() * (MB // 32)
    left = total
    while left:
        yield block[: min(MB, left)]
        left -= min(MB, left)


def test_an_object_larger_than_a_part_is_uploaded_in_parts_and_reads_back_whole(
    store: S3BlobStore, seaweedfs: SeaweedFS
) -> None:
    key = new_blob_key()
    size = 2 * PART_SIZE + 12345
    assert store.put(key, pieces(size, b"a")) == size
    expected = b"".join(pieces(size, b"a"))
    bucket, name = s3_name(f"s3://{store.location.bucket}/archive/objects", key)
    head = seaweedfs.client().head_object(Bucket=bucket, Key=name)
    assert head["ETag"].strip('"').endswith("-3")  # a completed three-part upload
    assert store.get(key) == expected
    assert store.get_range(key, PART_SIZE - 10, 20) == expected[PART_SIZE - 10 : PART_SIZE + 10]
    assert store.get_range(key, size - 5, 100) == expected[-5:]
    assert store.get_range(key, size + 10, 100) == b""


def test_open_is_a_seekable_stream_of_ranged_reads(store: S3BlobStore) -> None:
    key = new_blob_key()
    data = os.urandom(3 * MB + 7)
    store.put(key, [data[:MB], memoryview(data)[MB:]])
    with store.open(key) as f:
        assert f.read(10) == data[:10]
        f.seek(2 * MB + 3)
        assert f.read(100) == data[2 * MB + 3 : 2 * MB + 103]
        f.seek(-7, io.SEEK_END)
        assert f.read() == data[-7:]
        f.seek(0)
        assert f.read() == data


def test_a_missing_blob_is_not_found_and_keys_list_only_blob_keys(store: S3BlobStore) -> None:
    key = new_blob_key()
    with pytest.raises(BlobNotFound):
        store.get(key)
    with pytest.raises(BlobNotFound):
        store.open(key)
    assert not store.exists(key) and store.modified_at(key) is None
    store.put(key, [b"small"])
    assert store.exists(key) and store.size(key) == 5
    assert store.modified_at(key) is not None
    assert list(store.keys()) == [key]
    store.delete(key)
    store.delete(key)  # removing a missing blob is not an error
    assert list(store.keys()) == []


def test_a_write_that_fails_midway_leaves_nothing(store: S3BlobStore) -> None:
    key = new_blob_key()

    def broken() -> Iterator[bytes]:
        yield from pieces(PART_SIZE + MB, b"b")
        raise OSError("the sender went away")

    with pytest.raises(OSError, match="the sender went away"):
        store.put(key, broken())
    assert not store.exists(key)
    assert store.abort_stale_uploads(older_than=0) == 0  # the upload was aborted


def test_an_unreachable_endpoint_or_missing_bucket_fails_the_check_saying_why(
    seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in seaweedfs.credentials().items():
        monkeypatch.setenv(name, value)
    nowhere = S3BlobStore(
        S3Location.parse(f"s3://netpacs-x/p?endpoint=http://127.0.0.1:{free_port()}"),
        attempts=1,
    )
    with pytest.raises(BlobStoreUnavailable, match="cannot be reached"):
        nowhere.check()
    with pytest.raises(BlobStoreUnavailable):
        nowhere.put(new_blob_key(), [b"x"])
    missing = S3BlobStore(
        S3Location.parse(f"s3://no-such-bucket-here/p?endpoint={seaweedfs.endpoint}")
    )
    with pytest.raises(BlobStoreUnavailable, match="does not exist"):
        missing.check()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    refused = S3BlobStore(S3Location.parse(seaweedfs.bucket()))
    with pytest.raises(BlobStoreUnavailable, match="refused"):
        refused.check()


@pytest.mark.parametrize(
    "url",
    [
        "http://bucket/p",
        "s3://Bad_Bucket/p",
        "s3://bucket/p?endpoint=ftp://x",
        "s3://bucket/p?endpont=http://x:1",
    ],
)
def test_a_malformed_blob_url_is_refused_saying_what_is_wrong(url: str) -> None:
    with pytest.raises(S3UrlError):
        S3Location.parse(url)


def test_keys_from_a_credentials_file_named_in_the_settings_are_used(
    seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    creds = seaweedfs.credentials()
    keys = tmp_path / "s3-credentials"
    keys.write_text(
        "[default]\n"
        f"aws_access_key_id = {creds['AWS_ACCESS_KEY_ID']}\n"
        f"aws_secret_access_key = {creds['AWS_SECRET_ACCESS_KEY']}\n"
    )
    url = seaweedfs.bucket()
    store = S3BlobStore(S3Location.parse(url), credentials_file=keys)
    store.check()
    key = new_blob_key()
    store.put(key, [b"kept"])
    assert store.get(key) == b"kept"
    missing = S3BlobStore(S3Location.parse(url), credentials_file=tmp_path / "absent")
    with pytest.raises(BlobStoreUnavailable, match="credentials file"):
        missing.check()


def test_the_file_store_check_fails_when_its_directory_cannot_be_written(tmp_path: Path) -> None:
    store = FileSystemBlobStore(tmp_path / "objects")
    store.check()
    (tmp_path / "objects" / "tmp").rmdir()
    (tmp_path / "objects" / "tmp").write_text("not a directory")
    with pytest.raises(BlobStoreUnavailable, match="cannot be written"):
        store.check()
