"""S3 BlobStore: objects in a bucket of any S3 service (SeaweedFS, Ceph RGW, Garage, AWS).

Chosen by ``NETPACS_BLOB_URL=s3://bucket/prefix?endpoint=http://host:port``. Built on
boto3 (the reference S3 client: signing, retries, multipart, checksums); what is
written here is only the BlobStore shape around it:

- ``put`` streams: chunks are gathered into parts of :data:`PART_SIZE` and sent as a
  multipart upload, so a 4 GiB object costs one part in memory, not 4 GiB. An object
  smaller than one part is one PUT. An upload is atomic at completion: until then the
  object does not exist, so there is no pending rename to finish after a crash (an
  upload a crash left open is aborted by :meth:`S3BlobStore.abort_stale_uploads` at the
  next start, or by the bucket's lifecycle rule). When ``put`` returns, the service has
  acknowledged the whole object (durable by S3's contract).
- ``open`` returns a seekable file object that reads by HTTP range requests: a
  sequential read is one streaming GET; a seek starts another at the new offset. So
  frames, bulk data and the decoders read only what they need.
- Every service or network error is raised as :class:`BlobStoreUnavailable` (an
  OSError naming the store), a missing object as :class:`BlobNotFound`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar, cast
from urllib.parse import parse_qs, urlsplit

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from netpacs.storage.blobstore import BlobNotFound, BlobStoreUnavailable

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_KEY_RE = re.compile(r"^[0-9a-f]{32}$")
PART_SIZE = 8 << 20
"""Bytes per multipart part (S3 needs at least 5 MiB for every part but the last; 8 MiB
parts reach 80 GB within S3's 10,000 parts, beyond NETPACS_MAX_OBJECT_MB's range)."""
_READ_AHEAD = 1 << 20
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}

T = TypeVar("T")


class S3UrlError(ValueError):
    """NETPACS_BLOB_URL is not a usable s3:// URL (the message says why)."""


@dataclass(frozen=True, slots=True)
class S3Location:
    """Where blobs live: ``s3://bucket/prefix?endpoint=http://host:port&region=name``."""

    bucket: str
    prefix: str  # "" or "some/path/" (always ending with "/")
    endpoint: str | None
    region: str

    @classmethod
    def parse(cls, url: str) -> S3Location:
        parts = urlsplit(url)
        if parts.scheme != "s3":
            raise S3UrlError(f"{url!r} is not an s3:// URL (s3://bucket/prefix?endpoint=...)")
        bucket = parts.netloc
        if not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", bucket):
            raise S3UrlError(
                f"{bucket!r} is not an S3 bucket name (3-63 lower-case letters, digits, "
                "dots and hyphens)"
            )
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - {"endpoint", "region"})
        if unknown:
            raise S3UrlError(f"unknown parameter(s) {', '.join(unknown)}: only endpoint, region")
        endpoint = query.get("endpoint", [None])[-1] or None
        if endpoint is not None:
            ep = urlsplit(endpoint)
            if ep.scheme not in ("http", "https") or not ep.hostname:
                raise S3UrlError(f"endpoint {endpoint!r} is not an http(s)://host:port URL")
        prefix = parts.path.strip("/")
        return cls(
            bucket=bucket,
            prefix=f"{prefix}/" if prefix else "",
            endpoint=endpoint,
            region=query.get("region", ["us-east-1"])[-1] or "us-east-1",
        )

    def __str__(self) -> str:
        where = f" at {self.endpoint}" if self.endpoint else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"


class S3BlobStore:
    """Blobs as objects ``<prefix><key>`` in one bucket."""

    def __init__(
        self,
        location: S3Location,
        *,
        credentials_file: Path | None = None,
        part_size: int = PART_SIZE,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        attempts: int = 3,
    ) -> None:
        self.location = location
        self._credentials_file = credentials_file
        self._part_size = max(part_size, 5 << 20)
        self._config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": attempts, "mode": "standard"},
            max_pool_connections=32,
            s3={"addressing_style": "path"} if location.endpoint else {},
        )
        # The reachability check answers within seconds (a readiness probe calls it).
        self._probe_config = self._config.merge(
            Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1})
        )
        self._lock = threading.Lock()
        self._client: S3Client | None = None
        self._probe: S3Client | None = None
        self._pid = 0

    # -- plumbing ----------------------------------------------------------------------
    @property
    def client(self) -> S3Client:
        """The boto3 client of this process (made on first use: a client made before the
        server forks its workers is not carried into them)."""
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                self._client = self._make_client(self._config)
                self._probe = self._make_client(self._probe_config)
                self._pid = os.getpid()
            return self._client

    @property
    def probe_client(self) -> S3Client:
        """A client that tries once, briefly (for :meth:`check`)."""
        self.client  # noqa: B018 (made with the client, in this process)
        assert self._probe is not None
        return self._probe

    def _make_client(self, config: Config) -> S3Client:
        core = botocore.session.Session()
        if self._credentials_file is not None:
            if not self._credentials_file.is_file():
                raise BlobStoreUnavailable(
                    f"the S3 credentials file {self._credentials_file} does not exist"
                )
            core.set_config_variable("credentials_file", str(self._credentials_file))
        session = boto3.session.Session(botocore_session=core)
        return session.client(
            "s3",
            endpoint_url=self.location.endpoint,
            region_name=self.location.region,
            config=config,
        )

    def _name(self, key: str) -> str:
        if not _KEY_RE.match(key):
            raise ValueError(f"not a blob key: {key!r}")
        return self.location.prefix + key

    def _call(self, what: str, fn: Callable[[], T], key: str | None = None) -> T:
        """``fn()``, with S3 and network errors raised as BlobNotFound or
        BlobStoreUnavailable."""
        try:
            return fn()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if key is not None and code in _NOT_FOUND:
                raise BlobNotFound(key) from None
            raise BlobStoreUnavailable(f"object store {self.location}: {what}: {exc}") from exc
        except BotoCoreError as exc:
            raise BlobStoreUnavailable(f"object store {self.location}: {what}: {exc}") from exc

    # -- BlobStore ---------------------------------------------------------------------
    def pending(self, key: str) -> None:
        """No in-place writes: a large object is spooled locally and uploaded by put."""
        return None

    def put(self, key: str, chunks: Iterable[bytes | memoryview]) -> int:
        name = self._name(key)
        bucket = self.location.bucket
        buf = bytearray()
        size = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            for chunk in chunks:
                buf += chunk
                size += len(chunk)
                while len(buf) >= self._part_size:
                    if upload_id is None:
                        upload_id = self._call(
                            "start upload",
                            lambda: self.client.create_multipart_upload(Bucket=bucket, Key=name),
                        )["UploadId"]
                    part = bytes(buf[: self._part_size])
                    del buf[: self._part_size]
                    parts.append(self._upload_part(name, upload_id, len(parts) + 1, part))
            if upload_id is None:
                body = bytes(buf)
                self._call(
                    f"write {key}",
                    lambda: self.client.put_object(Bucket=bucket, Key=name, Body=body),
                )
                return size
            if buf or not parts:
                parts.append(self._upload_part(name, upload_id, len(parts) + 1, bytes(buf)))
            buf = bytearray()
            done_id = upload_id
            self._call(
                f"complete {key}",
                lambda: self.client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=name,
                    UploadId=done_id,
                    MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                ),
            )
            upload_id = None
            return size
        finally:
            if upload_id is not None:  # failed or interrupted: nothing of it is kept
                aborted = upload_id
                with contextlib.suppress(Exception):
                    self.client.abort_multipart_upload(Bucket=bucket, Key=name, UploadId=aborted)

    def _upload_part(self, name: str, upload_id: str, number: int, data: bytes) -> dict[str, Any]:
        answer = self._call(
            f"write part {number} of {name}",
            lambda: self.client.upload_part(
                Bucket=self.location.bucket,
                Key=name,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
            ),
        )
        return {"ETag": answer["ETag"], "PartNumber": number}

    def get(self, key: str) -> bytes:
        name = self._name(key)
        answer = self._call(
            f"read {key}",
            lambda: self.client.get_object(Bucket=self.location.bucket, Key=name),
            key,
        )
        return self._call(f"read {key}", answer["Body"].read)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Bytes ``start`` to ``start + length`` (fewer at the end of the blob)."""
        name = self._name(key)
        end = start + length - 1
        if length <= 0:
            if not self.exists(key):
                raise BlobNotFound(key)
            return b""
        try:
            answer = self._call(
                f"read {key}",
                lambda: self.client.get_object(
                    Bucket=self.location.bucket, Key=name, Range=f"bytes={start}-{end}"
                ),
                key,
            )
        except BlobStoreUnavailable as exc:
            if _is_invalid_range(exc):  # wholly past the end, as a file read there
                return b""
            raise
        return self._call(f"read {key}", answer["Body"].read)

    def open(self, key: str) -> BinaryIO:
        size = self._size(key)
        if size is None:
            raise BlobNotFound(key)
        raw = _RangeReader(self, key, size)
        return cast(BinaryIO, io.BufferedReader(raw, buffer_size=_READ_AHEAD))

    def delete(self, key: str) -> None:
        name = self._name(key)
        self._call(
            f"delete {key}",
            lambda: self.client.delete_object(Bucket=self.location.bucket, Key=name),
        )

    def exists(self, key: str) -> bool:
        return self._size(key) is not None

    def size(self, key: str) -> int | None:
        """The stored blob's size, None when there is none."""
        return self._size(key)

    def _head(self, key: str) -> dict[str, Any] | None:
        name = self._name(key)
        try:
            return cast(
                dict[str, Any],
                self._call(
                    f"look up {key}",
                    lambda: self.client.head_object(Bucket=self.location.bucket, Key=name),
                    key,
                ),
            )
        except BlobNotFound:
            return None

    def _size(self, key: str) -> int | None:
        head = self._head(key)
        return None if head is None else int(head["ContentLength"])

    def keys(self) -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.location.bucket, Prefix=self.location.prefix
        )
        it = iter(pages)
        while True:
            page = self._call("list objects", lambda: next(it, None))
            if page is None:
                return
            for obj in page.get("Contents", []):
                name = obj.get("Key", "")[len(self.location.prefix) :]
                if _KEY_RE.match(name):
                    yield name

    def local_path(self, key: str) -> Path | None:
        return None

    def modified_at(self, key: str) -> float | None:
        head = self._head(key)
        if head is None:
            return None
        return cast(dt.datetime, head["LastModified"]).timestamp()

    def check(self) -> None:
        """The bucket answers with our credentials (HEAD bucket, one try, within
        seconds)."""
        bucket = self.location.bucket
        try:
            self.probe_client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            why = {
                "404": f"the bucket {bucket!r} does not exist",
                "NoSuchBucket": f"the bucket {bucket!r} does not exist",
                "403": f"the credentials are refused for the bucket {bucket!r}",
                "AccessDenied": f"the credentials are refused for the bucket {bucket!r}",
            }.get(code, f"the bucket {bucket!r} answers {exc}")
            raise BlobStoreUnavailable(f"object store {self.location}: {why}") from exc
        except BotoCoreError as exc:
            raise BlobStoreUnavailable(
                f"object store {self.location} cannot be reached: {exc}"
            ) from exc

    # -- maintenance -------------------------------------------------------------------
    def abort_stale_uploads(self, *, older_than: float) -> int:
        """Abort multipart uploads under our prefix begun at least ``older_than`` seconds
        ago (a crash left them; their parts cost space but are never an object)."""
        limit = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=older_than)
        answer = self._call(
            "list uploads",
            lambda: self.client.list_multipart_uploads(
                Bucket=self.location.bucket, Prefix=self.location.prefix
            ),
        )
        aborted = 0
        for upload in answer.get("Uploads", []):
            started = upload.get("Initiated")
            if started is None or started > limit:
                continue
            name, upload_id = upload.get("Key", ""), upload.get("UploadId", "")
            self._call(
                f"abort upload of {name}",
                lambda n=name, u=upload_id: self.client.abort_multipart_upload(  # type: ignore[misc]
                    Bucket=self.location.bucket, Key=n, UploadId=u
                ),
            )
            aborted += 1
        return aborted


def _is_invalid_range(exc: BlobStoreUnavailable) -> bool:
    cause = exc.__cause__
    return isinstance(cause, ClientError) and str(
        cause.response.get("Error", {}).get("Code", "")
    ) in ("InvalidRange", "416")


class _RangeReader(io.RawIOBase):
    """A seekable raw stream over one object: reads go through a streaming ranged GET
    from the current position, opened on the first read after a seek."""

    def __init__(self, store: S3BlobStore, key: str, size: int) -> None:
        super().__init__()
        self._store = store
        self._key = key
        self._size = size
        self._pos = 0
        self._body: Any = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        pos = max(base + offset, 0)
        if pos != self._pos:
            self._drop_body()
            self._pos = pos
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._pos >= self._size or not len(view):
            return 0
        if self._body is None:
            store, name = self._store, self._store._name(self._key)
            start = self._pos
            answer = store._call(
                f"read {self._key}",
                lambda: store.client.get_object(
                    Bucket=store.location.bucket, Key=name, Range=f"bytes={start}-"
                ),
                self._key,
            )
            self._body = answer["Body"]
        data: bytes = self._store._call(f"read {self._key}", lambda: self._body.read(len(view)))
        if not data:
            raise BlobStoreUnavailable(
                f"object store {self._store.location}: {self._key} ended at byte {self._pos} "
                f"of {self._size}"
            )
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def _drop_body(self) -> None:
        if self._body is not None:
            with contextlib.suppress(Exception):
                self._body.close()
            self._body = None

    def close(self) -> None:
        self._drop_body()
        super().close()
