"""The retrieve service: which stored objects a retrieve request selects, and their bytes.

C-MOVE, C-GET and WADO-RS call this; access control for retrieval belongs here, once.
Objects are given as stored; when a client asks for another transfer syntax (or, over
DIMSE, a peer accepts only an uncompressed one) they are transcoded with pydicom and its
pixel data plugins. An object whose patient changed
since it was stored (ADT, :mod:`netpacs.services.coercion`) is given with a coerced
header when the caller passes its :class:`Coercion`; the stored blob is never changed.
"""

from __future__ import annotations

import functools
import io
import os
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import pydicom
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import UID

from netpacs.dicom.header import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
)
from netpacs.dicom.part10 import read_file_meta
from netpacs.services.access import Principal
from netpacs.services.coercion import Coercion, apply_to_dataset, coerce_dataset, coerce_part10
from netpacs.services.query import QueryLevel, QueryModel, QueryService, RetrieveItem
from netpacs.storage.blobstore import BlobStore

CHUNK_SIZE = 1 << 20


class RetrieveService:
    def __init__(self, *, query: QueryService, blobs: BlobStore) -> None:
        self._query = query
        self._blobs = blobs

    def for_principal(self, principal: Principal) -> RetrieveService:
        """The same object store, selecting what ``principal`` may retrieve."""
        return RetrieveService(query=self._query.for_principal(principal), blobs=self._blobs)

    def select(
        self, identifier: dict[str, Any], *, level: QueryLevel, model: QueryModel
    ) -> list[RetrieveItem]:
        return self._query.instances_for_retrieve(identifier, level=level, model=model)

    def dataset_bytes(self, item: RetrieveItem, *, coercion: Coercion | None = None) -> bytes:
        """The stored data set (without file meta), in its stored transfer syntax;
        with ``coercion``, its header coerced."""
        data = self._blobs.get_range(
            item.blob_key, item.dataset_offset, item.blob_size - item.dataset_offset
        )
        if coercion is None:
            return data
        return coerce_dataset(data, item.transfer_syntax_uid, coercion)

    @contextmanager
    def as_file(self, item: RetrieveItem, *, coercion: Coercion | None = None) -> Iterator[Path]:
        """A local Part 10 file holding the object, for senders that read files.

        With ``coercion`` the file is a temporary copy with the coerced header, removed
        on exit.
        """
        if coercion is not None:
            fd, name = tempfile.mkstemp(prefix="netpacs-coerced-", suffix=".dcm")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(self.part10(item, coercion=coercion))
                yield Path(name)
            finally:
                os.unlink(name)
            return
        path = self._blobs.local_path(item.blob_key)
        if path is None:
            raise NotImplementedError("remote blob stores are read through dataset_bytes")
        yield path

    # -- WADO-RS ---------------------------------------------------------------------------
    def part10_chunks(self, item: RetrieveItem, *, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The stored Part 10 file (preamble, file meta, data set) in chunks, as stored."""
        with self._blobs.open(item.blob_key) as f:
            while chunk := f.read(chunk_size):
                yield chunk

    def part10_framed(self, item: RetrieveItem, head: bytes, tail: bytes) -> bytearray:
        """``head`` + the stored Part 10 file + ``tail`` in one buffer, read with one copy.

        For multipart answers: the part's headers and delimiter go around the file
        without concatenating (the file is read straight into the buffer).
        """
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

    def bytes_at(self, item: RetrieveItem, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` of the stored data set (a bulk data value)."""
        return self._blobs.get_range(item.blob_key, item.dataset_offset + offset, length)

    def bulk_value(
        self, item: RetrieveItem, tag: str, offset: int | None, length: int | None
    ) -> bytes | None:
        """The value of the bulk data element ``tag`` (8 hex digits), or None when the
        object has none. ``offset`` and ``length`` are where the index found it in the
        stored data set; without them (an object indexed through pydicom) it is read."""
        if offset is not None and length is not None:
            if item.transfer_syntax_uid != DEFLATED_EXPLICIT_VR_LE:
                return self.bytes_at(item, offset, length)
            data = self.dataset_bytes(item)
            return zlib.decompress(data, -zlib.MAX_WBITS)[offset : offset + length]
        with self._blobs.open(item.blob_key) as f:
            ds = pydicom.dcmread(f, force=True)
        value = getattr(ds.get(int(tag, 16)), "value", None)
        return value if isinstance(value, bytes) else None

    def part10(self, item: RetrieveItem, *, coercion: Coercion | None = None) -> bytes:
        """The stored Part 10 file; with ``coercion``, its data set's header coerced."""
        blob = self._blobs.get(item.blob_key)
        if coercion is None:
            return blob
        return coerce_part10(blob, item.dataset_offset, item.transfer_syntax_uid, coercion)

    def transcoded(
        self, item: RetrieveItem, transfer_syntax_uid: str, *, coercion: Coercion | None = None
    ) -> bytes:
        """The object as a Part 10 file in another transfer syntax (pydicom).

        Compressed pixel data is decoded first (colour as RGB); an object without pixel
        data asked for in a compressed syntax comes in Explicit VR Little Endian
        (PS3.18 8.7.3.5.2). Call :func:`check_transcodable` first: this raises
        :class:`TranscodeError` on what it cannot do. ``coercion``: as for :meth:`part10`.
        """
        ds = pydicom.dcmread(io.BytesIO(self._blobs.get(item.blob_key)))
        if coercion is not None:
            apply_to_dataset(ds, coercion)
        target = UID(transfer_syntax_uid)
        try:
            has_pixels = "PixelData" in ds
            if has_pixels and ds.file_meta.TransferSyntaxUID.is_compressed:
                # The same object in another syntax: pydicom would otherwise give it a
                # new SOP Instance UID, and the receiver a duplicate of the stored one.
                ds.decompress(generate_instance_uid=False)
            if target.is_compressed and has_pixels:
                ds.compress(target, generate_instance_uid=False)
            else:
                if target.is_compressed:
                    target = UID(EXPLICIT_VR_LE)
                ds.file_meta.TransferSyntaxUID = target
            out = io.BytesIO()
            ds.save_as(
                out,
                implicit_vr=target == IMPLICIT_VR_LE,
                little_endian=True,
                enforce_file_format=True,
            )
        except Exception as exc:  # the pixel plugins raise many types
            raise TranscodeError(
                f"{item.sop_instance_uid} cannot be given in {target.name}: {exc}"
            ) from None
        return out.getvalue()

    def dataset_in(
        self, item: RetrieveItem, transfer_syntax_uid: str, *, coercion: Coercion | None = None
    ) -> bytes:
        """The data set (without file meta) in ``transfer_syntax_uid``: as stored when it
        is the stored syntax, else transcoded as :meth:`transcoded` does (for DIMSE
        peers that accept only another syntax). Raises :class:`TranscodeError`."""
        if transfer_syntax_uid == item.transfer_syntax_uid:
            return self.dataset_bytes(item, coercion=coercion)
        check_transcodable(item.transfer_syntax_uid, transfer_syntax_uid)
        part10 = self.transcoded(item, transfer_syntax_uid, coercion=coercion)
        return part10[read_file_meta(part10).dataset_offset :]


class TranscodeError(ValueError):
    """An object cannot be given in the transfer syntax asked for."""


@functools.cache
def can_transcode(stored: str, target: str) -> bool:
    """Whether objects in ``stored`` can be given in ``target`` here."""
    try:
        check_transcodable(stored, target)
    except TranscodeError:
        return False
    return True


def check_transcodable(stored: str, target: str) -> None:
    """Raise TranscodeError unless objects in ``stored`` can be given in ``target``."""
    if stored == target:
        return
    wanted, have = UID(target), UID(stored)
    if not wanted.is_transfer_syntax or wanted == EXPLICIT_VR_BE:
        raise TranscodeError(f"netpacs does not write {target} ({wanted.name or 'unknown'})")
    if have.is_compressed and not _available(get_decoder, have):
        raise TranscodeError(f"no decoder here for the stored {have.name}")
    if wanted.is_compressed and not _available(get_encoder, wanted):
        raise TranscodeError(f"no encoder here for {wanted.name}")


def _available(get: Any, uid: UID) -> bool:
    try:
        return bool(get(uid).is_available)
    except NotImplementedError:
        return False
