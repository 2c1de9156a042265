"""STOW-RS (PS3.18 10.5): store DICOM objects sent over HTTP through the ingest service.

``POST /dicomweb/studies`` and ``POST /dicomweb/studies/{study}`` take a
``multipart/related; type="application/dicom"`` body, one Part 10 object per part.
The body is read as it arrives (:mod:`netpacs.adapters.http.multipart`): each part
is spooled to memory, or to a temporary file once it is large (never beyond the
largest object accepted: 413), and handed to the same
:class:`~netpacs.services.ingest.IngestService` as C-STORE, in a worker thread, while
the next parts are read (up to :data:`IN_FLIGHT` parts at once). A body that stalls (nothing for
``upload_idle_seconds``) is answered 408 and its connection closed. The answer
(PS3.18 10.5.3) lists the stored objects in ReferencedSOPSequence and the refused
ones in FailedSOPSequence with a FailureReason from :data:`FAILURE_REASONS`; 200
when all were stored, 202 when some were, 409 when none was (503 when none was because
storage or the index failed: the request may be sent again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from netpacs.adapters.http.access import requires
from netpacs.adapters.http.deps import (
    DICOMWEB_ROOT,
    HttpServices,
    base_url,
    check_url_uids,
    services,
)
from netpacs.adapters.http.errors import HttpError
from netpacs.adapters.http.multipart import MediaType, MultipartError, MultipartReader
from netpacs.adapters.http.qido import negotiate_json
from netpacs.domain.outcomes import InvalidReason, Origin, Protocol, StoreOutcome, StoreStatus
from netpacs.services.access import Capability
from netpacs.services.ingest_batch import IngestBatch
from netpacs.services.spool import ObjectTooLarge, Spool

log = logging.getLogger(__name__)
router = APIRouter(tags=["STOW-RS"], dependencies=[requires(Capability.STORE)])

DICOM = "application/dicom"

# FailureReason (0008,1197) values, PS3.18 10.5.3 and PS3.4 B.2.3.
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
DUPLICATE_SOP_INSTANCE = 0x0111
MISSING_UID = 0xC001  # netpacs-specific codes in the "Cannot understand" range
MALFORMED_UID = 0xC002
# The object's patient contradicts the study it names: a final refusal (C-STORE's status
# too, adapters/dimse/status.py); the answer is 409 Conflict when no part was stored.
PATIENT_CONTRADICTS_STUDY = 0xC003

# The one mapping from ingest outcomes to FailureReason (None: the object is stored).
FAILURE_REASONS: dict[StoreStatus, int | None] = {
    StoreStatus.STORED: None,
    StoreStatus.ALREADY_STORED: None,
    StoreStatus.REPLACED: None,
    StoreStatus.CONFLICT: DUPLICATE_SOP_INSTANCE,
    StoreStatus.FAILED: OUT_OF_RESOURCES,
}
INVALID_REASONS: dict[InvalidReason, int] = {
    InvalidReason.UNPARSABLE: CANNOT_UNDERSTAND,
    InvalidReason.MISSING_UID: MISSING_UID,
    InvalidReason.MALFORMED_UID: MALFORMED_UID,
    InvalidReason.SOP_MISMATCH: DATA_SET_DOES_NOT_MATCH,
    InvalidReason.STUDY_MISMATCH: DATA_SET_DOES_NOT_MATCH,
    InvalidReason.PATIENT_MISMATCH: PATIENT_CONTRADICTS_STUDY,
    InvalidReason.SERIES_MISMATCH: PATIENT_CONTRADICTS_STUDY,
    InvalidReason.TOO_LARGE: OUT_OF_RESOURCES,
    InvalidReason.TOO_DEEP: CANNOT_UNDERSTAND,
}


def failure_reason(outcome: StoreOutcome) -> int | None:
    """The FailureReason for an ingest outcome; None when the object was stored."""
    if outcome.status is StoreStatus.INVALID:
        return INVALID_REASONS.get(outcome.reason or InvalidReason.UNPARSABLE, CANNOT_UNDERSTAND)
    return FAILURE_REASONS[outcome.status]


@dataclass(frozen=True, slots=True)
class PartResult:
    """What became of one part of the request."""

    outcome: StoreOutcome
    sop_class_uid: str | None  # from the object, or its file meta when it was refused


def _ingest(batch: IngestBatch, spool: Spool, study: str | None) -> PartResult:
    """Store one spooled part (blocking: runs in a worker thread)."""
    outcome = batch.store_part10(spool, study_instance_uid=study)
    return PartResult(outcome, outcome.sop_class_uid)


class UploadStalled(Exception):
    """The client sent nothing of the body for the idle limit."""


async def _idle_limited(chunks: AsyncIterator[bytes], seconds: float) -> AsyncIterator[bytes]:
    """``chunks``, ending with :class:`UploadStalled` when one takes longer than
    ``seconds`` to arrive (a stalled upload must not hold its connection and spool)."""
    while True:
        try:
            async with asyncio.timeout(seconds):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise UploadStalled(f"no data for {seconds:g} s") from None
        yield chunk


def _refused_part(batch: IngestBatch, message: str) -> PartResult:
    outcome = StoreOutcome(StoreStatus.INVALID, None, message, InvalidReason.UNPARSABLE)
    return PartResult(batch.refused(outcome), None)


def _request_media_type(request: Request) -> MediaType:
    raw = request.headers.get("content-type", "")
    media = MediaType.parse(raw)
    if media.mime != "multipart/related":
        raise HttpError(
            415,
            f'STOW-RS takes multipart/related; type="application/dicom", not {raw or "no type"!r}'
            " (PS3.18 10.5.1)",
        )
    kind = media.params.get("type", DICOM).strip().lower()
    if kind != DICOM:
        raise HttpError(
            415,
            f'multipart/related of type {kind!r} is not supported; send type="{DICOM}"',
        )
    if not media.params.get("boundary"):
        raise HttpError(400, "the multipart/related Content-Type has no boundary parameter")
    return media


#: Parts of one request being stored at once: each waits for its index commit, and
#: parts in flight together share one (a request's parts in turn, one commit each,
#: made the core's STOW-RS slower than an edge forwarding to it; issue 13).
IN_FLIGHT = 4


async def _store_parts(
    request: Request,
    svc: HttpServices,
    batch: IngestBatch,
    reader: MultipartReader,
    study: str | None,
    results: list[PartResult],
) -> None:
    """Store each part (up to :data:`IN_FLIGHT` at once: the body is read in turn, and
    a part is stored while the next ones arrive), appending what became of each to
    ``results`` in the order of the parts, also when reading the body fails."""
    slots: list[PartResult | asyncio.Task[PartResult]] = []
    room = asyncio.Semaphore(IN_FLIGHT)

    async def store(spool: Spool) -> PartResult:
        try:
            return await run_in_threadpool(_ingest, batch, spool, study)
        finally:
            spool.close()
            room.release()

    try:
        while (part := await reader.next_part()) is not None:
            number = len(slots) + 1
            declared = part.content_type
            mime = MediaType.parse(declared).mime if declared else DICOM
            if mime != DICOM:
                async for _ in reader.content():
                    pass
                message = f"part {number} is {declared!r}, not {DICOM}"
                log.warning("STOW-RS from %s: %s", request.client, message)
                slots.append(_refused_part(batch, message))
                continue
            spool = svc.stores.spool()
            try:
                async for chunk in reader.content():
                    spool.write(chunk)
                if spool.size == 0:
                    slots.append(_refused_part(batch, f"part {number} is empty"))
                    spool.close()
                    continue
                await room.acquire()
            except BaseException:
                spool.close()
                raise
            slots.append(asyncio.create_task(store(spool)))
    finally:
        # Every part taken in is stored (or refused) before the answer, whatever
        # happened to the rest of the body.
        for slot in slots:
            results.append(await slot if isinstance(slot, asyncio.Task) else slot)


def _element(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]} if value not in (None, "") else {"vr": vr}


def _response(results: list[PartResult], root: str, study: str | None, media_type: str) -> Response:
    """The Store Instances Response Module (PS3.18 10.5.3, Table 10.5.3-1)."""
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    studies: set[str] = set()
    warnings: list[str] = []
    for number, result in enumerate(results, 1):
        outcome = result.outcome
        item = {
            "00081150": _element("UI", result.sop_class_uid),
            "00081155": _element("UI", outcome.sop_instance_uid),
        }
        reason = failure_reason(outcome)
        if reason is None:
            studies.add(outcome.study_instance_uid or "")
            url = (
                f"{root}/studies/{outcome.study_instance_uid}"
                f"/series/{outcome.series_instance_uid}/instances/{outcome.sop_instance_uid}"
            )
            item["00081190"] = _element("UR", url)
            referenced.append(dict(sorted(item.items())))
        else:
            item["00081197"] = _element("US", reason)
            failed.append(dict(sorted(item.items())))
            if outcome.message and len(warnings) < _MAX_WARNINGS:
                warnings.append(_warning(f"part {number}: {outcome.message}"))
    body: dict[str, Any] = {}
    one_study = study or (next(iter(studies)) if len(studies) == 1 else None)
    if one_study:
        body["00081190"] = _element("UR", f"{root}/studies/{one_study}")
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    status = 409 if not referenced else 202 if failed else 200
    headers = {"Warning": ", ".join(warnings)} if warnings else {}
    if not referenced and all(r.outcome.status is StoreStatus.FAILED for r in results):
        # Nothing kept, and only because storage or the index failed: the request is
        # sound and may be sent again (not 409, which says "do not send this again").
        status = 503
        headers["Retry-After"] = "30"
    return Response(
        orjson.dumps(body), status_code=status, media_type=media_type, headers=headers or None
    )


_MAX_WARNINGS = 10


def _warning(text: str) -> str:
    """A Warning header value (RFC 7234 5.5, warn-code 299, which PS3.18 uses) saying why a part
    failed: FailureReason is a number; this is the reason in words."""
    safe = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "?" for ch in text)
    return f'299 netpacs "{safe[:300]}"'


async def _stow(request: Request, study: str | None) -> Response:
    check_url_uids(Study=study)
    answer_as = negotiate_json(request)
    media = _request_media_type(request)
    svc = services(request)
    who = svc.principal
    origin = Origin(Protocol.DICOMWEB, user=who.user_id, trust=who.trust, site=who.site)
    results: list[PartResult] = []
    batch = svc.stores.batch(who, origin)
    try:
        body = _idle_limited(request.stream(), svc.web.upload_idle_seconds)
        reader = MultipartReader(body, media.params["boundary"])
        await _store_parts(request, svc, batch, reader, study, results)
    except ObjectTooLarge as exc:
        kept = sum(failure_reason(r.outcome) is None for r in results)
        log.warning("STOW-RS from %s: part %d refused: %s", request.client, len(results) + 1, exc)
        headers = {"Connection": "close"}  # the rest of the body is not read
        raise HttpError(
            413,
            f"part {len(results) + 1}: {exc} ({kept} instance(s) before it were stored)",
            headers,
        ) from None
    except UploadStalled as exc:
        kept = sum(failure_reason(r.outcome) is None for r in results)
        log.warning("STOW-RS from %s: upload stalled (%s), closed", request.client, exc)
        raise HttpError(
            408,
            f"the upload stalled: {exc} ({kept} instance(s) before it were stored)",
            {"Connection": "close"},
        ) from None
    except (MultipartError, ClientDisconnect) as exc:
        kept = sum(failure_reason(r.outcome) is None for r in results)
        problem = (
            f"malformed multipart/related body: {exc}"
            if isinstance(exc, MultipartError)
            else "the client went away before the body was complete"
        )
        raise HttpError(400, f"{problem} ({kept} instance(s) before it were stored)") from None
    finally:
        await run_in_threadpool(batch.close)
    if not results:
        raise HttpError(400, "the multipart/related body has no parts")
    return _response(results, base_url(request) + DICOMWEB_ROOT, study, answer_as)


@router.post(f"{DICOMWEB_ROOT}/studies", summary="Store instances (STOW-RS)")
async def store_instances(request: Request) -> Response:
    return await _stow(request, None)


@router.post(f"{DICOMWEB_ROOT}/studies/{{study}}", summary="Store instances of one study")
async def store_study_instances(study: str, request: Request) -> Response:
    return await _stow(request, study)
