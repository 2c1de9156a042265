"""What an object is, read from its bytes: the header parsed without decoding pixel
data, its UIDs checked, and the index record and origin information built from it.

Shared by ingest (services.ingest), which stores objects, and by maintenance
(services.maintenance), which re-reads stored ones (verify, reindex).
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pydicom
from pydicom.errors import InvalidDicomError

from netpacs.domain.dicom.header import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_LE,
    HeaderError,
    JsonDataset,
    TooDeep,
    TooLarge,
    first_int,
    first_str,
    walk_dataset,
)
from netpacs.domain.outcomes import (
    InvalidReason,
    Origin,
    Protocol,
)
from netpacs.domain.uids import is_valid_uid
from netpacs.index.records import (
    InstanceRecord,
    InstanceRow,
    PatientRow,
    SeriesRow,
    StudyRow,
)
from netpacs.services.deflate import inflated

_REQUIRED_UIDS = (
    ("0020000D", "Study Instance UID"),
    ("0020000E", "Series Instance UID"),
    ("00080018", "SOP Instance UID"),
    ("00080016", "SOP Class UID"),
)


class InvalidObject(Exception):
    """An object that cannot be stored: the reason maps to a protocol status."""

    def __init__(self, reason: InvalidReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# The largest object accepted by default (NETPACS_MAX_OBJECT_MB): also the most a
# deflated data set may inflate to.
MAX_OBJECT_SIZE = 4096 * 1024 * 1024
# pydicom (the fallback parser) reads every value into memory: it is given only data
# sets up to this size; larger ones our walker refuses are refused.
FALLBACK_MAX = 64 * 1024 * 1024
# The file meta of a spooled Part 10 file is read from its first bytes (it is small).
_META_PROBE = 1024 * 1024
# A deflated data set is inflated in memory up to this size, to a sparse file beyond.
INFLATE_IN_MEMORY = 32 * 1024 * 1024

Chunks = Callable[[], Iterator["bytes | memoryview"]]


@dataclass(frozen=True, slots=True)
class ParsedObject:
    """An object as netpacs will store and index it."""

    head: bytes  # preamble + file meta
    dataset: bytes | memoryview
    transfer_syntax_uid: str
    header: JsonDataset
    # The data set read from its spool file in pieces (None: ``dataset`` is in memory).
    chunks: Chunks | None = None


def parse_header(
    dataset: bytes | memoryview,
    transfer_syntax_uid: str,
    head: bytes = b"",
    *,
    chunks: Chunks | None = None,
    max_size: int = MAX_OBJECT_SIZE,
    spool_dir: Path | None = None,
) -> JsonDataset:
    """DICOM JSON of the data set; falls back to pydicom for encodings our walker refuses.

    ``dataset`` may be a memory map of a spooled object (only its header pages are
    read); ``chunks`` then reads the same bytes in pieces, for inflating a deflated data
    set without mapping it. A deflated data set is inflated up to ``max_size`` (in
    memory while small, else to a sparse file in ``spool_dir``); beyond, and for
    sequences nested too deep, the object is refused without a fallback.
    """
    deflated = transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LE
    inflated_size = FALLBACK_MAX + 1 if deflated else len(dataset)
    try:
        if deflated:
            pieces: Iterator[bytes | memoryview] = (
                chunks() if chunks is not None else iter((dataset,))
            )
            with inflated(
                pieces, limit=max_size, directory=spool_dir, in_memory=INFLATE_IN_MEMORY
            ) as buf:
                inflated_size = len(buf)
                ds, _ = walk_dataset(buf, EXPLICIT_VR_LE)
        else:
            ds, _ = walk_dataset(dataset, transfer_syntax_uid)
        return ds
    except TooLarge:
        raise InvalidObject(
            InvalidReason.TOO_LARGE,
            f"deflated data set inflates beyond {max_size >> 20} MB (NETPACS_MAX_OBJECT_MB)",
        ) from None
    except TooDeep as exc:
        raise InvalidObject(InvalidReason.TOO_DEEP, str(exc)) from None
    except HeaderError as exc:
        walker_error = exc
    if inflated_size > FALLBACK_MAX:
        raise InvalidObject(InvalidReason.UNPARSABLE, str(walker_error))
    try:
        if head:
            stream = io.BytesIO(head + bytes(dataset))
            parsed = pydicom.dcmread(stream, stop_before_pixels=True)
        else:
            parsed = pydicom.dcmread(
                io.BytesIO(bytes(dataset)), stop_before_pixels=True, force=True
            )
            parsed.file_meta = pydicom.dataset.FileMetaDataset()
            parsed.file_meta.TransferSyntaxUID = pydicom.uid.UID(transfer_syntax_uid)
        result: JsonDataset = parsed.to_json_dict(
            bulk_data_threshold=1024, bulk_data_element_handler=lambda _e: "bulk:pydicom"
        )
        return result
    except RecursionError:
        raise InvalidObject(
            InvalidReason.TOO_DEEP, f"{walker_error}; pydicom: sequences nested too deep"
        ) from None
    except (InvalidDicomError, ValueError, TypeError, KeyError, EOFError, OSError) as exc:
        raise InvalidObject(InvalidReason.UNPARSABLE, f"{walker_error}; pydicom: {exc}") from None
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise InvalidObject(InvalidReason.UNPARSABLE, f"{walker_error}; pydicom: {exc!r}") from None


def check_uids(header: JsonDataset) -> dict[str, str]:
    uids: dict[str, str] = {}
    for tag, name in _REQUIRED_UIDS:
        value = first_str(header, tag)
        if not value:
            raise InvalidObject(
                InvalidReason.MISSING_UID, f"{name} ({tag[:4]},{tag[4:]}) is missing"
            )
        if not is_valid_uid(value):
            raise InvalidObject(InvalidReason.MALFORMED_UID, f"{name} {value!r} is malformed")
        uids[tag] = value
    return uids


def _with_crc(
    head: bytes, chunks: Iterator[bytes | memoryview], crc: list[int]
) -> Iterator[bytes | memoryview]:
    """``head`` then ``chunks``, appending the CRC-32 of them all to ``crc`` at the end."""
    value = zlib.crc32(head)
    yield head
    for piece in chunks:
        value = zlib.crc32(piece, value)
        yield piece
    crc.append(value)


def origin_information(origin: Origin) -> bytes:
    """The origin of an object as netpacs records it in the file meta (0002,0102)."""
    fields = {
        "protocol": origin.protocol.value,
        "ae_title": origin.ae_title,
        "trust": origin.trust,
        "site": origin.site,
        "user": origin.user,
    }
    return orjson.dumps({"netpacs_origin": {k: v for k, v in fields.items() if v}})


def origin_from_information(information: bytes) -> Origin | None:
    """The origin :func:`origin_information` recorded; None when it is not ours."""
    try:
        doc = orjson.loads(information.rstrip(b" \0"))
        fields = doc["netpacs_origin"]
        protocol = Protocol(fields["protocol"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None

    def text(key: str) -> str | None:
        value = fields.get(key)
        return value if isinstance(value, str) and value else None

    return Origin(
        protocol,
        ae_title=text("ae_title"),
        trust=text("trust"),
        user=text("user"),
        site=text("site"),
    )


def build_record(
    obj: ParsedObject, origin: Origin, *, blob_key: str, crc: int | None = None
) -> InstanceRecord:
    """The index rows for an object stored under ``blob_key`` (ingest and reindex);
    ``crc`` is the blob's CRC-32 when it was computed while the blob was written."""
    h = obj.header
    if crc is None:
        crc = zlib.crc32(obj.dataset, zlib.crc32(obj.head))
    return InstanceRecord(
        patient=PatientRow(
            patient_id=first_str(h, "00100020"),
            issuer=first_str(h, "00100021") or origin.trust or "",
            patient_name=first_str(h, "00100010"),
            patient_birth_date=first_str(h, "00100030"),
            patient_sex=first_str(h, "00100040"),
        ),
        study=StudyRow(
            study_instance_uid=first_str(h, "0020000D"),
            study_date=first_str(h, "00080020"),
            study_time=first_str(h, "00080030"),
            accession_number=first_str(h, "00080050"),
            study_id=first_str(h, "00200010"),
            study_description=first_str(h, "00081030"),
            referring_physician_name=first_str(h, "00080090"),
            origin_trust=origin.trust,
            origin_site=origin.site,
        ),
        series=SeriesRow(
            series_instance_uid=first_str(h, "0020000E"),
            modality=first_str(h, "00080060"),
            series_number=first_int(h, "00200011"),
            series_description=first_str(h, "0008103E"),
            body_part_examined=first_str(h, "00180015"),
            series_date=first_str(h, "00080021"),
            series_time=first_str(h, "00080031"),
            institution_name=first_str(h, "00080080"),
            station_name=first_str(h, "00081010"),
        ),
        instance=InstanceRow(
            sop_instance_uid=first_str(h, "00080018"),
            sop_class_uid=first_str(h, "00080016"),
            instance_number=first_int(h, "00200013"),
            transfer_syntax_uid=obj.transfer_syntax_uid,
            content_date=first_str(h, "00080023"),
            content_time=first_str(h, "00080033"),
            image_rows=first_int(h, "00280010"),
            image_columns=first_int(h, "00280011"),
            number_of_frames=first_int(h, "00280008"),
            blob_key=blob_key,
            blob_size=len(obj.head) + len(obj.dataset),
            blob_crc32=crc,
            dataset_offset=len(obj.head),
            metadata_json=orjson.dumps(h).decode(),
            origin_protocol=origin.protocol.value,
            origin_ae=origin.ae_title,
            origin_trust=origin.trust,
            origin_user=origin.user,
        ),
        origin=origin,
        header=h,
    )
