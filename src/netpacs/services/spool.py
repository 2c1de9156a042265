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
"""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

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
    """One object's bytes: in memory while small, then in an anonymous temporary file."""

    def __init__(
        self,
        directory: Path | None = None,
        *,
        in_memory: int = IN_MEMORY,
        max_size: int = 0,
    ) -> None:
        self._directory = directory
        self._in_memory = in_memory
        self.max_size = max_size  # 0: no limit
        self._pieces: list[bytes | bytearray | memoryview] = []
        self._file: IO[bytes] | None = None
        self.size = 0

    @property
    def in_file(self) -> bool:
        return self._file is not None

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Add ``chunk`` (kept by reference while in memory: do not change it after);
        :class:`ObjectTooLarge` when the object would grow beyond ``max_size``."""
        n = len(chunk)
        if self.max_size and self.size + n > self.max_size:
            raise ObjectTooLarge(self.max_size)
        self.size += n
        if self._file is None and self.size <= self._in_memory:
            self._pieces.append(chunk)
            return
        if self._file is None:
            # Closed by close(); in the data directory, as /tmp may be memory (tmpfs).
            self._file = tempfile.TemporaryFile(  # noqa: SIM115
                prefix="netpacs-spool-", dir=self._directory
            )
            for piece in self._pieces:
                self._file.write(piece)
            self._pieces = []
        self._file.write(chunk)

    def memory(self) -> bytes:
        """The content when it is in memory (one bytes piece is handed out as it is)."""
        assert self._file is None
        if len(self._pieces) == 1 and isinstance(self._pieces[0], bytes):
            return self._pieces[0]
        joined = b"".join(self._pieces)
        self._pieces = [joined]
        return joined

    @contextlib.contextmanager
    def view(self) -> Iterator[memoryview]:
        """The whole content as one buffer: in memory, or a read-only memory map of the
        file. Touch only what you need of a map: each page read joins the RSS."""
        if self._file is None:
            yield memoryview(self.memory())
            return
        self._file.flush()
        mapped = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            yield memoryview(mapped)
        finally:
            # Views of the map still alive (a traceback's frame) keep it mapped until
            # they are collected; closing it under them would raise BufferError.
            with contextlib.suppress(BufferError):
                mapped.close()

    def chunks(self, start: int = 0) -> Iterator[bytes | memoryview]:
        """The content from ``start`` in pieces of at most a megabyte, read with
        ``pread`` (thread-safe, no shared file position, nothing mapped)."""
        if self._file is None:
            view = memoryview(self.memory())
            for pos in range(start, len(view), CHUNK):
                yield view[pos : pos + CHUNK]
            return
        self._file.flush()
        fd = self._file.fileno()
        pos = start
        while pos < self.size:
            piece = os.pread(fd, min(CHUNK, self.size - pos), pos)
            if not piece:
                raise OSError("spool file is shorter than what was written to it")
            yield piece
            pos += len(piece)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._pieces = []
