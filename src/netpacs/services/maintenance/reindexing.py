"""``reindex``: an empty index rebuilt from the stored blobs alone, keeping every blob
key and recovering each object's origin from its file meta; ``clear_index`` empties
it first."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

import sqlalchemy as sa

from netpacs.domain.dicom.header import HeaderError
from netpacs.domain.dicom.part10 import IMPLEMENTATION_CLASS_UID, FileMeta, read_file_meta
from netpacs.domain.outcomes import Origin, Protocol
from netpacs.domain.region import Region
from netpacs.index.records import InstanceRecord
from netpacs.index.schema import instance, patient, series, study
from netpacs.index.writer import IndexWriter, WriteStatus
from netpacs.services.ingest_record import (
    InvalidObject,
    ParsedObject,
    build_record,
    check_uids,
    origin_from_information,
    parse_header,
)
from netpacs.services.maintenance.streaming import ProgressCallback, _no_progress, run_bounded
from netpacs.storage.blobstore import BlobNotFound, BlobStore

log = logging.getLogger(__name__)

PHASE_REINDEX = "reindexing blobs"


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
