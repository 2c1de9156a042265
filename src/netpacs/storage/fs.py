"""Filesystem BlobStore: temp file, fsync, rename; crash recovery finishes the renames."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from netpacs.storage.blobstore import BlobNotFound, BlobStoreUnavailable

_KEY_RE = re.compile(r"^[0-9a-f]{32}$")
_FANOUT = 16**3


class FileSystemBlobStore:
    """Blobs in ``root/abc/abcd...``: up to 4,096 fan-out directories on the opaque key.

    A fan-out directory is made by the first object stored in it, so an empty archive
    costs two directories, not 4,097 (a test run makes hundreds of archives; tmpfs
    counts inodes). It is not made durable then (a directory sync per new directory
    was most of the cost of filling an empty archive): like the rename after it, it
    need not be. A journaling filesystem keeps metadata changes in order, so a power
    loss that undoes the ``mkdir`` undoes the rename that followed it, and the object
    is still ``tmp/<key>.part``, whose own sync made it durable; start-up recovery
    renames it into place (making the directories durable then), as it does for a
    lost rename.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / "tmp"
        if not self._tmp.is_dir():
            self._tmp.mkdir(parents=True, exist_ok=True)
            _fsync_dir(self.root)

    def _place(self, tmp: Path, final: Path) -> None:
        """Rename a written file into its fan-out directory, making the directory first
        if this is its first object (not durably: see the class)."""
        try:
            os.rename(tmp, final)
        except FileNotFoundError:
            if not tmp.exists():
                raise
            final.parent.mkdir(exist_ok=True)
            os.rename(tmp, final)

    def _path(self, key: str) -> Path:
        if not _KEY_RE.match(key):
            raise ValueError(f"not a blob key: {key!r}")
        return self.root / key[:3] / key

    def pending(self, key: str) -> PendingFile:
        """A blob written in place in ``tmp/``: a large object received over the
        network is written once, then renamed under its key (see :class:`PendingFile`)."""
        self._path(key)  # a valid key
        return PendingFile(self, key)

    def put(self, key: str, chunks: Iterable[bytes | memoryview]) -> int:
        final = self._path(key)
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
        # The rename is not fsynced here (a directory fsync per object costs more than
        # the data itself). After a power loss an acknowledged object may still sit
        # under tmp/; recover_pending() finishes its rename, because its index row
        # proves it was complete.
        self._place(tmp, final)
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
        for i in range(_FANOUT):
            fanout = self.root / f"{i:03x}"
            if not fanout.is_dir():
                continue
            for f in sorted(fanout.iterdir()):
                if _KEY_RE.match(f.name):
                    yield f.name

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def modified_at(self, key: str) -> float | None:
        try:
            return self._path(key).stat().st_mtime
        except FileNotFoundError:
            return None

    def check(self) -> None:
        """The directory takes a write: a small file in ``tmp/`` written, made durable
        and removed (named ``check-*.tmp``, never taken for a pending write)."""
        probe = self._tmp / f"check-{secrets.token_hex(8)}.tmp"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, b"netpacs readiness check\n")
                os.fdatasync(fd)
            finally:
                os.close(fd)
            probe.unlink()
        except OSError as exc:
            raise BlobStoreUnavailable(
                f"the object directory {self.root} cannot be written "
                f"({exc.strerror or exc.__class__.__name__})"
            ) from None

    def pending_keys(self, *, older_than: float) -> list[str]:
        """Keys of unfinished writes at least ``older_than`` seconds old."""
        limit = time.time() - older_than
        keys = []
        for f in self._tmp.iterdir():
            if f.name.endswith(".part"):
                with contextlib.suppress(FileNotFoundError):
                    if f.stat().st_mtime <= limit:
                        keys.append(f.name.removesuffix(".part"))
        return keys

    def stale_spools(self, *, older_than: float) -> list[Path]:
        """Objects a crash left half received in ``tmp/`` (``*.spool``, see
        :class:`PendingFile`) at least ``older_than`` seconds old: never acknowledged."""
        limit = time.time() - older_than
        stale = []
        for f in self._tmp.iterdir():
            if f.name.endswith(".spool"):
                with contextlib.suppress(FileNotFoundError):
                    if f.stat().st_mtime <= limit:
                        stale.append(f)
        return stale

    def finish_pending(self, key: str, *, complete: bool) -> None:
        """Rename a complete pending write into place (and make it durable), or drop it."""
        tmp = self._tmp / f"{key}.part"
        if not complete:
            tmp.unlink(missing_ok=True)
            return
        final = self._path(key)
        if tmp.exists():
            self._place(tmp, final)
        if final.parent.is_dir():
            _fsync_dir(final.parent)
        _fsync_dir(self.root)  # the fan-out directory, when the rename made it
        _fsync_dir(self._tmp)


class PendingFile:
    """A blob being written in ``tmp/`` as ``<key>.spool``; :meth:`commit` syncs it and
    renames it to ``tmp/<key>.part`` and into place, as :meth:`FileSystemBlobStore.put`
    does (so start-up recovery treats both alike); :meth:`close` before that removes
    it. A ``.spool`` a crash left behind was never acknowledged: start-up recovery
    removes it once it is an hour old (see :meth:`FileSystemBlobStore.stale_spools`).

    Not an anonymous ``O_TMPFILE``: naming one afterwards needs ``linkat`` through
    ``/proc/self/fd``, which some kernels refuse across mounts (EXDEV), or
    ``AT_EMPTY_PATH``, which needs a capability we should not."""

    def __init__(self, store: FileSystemBlobStore, key: str) -> None:
        self.key = key
        self._store = store
        self._named: Path | None = store._tmp / f"{key}.spool"
        self._fd = os.open(self._named, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError("the pending blob is closed")
        return self._fd

    def commit(self) -> int:
        fd = self.fileno()
        if self._named is None or self._named.suffix != ".spool":
            raise ValueError("the pending blob is committed already")
        os.fdatasync(fd)
        part = self._store._tmp / f"{self.key}.part"
        os.rename(self._named, part)
        self._named = part  # removed by close() unless it is placed
        self._store._place(part, self._store._path(self.key))
        self._named = None
        return os.fstat(fd).st_size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._named is not None:
            self._named.unlink(missing_ok=True)
            self._named = None


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
