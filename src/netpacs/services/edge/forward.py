"""Store and forward (issue 13): every object the site stores at the edge reaches the core.

:class:`ForwardRule` queues each object in the transaction that indexes it (so what the
edge acknowledged is queued, whatever happens next); objects the edge keeps as copies of
the core's (``Protocol.UPSTREAM``) are not queued. :class:`Forwarding` (a job of the job
worker) sends the queue to the core with STOW-RS, a study at a time in the order of
:func:`netpacs.index.edge_queue.next_study` (emergency first, then oldest first), each
study's objects in the order they arrived, for as long as it takes:

1. It asks the core which of the next objects it already holds (``/api/edge/held``):
   one that reached the core by another path, with the same data set, is confirmed
   without sending it (reconciled instance by instance, by SOP Instance UID).
2. It sends the others in one STOW-RS request.
3. It asks the core again: an object counts as forwarded only when the core holds it
   with the same data set, byte for byte: the core's recorded CRC-32 of its object
   equals that of its file meta (read back from its store now) followed by our data
   set (the file meta differs: each archive records its own origin there). The edge
   knows its data set's CRC-32 from the one it recorded when it stored the object
   (domain.crc32): it does not read the data set again.

When the core cannot be reached (no connection, timeout, 5xx, 429) the whole job waits,
twice as long each time up to ``retry_max`` seconds; an object the core refuses or does
not confirm waits on its own (the others of its study go on). The queue is in the
edge's index: the backlog survives restarts.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from netpacs.domain import crc32
from netpacs.domain.outcomes import Origin, Protocol
from netpacs.index import edge_queue
from netpacs.index.records import InstanceRecord
from netpacs.services.edge.ports import Response, UpstreamPort, UpstreamUnavailable
from netpacs.storage.blobstore import BlobNotFound, BlobStore

log = logging.getLogger(__name__)

NOT_FORWARDED = frozenset({Protocol.UPSTREAM, Protocol.REINDEX})
_CHUNK = 1 << 20
_SEND_TIMEOUT = 60.0  # seconds of silence a STOW-RS request to the core may have
_MAX_BATCH_BYTES = 64 << 20  # a batch's objects together, unless one alone is larger


class ForwardRule:
    """The edge's index writer hook (index.writer.NewInstanceHook): queue the object."""

    def __call__(self, conn: sa.Connection, record: InstanceRecord) -> None:
        origin = record.origin
        if isinstance(origin, Origin) and origin.protocol in NOT_FORWARDED:
            return
        edge_queue.enqueue(conn, record.instance.sop_instance_uid, record.study.study_instance_uid)


@dataclass(frozen=True, slots=True)
class Timing:
    poll: float = 0.2  # an empty queue is looked at again after this long
    retry_first: float = 0.5  # the first wait after a failure
    retry_max: float = 30.0  # the longest


def holds_same(held: dict[str, Any] | None, blobs: BlobStore, w: edge_queue.Waiting) -> bool:
    """Whether the core's answer for an object shows our data set, byte for byte: the
    same data set size, and the CRC-32 the core recorded for its whole object equal to
    that of its file meta (read back there now) followed by our data set. The latter
    comes from the CRC-32 the edge recorded when it stored the object and that of its
    own file meta (read back here now): the data set is not read again."""
    if not isinstance(held, dict) or w.blob_key is None:
        return False
    try:
        size = w.blob_size - w.dataset_offset
        if int(held["size"]) - int(held["dataset_offset"]) != size:
            return False
        ours = zlib.crc32(blobs.get_range(w.blob_key, 0, w.dataset_offset))
        expected = crc32.with_head(w.blob_crc32, ours, int(held["head_crc32"]), size)
    except (KeyError, TypeError, ValueError):
        return False
    return expected == int(held["crc32"])


class Lanes:
    """The studies the forwarding jobs of this process have in hand: each study goes
    through one job at a time (in order), several studies at once, except while an
    emergency study goes: then the other lanes wait, and it has the link to itself."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: dict[str, bool] = {}  # study -> emergency

    def busy(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._busy)

    def take(self, study: str, emergency: bool) -> bool:
        with self._lock:
            if study in self._busy or (not emergency and any(self._busy.values())):
                return False
            self._busy[study] = emergency
            return True

    def release(self, study: str) -> None:
        with self._lock:
            self._busy.pop(study, None)


class Forwarding:
    """The job that sends the forward queue to the core (module doc); several of them
    (one per lane) share a :class:`Lanes`, each sending another study."""

    def __init__(
        self,
        *,
        reader: sa.Engine,
        writer: sa.Engine,
        blobs: BlobStore,
        upstream: UpstreamPort,
        batch: int = 50,
        timing: Timing = Timing(),
        lanes: Lanes | None = None,
        lane: int = 1,
    ) -> None:
        self.name = f"forward to the core ({lane})"
        self._lanes = lanes or Lanes()
        self._reader = reader
        self._writer = writer
        self._blobs = blobs
        self._upstream = upstream
        self._batch = batch
        self._timing = timing
        self._failures = 0  # consecutive times the core could not be reached

    def close(self) -> None:
        pass

    def step(self) -> float:
        now = dt.datetime.now(dt.UTC)
        with self._reader.connect() as conn:
            found = edge_queue.next_study(conn, now, self._lanes.busy())
            if found is None or not self._lanes.take(found.study_instance_uid, found.emergency):
                return self._timing.poll
            study = found.study_instance_uid
            try:
                waiting = edge_queue.waiting_in_study(conn, study, now, self._batch)
            except BaseException:
                self._lanes.release(study)
                raise
        started = time.monotonic()
        try:
            self._forward(study, self._bounded(waiting))
            log.debug(
                "%s: %d objects of study %s in %.2f s",
                self.name,
                len(waiting),
                study,
                time.monotonic() - started,
            )
        except UpstreamUnavailable as exc:
            self._failures += 1
            wait: float = min(
                self._timing.retry_max,
                self._timing.retry_first * 2.0 ** min(self._failures - 1, 20),
            )
            log.info("forwarding waits %.1f s: the core cannot be reached (%s)", wait, exc)
            return wait
        finally:
            self._lanes.release(study)
        self._failures = 0
        return 0.0

    @staticmethod
    def _bounded(waiting: list[edge_queue.Waiting]) -> list[edge_queue.Waiting]:
        """The first objects up to the batch's byte budget (at least one)."""
        total, out = 0, list[edge_queue.Waiting]()
        for w in waiting:
            if out and total + w.blob_size > _MAX_BATCH_BYTES:
                break
            out.append(w)
            total += w.blob_size
        return out

    def _forward(self, study: str, waiting: list[edge_queue.Waiting]) -> None:
        now = dt.datetime.now(dt.UTC)
        gone = [w.sop_instance_uid for w in waiting if w.blob_key is None]
        present = [w for w in waiting if w.blob_key is not None]
        if gone:  # deleted here before it went: nothing to send
            self._confirm(gone, "gone")
        if not present:
            return
        held = self._held([w.sop_instance_uid for w in present])
        reconciled: list[str] = []
        failures: dict[str, str] = {}
        to_send: list[edge_queue.Waiting] = []
        for w in present:
            answer = held.get(w.sop_instance_uid)
            if answer is None:
                to_send.append(w)
                continue
            try:
                same = holds_same(answer, self._blobs, w)
            except (OSError, BlobNotFound) as exc:
                failures[w.sop_instance_uid] = f"cannot read it here: {exc}"
                continue
            if same:
                reconciled.append(w.sop_instance_uid)
            else:
                failures[w.sop_instance_uid] = (
                    "the core holds other content under this SOP Instance UID"
                )
        if reconciled:
            self._confirm(reconciled, "reconciled")
            log.info("%d objects of study %s were at the core already", len(reconciled), study)
        if to_send:
            sent, refused = self._send(study, to_send)
            failures.update(refused)
            after = self._held([uid for uid in sent if uid not in refused])
            confirmed = []
            for w in to_send:
                uid = w.sop_instance_uid
                if uid in refused or uid not in sent:
                    continue
                try:
                    same = holds_same(after.get(uid), self._blobs, w)
                except (OSError, BlobNotFound) as exc:
                    failures[uid] = f"cannot read it here: {exc}"
                    continue
                if same:
                    confirmed.append(uid)
                else:
                    failures[uid] = "the core did not confirm it holds this object"
            self._confirm(confirmed, "sent")
        if failures:
            log.warning(
                "study %s: %d objects not forwarded yet (e.g. %s)",
                study,
                len(failures),
                next(iter(failures.values())),
            )
            self._writer_run(
                lambda conn: edge_queue.postpone(
                    conn,
                    failures,
                    now,
                    first=self._timing.retry_first,
                    most=self._timing.retry_max,
                )
            )

    def _writer_run(self, fn: Any) -> None:
        with self._writer.begin() as conn:
            fn(conn)

    def _confirm(self, uids: Sequence[str], how: str) -> None:
        now = dt.datetime.now(dt.UTC)
        self._writer_run(lambda conn: edge_queue.confirm(conn, uids, how, now))

    def _held(self, uids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not uids:
            return {}
        response = self._upstream.post(
            "/api/edge/held",
            content=_json({"sop_instance_uids": list(uids)}),
            headers={"Content-Type": "application/json"},
            timeout=_SEND_TIMEOUT,
        )
        if response.status_code != 200:
            raise UpstreamUnavailable(
                f"the core's answer to /api/edge/held: HTTP {response.status_code} "
                f"{response.text[:200]}"
            )
        held = response.json().get("held", {})
        return held if isinstance(held, dict) else {}

    def _send(
        self, study: str, objects: list[edge_queue.Waiting]
    ) -> tuple[set[str], dict[str, str]]:
        """STOW-RS the objects: those that went, and those the core refused, with why."""
        boundary = f"netpacs-edge-{secrets.token_hex(12)}"
        sent: set[str] = set()
        response = self._upstream.post(
            f"/dicomweb/studies/{study}",
            content=self._body(objects, boundary, sent),
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            },
            timeout=_SEND_TIMEOUT,
        )
        refused = _refused(response, [o.sop_instance_uid for o in objects])
        return sent, refused

    def _body(
        self, objects: list[edge_queue.Waiting], boundary: str, sent: set[str]
    ) -> Iterator[bytes]:
        for o in objects:
            assert o.blob_key is not None
            try:
                f = self._blobs.open(o.blob_key)
            except (OSError, BlobNotFound) as exc:
                log.warning("object %s cannot be read here: %s", o.sop_instance_uid, exc)
                continue
            yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            with f:
                while chunk := f.read(_CHUNK):
                    yield chunk
            sent.add(o.sop_instance_uid)
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()


def _json(value: Any) -> bytes:
    return orjson.dumps(value)


def _refused(response: Response, uids: list[str]) -> dict[str, str]:
    """The objects a STOW-RS answer says were not stored, with why."""
    status = response.status_code
    if status in (200, 202, 409):
        try:
            body = response.json()
        except ValueError:
            body = {}
        failed = body.get("00081198", {}).get("Value", []) if isinstance(body, dict) else []
        out: dict[str, str] = {}
        for item in failed:
            uid = (item.get("00081155", {}).get("Value") or [None])[0]
            reason = (item.get("00081197", {}).get("Value") or ["?"])[0]
            if isinstance(uid, str):
                out[uid] = f"the core refused it (STOW-RS FailureReason {reason})"
        warning = response.headers.get("warning", "")
        if warning and out:
            first = next(iter(out))
            out[first] += f": {warning[:200]}"
        return out
    why = f"the core answered the STOW-RS request with HTTP {status}: {response.text[:200]}"
    return dict.fromkeys(uids, why)
