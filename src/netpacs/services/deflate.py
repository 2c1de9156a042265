"""Deflated Explicit VR Little Endian (PS3.5 A.5) inflated with bounds, never whole in memory.

A few megabytes of deflate can claim gigabytes (zeros compress about 1,000 to 1), so
every inflation here is incremental (``zlib.decompressobj`` with ``max_length``):

- :func:`inflated` gives the ingest the inflated data set to walk: in memory while
  small, else a sparse temporary file (runs of zeros are holes, not written) mapped
  read-only, of which the header walk touches only the header pages; refused with
  :class:`~netpacs.domain.dicom.header.TooLarge` beyond the largest object accepted.
- :func:`inflate_range` gives a bulk data value or a frame of a stored deflated object
  by inflating up to its end and keeping only the range asked for.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from netpacs.domain.dicom.header import HeaderError, TooLarge

STEP = 1024 * 1024  # inflated bytes produced per call
_ZEROS = bytes(STEP)


def inflate_chunks(chunks: Iterable[bytes | memoryview], limit: int) -> Iterator[bytes]:
    """The inflated data of a raw deflate stream given in ``chunks``, in pieces of at
    most :data:`STEP` bytes; :class:`TooLarge` as soon as it passes ``limit`` bytes."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        for chunk in chunks:
            data: bytes | memoryview = chunk
            while data and not inflater.eof:
                out = inflater.decompress(data, STEP)
                total += len(out)
                if total > limit:
                    raise TooLarge(f"the deflated data set inflates to more than {limit:,} bytes")
                if out:
                    yield out
                data = inflater.unconsumed_tail
            if inflater.eof:
                return
        while not inflater.eof:  # output still held back by max_length
            out = inflater.decompress(b"", STEP)
            if not out:
                break
            total += len(out)
            if total > limit:
                raise TooLarge(f"the deflated data set inflates to more than {limit:,} bytes")
            yield out
    except zlib.error as exc:
        raise HeaderError(f"deflated data set does not inflate: {exc}") from None


@contextlib.contextmanager
def inflated(
    chunks: Iterable[bytes | memoryview],
    *,
    limit: int,
    directory: Path | None,
    in_memory: int = 32 * 1024 * 1024,
) -> Iterator[bytes | memoryview]:
    """The inflated data set: bytes while it stays under ``in_memory``, else a read-only
    map of a sparse temporary file in ``directory`` (removed on exit)."""
    pieces: list[bytes] = []
    size = 0
    stream = inflate_chunks(chunks, limit)
    for piece in stream:
        pieces.append(piece)
        size += len(piece)
        if size > in_memory:
            break
    else:
        yield b"".join(pieces)
        return
    with tempfile.TemporaryFile(prefix="netpacs-inflated-", dir=directory) as f:
        fd = f.fileno()
        for piece in pieces:
            os.write(fd, piece)
        del pieces
        for piece in stream:
            if len(piece) == STEP and piece == _ZEROS:
                os.lseek(fd, STEP, os.SEEK_CUR)  # a hole: no disk, reads as zeros
            else:
                _write_all(fd, piece)
            size += len(piece)
        os.ftruncate(fd, size)
        mapped = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        try:
            yield memoryview(mapped)
        finally:
            with contextlib.suppress(BufferError):
                mapped.close()


def inflate_range(f: BinaryIO, start: int, length: int) -> bytes:
    """``length`` bytes from offset ``start`` of the inflated data set whose deflated
    bytes ``f`` reads from its current position; the rest is inflated and dropped."""
    out = bytearray()
    pos = 0
    end = start + length

    def read() -> Iterator[bytes]:
        while piece := f.read(STEP):
            yield piece

    for piece in inflate_chunks(read(), limit=end + STEP):
        if pos + len(piece) > start:
            out += piece[max(0, start - pos) : end - pos]
        pos += len(piece)
        if pos >= end:
            break
    return bytes(out)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
