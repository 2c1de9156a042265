"""Every file in pydicom's bundled test data, sent over DIMSE as stored, is either kept
and retrieved byte-identical (preamble aside) or refused with a clear reason."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE, _config, evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

from netpacs.adapters.dimse.negotiation import STORAGE_SOP_CLASSES
from netpacs.adapters.dimse.requestor import associate
from netpacs.domain.dicom.header import HeaderError
from netpacs.domain.dicom.part10 import read_file_meta
from tests.conftest import Netpacs
from tests.get_scu import get_association

TEST_FILES = Path(get_testdata_file("CT_small.dcm")).parent  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Netpacs]:
    from tests.conftest import write_region

    tmp = tmp_path_factory.mktemp("pydicom-files")
    srv = Netpacs(
        data_dir=tmp / "data",
        database_url=f"sqlite:///{tmp / 'index.sqlite'}",
        region_file=write_region(tmp / "region.toml", {}),
    )
    srv.start()
    yield srv
    srv.stop()


def _send(port: int, path: Path, sop_class: str, ts: str) -> tuple[int | None, str]:
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="ESH_MR1")
    ae.requested_contexts = [build_context(sop_class, ts)]
    assoc = associate(ae, "127.0.0.1", port, ae_title="NETPACS")
    if not assoc.is_established:
        return None, "association refused"
    try:
        if not assoc.accepted_contexts:
            return None, "presentation context refused"
        status = assoc.send_c_store(path)
        return int(status.Status), str(status.get("ErrorComment", ""))
    finally:
        assoc.release()


def _get(port: int, study: str, series: str, sop: str, sop_class: str, ts: str) -> list[bytes]:
    received: list[bytes] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.request.DataSet.getvalue())  # the raw encoded data set
        return 0x0000

    # The files are sent by ESH_MR1, East Surrey's: its workstation gets them.
    assoc = get_association("RTP_WS1", port, sop_class, on_store, [ts])
    from pydicom import Dataset

    ident = Dataset()
    ident.QueryRetrieveLevel = "IMAGE"
    ident.StudyInstanceUID = study
    ident.SeriesInstanceUID = series
    ident.SOPInstanceUID = sop
    list(assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet))
    assoc.release()
    return received


def _uids(raw: bytes) -> tuple[str, str]:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def test_every_pydicom_test_file_is_stored_identically_or_refused_with_a_reason(
    server: Netpacs,
) -> None:
    outcomes: dict[str, str] = {}
    first_sent: set[str] = set()
    for path in sorted(p for p in TEST_FILES.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        try:
            meta = read_file_meta(raw)
        except HeaderError as exc:
            outcomes[path.name] = f"not sent: {exc}"  # no file meta: nothing to send as stored
            continue
        sop_class = meta.media_storage_sop_class_uid
        if sop_class not in STORAGE_SOP_CLASSES:
            status, why = _send(server.port, path, sop_class or "1.2.3", meta.transfer_syntax_uid)
            assert status is None, f"{path.name}: non-storage SOP class {sop_class} accepted"
            outcomes[path.name] = f"refused at negotiation: {why}"
            continue
        try:
            status, why = _send(server.port, path, sop_class, meta.transfer_syntax_uid)
        except (AttributeError, ValueError, KeyError, EOFError) as exc:
            outcomes[path.name] = f"pynetdicom could not send it: {exc}"
            continue
        if status is None:
            outcomes[path.name] = f"refused at negotiation: {why}"
            continue
        if status != 0x0000:
            assert status >= 0xA000, f"{path.name}: status {status:#06x}"
            assert why, f"{path.name}: refused with {status:#06x} but no reason given"
            outcomes[path.name] = f"refused {status:#06x}: {why}"
            continue
        sent = raw[meta.dataset_offset :]
        if meta.media_storage_sop_instance_uid in first_sent:
            # The same instance in another encoding (MR_small_RLE after MR_small...):
            # success, the first copy kept (tests/adapters/test_duplicates.py).
            outcomes[path.name] = "stored: the same instance as an earlier file"
            continue
        first_sent.add(meta.media_storage_sop_instance_uid)
        study, series = _uids(raw)
        got = _get(
            server.port,
            study,
            series,
            meta.media_storage_sop_instance_uid,
            sop_class,
            meta.transfer_syntax_uid,
        )
        assert got == [sent], f"{path.name}: retrieved bytes differ from those sent"
        outcomes[path.name] = "stored and retrieved byte-identical"
    stored = [k for k, v in outcomes.items() if v.startswith("stored")]
    assert len(stored) > 100, outcomes
    refused = {k: v for k, v in outcomes.items() if not v.startswith("stored")}
    print("\n".join(f"{k}: {v}" for k, v in sorted(refused.items())))
