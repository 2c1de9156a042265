"""Objects on their way in: held in memory while small, then in a file of the data directory.

A C-STORE data set or a STOW-RS part arrives in pieces. :class:`Spool` keeps the
pieces in memory up to ``in_memory`` bytes (the common case: a CT slice is half a
megabyte, and the ingest hot path then costs no file), and moves them to an anonymous
temporary file in ``directory`` beyond that (the data directory: /tmp may be memory).
It refuses to grow beyond ``max_size`` (:class:`ObjectTooLarge`), so what one upload or
association holds is bounded in memory and on disk.

Why our own class: :class:`tempfile.SpooledTemporaryFile` rolls over to a file but
offers neither a size cap nor positioned reads; and reading a spooled object through a
memory map (as the ingest once did) maps every page of it into the process (its RSS
grew by the object's size): :meth:`Spool.chunks` reads the file with ``pread`` instead,
so only the header pages the parser touches are mapped.

Written once: a spool given a ``blob`` factory and the ``head`` the stored object will
start with (the file meta the ingest builds for a C-STORE data set) spills into a
:class:`~netpacs.storage.blobstore.PendingBlob` of the blob store instead of a
temporary file, head first, and keeps the CRC-32 of what it wrote: the ingest then
commits that file under its key (a sync and a rename) instead of copying the object.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from netpacs.storage.blobstore import PendingBlob

# Pieces at most this large are kept in memory; beyond it the object goes to a file.
IN_MEMORY = 32 * 1024 * 1024
CHUNK = 1024 * 1024


class ObjectTooLarge(Exception):
    """An object larger than the largest accepted (NETPACS_MAX_OBJECT_MB)."""

    def __init__(self, limit: int) -> None:
        # Short enough for a C-STORE Error Comment (64 characters).
        super().__init__(f"object larger than NETPACS_MAX_OBJECT_MB ({limit >> 20} MB)")
        self.limit = limit


class Spool:
    """One object's bytes: in memory while small, then in an anonymous temporary file
    (or in a pending blob of the blob store, after ``head``)."""

    def __init__(
        self,
        directory: Path | None = None,
        *,
        in_memory: int = IN_MEMORY,
        max_size: int = 0,
        head: bytes = b"",
        blob: Callable[[], PendingBlob | None] | None = None,
    ) -> None:
        self._directory = directory
        self._in_memory = in_memory
        self.max_size = max_size  # 0: no limit
        self.head = head  # written before the content when it goes to a pending blob
        self._new_blob = blob
        self._pieces: list[bytes | bytearray | memoryview] = []
        self._file: IO[bytes] | None = None
        self.blob: PendingBlob | None = None  # the file the content went to, if a blob
        self.crc = 0  # CRC-32 of head + content, kept while writing to a blob
        self._fd = -1
        self._offset = 0  # where the content starts in the file
        self.size = 0

    @property
    def in_file(self) -> bool:
        return self._fd >= 0

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Add ``chunk`` (kept by reference while in memory: do not change it after);
        :class:`ObjectTooLarge` when the object would grow beyond ``max_size``."""
        n = len(chunk)
        if self.max_size and self.size + n > self.max_size:
            raise ObjectTooLarge(self.max_size)
        self.size += n
        if self._fd < 0:
            if self.size <= self._in_memory:
                self._pieces.append(chunk)
                return
            self._to_file()
        self._write(chunk)

    def _to_file(self) -> None:
        if self._new_blob is not None:
            self.blob = self._new_blob()
        if self.blob is not None:
            self._fd = self.blob.fileno()
            self._offset = len(self.head)
            self.crc = zlib.crc32(self.head)
            _write_all(self._fd, self.head)
        else:
            # Closed by close(); in the data directory, as /tmp may be memory (tmpfs).
            self._file = tempfile.TemporaryFile(  # noqa: SIM115
                prefix="netpacs-spool-", dir=self._directory, buffering=0
            )
            self._fd = self._file.fileno()
        pieces, self._pieces = self._pieces, []
        for piece in pieces:
            self._write(piece)

    def _write(self, chunk: bytes | bytearray | memoryview) -> None:
        if self.blob is not None:
            self.crc = zlib.crc32(chunk, self.crc)
        _write_all(self._fd, chunk)

    def memory(self) -> bytes:
        """The content when it is in memory (one bytes piece is handed out as it is)."""
        assert self._fd < 0
        if len(self._pieces) == 1 and isinstance(self._pieces[0], bytes):
            return self._pieces[0]
        joined = b"".join(self._pieces)
        self._pieces = [joined]
        return joined

    @contextlib.contextmanager
    def view(self) -> Iterator[memoryview]:
        """The whole content as one buffer: in memory, or a read-only memory map of the
        file. Touch only what you need of a map: each page read joins the RSS."""
        if self._fd < 0:
            yield memoryview(self.memory())
            return
        mapped = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
        try:
            yield memoryview(mapped)[self._offset : self._offset + self.size]
        finally:
            # Views of the map still alive (a traceback's frame) keep it mapped until
            # they are collected; closing it under them would raise BufferError.
            with contextlib.suppress(BufferError):
                mapped.close()

    def chunks(self, start: int = 0) -> Iterator[bytes | memoryview]:
        """The content from ``start`` in pieces of at most a megabyte, read with
        ``pread`` (thread-safe, no shared file position, nothing mapped)."""
        if self._fd < 0:
            view = memoryview(self.memory())
            for pos in range(start, len(view), CHUNK):
                yield view[pos : pos + CHUNK]
            return
        fd, offset = self._fd, self._offset
        pos = start
        while pos < self.size:
            piece = os.pread(fd, min(CHUNK, self.size - pos), offset + pos)
            if not piece:
                raise OSError("spool file is shorter than what was written to it")
            yield piece
            pos += len(piece)

    def close(self) -> None:
        """Free the content: a pending blob not committed is dropped."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.blob is not None:
            self.blob.close()
        self._fd = -1
        self._pieces = []


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
