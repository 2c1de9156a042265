"""Filesystem BlobStore: temp file, fsync, rename, fsync directory."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from netpacs.storage.blobstore import BlobNotFound

_KEY_RE = re.compile(r"^[0-9a-f]{32}$")


class FileSystemBlobStore:
    """Blobs in ``root/ab/cd/abcd...`` (two levels of fan-out on the opaque key)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._known_dirs: set[Path] = set()

    def _path(self, key: str) -> Path:
        if not _KEY_RE.match(key):
            raise ValueError(f"not a blob key: {key!r}")
        return self.root / key[:2] / key[2:4] / key

    def _ensure_dir(self, d: Path) -> None:
        if d in self._known_dirs:
            return
        if not d.is_dir():
            d.mkdir(parents=True, exist_ok=True)
            for parent in (d.parent, self.root):
                _fsync_dir(parent)
        self._known_dirs.add(d)

    def put(self, key: str, chunks: Iterable[bytes | memoryview]) -> int:
        final = self._path(key)
        self._ensure_dir(final.parent)
        tmp = self._tmp / f"{key}.part"
        size = 0
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                    size += n
            os.fdatasync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.rename(tmp, final)
        _fsync_dir(final.parent)
        return size

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    def get_range(self, key: str, start: int, length: int) -> bytes:
        with self.open(key) as f:
            f.seek(start)
            return f.read(length)

    def open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def keys(self) -> Iterator[str]:
        for a in sorted(self.root.iterdir()):
            if a == self._tmp or not a.is_dir():
                continue
            for b in sorted(a.iterdir()):
                for f in sorted(b.iterdir()):
                    if _KEY_RE.match(f.name):
                        yield f.name

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def clear_temporary(self) -> int:
        """Remove partial writes a crash left behind; return how many."""
        n = 0
        for f in self._tmp.iterdir():
            f.unlink(missing_ok=True)
            n += 1
        return n


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
