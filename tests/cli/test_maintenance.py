"""The maintenance service in process: bounded streaming, progress, origin recovery."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from netpacs.app.container import build_archive
from netpacs.app.region_file import load_region
from netpacs.app.settings import BUNDLED_DEMO_REGION, Settings
from netpacs.app.startup import prepare
from netpacs.domain.dicom.part10 import build_file_meta, read_file_meta
from netpacs.domain.outcomes import Origin, Protocol, StoreStatus
from netpacs.services.maintenance.reindexing import recover_origin
from netpacs.services.maintenance.streaming import run_bounded
from netpacs.services.maintenance.verification import PHASE_ORPHANS, PHASE_VERIFY, verify
from tests.cli.conftest import ct_dataset, write_part10


def test_run_bounded_pulls_items_lazily_and_keeps_a_window() -> None:
    pulled = 0
    lock = threading.Lock()
    in_flight = peak = 0

    def items() -> Iterator[int]:
        nonlocal pulled
        for i in range(100):
            pulled += 1
            yield i

    def work(i: int) -> int:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.002)
        with lock:
            in_flight -= 1
        return i * 2

    results = run_bounded(work, items(), workers=4, window=8)
    first = next(results)
    assert pulled <= 9  # the window plus the one that made it full
    rest = list(results)
    assert sorted([first, *rest]) == [(i, i * 2) for i in range(100)]
    assert peak <= 4


def test_run_bounded_raises_what_the_function_raised() -> None:
    def work(i: int) -> int:
        if i == 3:
            raise ValueError("three")
        return i

    with pytest.raises(ValueError, match="three"):
        list(run_bounded(work, range(10), workers=2))


def test_verify_reports_progress_up_to_the_total(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    prepare(settings)
    archive = build_archive(settings)
    try:
        for i in range(3):
            data = write_part10(ct_dataset(), tmp_path / f"{i}.dcm").read_bytes()
            outcome = archive.ingest.store_part10(data, origin=Origin(Protocol.IMPORT))
            assert outcome.status is StoreStatus.STORED
        calls: list[tuple[str, int, int | None]] = []
        report = verify(
            blobs=archive.blobs,
            engine=archive.read_engine,
            progress=lambda *a: calls.append(a),
        )
    finally:
        archive.close()
    assert report.clean and report.checked == 3
    assert calls[0] == (PHASE_VERIFY, 0, 3)
    assert [c for c in calls if c[0] == PHASE_VERIFY][-1] == (PHASE_VERIFY, 3, 3)
    assert calls[-1][0] == PHASE_ORPHANS


def test_origin_of_a_dimse_object_comes_from_its_sending_ae_and_the_region() -> None:
    region = load_region(BUNDLED_DEMO_REGION)
    head = build_file_meta(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid="1.2.3.4",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        sending_ae_title="RSUS_CT1",
        receiving_ae_title="NETPACS",
    )
    origin = recover_origin(read_file_meta(head), head, region)
    assert origin == Origin(Protocol.DIMSE, ae_title="RSUS_CT1", trust="RYR", site="RSUS")


def test_origin_of_a_dimse_object_from_an_unknown_ae_has_no_trust() -> None:
    region = load_region(BUNDLED_DEMO_REGION)
    head = build_file_meta(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid="1.2.3.4",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        sending_ae_title="STRANGER",
    )
    origin = recover_origin(read_file_meta(head), head, region)
    assert origin == Origin(Protocol.DIMSE, ae_title="STRANGER")


def test_source_ae_in_a_foreign_file_meta_is_not_taken_as_origin(tmp_path: Path) -> None:
    """Import did not use the file's own Source AE Title; reindex must not either."""
    region = load_region(BUNDLED_DEMO_REGION)
    ds = ct_dataset()
    path = tmp_path / "foreign.dcm"
    write_part10(ds, path)
    ds.file_meta.SourceApplicationEntityTitle = "RSUS_CT1"
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    meta = read_file_meta(data)
    assert meta.source_ae_title == "RSUS_CT1"
    assert recover_origin(meta, data, region) == Origin(Protocol.REINDEX)


def test_import_origin_is_recorded_in_the_file_meta_and_read_back(tmp_path: Path) -> None:
    """Private Information (0002,0100/0102): ours replaces a foreign pair, pydicom reads it."""
    from netpacs.domain.dicom.part10 import IMPLEMENTATION_CLASS_UID, with_private_information
    from netpacs.services.ingest_record import origin_information

    ds = ct_dataset()
    path = tmp_path / "foreign.dcm"
    write_part10(ds, path)
    ds.file_meta.PrivateInformationCreatorUID = "1.2.3.4"
    ds.file_meta.PrivateInformation = b"theirs"
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    meta = read_file_meta(data)
    origin = Origin(Protocol.IMPORT, trust="RYR", user="pacsadmin")

    head = with_private_information(data[: meta.dataset_offset], origin_information(origin))
    rewritten = head + data[meta.dataset_offset :]

    back = pydicom.dcmread(io.BytesIO(rewritten))
    assert back.file_meta.PrivateInformationCreatorUID == IMPLEMENTATION_CLASS_UID
    assert back.file_meta.FileMetaInformationGroupLength == len(head) - 132 - 12
    assert back.SOPInstanceUID == ds.SOPInstanceUID
    region = load_region(BUNDLED_DEMO_REGION)
    assert recover_origin(read_file_meta(rewritten), rewritten, region) == origin
