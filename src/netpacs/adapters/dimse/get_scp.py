"""C-GET SCP (PS3.4 C.4.3): the objects a C-GET selects go back to the requestor as
C-STORE sub-operations on its own association, each on a context it accepted for the
object's SOP class: the stored transfer syntax, else another uncompressed one, else a
decompressed one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from netpacs.adapters.dimse import commands as c
from netpacs.adapters.dimse import status as st
from netpacs.adapters.dimse.negotiation import DECOMPRESS_TO, EXPLICIT_VR_LE, UNCOMPRESSED
from netpacs.adapters.dimse.scu import SubOpCounts
from netpacs.services.retrieve import Served
from netpacs.services.transcode import can_transcode

if TYPE_CHECKING:
    from netpacs.adapters.dimse.association import Association
    from netpacs.adapters.dimse.handlers import AssociationHandlers
    from netpacs.adapters.dimse.message import Message

log = logging.getLogger(__name__)


async def c_get(h: AssociationHandlers, msg: Message) -> None:
    """Send the selected objects back on the requestor's association as C-STORE
    sub-operations, a pending response after each, then the final counts."""
    selected = await h._select(msg, c.C_GET_RSP)
    if selected is None:
        return
    items, from_cache = selected
    mid = msg.command.message_id
    counts = SubOpCounts(remaining=len(items))
    cancelled = False
    for item in items:
        if mid in h.assoc.cancelled:
            cancelled = True
            h.assoc.cancelled.discard(mid)
            break
        if h.assoc.closed:
            return
        result = await _get_one(h, item, mid)
        counts.remaining -= 1
        if result is None:
            counts.failed += 1
        elif result:
            counts.completed += 1
        else:
            counts.warning += 1
        if counts.remaining:
            h._reply(msg, c.C_GET_RSP, st.PENDING, counts=counts.as_tuple())
    h._final(msg, c.C_GET_RSP, counts, cancelled, from_cache)


def _get_context(assoc: Association, item: Served) -> tuple[int, str] | None:
    """The accepted context to send ``item`` on: its stored syntax; else another
    uncompressed one (re-encoded); else, for compressed pixel data, Explicit or
    Implicit VR Little Endian (decompressed: the peer accepts nothing else)."""
    best: tuple[int, str] | None = None
    decompressed: tuple[int, str] | None = None
    for ctx in assoc.contexts.values():
        if ctx.result != 0 or ctx.abstract_syntax != item.sop_class_uid:
            continue
        if ctx.transfer_syntax == item.transfer_syntax_uid:
            return ctx.context_id, ctx.transfer_syntax
        if item.transfer_syntax_uid in UNCOMPRESSED and ctx.transfer_syntax in UNCOMPRESSED:
            best = (ctx.context_id, ctx.transfer_syntax)
        elif ctx.transfer_syntax in DECOMPRESS_TO and (
            decompressed is None or ctx.transfer_syntax == EXPLICIT_VR_LE
        ):
            decompressed = (ctx.context_id, ctx.transfer_syntax)
    if best is not None or decompressed is None:
        return best
    return decompressed if can_transcode(item.transfer_syntax_uid, decompressed[1]) else None


async def _get_one(h: AssociationHandlers, item: Served, originator_id: int) -> bool | None:
    chosen = _get_context(h.assoc, item)
    if chosen is None:
        log.warning(
            "C-GET: requestor accepted no context for %s in %s",
            item.sop_class_uid,
            item.transfer_syntax_uid,
        )
        return None
    ctx_id, ts = chosen
    try:
        data = await h._run(h.s.retrieve.dataset_in, item, ts)
    except Exception as exc:
        log.warning("C-GET: cannot read %s: %s", item.sop_instance_uid, exc)
        return None
    message_id = h.assoc.next_message_id()
    cmd = c.encode_command(
        {
            c.AFFECTED_SOP_CLASS_UID: item.sop_class_uid,
            c.COMMAND_FIELD: c.C_STORE_RQ,
            c.MESSAGE_ID: message_id,
            c.PRIORITY: 0,
            c.COMMAND_DATA_SET_TYPE: c.HAS_DATA_SET,
            c.AFFECTED_SOP_INSTANCE_UID: item.sop_instance_uid,
            c.MOVE_ORIGINATOR_AE: h.assoc.calling_ae or " ",
            c.MOVE_ORIGINATOR_MESSAGE_ID: originator_id,
        }
    )
    fut: asyncio.Future[c.Command] = asyncio.get_running_loop().create_future()
    h.assoc.store_waiters[message_id] = fut
    try:
        h.assoc.send_message(ctx_id, cmd, data)
        rsp = await asyncio.wait_for(fut, timeout=120)
    except (ConnectionError, TimeoutError) as exc:
        log.warning("C-GET sub-operation for %s failed: %s", item.sop_instance_uid, exc)
        h.assoc.store_waiters.pop(message_id, None)
        return None
    code = rsp.get_int(c.STATUS, 0xFFFF)
    if code == 0:
        return True
    if code in (0xB000, 0xB006, 0xB007):
        return False
    return None
