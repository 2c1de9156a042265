"""The C-STOREs of a C-MOVE we asked of a DIMSE network (services.federation.arrivals):
kept only while the retrieval is in progress, only for its study, within its budget."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from netpacs.domain.federation import PeerAnswerError
from netpacs.services.federation import MoveArrivals
from tests.federation.peers import patient_study


def _store(arrivals: MoveArrivals, path: Path) -> str | None:
    ds = pydicom.dcmread(path)
    raw = path.read_bytes()
    body = raw[132 + 12 + int.from_bytes(raw[140:144], "little") :]  # after the file meta
    return arrivals.store(
        "Wessex",
        [body],
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
    )


def test_only_objects_of_the_study_asked_for_are_kept_while_it_is_retrieved(
    tmp_path: Path,
) -> None:
    asked = patient_study(tmp_path / "asked", seed=1)
    patient_study(tmp_path / "other", seed=2)
    cache = tmp_path / "cache"
    folder = cache / "abc"
    folder.mkdir(parents=True)
    arrivals = MoveArrivals(cache, max_bytes=1 << 20)
    first = sorted((tmp_path / "asked").glob("*.dcm"))[0]
    assert _store(arrivals, first) == "no retrieval from Wessex is in progress"
    with arrivals.expecting("Wessex", asked, folder):
        assert arrivals.expects("Wessex") and not arrivals.expects("Kent")
        assert _store(arrivals, first) is None
        other = sorted((tmp_path / "other").glob("*.dcm"))[0]
        assert _store(arrivals, other) == "not an object of the study asked for"
        second = arrivals.expecting("Wessex", asked, folder, wait_seconds=0.3)
        with pytest.raises(PeerAnswerError, match="in progress"):
            second.__enter__()
    assert not arrivals.expects("Wessex")
    kept = list(folder.iterdir())
    assert len(kept) == 1
    assert str(pydicom.dcmread(kept[0]).StudyInstanceUID) == asked


def test_a_retrieval_beyond_its_byte_budget_keeps_nothing_more(tmp_path: Path) -> None:
    asked = patient_study(tmp_path / "asked", seed=3)
    cache = tmp_path / "cache"
    folder = cache / "abc"
    folder.mkdir(parents=True)
    arrivals = MoveArrivals(cache, max_bytes=10_000)  # one 64x64 CT slice is ~9 kB
    files = sorted((tmp_path / "asked").glob("*.dcm"))
    with arrivals.expecting("Wessex", asked, folder):
        assert _store(arrivals, files[0]) is None
        assert _store(arrivals, files[1]) == "the retrieval's size limit is reached"
    assert len(list(folder.iterdir())) == 1
