"""Outbound C-STORE sub-operations for C-MOVE, with pynetdicom as the association requestor.

Speed matters less here than on the receive path, so pynetdicom is kept: files are
sent from the blob store without being decoded (pynetdicom's chunked file sending)
unless the destination accepts only another uncompressed transfer syntax. A compressed
object is proposed as stored and, in a second presentation context, uncompressed: a
destination that accepts only the second gets it decompressed (losslessly, by the
retrieve service), as most workstations that take no compression expect. Objects with a
coercion (their patient changed, :mod:`netpacs.services.coercion`) are sent from a
temporary coerced copy the retrieve service makes.
"""

from __future__ import annotations

import enum
import io
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom import dcmread
from pynetdicom import AE, _config
from pynetdicom.presentation import build_context

from netpacs.adapters.dimse.negotiation import (
    DECOMPRESS_TO,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    UNCOMPRESSED,
)
from netpacs.adapters.dimse.requestor import associate
from netpacs.domain.region import ApplicationEntity
from netpacs.services.retrieve import RetrieveService, Served
from netpacs.services.transcode import can_transcode

log = logging.getLogger(__name__)

_MAX_CONTEXTS = 128
DIMSE_TIMEOUT = 60  # seconds for a response, and of silence on the association


class Outcome(enum.Enum):
    SUCCESS = "success"
    WARNING = "warning"  # a warning status (coercion, elements discarded)
    FAILED = "failed"  # a failure status, or nothing this destination can take
    BROKEN = "broken"  # no response: the association is lost with the object in flight


@dataclass(slots=True)
class SubOpCounts:
    remaining: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] | None = None

    def as_tuple(self) -> tuple[int, int, int, int]:
        return self.remaining, self.completed, self.failed, self.warning


def _contexts(items: list[Served]) -> list[tuple[str, list[str]]]:
    """Presentation contexts to propose: per SOP class, one with the stored uncompressed
    syntaxes (and both little endian ones), one per stored compressed syntax, and one
    uncompressed fallback for compressed objects that can be decompressed here."""
    uncompressed: dict[str, list[str]] = {}
    compressed: dict[str, list[str]] = {}
    for item in items:
        cls, ts = item.sop_class_uid, item.transfer_syntax_uid
        if ts in UNCOMPRESSED:
            syntaxes = uncompressed.setdefault(cls, [])
            candidates = [ts, EXPLICIT_VR_LE, IMPLICIT_VR_LE]
        else:
            syntaxes = compressed.setdefault(cls, [])
            candidates = [ts]
            if can_transcode(ts, EXPLICIT_VR_LE):
                fallback = uncompressed.setdefault(cls, [])
                fallback.extend(t for t in DECOMPRESS_TO if t not in fallback)
        syntaxes.extend(t for t in candidates if t not in syntaxes)
    out = [(cls, [ts]) for cls, syntaxes in compressed.items() for ts in syntaxes]
    out += list(uncompressed.items())
    return out[:_MAX_CONTEXTS]


def send_files_as_stored() -> None:
    """Have pynetdicom send a C-STORE of a file as its bytes are, in chunks, never decoded.

    ``STORE_SEND_CHUNKED_DATASET`` is a setting of the whole process in pynetdicom, not
    of an AE or an association: the composition root sets it once, when a DIMSE worker
    starts. Without it, sub-operations still succeed, but each file is decoded and
    encoded again on the way out.
    """
    _config.STORE_SEND_CHUNKED_DATASET = True


def send_to(
    destination: ApplicationEntity,
    *,
    our_ae_title: str,
    items: list[Served],
    retrieve: RetrieveService,
    originator: tuple[str, int],
    progress: Callable[[SubOpCounts], None],
    cancelled: Callable[[], bool],
) -> SubOpCounts:
    """C-STORE every item to ``destination``; report progress after each sub-operation.

    An association that breaks (the destination aborts, or sends no response within the
    DIMSE timeout) loses only the object in flight: it and the objects not yet sent go
    once more on a new association, as other archives retry; what fails a second time
    counts as failed.
    """
    counts = SubOpCounts(remaining=len(items), failed_uids=[])
    assert counts.failed_uids is not None
    queue = list(items)
    for attempt in (1, 2):
        if not queue or cancelled():
            break
        try:
            assoc = _associate(destination, our_ae_title, queue)
        except ConnectionError:
            if attempt == 1:
                raise
            break
        try:
            queue = _send_all(
                assoc, queue, counts, retrieve, originator, progress, cancelled, last=attempt == 2
            )
        finally:
            if assoc.is_established:
                assoc.release()
        if queue and not cancelled() and attempt == 1:
            log.warning(
                "the association with %s broke; sending the %d objects not confirmed on a new one",
                destination.ae_title,
                len(queue),
            )
    if not cancelled():
        for item in queue:  # the second association broke too, or could not be made
            counts.remaining -= 1
            counts.failed += 1
            counts.failed_uids.append(item.sop_instance_uid)
    return counts


def _associate(destination: ApplicationEntity, our_ae_title: str, items: list[Served]) -> Any:
    ae = AE(ae_title=our_ae_title)
    ae.acse_timeout = 30
    ae.dimse_timeout = DIMSE_TIMEOUT
    ae.network_timeout = DIMSE_TIMEOUT
    ae.requested_contexts = [build_context(cls, ts) for cls, ts in _contexts(items)]
    assert destination.port is not None
    assoc = associate(ae, destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise ConnectionError(
            f"could not associate with {destination.ae_title} at "
            f"{destination.host}:{destination.port}"
        )
    sock = assoc.dul.socket.socket if assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return assoc


def _send_all(
    assoc: Any,
    queue: list[Served],
    counts: SubOpCounts,
    retrieve: RetrieveService,
    originator: tuple[str, int],
    progress: Callable[[SubOpCounts], None],
    cancelled: Callable[[], bool],
    *,
    last: bool,
) -> list[Served]:
    """Send ``queue`` on ``assoc``, counting each outcome; returns what is left unsent
    (with the object in flight when the association broke, unless this is the ``last``
    association)."""
    assert counts.failed_uids is not None
    for index, item in enumerate(queue):
        if cancelled() or not assoc.is_established:
            return queue[index:]
        outcome = _send_one(assoc, item, retrieve, originator)
        if outcome is Outcome.BROKEN:
            # No response: whatever pynetdicom says of the association, it is done with.
            if assoc.is_established:
                assoc.abort()
            if not last:
                return queue[index:]
        counts.remaining -= 1
        if outcome is Outcome.SUCCESS:
            counts.completed += 1
        elif outcome is Outcome.WARNING:
            counts.warning += 1
        else:
            counts.failed += 1
            counts.failed_uids.append(item.sop_instance_uid)
        progress(counts)
    return []


def _send_one(
    assoc: object,
    item: Served,
    retrieve: RetrieveService,
    originator: tuple[str, int],
) -> Outcome:
    """The outcome of one C-STORE sub-operation."""
    accepted = [
        cx
        for cx in assoc.accepted_contexts  # type: ignore[attr-defined]
        if cx.abstract_syntax == item.sop_class_uid
    ]
    if not accepted:
        log.warning("destination accepted no context for %s", item.sop_class_uid)
        return Outcome.FAILED
    taken = {cx.transfer_syntax[0] for cx in accepted}
    try:
        if item.transfer_syntax_uid not in taken and item.transfer_syntax_uid not in UNCOMPRESSED:
            target = next((ts for ts in DECOMPRESS_TO if ts in taken), None)
            if target is None:
                log.warning(
                    "destination accepts neither %s nor an uncompressed syntax for %s",
                    item.transfer_syntax_uid,
                    item.sop_instance_uid,
                )
                return Outcome.FAILED
            payload = dcmread(io.BytesIO(retrieve.part10_in(item, target)))
            status = assoc.send_c_store(  # type: ignore[attr-defined]
                payload, originator_aet=originator[0], originator_id=originator[1]
            )
        else:
            with retrieve.as_file(item) as path:
                # As stored; else pynetdicom converts between uncompressed syntaxes.
                as_stored = item.transfer_syntax_uid in taken
                status = assoc.send_c_store(  # type: ignore[attr-defined]
                    path if as_stored else dcmread(path),
                    originator_aet=originator[0],
                    originator_id=originator[1],
                )
    except Exception as exc:
        log.warning("C-STORE sub-operation for %s failed: %s", item.sop_instance_uid, exc)
        lost = not assoc.is_established  # type: ignore[attr-defined]
        return Outcome.BROKEN if lost else Outcome.FAILED
    code = getattr(status, "Status", None)
    if code is None:
        log.warning(
            "no C-STORE response for %s (aborted, or none within %d s)",
            item.sop_instance_uid,
            DIMSE_TIMEOUT,
        )
        return Outcome.BROKEN
    if code == 0:
        return Outcome.SUCCESS
    if code in (0xB000, 0xB007, 0xB006):
        return Outcome.WARNING
    return Outcome.FAILED
