"""The C-STOREs of a C-MOVE we asked of a DIMSE network (issue 14, ``retrieve = "move"``).

A network that moves to our AE title opens an association of its own, calling with its
``ae_title`` from its ``host`` (the partner check of services.partners), and C-STOREs
the study. Those objects are not ours: they are written into the federation cache
directory of the retrieval that asked for them, never through ingest and never into the
index. A network's AE may store only while a retrieval from it is in progress, only
objects of the study asked for, and at most the retrieval's byte budget; anything else
is refused. No network's AE may store into our archive at any time (its principal has
no STORE capability).

The retrieval in progress is a file of the cache directory (``moves/<key>.json``), not
process memory: the C-MOVE may be asked by an HTTP worker (the viewer) while a DIMSE
worker receives the C-STOREs. One retrieval per network at a time, on this node.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

from netpacs.domain.federation import PeerAnswerError

MAX_FILES = 10_000  # objects of one moved study


class MoveArrivals:
    """The retrievals by C-MOVE in progress (module doc)."""

    def __init__(self, directory: Path, *, max_bytes: int, longest_seconds: float = 600) -> None:
        self.directory = directory  # the federation cache directory
        self._max_bytes = max_bytes  # of one retrieval
        self._longest = longest_seconds  # a retrieval older than this is dead

    def _entry(self, network: str) -> Path:
        key = hashlib.sha256(network.encode()).hexdigest()[:24]
        return self.directory / "moves" / f"{key}.json"

    @contextmanager
    def expecting(
        self, network: str, study_uid: str, folder: Path, *, wait_seconds: float = 30
    ) -> Iterator[None]:
        """While the body runs, ``network``'s C-STOREs of ``study_uid`` go to ``folder``
        (a child of the cache directory). Waits up to ``wait_seconds`` for another
        retrieval from the network to end; :class:`PeerAnswerError` if it does not."""
        entry = self._entry(network)
        entry.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"study": study_uid, "folder": folder.name, "since": time.time()})
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fd = os.open(entry, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                break
            except FileExistsError:
                if self._expected(network) is None:  # a dead retrieval's
                    entry.unlink(missing_ok=True)
                elif time.monotonic() > deadline:
                    raise PeerAnswerError(
                        f"another retrieval from {network} is in progress"
                    ) from None
                else:
                    time.sleep(0.2)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            yield
        finally:
            entry.unlink(missing_ok=True)

    def _expected(self, network: str) -> tuple[str, Path] | None:
        try:
            entry = json.loads(self._entry(network).read_text())
            study, name, since = str(entry["study"]), str(entry["folder"]), float(entry["since"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        folder = self.directory / name
        if time.time() - since > self._longest or folder.parent != self.directory:
            return None
        return study, folder

    def expects(self, network: str) -> bool:
        return self._expected(network) is not None

    def store(
        self,
        network: str,
        chunks: Iterable[bytes | memoryview],
        *,
        transfer_syntax_uid: str,
        sop_class_uid: str,
        sop_instance_uid: str,
    ) -> str | None:
        """Write one C-STORE data set of ``network`` as a Part 10 file of the retrieval's
        folder; None when kept, else why it is refused (nothing kept)."""
        expected = self._expected(network)
        if expected is None:
            return f"no retrieval from {network} is in progress"
        study_uid, folder = expected
        kept = [p.stat().st_size for p in folder.glob("*.dcm")] if folder.is_dir() else None
        if kept is None:
            return f"no retrieval from {network} is in progress"
        if len(kept) >= MAX_FILES:
            return "the retrieval's limit of objects is reached"
        path = folder / f"{uuid.uuid4().hex}.dcm.part"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(sop_class_uid)
        meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
        meta.TransferSyntaxUID = UID(transfer_syntax_uid)
        why = None
        try:
            size = sum(kept)
            with path.open("wb") as f:
                f.write(b"\0" * 128 + b"DICM")
                write_file_meta_info(f, meta, enforce_standard=True)  # type: ignore[arg-type]
                for chunk in chunks:
                    f.write(chunk)
                    size += len(chunk)
                    if size > self._max_bytes:
                        break
            if size > self._max_bytes:
                why = "the retrieval's size limit is reached"
            else:
                header = dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
                if str(header.get("StudyInstanceUID", "")) != study_uid:
                    why = "not an object of the study asked for"
        except (OSError, ValueError, InvalidDicomError) as exc:
            why = f"cannot be kept: {str(exc)[:60]}"
        if why is not None:
            path.unlink(missing_ok=True)
        else:
            path.rename(path.with_suffix(""))  # x.dcm.part -> x.dcm
        return why
