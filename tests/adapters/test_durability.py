"""Crash safety and several netpacs processes sharing one index."""

from __future__ import annotations

import os
import re
import subprocess
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from netpacs.index.schema import instance, patient, series, study
from tests.adapters.test_dimse import _find_images, store, stored_blobs
from tests.conftest import Netpacs, postgres_database
from tests.factories import write_series


def test_sigkill_during_storescu_loses_no_acknowledged_instance(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    import pydicom

    files = write_series(tmp_path / "in", 400, Rows=64, Columns=64, PixelData=bytes(64 * 64 * 2))
    uid_of = {
        str(f): str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files
    }
    scu = subprocess.Popen(
        [
            "storescu",
            "-v",
            "-aet",
            "ESH_CT1",
            "-aec",
            "NETPACS",
            "127.0.0.1",
            str(netpacs.port),
            *map(str, files),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, TCP_NODELAY="1"),
    )
    assert scu.stdout is not None
    acknowledged: list[str] = []
    current = None
    lines: list[str] = []
    for line in scu.stdout:
        lines.append(line)
        if m := re.match(r"I: Sending file: (.*)$", line.strip()):
            current = m.group(1)
        elif "Received Store Response (Success)" in line and current:
            acknowledged.append(uid_of[current])
            if len(acknowledged) == 60:
                netpacs.kill()
    scu.wait()
    assert 60 <= len(acknowledged) < len(files), "the kill did not land mid-run"

    netpacs.start()
    stored = _find_images(netpacs.port, "RTP_WS1")  # sent by ESH_CT1, East Surrey's
    assert set(acknowledged) <= stored
    verify = netpacs.cli("verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_two_servers_sharing_postgresql_ingest_concurrently_without_duplicates(
    tmp_path: Path, region_file: Path
) -> None:
    with postgres_database() as url:
        data = tmp_path / "shared-data"
        a = Netpacs(data_dir=data, database_url=url, region_file=region_file).start()
        b = Netpacs(data_dir=data, database_url=url, region_file=region_file).start()
        try:
            same = write_series(tmp_path / "same", 25, PatientID="SHARED1")
            only_a = write_series(tmp_path / "a", 10, PatientID="SHARED1")
            only_b = write_series(tmp_path / "b", 10, PatientID="SHARED1")
            jobs = [(a, same), (b, same), (a, only_a), (b, only_b)]
            threads = [threading.Thread(target=store, args=(srv, *fs)) for srv, fs in jobs]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            engine = sa.create_engine(url)
            with engine.connect() as conn:
                n_instances = conn.execute(sa.select(sa.func.count()).select_from(instance))
                assert n_instances.scalar_one() == 45
                assert conn.execute(sa.select(sa.func.count()).select_from(patient)).scalar() == 1
                assert conn.execute(sa.select(sa.func.count()).select_from(study)).scalar() == 3
                assert conn.execute(sa.select(sa.func.count()).select_from(series)).scalar() == 3
            engine.dispose()
            assert len(_find_images(a.port)) == 45
            assert len(stored_blobs(a)) == 45  # the losing copies of duplicates were removed
        finally:
            a.stop()
            b.stop()


@pytest.mark.parametrize("policy", ["replace", "keep-first"])
def test_duplicate_policy_is_configurable(tmp_path: Path, region_file: Path, policy: str) -> None:
    import pydicom

    from tests.factories import ct_dataset, write

    srv = Netpacs(
        data_dir=tmp_path / "d",
        database_url=f"sqlite:///{tmp_path / 'i.sqlite'}",
        region_file=region_file,
        extra_env={"NETPACS_DUPLICATE_POLICY": policy},
    )
    srv.start()
    try:
        ds = ct_dataset(PatientName="First^Version")
        first = write(ds, tmp_path / "1.dcm")
        ds.PatientName = "Second^Version"
        second = write(ds, tmp_path / "2.dcm")
        store(srv, first)
        out = store(srv, second)
        assert "Store Failed" not in out and "0x111" not in out
        blobs = stored_blobs(srv)
        assert len(blobs) == 1
        kept = pydicom.dcmread(blobs[0]).PatientName
        assert kept == ("Second^Version" if policy == "replace" else "First^Version")
    finally:
        srv.stop()
