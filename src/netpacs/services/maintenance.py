"""Archive maintenance: verify blobs against the index, sweep orphans, rebuild the index,
copy the blobs to another store (``netpacs blobs copy``).

``verify`` re-reads every indexed blob and checks its size and CRC-32 against the
index row, then lists blobs that no row points at (orphans: a crash between the blob
write and the index commit leaves them, see ingest.py). ``reindex`` rebuilds an empty
index from the stored objects alone (ARCHITECTURE.md invariant 6), keeping every blob
key and recovering each object's origin from its file meta the way ingest set it.

Both stream: index rows are read in pages, blobs one at a time (a few in flight), and
progress is reported through a callback. Neither ever rewrites a blob; only the orphan
sweep deletes blobs, and only ones with no index row that are older than asked.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from itertools import islice
from typing import Protocol as TypingProtocol
from typing import TypeVar

import sqlalchemy as sa

from netpacs.domain.dicom.header import HeaderError
from netpacs.domain.dicom.part10 import IMPLEMENTATION_CLASS_UID, FileMeta, read_file_meta
from netpacs.domain.outcomes import Origin, Protocol
from netpacs.domain.region import Region
from netpacs.index.records import InstanceRecord
from netpacs.index.schema import instance, patient, rejected_instance, series, study
from netpacs.index.writer import IndexWriter, WriteStatus
from netpacs.services.ingest_record import (
    InvalidObject,
    ParsedObject,
    build_record,
    check_uids,
    origin_from_information,
    parse_header,
)
from netpacs.storage.blobstore import BlobNotFound, BlobStore

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

ProgressCallback = Callable[[str, int, int | None], None]
"""Called as ``progress(phase, done, total)``; total is None when not known in advance."""

PHASE_VERIFY = "verifying blobs"
PHASE_ORPHANS = "looking for orphan blobs"
PHASE_REINDEX = "reindexing blobs"

_CHUNK = 1 << 20
_PAGE = 1000
_KEY_BATCH = 500


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def _no_progress(_phase: str, _done: int, _total: int | None) -> None:
    return None


def run_bounded(
    fn: Callable[[T], R], items: Iterable[T], *, workers: int, window: int | None = None
) -> Iterator[tuple[T, R]]:
    """Apply ``fn`` to ``items`` on ``workers`` threads, yielding (item, result) as each ends.

    At most ``window`` items are in flight, so an endless or huge iterable is consumed
    lazily. Exceptions raised by ``fn`` propagate to the consumer.
    """
    window = max(window or workers * 4, 1)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="netpacs-maint")
    pending: dict[Future[R], T] = {}
    try:
        for item in items:
            pending[pool.submit(fn, item)] = item
            if len(pending) >= window:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield pending.pop(fut), fut.result()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield pending.pop(fut), fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# -- verify ----------------------------------------------------------------------------


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


# -- copy to another store ------------------------------------------------------------

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


# -- reindex ---------------------------------------------------------------------------


class ReindexError(RuntimeError):
    """The index cannot be rebuilt as asked (the message says why and what to do)."""


class ReindexStatus(enum.Enum):
    INDEXED = "indexed"
    DUPLICATE = "duplicate"  # another blob holds the same SOP Instance UID
    UNINDEXABLE = "unindexable"  # not parsable, or required UIDs missing
    VANISHED = "vanished"  # deleted while the rebuild ran
    FAILED = "failed"  # the index write failed


@dataclass(frozen=True, slots=True)
class ReindexItem:
    """What became of one blob; only problems are kept in the report."""

    blob_key: str
    status: ReindexStatus
    sop_instance_uid: str | None = None
    detail: str = ""
    origin: Origin | None = None


@dataclass(frozen=True, slots=True)
class ReindexReport:
    blobs: int  # blobs examined
    indexed: int
    origin_from_file_meta: int  # objects whose sending AE was recovered (DIMSE)
    problems: tuple[ReindexItem, ...]

    def count(self, status: ReindexStatus) -> int:
        return sum(1 for p in self.problems if p.status is status)


def recover_origin(meta: FileMeta, head: bytes | memoryview, region: Region) -> Origin:
    """The origin ingest gave an object, as far as its stored file meta tells.

    For an object netpacs received over DIMSE it wrote the file meta itself
    (``build_file_meta``: its Implementation Class UID, the calling AE title in Source
    and Sending AE Title (0002,0016/0017), PS3.10 7.1); the AE's trust and site come
    from the region, as at association time. For an object that came with its own file
    meta (import, STOW-RS), netpacs recorded the trust and user it relied on in the
    Private Information (0002,0100/0102). Anything else says nothing netpacs relied on:
    the origin is REINDEX with no trust.
    """
    if meta.private_creator_uid == IMPLEMENTATION_CLASS_UID:
        recorded = origin_from_information(meta.private_information)
        if recorded is not None:
            return recorded
    # FileMeta does not expose (0002,0012); the UID is unique enough to find by bytes.
    written_by_us = IMPLEMENTATION_CLASS_UID.encode() in bytes(head[132 : meta.dataset_offset])
    ae_title = meta.sending_ae_title or meta.source_ae_title
    if not (written_by_us and ae_title):
        return Origin(Protocol.REINDEX)
    ae = region.ae(ae_title)
    return Origin(
        Protocol.DIMSE,
        ae_title=ae_title,
        trust=ae.trust if ae else None,
        site=ae.site if ae else None,
    )


def _record_for_stored_blob(
    data: bytes, meta: FileMeta, *, blob_key: str, origin: Origin
) -> InstanceRecord:
    """The index record ingest would have written for this blob, under its own key.

    Parsed as ``IngestService.store_parsed_file`` parses (raises InvalidObject), but
    with the head taken as stored, so that blob_size and blob_crc32 describe the blob.
    """
    head = data[: meta.dataset_offset]
    dataset = memoryview(data)[meta.dataset_offset :]
    header = parse_header(dataset, meta.transfer_syntax_uid, head)
    check_uids(header)
    obj = ParsedObject(head, dataset, meta.transfer_syntax_uid, header)
    return build_record(obj, origin, blob_key=blob_key)


def _reindex_one(key: str, *, blobs: BlobStore, writer: IndexWriter, region: Region) -> ReindexItem:
    try:
        data = blobs.get(key)
    except BlobNotFound:
        return ReindexItem(key, ReindexStatus.VANISHED, detail="deleted during the rebuild")
    except OSError as exc:
        return ReindexItem(key, ReindexStatus.FAILED, detail=f"cannot read the blob: {exc}")
    try:
        meta = read_file_meta(data)
    except HeaderError as exc:
        return ReindexItem(key, ReindexStatus.UNINDEXABLE, detail=str(exc))
    origin = recover_origin(meta, data, region)
    try:
        record = _record_for_stored_blob(data, meta, blob_key=key, origin=origin)
    except InvalidObject as inv:
        sop = meta.media_storage_sop_instance_uid or None
        return ReindexItem(key, ReindexStatus.UNINDEXABLE, sop, inv.detail)
    sop_uid = record.instance.sop_instance_uid
    try:
        result = writer.insert(record)
    except Exception as exc:
        log.exception("index write failed for blob %s (SOP Instance %s)", key, sop_uid)
        return ReindexItem(key, ReindexStatus.FAILED, sop_uid, f"index write failed: {exc}")
    if result.status is WriteStatus.INSERTED:
        return ReindexItem(key, ReindexStatus.INDEXED, sop_uid, origin=origin)
    if result.status is WriteStatus.REFUSED:  # contradicts its study: left for a person
        return ReindexItem(key, ReindexStatus.UNINDEXABLE, sop_uid, result.detail)
    assert result.existing is not None
    other = result.existing
    same = (other["blob_size"], other["blob_crc32"]) == (
        record.instance.blob_size,
        record.instance.blob_crc32,
    )
    detail = (
        f"SOP Instance {sop_uid} is already indexed from blob {other['blob_key']} "
        f"({'identical' if same else 'different'} content); this blob was left unindexed"
    )
    return ReindexItem(key, ReindexStatus.DUPLICATE, sop_uid, detail)


def index_is_empty(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        return conn.execute(sa.select(instance.c.id).limit(1)).first() is None


def clear_index(engine: sa.Engine) -> None:
    """Empty the archive tables (instances, series, studies, patients) in one transaction.

    The schema, and any table that cannot be rebuilt from the blobs, is left alone.
    Run it only while no netpacs process writes to this index.
    """
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("TRUNCATE instance, series, study, patient RESTART IDENTITY"))
        else:
            for table in (instance, series, study, patient):
                conn.execute(sa.delete(table))


def reindex(
    *,
    blobs: BlobStore,
    writer: IndexWriter,
    engine: sa.Engine,
    region: Region,
    progress: ProgressCallback = _no_progress,
    workers: int = 4,
) -> ReindexReport:
    """Rebuild an empty index from every blob in ``blobs``, keeping the blob keys.

    Each blob is parsed as ingest parses it and indexed with the origin its file meta
    reveals (:func:`recover_origin`); the issuer of a patient ID the object does not
    carry comes from that origin's trust, exactly as at ingest. Blobs are never written
    or deleted: a duplicate SOP Instance UID or an unparsable blob is reported.
    Several blobs are in flight at once so that the index writer can group-commit.
    """
    if not index_is_empty(engine):
        raise ReindexError("the index is not empty: clear it first (netpacs reindex does)")
    problems: list[ReindexItem] = []
    seen = indexed = from_meta = 0
    progress(PHASE_REINDEX, 0, None)

    def one(key: str) -> ReindexItem:
        return _reindex_one(key, blobs=blobs, writer=writer, region=region)

    for _key, item in run_bounded(one, blobs.keys(), workers=workers):
        seen += 1
        if item.status is ReindexStatus.INDEXED:
            indexed += 1
            if item.origin is not None and item.origin.protocol is Protocol.DIMSE:
                from_meta += 1
        else:
            if item.status is not ReindexStatus.VANISHED:
                log.warning(
                    "blob %s not indexed (%s): %s", item.blob_key, item.status.value, item.detail
                )
            problems.append(item)
        progress(PHASE_REINDEX, seen, None)
    return ReindexReport(
        blobs=seen, indexed=indexed, origin_from_file_meta=from_meta, problems=tuple(problems)
    )
