"""``netpacs blobs copy``: every indexed blob copied to another store under the same key,
resumable and verified against the index (source as read, and the copy read back)."""

from __future__ import annotations

import contextlib
import enum
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol as TypingProtocol

import sqlalchemy as sa

from netpacs.index.schema import instance
from netpacs.services.maintenance.streaming import ProgressCallback, _no_progress, run_bounded
from netpacs.services.maintenance.verification import (
    _CHUNK,
    _check_blob,
    _indexed_blobs,
    _IndexedBlob,
)
from netpacs.storage.blobstore import BlobNotFound, BlobStore

log = logging.getLogger(__name__)

PHASE_COPY = "copying blobs"


class CopyTarget(BlobStore, TypingProtocol):
    def size(self, key: str) -> int | None:
        """The stored blob's size, None when there is none."""


class CopyStatus(enum.Enum):
    COPIED = "copied"
    PRESENT = "already there"  # a blob of the indexed size is already in the target
    SOURCE_DAMAGED = "source damaged"  # the source blob is not what the index recorded
    FAILED = "failed"  # the write or the read back failed, or the copy differs


@dataclass(frozen=True, slots=True)
class CopyItem:
    sop_instance_uid: str
    blob_key: str
    status: CopyStatus
    detail: str = ""


@dataclass(frozen=True, slots=True)
class CopyReport:
    objects: int
    copied: int
    present: int
    bytes_copied: int
    problems: tuple[CopyItem, ...]

    @property
    def complete(self) -> bool:
        """Every indexed object is in the target, as the index recorded it."""
        return not self.problems


def _copy_one(source: BlobStore, target: CopyTarget, row: _IndexedBlob) -> CopyItem:
    uid, key = row.sop_instance_uid, row.blob_key
    try:
        if target.size(key) == row.blob_size:
            return CopyItem(uid, key, CopyStatus.PRESENT)
    except OSError as exc:
        return CopyItem(uid, key, CopyStatus.FAILED, f"cannot look in the target: {exc}")
    sums = [0, 0]  # CRC-32 and size of what was read from the source

    def pieces() -> Iterator[bytes]:
        with source.open(key) as f:
            while chunk := f.read(_CHUNK):
                sums[0] = zlib.crc32(chunk, sums[0])
                sums[1] += len(chunk)
                yield chunk

    try:
        target.put(key, pieces())
    except BlobNotFound:
        return CopyItem(uid, key, CopyStatus.SOURCE_DAMAGED, "no blob in the source")
    except OSError as exc:
        return CopyItem(uid, key, CopyStatus.FAILED, f"write failed: {exc}")
    if (sums[1], sums[0]) != (row.blob_size, row.blob_crc32):
        with contextlib.suppress(OSError):
            target.delete(key)
        return CopyItem(
            uid,
            key,
            CopyStatus.SOURCE_DAMAGED,
            f"source has {sums[1]} bytes, CRC-32 {sums[0]:08x}; the index says "
            f"{row.blob_size}, {row.blob_crc32:08x}: not copied",
        )
    problem = _check_blob(target, row)  # read back from the target
    if problem is not None:
        with contextlib.suppress(OSError):
            target.delete(key)
        return CopyItem(uid, key, CopyStatus.FAILED, f"read back: {problem.detail}")
    return CopyItem(uid, key, CopyStatus.COPIED)


def copy_blobs(
    *,
    source: BlobStore,
    target: CopyTarget,
    engine: sa.Engine,
    progress: ProgressCallback = _no_progress,
    workers: int = 4,
) -> CopyReport:
    """Copy every indexed object's blob from ``source`` to ``target`` under the same key.

    Resumable: a blob the target already holds at the indexed size is left alone, so a
    second run copies only what is missing. Verified: each blob's size and CRC-32 are
    checked against the index as it is read from the source, and again by reading the
    copy back; a copy that differs is removed and reported. Blobs without an index row
    (orphans) are not copied. The source is never changed.
    """
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(instance)).scalar_one()
    problems: list[CopyItem] = []
    done = copied = present = copied_bytes = 0
    sizes: dict[str, int] = {}
    progress(PHASE_COPY, 0, total)

    def one(row: _IndexedBlob) -> CopyItem:
        sizes[row.blob_key] = row.blob_size
        return _copy_one(source, target, row)

    for _row, item in run_bounded(one, _indexed_blobs(engine), workers=workers):
        done += 1
        size = sizes.pop(item.blob_key, 0)
        if item.status is CopyStatus.COPIED:
            copied += 1
            copied_bytes += size
        elif item.status is CopyStatus.PRESENT:
            present += 1
        else:
            log.error(
                "SOP Instance %s: blob %s %s (%s)",
                item.sop_instance_uid,
                item.blob_key,
                item.status.value,
                item.detail,
            )
            problems.append(item)
        progress(PHASE_COPY, done, max(total, done))
    return CopyReport(done, copied, present, copied_bytes, tuple(problems))
