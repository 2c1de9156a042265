"""``verify``: every indexed blob re-read and checked (size, CRC-32) against its index
row, then the orphan blobs no row points at listed, and the old ones swept."""

from __future__ import annotations

import enum
import logging
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TypeVar

import sqlalchemy as sa

from netpacs.index.schema import instance, rejected_instance
from netpacs.services.maintenance.streaming import ProgressCallback, _no_progress, run_bounded
from netpacs.storage.blobstore import BlobNotFound, BlobStore

log = logging.getLogger(__name__)

T = TypeVar("T")

PHASE_VERIFY = "verifying blobs"
PHASE_ORPHANS = "looking for orphan blobs"

_CHUNK = 1 << 20
_PAGE = 1000
_KEY_BATCH = 500


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


class ProblemKind(enum.Enum):
    """What is wrong with an indexed object's blob."""

    MISSING = "missing"  # the index row points at no blob
    SIZE_MISMATCH = "size mismatch"
    CRC_MISMATCH = "CRC-32 mismatch"
    UNREADABLE = "unreadable"  # the store raised an I/O error


@dataclass(frozen=True, slots=True)
class BlobProblem:
    sop_instance_uid: str
    blob_key: str
    kind: ProblemKind
    detail: str


@dataclass(frozen=True, slots=True)
class Orphan:
    """A blob no index row points at."""

    blob_key: str
    age_seconds: float | None  # None: the store cannot tell
    swept: bool


@dataclass(frozen=True, slots=True)
class VerifyReport:
    checked: int
    problems: tuple[BlobProblem, ...]
    orphans: tuple[Orphan, ...]

    @property
    def missing(self) -> tuple[BlobProblem, ...]:
        return tuple(p for p in self.problems if p.kind is ProblemKind.MISSING)

    @property
    def mismatched(self) -> tuple[BlobProblem, ...]:
        return tuple(p for p in self.problems if p.kind is not ProblemKind.MISSING)

    @property
    def swept(self) -> int:
        return sum(1 for o in self.orphans if o.swept)

    @property
    def clean(self) -> bool:
        """True when every indexed object's blob is present and intact."""
        return not self.problems


@dataclass(frozen=True, slots=True)
class _IndexedBlob:
    sop_instance_uid: str
    blob_key: str
    blob_size: int
    blob_crc32: int


def _indexed_blobs(engine: sa.Engine) -> Iterator[_IndexedBlob]:
    """Every index row's blob, read in pages by primary key (short read transactions)."""
    cols = (
        instance.c.id,
        instance.c.sop_instance_uid,
        instance.c.blob_key,
        instance.c.blob_size,
        instance.c.blob_crc32,
    )
    last = 0
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(*cols).where(instance.c.id > last).order_by(instance.c.id).limit(_PAGE)
            ).all()
        if not rows:
            return
        for pk, uid, key, size, crc in rows:
            yield _IndexedBlob(uid, key, size, crc)
            last = pk


def _blob_crc(blobs: BlobStore, key: str) -> tuple[int, int]:
    """(size, CRC-32) of the whole blob, read in chunks."""
    crc = 0
    size = 0
    with blobs.open(key) as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return size, crc


def _check_blob(blobs: BlobStore, row: _IndexedBlob) -> BlobProblem | None:
    uid, key = row.sop_instance_uid, row.blob_key
    try:
        size, crc = _blob_crc(blobs, key)
    except BlobNotFound:
        return BlobProblem(uid, key, ProblemKind.MISSING, "no blob is stored under this key")
    except OSError as exc:
        return BlobProblem(uid, key, ProblemKind.UNREADABLE, str(exc))
    if size != row.blob_size:
        return BlobProblem(
            uid,
            key,
            ProblemKind.SIZE_MISMATCH,
            f"blob has {size} bytes, index says {row.blob_size}",
        )
    if crc != row.blob_crc32:
        return BlobProblem(
            uid,
            key,
            ProblemKind.CRC_MISMATCH,
            f"blob CRC-32 is {crc:08x}, index says {row.blob_crc32:08x}",
        )
    return None


def _still_indexed(engine: sa.Engine, problem: BlobProblem) -> bool:
    """Whether the row still points at the blob (a concurrent replace may have moved it)."""
    with engine.connect() as conn:
        found = conn.execute(
            sa.select(instance.c.id).where(
                instance.c.sop_instance_uid == problem.sop_instance_uid,
                instance.c.blob_key == problem.blob_key,
            )
        ).first()
    return found is not None


def _indexed_keys(engine: sa.Engine, keys: Iterable[str]) -> set[str]:
    """The keys an index row points at: an instance's, or one a rejection note hid
    (kept until the retention job deletes it, services.rejection)."""
    wanted = list(keys)
    hidden = rejected_instance.c.blob_key
    with engine.connect() as conn:
        return set(
            conn.execute(
                sa.select(instance.c.blob_key).where(instance.c.blob_key.in_(wanted))
            ).scalars()
        ) | set(conn.execute(sa.select(hidden).where(hidden.in_(wanted))).scalars())


def _age(blobs: BlobStore, key: str, now: float) -> float | None:
    written = blobs.modified_at(key)
    return None if written is None else max(now - written, 0.0)


def find_orphans(
    *,
    blobs: BlobStore,
    engine: sa.Engine,
    sweep_older_than: float | None = None,
    progress: ProgressCallback = _no_progress,
    clock: Callable[[], float] = time.time,
) -> list[Orphan]:
    """Blobs with no index row; delete those older than ``sweep_older_than`` seconds.

    A blob younger than that may belong to a store whose index commit is still on its
    way, so the age must exceed the longest store (the default in the CLI is an hour).
    Just before deleting, the index is asked again.
    """
    orphans: list[Orphan] = []
    seen = 0
    for batch in _batches(blobs.keys(), _KEY_BATCH):
        indexed = _indexed_keys(engine, batch)
        now = clock()
        for key in batch:
            if key in indexed:
                continue
            age = _age(blobs, key, now)
            swept = False
            if (
                sweep_older_than is not None
                and age is not None
                and age >= sweep_older_than
                and not _indexed_keys(engine, [key])
            ):
                blobs.delete(key)
                swept = True
                log.warning("swept orphan blob %s (%.0f s old, no index row)", key, age)
            orphans.append(Orphan(key, age, swept))
        seen += len(batch)
        progress(PHASE_ORPHANS, seen, None)
    return orphans


def verify(
    *,
    blobs: BlobStore,
    engine: sa.Engine,
    sweep_orphans_older_than: float | None = None,
    progress: ProgressCallback = _no_progress,
    workers: int = 4,
    clock: Callable[[], float] = time.time,
) -> VerifyReport:
    """Check every indexed object's blob (size, CRC-32 of the whole blob), then find orphans.

    ``engine`` reads the index; ``sweep_orphans_older_than`` (seconds) deletes orphans
    at least that old, None only reports them.
    """
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(instance)).scalar_one()
    rows = _indexed_blobs(engine)
    problems: list[BlobProblem] = []
    checked = 0
    progress(PHASE_VERIFY, 0, total)
    for _row, problem in run_bounded(lambda r: _check_blob(blobs, r), rows, workers=workers):
        checked += 1
        if problem is not None and _still_indexed(engine, problem):
            log.error(
                "SOP Instance %s: blob %s %s (%s)",
                problem.sop_instance_uid,
                problem.blob_key,
                problem.kind.value,
                problem.detail,
            )
            problems.append(problem)
        progress(PHASE_VERIFY, checked, max(total, checked))
    orphans = find_orphans(
        blobs=blobs,
        engine=engine,
        sweep_older_than=sweep_orphans_older_than,
        progress=progress,
        clock=clock,
    )
    return VerifyReport(checked=checked, problems=tuple(problems), orphans=tuple(orphans))
