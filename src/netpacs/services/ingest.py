"""The ingest service: the one way any object enters netpacs (C-STORE, STOW-RS, import).

Order of work (ARCHITECTURE.md invariants 1-3): parse the header from the bytes
(never decoding pixel data), write the blob durably under an opaque key, then commit
the index row; if the index refuses or fails, the blob is removed again. Outcomes
are values (:class:`StoreOutcome`), not exceptions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from netpacs.domain.dicom.header import (
    HeaderError,
    JsonDataset,
)
from netpacs.domain.dicom.part10 import (
    FileMeta,
    build_file_meta,
    read_file_meta,
    with_private_information,
)
from netpacs.domain.outcomes import (
    DuplicatePolicy,
    InvalidReason,
    Origin,
    StoreOutcome,
    StoreStatus,
)
from netpacs.domain.region import Region
from netpacs.index.db import IndexUnavailable
from netpacs.index.records import (
    InstanceRecord,
)
from netpacs.index.writer import IndexWriter, WriteResult, WriteStatus
from netpacs.services import metrics
from netpacs.services.ingest_record import (
    _META_PROBE,
    MAX_OBJECT_SIZE,
    Chunks,
    InvalidObject,
    ParsedObject,
    _with_crc,
    build_record,
    check_uids,
    origin_information,
    parse_header,
)
from netpacs.services.rejection import KEY_OBJECT_SELECTION
from netpacs.services.same_instance import COMPARE_MAX, content_difference
from netpacs.services.spool import ObjectTooLarge, Spool
from netpacs.storage.blobstore import BlobStore, new_blob_key

log = logging.getLogger(__name__)


class IngestService:
    def __init__(
        self,
        *,
        blobs: BlobStore,
        writer: IndexWriter,
        region: Region,
        ae_title: str,
        duplicate_policy: DuplicatePolicy = DuplicatePolicy.REJECT,
        max_object_size: int = MAX_OBJECT_SIZE,
        spool_dir: Path | None = None,
        on_note: Callable[[InstanceRecord, Origin], None] | None = None,
    ) -> None:
        self._blobs = blobs
        # Told of every Key Object Selection stored (the rejection notes, IHE IOCM).
        self._on_note = on_note
        self._writer = writer
        self._region = region
        self._ae_title = ae_title
        self._policy = duplicate_policy
        self.max_object_size = max_object_size
        self.spool_dir = spool_dir
        self._io = ThreadPoolExecutor(max_workers=8, thread_name_prefix="blob-write")

    def spool(self) -> Spool:
        """A spool for one object on its way in, capped at the largest object accepted,
        spilling to a file of the data directory when large (adapters collect into it)."""
        return Spool(self.spool_dir, max_size=self.max_object_size)

    def dataset_spool(
        self,
        *,
        transfer_syntax_uid: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        origin: Origin,
    ) -> Spool:
        """A spool for the data set of a C-STORE about to arrive, for
        :meth:`store_dataset`: when large it spills straight into a pending blob of the
        blob store, after the file meta the stored object will start with, so that
        storing it is a sync and a rename, not a second copy."""
        head = self._dataset_head(transfer_syntax_uid, sop_class_uid, sop_instance_uid, origin)
        return Spool(
            self.spool_dir,
            max_size=self.max_object_size,
            head=head,
            blob=lambda: self._blobs.pending(new_blob_key()),
        )

    def _dataset_head(
        self, transfer_syntax_uid: str, sop_class_uid: str, sop_instance_uid: str, origin: Origin
    ) -> bytes:
        return build_file_meta(
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            sending_ae_title=origin.ae_title,
            receiving_ae_title=self._ae_title,
        )

    # -- entry points ----------------------------------------------------------------
    def store_dataset(
        self,
        dataset: bytes | memoryview | Spool,
        *,
        transfer_syntax_uid: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        origin: Origin,
    ) -> StoreOutcome:
        """Store a bare data set as received over a network association (C-STORE).

        A :class:`Spool` held in a file is parsed through a memory map (header pages
        only) and copied to the blob store in pieces: the object is never whole in
        memory. One from :meth:`dataset_spool` that went to a pending blob is not
        copied: that blob is committed.
        """
        data: bytes | memoryview
        if isinstance(dataset, Spool):
            if not dataset.in_file:
                data = dataset.memory()
            else:
                with dataset.view() as view:
                    return self._store_dataset(
                        view,
                        dataset.chunks,
                        transfer_syntax_uid=transfer_syntax_uid,
                        sop_class_uid=sop_class_uid,
                        sop_instance_uid=sop_instance_uid,
                        origin=origin,
                        spool=dataset,
                    )
        else:
            data = dataset
        return self._store_dataset(
            data,
            None,
            transfer_syntax_uid=transfer_syntax_uid,
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            origin=origin,
        )

    def _store_dataset(
        self,
        dataset: bytes | memoryview,
        chunks: Chunks | None,
        *,
        transfer_syntax_uid: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        origin: Origin,
        spool: Spool | None = None,
    ) -> StoreOutcome:
        head = self._dataset_head(transfer_syntax_uid, sop_class_uid, sop_instance_uid, origin)
        in_place = spool if spool is not None and spool.blob is not None else None
        if in_place is not None and in_place.head != head:
            in_place = None  # not the object's file meta: copied like any spool

        def parse() -> JsonDataset:
            header = self._parse(dataset, transfer_syntax_uid, b"", chunks)
            uids = check_uids(header)
            if uids["00080018"] != sop_instance_uid or uids["00080016"] != sop_class_uid:
                raise InvalidObject(
                    InvalidReason.SOP_MISMATCH,
                    f"data set has SOP {uids['00080016']} / {uids['00080018']}, "
                    f"command has {sop_class_uid} / {sop_instance_uid}",
                )
            return header

        sop = (sop_class_uid, sop_instance_uid)
        return self._ingest(
            head, dataset, transfer_syntax_uid, parse, sop, origin, chunks, in_place
        )

    def store_part10(
        self,
        data: bytes | memoryview | Spool,
        *,
        origin: Origin,
        study_instance_uid: str | None = None,
    ) -> StoreOutcome:
        """Store a DICOM Part 10 file (STOW-RS, import), kept as received but the preamble.

        ``data`` may be a :class:`Spool` (STOW-RS): held in a file, it is parsed through
        a memory map and copied in pieces. With ``study_instance_uid``
        (STOW-RS to ``/studies/{study}``, PS3.18 10.5.1) an object of another study is
        refused and nothing of it is kept. A file written without its preamble (pydicom's
        ``dcmwrite`` of a data set read from no file, as dicomweb-client sends) is given
        one: the stored preamble is zeros in any case.
        """
        if isinstance(data, Spool):
            if not data.in_file:
                return self.store_part10(
                    data.memory(), origin=origin, study_instance_uid=study_instance_uid
                )
            with data.view() as view:
                return self._store_spooled_part10(data, view, origin, study_instance_uid)
        if bytes(data[128:132]) != b"DICM":
            if bytes(data[:4]) == b"DICM":
                data = bytes(128) + data
            elif bytes(data[:2]) == b"\x02\x00":  # file meta group, little endian
                data = bytes(128) + b"DICM" + data
        try:
            meta = read_file_meta(data)
        except HeaderError as exc:
            return self._refuse(InvalidObject(InvalidReason.UNPARSABLE, str(exc)), None, origin)
        return self.store_parsed_file(
            data, meta, origin=origin, study_instance_uid=study_instance_uid
        )

    def _store_spooled_part10(
        self, spool: Spool, view: memoryview, origin: Origin, study_instance_uid: str | None
    ) -> StoreOutcome:
        """A Part 10 file in a spool file: the file meta is read from its first pages."""
        probe = bytes(view[:_META_PROBE])
        prefix = b""
        if probe[128:132] != b"DICM":
            if probe[:4] == b"DICM":
                prefix = bytes(128)
            elif probe[:2] == b"\x02\x00":
                prefix = bytes(128) + b"DICM"
        try:
            meta = read_file_meta(prefix + probe)
        except HeaderError as exc:
            return self._refuse(InvalidObject(InvalidReason.UNPARSABLE, str(exc)), None, origin)
        offset = meta.dataset_offset - len(prefix)  # where the data set starts in the spool
        head = bytes(128) + (prefix + probe)[128 : meta.dataset_offset]
        return self.store_parsed_file(
            view,
            meta,
            origin=origin,
            study_instance_uid=study_instance_uid,
            head=head,
            dataset_offset=offset,
            chunks=lambda: spool.chunks(offset),
        )

    def store_parsed_file(
        self,
        data: bytes | memoryview,
        meta: FileMeta,
        *,
        origin: Origin,
        study_instance_uid: str | None = None,
        head: bytes | None = None,
        dataset_offset: int | None = None,
        chunks: Chunks | None = None,
    ) -> StoreOutcome:
        """Store a Part 10 file whose file meta was read (``head`` and ``dataset_offset``
        when they differ from the file meta's, as for a file without its preamble)."""
        if head is None:
            head = bytes(128) + data[128 : meta.dataset_offset]
        if origin.trust or origin.user:
            # The file meta came with the object: record who brought it, so that
            # reindex can recover what the index knows (PS3.10 Private Information).
            head = with_private_information(head, origin_information(origin))
        start = meta.dataset_offset if dataset_offset is None else dataset_offset
        dataset = memoryview(data)[start:]
        stored_head = head

        def parse() -> JsonDataset:
            header = self._parse(dataset, meta.transfer_syntax_uid, stored_head, chunks)
            uids = check_uids(header)
            if study_instance_uid is not None and uids["0020000D"] != study_instance_uid:
                raise InvalidObject(
                    InvalidReason.STUDY_MISMATCH,
                    f"Study Instance UID {uids['0020000D']} differs from the study "
                    f"{study_instance_uid} the request names",
                )
            return header

        sop = (
            meta.media_storage_sop_class_uid or None,
            meta.media_storage_sop_instance_uid or None,
        )
        return self._ingest(head, dataset, meta.transfer_syntax_uid, parse, sop, origin, chunks)

    def _parse(
        self,
        dataset: bytes | memoryview,
        transfer_syntax_uid: str,
        head: bytes,
        chunks: Chunks | None,
    ) -> JsonDataset:
        return parse_header(
            dataset,
            transfer_syntax_uid,
            head,
            chunks=chunks,
            max_size=self.max_object_size,
            spool_dir=self.spool_dir,
        )

    def _discard(self, key: str) -> None:
        """Remove a blob no index row points at. A store that cannot remove it now (S3
        unreachable) leaves an orphan, which ``netpacs verify --sweep-orphans`` removes:
        the answer to the sender is not held up by it."""
        try:
            self._blobs.delete(key)
        except OSError as exc:
            log.warning("blob %s could not be removed (an orphan for the sweeper): %s", key, exc)

    def close(self) -> None:
        self._io.shutdown(wait=True)

    # -- the common path ----------------------------------------------------------------
    def _refuse(
        self,
        inv: InvalidObject,
        sop_uid: str | None,
        origin: Origin,
        sop_class_uid: str | None = None,
    ) -> StoreOutcome:
        log.warning(
            "refused object %s from %s (%s): %s",
            sop_uid or "(unknown SOP Instance UID)",
            origin.ae_title or origin.user or origin.protocol.value,
            inv.reason.name,
            inv.detail,
        )
        return StoreOutcome(
            StoreStatus.INVALID, sop_uid, inv.detail, inv.reason, sop_class_uid=sop_class_uid
        )

    def _ingest(
        self,
        head: bytes,
        dataset: bytes | memoryview,
        transfer_syntax_uid: str,
        parse: Callable[[], JsonDataset],
        sop: tuple[str | None, str | None],
        origin: Origin,
        chunks: Chunks | None = None,
        in_place: Spool | None = None,
    ) -> StoreOutcome:
        """Write the blob while the header is parsed; index it once both are done.

        The write (a copy into the page cache and an fsync) releases the GIL, so it runs
        beside the parse instead of after it. An object the parse refuses (or a parse
        that fails in any way) has its blob removed before the outcome is returned:
        no blob is left without its index row. ``sop`` is the SOP Class and Instance
        UID the command or file meta gives, to name the object in a refusal. With
        ``chunks`` (a spooled object) the blob is copied from them in pieces and its
        CRC computed on the way; with ``in_place`` (a spool written into a pending blob,
        head first) that blob is committed instead, with the CRC the spool kept.
        """
        sop_class_uid, sop_uid = sop
        size = len(head) + len(dataset)
        if size > self.max_object_size:
            limit = str(ObjectTooLarge(self.max_object_size))
            return self._refuse(
                InvalidObject(InvalidReason.TOO_LARGE, limit), sop_uid, origin, sop_class_uid
            )
        crc: list[int] = []
        if in_place is not None and in_place.blob is not None:
            key = in_place.blob.key
            write = self._io.submit(in_place.blob.commit)
            crc.append(in_place.crc)
        elif chunks is None:
            key = new_blob_key()
            write = self._io.submit(self._blobs.put, key, (head, dataset))
        else:
            key = new_blob_key()
            write = self._io.submit(self._blobs.put, key, _with_crc(head, chunks(), crc))
        try:
            header = parse()
        except BaseException as exc:
            with contextlib.suppress(Exception):
                write.result()
            self._discard(key)
            if not isinstance(exc, InvalidObject):
                raise
            return self._refuse(exc, sop_uid, origin, sop_class_uid)
        obj = ParsedObject(head, dataset, transfer_syntax_uid, header, chunks)
        if chunks is not None:
            with contextlib.suppress(OSError):
                write.result()  # _commit answers a failed write
        if chunks is None:
            record = build_record(obj, origin, blob_key=key)
        else:  # a failed copy leaves no CRC; _commit answers it without using the record's
            record = build_record(obj, origin, blob_key=key, crc=crc[0] if crc else 0)
        outcome = self._commit(obj, record, write, origin)
        if (
            self._on_note is not None
            and record.instance.sop_class_uid == KEY_OBJECT_SELECTION
            and outcome.status in (StoreStatus.STORED, StoreStatus.ALREADY_STORED)
        ):
            self._on_note(record, origin)
        return dataclasses.replace(
            outcome,
            sop_class_uid=record.instance.sop_class_uid,
            study_instance_uid=record.study.study_instance_uid,
            series_instance_uid=record.series.series_instance_uid,
            patient_id=record.patient.patient_id,
            issuer=record.patient.issuer,
        )

    def _commit(
        self, obj: ParsedObject, record: InstanceRecord, write: Future[int], origin: Origin
    ) -> StoreOutcome:
        """Wait for the blob, then insert the index rows (or settle the duplicate)."""
        sop_uid = record.instance.sop_instance_uid
        key = record.instance.blob_key
        try:
            write.result()
        except OSError as exc:
            metrics.object_store_error("put")
            self._discard(key)
            log.error("could not write object %s to storage: %s", sop_uid, exc)
            return StoreOutcome(StoreStatus.FAILED, sop_uid, f"storage write failed: {exc}")
        try:
            result = self._writer.insert(record)
        except IndexUnavailable as exc:
            # The database failed over for longer than the retry time: the sender is
            # told to retry. A COMMIT whose answer was lost may have kept the row, so
            # its blob is kept too (an unreferenced blob is harmless, a row without
            # its blob is a lost object).
            if not exc.maybe_committed:
                self._discard(key)
            log.error("index unavailable for %s: %s", sop_uid, exc)
            return StoreOutcome(StoreStatus.FAILED, sop_uid, f"index unavailable: {exc}")
        except Exception as exc:
            self._discard(key)
            log.exception("index write failed for %s; blob removed", sop_uid)
            return StoreOutcome(StoreStatus.FAILED, sop_uid, f"index write failed: {exc}")
        if result.status is WriteStatus.INSERTED:
            return StoreOutcome(StoreStatus.STORED, sop_uid)
        if result.status is WriteStatus.REFUSED:
            return self._contradicts(result, record, origin)
        assert result.existing is not None
        return self._duplicate(obj, record, result.existing, origin)

    def _contradicts(
        self, result: WriteResult, record: InstanceRecord, origin: Origin
    ) -> StoreOutcome:
        """The index refused the object: its patient is not the patient of the study it
        names, or its series is another study's (the identity rules raised it for
        reconciliation). Nothing of it is kept."""
        self._discard(record.instance.blob_key)
        reason = result.refused or InvalidReason.PATIENT_MISMATCH
        return self._refuse(
            InvalidObject(reason, result.detail or reason.value),
            record.instance.sop_instance_uid,
            origin,
            record.instance.sop_class_uid,
        )

    def _duplicate(
        self, obj: ParsedObject, record: InstanceRecord, existing: dict[str, Any], origin: Origin
    ) -> StoreOutcome:
        """A SOP Instance UID the index already holds. The same bytes, or the same
        instance in other bytes (another transfer syntax, a lossless recompression: see
        ``same_instance``), is a success that keeps the stored copy. Other content
        under the UID is settled by the duplicate policy: refused (``reject``), the
        first copy kept (``keep-first``) or the new one kept (``replace``)."""
        sop_uid = record.instance.sop_instance_uid
        new_key = record.instance.blob_key
        who = origin.ae_title or origin.user or origin.protocol.value
        if self._same_bytes(obj, existing):
            self._discard(new_key)
            return StoreOutcome(StoreStatus.ALREADY_STORED, sop_uid)
        difference = self._content_difference(obj, existing)
        if difference is None:
            self._discard(new_key)
            log.info(
                "SOP Instance %s from %s is the stored instance in other bytes (%s, stored "
                "as %s): success, the stored copy kept",
                sop_uid,
                who,
                obj.transfer_syntax_uid,
                existing["transfer_syntax_uid"],
            )
            return StoreOutcome(StoreStatus.ALREADY_STORED, sop_uid, "the same instance")
        if self._policy is DuplicatePolicy.REPLACE:
            try:
                old = self._writer.replace(record)
            except Exception as exc:
                self._discard(new_key)
                return StoreOutcome(StoreStatus.FAILED, sop_uid, f"index write failed: {exc}")
            if isinstance(old, WriteResult):
                return self._contradicts(old, record, origin)
            if old["blob_key"] != new_key:  # the same key: a retried, already done replace
                self._discard(old["blob_key"])
            log.warning(
                "replaced SOP Instance %s with different content from %s: %s",
                sop_uid,
                who,
                difference,
            )
            return StoreOutcome(StoreStatus.REPLACED, sop_uid)
        self._discard(new_key)
        if self._policy is DuplicatePolicy.KEEP_FIRST:
            log.warning(
                "kept first copy of SOP Instance %s; ignored different content from %s: %s",
                sop_uid,
                who,
                difference,
            )
            return StoreOutcome(StoreStatus.ALREADY_STORED, sop_uid, "kept the first copy")
        log.error(
            "refused SOP Instance %s from %s: already stored with different content, %s "
            "(duplicate policy 'reject'; set NETPACS_DUPLICATE_POLICY to change)",
            sop_uid,
            who,
            difference,
        )
        return StoreOutcome(
            StoreStatus.CONFLICT,
            sop_uid,
            f"stored with other content: {difference}"[:64],
        )

    def _same_bytes(self, obj: ParsedObject, existing: dict[str, Any]) -> bool:
        """The fast path: the data set bytes equal the stored copy's."""
        size = len(obj.dataset)
        if existing["blob_size"] - existing["dataset_offset"] != size:
            return False
        if existing["transfer_syntax_uid"] != obj.transfer_syntax_uid:
            return False
        if obj.chunks is None:
            stored = self._blobs.get_range(existing["blob_key"], existing["dataset_offset"], size)
            return stored == bytes(obj.dataset)
        # A spooled object: compare piece by piece, never holding either whole.
        with self._blobs.open(existing["blob_key"]) as f:
            f.seek(existing["dataset_offset"])
            for piece in obj.chunks():
                if f.read(len(piece)) != piece:
                    return False
        return True

    def _content_difference(self, obj: ParsedObject, existing: dict[str, Any]) -> str | None:
        """None when the stored copy holds the same instance as ``obj`` in other bytes,
        else what differs (``same_instance``); objects too large to compare differ."""
        size = len(obj.head) + len(obj.dataset)
        if max(size, int(existing["blob_size"])) > COMPARE_MAX:
            return "too large to compare with the stored copy"
        if obj.chunks is None:
            received = bytes(obj.head) + bytes(obj.dataset)
        else:
            received = bytes(obj.head) + b"".join(bytes(p) for p in obj.chunks())
        try:
            stored = self._blobs.get_range(existing["blob_key"], 0, int(existing["blob_size"]))
        except OSError as exc:
            return f"the stored copy cannot be read: {exc}"
        return content_difference(stored, received)
