"""Storage Commitment Push Model SCP (PS3.4 Annex J): N-ACTION in, N-EVENT-REPORT out.

The requester sends N-ACTION-RQ (Action Type 1, Request Storage Commitment) with a
Transaction UID and a Referenced SOP Sequence; it gets N-ACTION-RSP at once, and then
an N-EVENT-REPORT-RQ (Event Type 1: all committed; 2: some failed, listed in the Failed
SOP Sequence with a Failure Reason) from :class:`CommitmentRequests`:

- on the same association while the requester keeps it open (PS3.4 J.3.3);
- else on a new association to the requester's AE (its host and port in the region
  file), netpacs proposing the SCP role of Storage Commitment by SCP/SCU Role Selection
  (PS3.4 J.3.3, PS3.7 D.3.3.4), since there it is the association requester.

What counts as committed is the service's (services/commitment.py); this module only
translates. The report waits :data:`REPORT_DELAY` seconds after the response (and, on
an edge node, for the core to confirm pending instances, up to ``wait_seconds``).
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from pydicom import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE, build_role
from pynetdicom.dsutils import decode, encode

from netpacs.adapters.dimse import commands as c
from netpacs.adapters.dimse.association import Association
from netpacs.adapters.dimse.message import Message
from netpacs.adapters.dimse.negotiation import (
    DEFLATED,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    STORAGE_COMMITMENT,
)
from netpacs.adapters.dimse.requestor import associate
from netpacs.domain.region import ApplicationEntity
from netpacs.services.commitment import (
    MAX_REFERENCES,
    PROCESSING_FAILURE,
    Commitment,
    CommitmentService,
    Reference,
)

log = logging.getLogger(__name__)

#: The well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.1).
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_STORAGE_COMMITMENT = 1  # Action Type ID
ALL_COMMITTED, SOME_FAILED = 1, 2  # Event Type ID
REPORT_DELAY = 0.5  # seconds after N-ACTION-RSP before the report
POLL = 2.0  # seconds between looks while instances are pending (an edge node)
RESPONSE_TIMEOUT = 30.0  # seconds for the requester's N-EVENT-REPORT-RSP

SUCCESS = 0x0000
PROCESSING_FAILED = 0x0110
NO_SUCH_SOP_CLASS = 0x0118
INVALID_OBJECT_INSTANCE = 0x0117
MISSING_ATTRIBUTE = 0x0120
NO_SUCH_ACTION = 0x0123
RESOURCE_LIMITATION = 0x0213


class BadRequest(ValueError):
    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


def parse_request(data: bytes, transfer_syntax: str) -> tuple[str, list[Reference]]:
    """(Transaction UID, references) of an N-ACTION-RQ data set (PS3.4 J.3.2.1.1)."""
    implicit, little = transfer_syntax == IMPLICIT_VR_LE, transfer_syntax != EXPLICIT_VR_BE
    try:
        ds = decode(io.BytesIO(data), implicit, little, transfer_syntax == DEFLATED)
        transaction = str(ds.get("TransactionUID", "") or "")
        items = list(ds.get("ReferencedSOPSequence") or [])
    except Exception as exc:
        raise BadRequest(PROCESSING_FAILED, f"data set cannot be decoded: {exc}"[:64]) from None
    if not transaction:
        raise BadRequest(MISSING_ATTRIBUTE, "Transaction UID (0008,1195) is missing")
    if not items:
        raise BadRequest(MISSING_ATTRIBUTE, "Referenced SOP Sequence (0008,1199) is empty")
    if len(items) > MAX_REFERENCES:
        raise BadRequest(RESOURCE_LIMITATION, f"over {MAX_REFERENCES} instances in one request")
    refs = []
    for item in items:
        cls = str(item.get("ReferencedSOPClassUID", "") or "")
        uid = str(item.get("ReferencedSOPInstanceUID", "") or "")
        if not cls or not uid:
            raise BadRequest(MISSING_ATTRIBUTE, "a Referenced SOP Sequence item lacks a UID")
        refs.append(Reference(cls, uid))
    return transaction, refs


def event_report(transaction: str, result: Commitment, ae_title: str) -> tuple[int, Dataset]:
    """Event Type ID and the N-EVENT-REPORT data set (PS3.4 J.3.3.1.1). Pending
    instances (an edge whose core has not confirmed them) are reported failed."""
    failed = result.failed + [(ref, PROCESSING_FAILURE) for ref in result.pending]
    ds = Dataset()
    ds.TransactionUID = transaction
    ds.RetrieveAETitle = ae_title
    if result.committed:
        ds.ReferencedSOPSequence = Sequence(
            [_ref(r.sop_class_uid, r.sop_instance_uid) for r in result.committed]
        )
    if failed:
        items = []
        for ref, reason in failed:
            item = _ref(ref.sop_class_uid, ref.sop_instance_uid)
            item.FailureReason = reason
            items.append(item)
        ds.FailedSOPSequence = Sequence(items)
    return (SOME_FAILED if failed else ALL_COMMITTED), ds


def _ref(cls: str, uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = cls, uid
    return item


def report_on_new_association(
    destination: ApplicationEntity, our_ae_title: str, event_type: int, ds: Dataset
) -> bool:
    """Send the report on an association of our own, proposing the SCP role."""
    ae = AE(ae_title=our_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = RESPONSE_TIMEOUT
    ae.add_requested_context(STORAGE_COMMITMENT, [EXPLICIT_VR_LE, IMPLICIT_VR_LE])
    assert destination.port is not None
    assoc = associate(
        ae,
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        ext_neg=[build_role(STORAGE_COMMITMENT, scu_role=False, scp_role=True)],
    )
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_n_event_report(
            ds, event_type, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
        )[0]
        return status is not None and int(getattr(status, "Status", 0xFFFF)) == SUCCESS
    finally:
        if assoc.is_established:
            assoc.release()


class CommitmentRequests:
    """The Storage Commitment SCP of one association."""

    def __init__(
        self,
        service: CommitmentService,
        assoc: Association,
        *,
        executor: Executor,
        ae_title: str,
        report_new: Callable[[ApplicationEntity, str, int, Dataset], bool] = (
            report_on_new_association
        ),
    ) -> None:
        self._service = service
        self._assoc = assoc
        self._executor = executor
        self._ae_title = ae_title
        self._wait = service.wait_seconds
        self._report_new = report_new
        self._tasks: set[asyncio.Task[None]] = set()

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _respond(self, msg: Message, status: int, comment: str | None = None) -> None:
        if self._assoc.closed:
            return
        values: dict[int, int | str] = {
            c.COMMAND_FIELD: c.N_ACTION_RSP,
            c.MESSAGE_ID_BEING_RESPONDED_TO: msg.command.message_id,
            c.COMMAND_DATA_SET_TYPE: c.NO_DATA_SET,
            c.STATUS: status,
            c.AFFECTED_SOP_CLASS_UID: STORAGE_COMMITMENT,
            c.AFFECTED_SOP_INSTANCE_UID: STORAGE_COMMITMENT_INSTANCE,
        }
        if status == SUCCESS:
            values[c.ACTION_TYPE_ID] = REQUEST_STORAGE_COMMITMENT
        if comment:
            values[c.ERROR_COMMENT] = comment
        self._assoc.send_message(msg.context_id, c.encode_command(values), None)

    async def n_action(self, msg: Message) -> None:
        """Answer a Request Storage Commitment, then report on it (in a task)."""
        cmd = msg.command
        ctx = self._assoc.contexts[msg.context_id]
        if cmd.get_str(c.REQUESTED_SOP_CLASS_UID) != STORAGE_COMMITMENT:
            self._respond(msg, NO_SUCH_SOP_CLASS, "Requested SOP Class is not 1.2.840.10008.1.20.1")
            return
        if cmd.get_str(c.REQUESTED_SOP_INSTANCE_UID) != STORAGE_COMMITMENT_INSTANCE:
            self._respond(
                msg, INVALID_OBJECT_INSTANCE, "Requested SOP Instance is not the well-known one"
            )
            return
        if cmd.get_int(c.ACTION_TYPE_ID) != REQUEST_STORAGE_COMMITMENT:
            self._respond(msg, NO_SUCH_ACTION, "Action Type ID must be 1")
            return
        if not isinstance(msg.data, bytes):
            self._respond(msg, MISSING_ATTRIBUTE, msg.refused or "no data set")
            return
        try:
            transaction, refs = parse_request(msg.data, ctx.transfer_syntax)
        except BadRequest as exc:
            self._respond(msg, exc.status, exc.comment)
            return
        self._respond(msg, SUCCESS)
        log.info(
            "storage commitment %s from %s: %d instances",
            transaction,
            self._assoc.calling_ae,
            len(refs),
        )
        task = asyncio.get_running_loop().create_task(
            self._report_logged(msg.context_id, ctx.transfer_syntax, transaction, refs)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report_logged(
        self, context_id: int, transfer_syntax: str, transaction: str, refs: list[Reference]
    ) -> None:
        try:
            await self._report(context_id, transfer_syntax, transaction, refs)
        except Exception:
            log.exception("storage commitment %s: the report failed", transaction)

    async def _report(
        self, context_id: int, transfer_syntax: str, transaction: str, refs: list[Reference]
    ) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(REPORT_DELAY)
        deadline = loop.time() + self._wait
        while True:
            result: Commitment = await self._run(self._service.check, refs)
            if not result.pending or loop.time() >= deadline:
                break
            await asyncio.sleep(POLL)
        event_type, ds = event_report(transaction, result, self._ae_title)
        what = f"{len(result.committed)} committed, {len(refs) - len(result.committed)} failed"
        if not self._assoc.closed:
            try:
                await self._send_here(context_id, transfer_syntax, event_type, ds)
                log.info("storage commitment %s reported on its association: %s", transaction, what)
                return
            except (ConnectionError, TimeoutError) as exc:
                log.info("storage commitment %s: association gone (%s)", transaction, exc)
        requester = self._service.requester(self._assoc.calling_ae)
        if requester is None or requester.port is None:
            log.error(
                "storage commitment %s cannot be reported: %s has no port in the region file",
                transaction,
                self._assoc.calling_ae,
            )
            return
        try:
            sent = await self._run(self._report_new, requester, self._ae_title, event_type, ds)
        except Exception as exc:
            sent = False
            log.error("storage commitment %s report failed: %s", transaction, exc)
        log.log(
            logging.INFO if sent else logging.ERROR,
            "storage commitment %s %s on a new association to %s: %s",
            transaction,
            "reported" if sent else "NOT reported",
            requester.ae_title,
            what,
        )

    async def _send_here(
        self, context_id: int, transfer_syntax: str, event_type: int, ds: Dataset
    ) -> None:
        implicit, little = transfer_syntax == IMPLICIT_VR_LE, transfer_syntax != EXPLICIT_VR_BE
        data = encode(ds, implicit, little, transfer_syntax == DEFLATED)
        assert data is not None
        mid = self._assoc.next_message_id()
        command = c.encode_command(
            {
                c.COMMAND_FIELD: c.N_EVENT_REPORT_RQ,
                c.MESSAGE_ID: mid,
                c.AFFECTED_SOP_CLASS_UID: STORAGE_COMMITMENT,
                c.COMMAND_DATA_SET_TYPE: c.HAS_DATA_SET,
                c.AFFECTED_SOP_INSTANCE_UID: STORAGE_COMMITMENT_INSTANCE,
                c.EVENT_TYPE_ID: event_type,
            }
        )
        fut: asyncio.Future[c.Command] = asyncio.get_running_loop().create_future()
        self._assoc.store_waiters[mid] = fut
        try:
            self._assoc.send_message(context_id, command, data)
            rsp = await asyncio.wait_for(fut, RESPONSE_TIMEOUT)
        finally:
            self._assoc.store_waiters.pop(mid, None)
        if rsp.get_int(c.STATUS) != SUCCESS:
            log.warning("N-EVENT-REPORT answered %#06x", rsp.get_int(c.STATUS))
