"""Fixtures for CLI tests: the real ``netpacs`` command run as a subprocess.

``cli`` runs once on a SQLite index in the data directory and once on a fresh
PostgreSQL database (127.0.0.1:5432, trust authentication, user postgres) created per
test and dropped afterwards. Objects are small synthetic Part 10 files made here.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
import sqlalchemy as sa
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from netpacs.index.schema import instance, patient, series, study
from netpacs.storage.fs import FileSystemBlobStore
from tests.conftest import NETPACS, free_port, postgres_database, wait_for_port

# What "the same query answers" means for a rebuilt index: every attribute the index
# matches on or returns, per instance, with its patient, study and series.
SNAPSHOT_COLUMNS = (
    patient.c.patient_id,
    patient.c.issuer,
    patient.c.patient_name,
    patient.c.patient_birth_date,
    patient.c.patient_sex,
    study.c.study_instance_uid,
    study.c.study_date,
    study.c.study_time,
    study.c.accession_number,
    study.c.study_description,
    study.c.origin_trust,
    study.c.origin_site,
    series.c.series_instance_uid,
    series.c.modality,
    series.c.series_number,
    series.c.series_description,
    instance.c.sop_instance_uid,
    instance.c.sop_class_uid,
    instance.c.instance_number,
    instance.c.transfer_syntax_uid,
    instance.c.blob_key,
    instance.c.blob_size,
    instance.c.blob_crc32,
    instance.c.dataset_offset,
    instance.c.metadata_json,
    instance.c.origin_trust,
)
IDENTITY_COLUMNS = (
    patient.c.patient_id,
    patient.c.issuer,
    study.c.study_instance_uid,
    series.c.series_instance_uid,
    instance.c.sop_instance_uid,
    instance.c.blob_key,
)


@dataclass
class Cli:
    """One netpacs installation (data directory + index) driven through its CLI."""

    data_dir: Path
    database_url: str | None  # None: the default SQLite file in the data directory
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def backend(self) -> str:
        return "sqlite" if self.database_url is None else "postgresql"

    @property
    def url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'index.sqlite'}"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NETPACS_")}
        env["NETPACS_DATA_DIR"] = str(self.data_dir)
        if self.database_url is not None:
            env["NETPACS_DATABASE_URL"] = self.database_url
        env.update(self.extra_env)
        return env

    def run(self, *args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(NETPACS), *map(str, args)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    @contextmanager
    def serve(self, port: int) -> Iterator[subprocess.Popen[bytes]]:
        """``netpacs serve`` on ``port`` until the block ends (then SIGTERM)."""
        # Demo mode: the bundled region leaves C-MOVE destinations open, which serve
        # refuses outside it (tests/cli/test_users.py tests that refusal).
        env = {
            **self.env,
            "NETPACS_DIMSE_PORT": str(port),
            "NETPACS_HTTP_PORT": str(free_port()),
            "NETPACS_MLLP_PORT": str(free_port()),
            "NETPACS_DIMSE_PROCESSES": "1",
            "NETPACS_DEMO": "true",
        }
        log = (self.data_dir.parent / f"serve-{port}.log").open("wb")
        proc = subprocess.Popen([str(NETPACS), "serve"], env=env, stdout=log, stderr=log)
        try:
            wait_for_port(port, timeout=30, proc=proc)
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.close()

    @contextmanager
    def engine(self) -> Iterator[sa.Engine]:
        engine = sa.create_engine(self.url)
        try:
            yield engine
        finally:
            engine.dispose()

    def rows(self, *columns: sa.ColumnElement[Any]) -> set[tuple[Any, ...]]:
        """The index joined from instance up to patient, as a set of tuples."""
        query = (
            sa.select(*columns)
            .select_from(instance)
            .join(series, instance.c.series_fk == series.c.id)
            .join(study, series.c.study_fk == study.c.id)
            .join(patient, study.c.patient_fk == patient.c.id)
        )
        with self.engine() as engine, engine.connect() as conn:
            return {tuple(row) for row in conn.execute(query)}

    def snapshot(self) -> set[tuple[Any, ...]]:
        return self.rows(*SNAPSHOT_COLUMNS)

    def identities(self) -> set[tuple[Any, ...]]:
        return self.rows(*IDENTITY_COLUMNS)

    def blob_key(self, sop_instance_uid: str) -> str:
        with self.engine() as engine, engine.connect() as conn:
            key: str = conn.execute(
                sa.select(instance.c.blob_key).where(
                    instance.c.sop_instance_uid == sop_instance_uid
                )
            ).scalar_one()
        return key

    def put_blob(self, key: str, data: bytes) -> None:
        """Write a blob no index row names (a stray object) through the store."""
        FileSystemBlobStore(self.data_dir / "objects").put(key, [data])

    def blob_path(self, key: str) -> Path:
        path = FileSystemBlobStore(self.data_dir / "objects").local_path(key)
        assert path is not None
        return path

    def lose_index(self) -> None:
        """Throw the whole index away, as a lost disk or a dropped database would."""
        if self.database_url is None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.data_dir / 'index.sqlite'}{suffix}").unlink(missing_ok=True)
            return
        with self.engine() as engine, engine.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA public CASCADE")
            conn.exec_driver_sql("CREATE SCHEMA public")


@pytest.fixture(params=["sqlite", "postgresql"])
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cli]:
    if request.param == "sqlite":
        yield Cli(tmp_path / "data", None)
        return
    with postgres_database() as url:
        yield Cli(tmp_path / "data", url)


@pytest.fixture
def sqlite_cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "data", None)


# -- synthetic objects -------------------------------------------------------------------


def ct_dataset(**attrs: Any) -> pydicom.Dataset:
    """A tiny 4x4 CT image with fresh UIDs; keyword arguments set attributes."""
    ds = pydicom.Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "CLI^TEST"
    ds.PatientID = "CLI0001"
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "O"
    ds.StudyDate = "20261101"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "CLIACC1"
    ds.StudyDescription = "CT CHEST"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows = 4
    ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(32))
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def write_part10(ds: pydicom.Dataset, path: Path) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_study(folder: Path, n_series: int = 2, per_series: int = 3, **attrs: Any) -> list[Path]:
    """A study of ``n_series`` series of ``per_series`` instances, as files in ``folder``."""
    study_uid = generate_uid()
    paths = []
    for s in range(n_series):
        series_uid = generate_uid()
        for i in range(per_series):
            ds = ct_dataset(
                StudyInstanceUID=study_uid,
                SeriesInstanceUID=series_uid,
                SeriesNumber=s + 1,
                InstanceNumber=i + 1,
                **attrs,
            )
            paths.append(write_part10(ds, folder / f"s{s}" / f"i{i}.dcm"))
    return paths


SUMMARY_RE = re.compile(
    r"^(files|stored|replaced|already stored|refused|failed):\s+(\d+)$", re.MULTILINE
)


def summary(stdout: str) -> dict[str, int]:
    """The counts of an import summary."""
    return {name: int(n) for name, n in SUMMARY_RE.findall(stdout)}
