"""The retrieve service: every way an object leaves netpacs goes through here.

C-MOVE, C-GET, WADO-RS (and WADO-URI) and the ZIP export select their objects here,
within what the principal may see and audited (through the query service), and read
their bytes here. Each selected object comes as a :class:`Served`: where its bytes are
and the header coercion it needs (its patient changed since it was stored: ADT, a
merge; :mod:`netpacs.services.coercion`). Every byte-reading method applies that
coercion, so no path can serve stale patient details; the stored blob is never changed.
Objects go as stored; when a client asks for another transfer syntax (or a DIMSE peer
accepts only an uncompressed one) they are transcoded (:mod:`netpacs.services.transcode`).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pydicom

from netpacs.domain.dicom.header import DEFLATED_EXPLICIT_VR_LE
from netpacs.domain.dicom.part10 import read_file_meta
from netpacs.domain.query import QueryLevel, QueryModel, RetrieveItem, StoredInstance
from netpacs.services import metrics
from netpacs.services.access import Principal
from netpacs.services.coercion import Coercion, CoercionService, coerce_dataset, coerce_part10
from netpacs.services.deflate import inflate_range
from netpacs.services.query import QueryService
from netpacs.services.transcode import (
    UNCOMPRESSED,
    check_transcodable,
    reencode_dataset,
    transcode_part10,
)
from netpacs.storage.blobstore import BlobStore

CHUNK_SIZE = 1 << 20


@dataclass(frozen=True, slots=True)
class Served:
    """One selected object: where its bytes are, and how its header is served."""

    item: RetrieveItem
    coercion: Coercion | None = None  # None: served byte for byte as stored
    series_instance_uid: str = ""

    @property
    def sop_class_uid(self) -> str:
        return self.item.sop_class_uid

    @property
    def sop_instance_uid(self) -> str:
        return self.item.sop_instance_uid

    @property
    def transfer_syntax_uid(self) -> str:
        return self.item.transfer_syntax_uid

    @property
    def blob_size(self) -> int:
        return self.item.blob_size

    def as_stored(self, transfer_syntax_uid: str) -> bool:
        """Whether serving it in ``transfer_syntax_uid`` is sending the stored bytes."""
        return self.coercion is None and transfer_syntax_uid == self.item.transfer_syntax_uid


class RetrieveService:
    def __init__(self, *, query: QueryService, coercion: CoercionService, blobs: BlobStore) -> None:
        self._query = query
        self._coercion = coercion
        self._blobs = blobs

    def for_principal(self, principal: Principal) -> RetrieveService:
        """The same object store, selecting what ``principal`` may retrieve."""
        return RetrieveService(
            query=self._query.for_principal(principal),
            coercion=self._coercion,
            blobs=self._blobs,
        )

    # -- selection ---------------------------------------------------------------------
    def select(
        self,
        identifier: dict[str, Any],
        *,
        level: QueryLevel,
        model: QueryModel,
        interface: str = "c-move/c-get",
    ) -> list[Served]:
        """What a C-MOVE or C-GET identifier selects (PS3.4 C.4.2, C.4.3), audited;
        ``interface`` names the asker in the metrics."""
        items = self._query.instances_for_retrieve(identifier, level=level, model=model)
        coercions = self._coercion.for_items(items)
        metrics.retrieved(interface, len(items), sum(i.blob_size for i in items))
        return [Served(i, coercions.get(i.sop_instance_uid)) for i in items]

    def stored(
        self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> list[Served]:
        """The instances of a study, a series of it or one instance (WADO-RS), audited
        as accessed; empty when there are none the principal may see."""
        found = self._query.stored_instances(study_uid, series_uid, sop_instance_uid)
        metrics.retrieved("wado-rs", len(found), sum(f.item.blob_size for f in found))
        return self._served(found, study_uid, series_uid, sop_instance_uid)

    def export(
        self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> list[Served]:
        """As :meth:`stored`, audited as an export (PS3.15 A.5.3.7), not as an access."""
        found = self._query.exported_instances(study_uid, series_uid, sop_instance_uid)
        metrics.retrieved("export", len(found), sum(f.item.blob_size for f in found))
        return self._served(found, study_uid, series_uid, sop_instance_uid)

    def _served(
        self,
        found: list[StoredInstance],
        study_uid: str,
        series_uid: str | None,
        sop_instance_uid: str | None,
    ) -> list[Served]:
        if not found:
            return []
        coercions = self._coercion.for_scope(study_uid, series_uid, sop_instance_uid)
        return [
            Served(f.item, coercions.get(f.sop_instance_uid), f.series_instance_uid) for f in found
        ]

    # -- bytes -------------------------------------------------------------------------
    def dataset_bytes(self, obj: Served) -> bytes:
        """The data set (without file meta) in its stored transfer syntax, as served."""
        item = obj.item
        with metrics.object_store("get"):
            data = self._blobs.get_range(
                item.blob_key, item.dataset_offset, item.blob_size - item.dataset_offset
            )
        if obj.coercion is None:
            return data
        return coerce_dataset(data, item.transfer_syntax_uid, obj.coercion)

    def dataset_in(self, obj: Served, transfer_syntax_uid: str) -> bytes:
        """The data set (without file meta) in ``transfer_syntax_uid`` (a DIMSE peer's
        accepted syntax): re-encoded between uncompressed syntaxes, else transcoded.
        Raises :class:`~netpacs.services.transcode.TranscodeError`."""
        stored = obj.transfer_syntax_uid
        if transfer_syntax_uid == stored:
            return self.dataset_bytes(obj)
        if stored in UNCOMPRESSED and transfer_syntax_uid in UNCOMPRESSED:
            return reencode_dataset(self.dataset_bytes(obj), stored, transfer_syntax_uid)
        part10 = self.part10_in(obj, transfer_syntax_uid)
        return part10[read_file_meta(part10).dataset_offset :]

    def part10(self, obj: Served) -> bytes:
        """The Part 10 file as served (stored preamble and file meta)."""
        item = obj.item
        with metrics.object_store("get"):
            blob = self._blobs.get(item.blob_key)
        if obj.coercion is None:
            return blob
        return coerce_part10(blob, item.dataset_offset, item.transfer_syntax_uid, obj.coercion)

    def part10_in(self, obj: Served, transfer_syntax_uid: str) -> bytes:
        """The Part 10 file in ``transfer_syntax_uid``: as served when that is the stored
        syntax, else transcoded. Raises
        :class:`~netpacs.services.transcode.TranscodeError`."""
        if transfer_syntax_uid == obj.transfer_syntax_uid:
            return self.part10(obj)
        check_transcodable(obj.transfer_syntax_uid, transfer_syntax_uid)
        with metrics.object_store("get"):
            blob = self._blobs.get(obj.item.blob_key)
        return transcode_part10(blob, obj.sop_instance_uid, transfer_syntax_uid, obj.coercion)

    def part10_chunks(self, obj: Served, *, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The Part 10 file as served, in chunks (read as it goes when served as stored)."""
        if obj.coercion is not None:
            yield self.part10(obj)
            return
        with metrics.object_store("get"), self._blobs.open(obj.item.blob_key) as f:
            while chunk := f.read(chunk_size):
                yield chunk

    def part10_framed(self, obj: Served, head: bytes, tail: bytes) -> bytearray:
        """``head`` + the Part 10 file as served + ``tail`` in one buffer.

        For multipart answers: the part's headers and delimiter go around the file
        without concatenating (a file served as stored is read straight into the buffer).
        """
        if obj.coercion is not None:
            return bytearray(head + self.part10(obj) + tail)
        item = obj.item
        size = item.blob_size
        buf = bytearray(len(head) + size + len(tail))
        buf[: len(head)] = head
        view = memoryview(buf)
        with self._blobs.open(item.blob_key) as blob:
            f = cast(io.BufferedReader, blob)
            got = 0
            while got < size:
                n = f.readinto(view[len(head) + got : len(head) + size])
                if not n:
                    raise OSError(f"blob {item.blob_key} is shorter than its index row says")
                got += n
        view.release()
        buf[len(head) + size :] = tail
        return buf

    @contextmanager
    def as_file(self, obj: Served) -> Iterator[Path]:
        """A local Part 10 file holding the object as served, for senders that read
        files: the stored file itself, or a temporary copy (coerced, or from a remote
        store) removed on exit."""
        if obj.coercion is not None:
            fd, name = tempfile.mkstemp(prefix="netpacs-coerced-", suffix=".dcm")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(self.part10(obj))
                yield Path(name)
            finally:
                os.unlink(name)
            return
        path = self._blobs.local_path(obj.item.blob_key)
        if path is not None:
            yield path
            return
        # A remote store (S3): the object is copied in pieces to a temporary file.
        fd, name = tempfile.mkstemp(prefix="netpacs-blob-", suffix=".dcm")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in self.part10_chunks(obj):
                    f.write(chunk)
            yield Path(name)
        finally:
            os.unlink(name)

    # -- bulk data (never coerced: patient details are not bulk data) -----------------
    def bulk_value(
        self, item: RetrieveItem, tag: str, offset: int | None, length: int | None
    ) -> bytes | None:
        """The value of the bulk data element ``tag`` (8 hex digits), or None when the
        object has none. ``offset`` and ``length`` are where the index found it in the
        stored data set; without them (an object indexed through pydicom) it is read."""
        if offset is not None and length is not None:
            if item.transfer_syntax_uid != DEFLATED_EXPLICIT_VR_LE:
                return self._blobs.get_range(item.blob_key, item.dataset_offset + offset, length)
            # Inflated only up to the value's end, and only the value kept: a small
            # deflated object may inflate to gigabytes.
            with self._blobs.open(item.blob_key) as f:
                f.seek(item.dataset_offset)
                return inflate_range(f, offset, length)
        with self._blobs.open(item.blob_key) as f:
            ds = pydicom.dcmread(f, force=True)
        value = getattr(ds.get(int(tag, 16)), "value", None)
        return value if isinstance(value, bytes) else None

    def bulk_chunks(
        self, item: RetrieveItem, offset: int | None, length: int | None
    ) -> Iterator[bytes] | None:
        """The bulk data value at ``offset`` (``length`` bytes) of the stored data set,
        read in pieces as it is sent; None when it cannot be read so (no location known,
        or a deflated data set): then :meth:`bulk_value` reads it."""
        if offset is None or length is None or item.transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LE:
            return None
        blob = self._blobs.open(item.blob_key)  # a missing blob is known before sending
        blob.seek(item.dataset_offset + offset)

        def pieces() -> Iterator[bytes]:
            with blob as f:
                left = length
                while left > 0:
                    chunk = f.read(min(CHUNK_SIZE, left))
                    if not chunk:
                        raise OSError(f"blob {item.blob_key} ends inside a bulk data value")
                    left -= len(chunk)
                    yield chunk

        return pieces()

    def stored_dataset(self, item: RetrieveItem) -> bytes:
        """The stored data set's bytes, for rendering pixels (patient details unused)."""
        return self.dataset_bytes(Served(item))
