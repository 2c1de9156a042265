"""C-FIND from a workstation across the other networks (issue 14).

A workstation named in NETPACS_FEDERATION_FIND_AES that sends a Study Root or Patient
Root C-FIND at STUDY level with one Patient ID and Issuer of Patient ID ``NHS`` gets,
after our matches, the studies the neighbouring networks hold (the federation service
decides who may, and audits). Each remote match carries the keys the workstation asked
for that the network answered, with where it is: Retrieve AE Title (0008,0054) of a
DIMSE network, and Retrieve URL (0008,1190) of our pass-through (a DICOMweb network)
or of our federation cache (a DIMSE network) (PS3.4 C.4.1.1.3.2). Networks that did
not answer are named in the Error Comment of a Warning final status (0xB000), as an
edge node says its answer came from its cache.

A DIMSE network's C-STOREs of a study we C-MOVEd from it to our own AE title go to the
federation cache (services.federation.arrivals): :func:`c_store_arrival`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pydicom import dcmread
from pynetdicom import AE

from netpacs.adapters.dimse import commands as c
from netpacs.adapters.dimse import status as st
from netpacs.adapters.dimse.requestor import associate
from netpacs.adapters.dimse.scu import DIMSE_TIMEOUT
from netpacs.domain.federation import RETRIEVE_AE_TITLE, RETRIEVE_URL, PeerAnswerError
from netpacs.domain.nhs_number import is_nhs_issuer
from netpacs.domain.query import QueryLevel
from netpacs.domain.region import ApplicationEntity
from netpacs.services.access import Capability
from netpacs.services.access_policy import Refusal
from netpacs.services.federation import (
    FederatedSearch,
    FederationRefused,
    MoveArrivals,
    RemoteCache,
)
from netpacs.services.spool import Spool

if TYPE_CHECKING:
    from netpacs.adapters.dimse.handlers import AssociationHandlers
    from netpacs.adapters.dimse.message import Message

log = logging.getLogger(__name__)

_PATIENT_ID, _ISSUER, _LEVEL = "00100020", "00100021", "00080052"
_MAX_COMMENT = 64  # Error Comment is LO


def _single(ident: dict[str, Any], tag: str) -> str | None:
    values = (ident.get(tag) or {}).get("Value") or []
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    value = values[0].strip()
    return value if value and not any(c in value for c in "*?\\") else None


def remote_matches(
    search: FederatedSearch | None,
    ident: dict[str, Any],
    level: QueryLevel,
    *,
    public_url: str | None,
) -> tuple[list[dict[str, Any]], str | None] | None:
    """The networks' matches for a workstation's C-FIND and an Error Comment naming the
    networks that did not answer; None when the networks are not asked."""
    if search is None or level is not QueryLevel.STUDY or not search.asks_for_find():
        return None
    number, issuer = _single(ident, _PATIENT_ID), _single(ident, _ISSUER)
    if number is None or issuer is None or not is_nhs_issuer(issuer):
        return None
    try:
        answer = search.search(number)
    except (ValueError, FederationRefused) as exc:
        return [], f"networks not asked: {exc}"[:_MAX_COMMENT]
    wanted = set(ident) | {_LEVEL, RETRIEVE_AE_TITLE, RETRIEVE_URL}
    matches = []
    for study in answer.studies:
        match = {tag: el for tag, el in study.dataset.items() if tag in wanted}
        match[_LEVEL] = {"vr": "CS", "Value": ["STUDY"]}
        network = next((n for n in search.networks if n.name == study.network), None)
        if network is not None and network.dimse is not None:
            match[RETRIEVE_AE_TITLE] = {"vr": "AE", "Value": [network.dimse.ae_title]}
        if network is not None and public_url:  # DIMSE: opened from the federation cache
            url = f"{public_url}/dicomweb/networks/{quote(network.name, safe='')}"
            url += f"/studies/{study.study_instance_uid}"
            match[RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
        matches.append(match)
    failed = ", ".join(name for name, _ in answer.warnings)
    return matches, (f"no full answer from {failed}"[:_MAX_COMMENT] if failed else None)


def move_remote(
    cache: RemoteCache | None,
    ident: dict[str, Any],
    level: QueryLevel,
    destination: ApplicationEntity,
    *,
    our_ae_title: str,
    originator: tuple[str, int],
) -> tuple[int, int] | str | None:
    """C-MOVE of a study a DIMSE network holds, which the calling workstation found with
    its C-FIND across the networks: retrieved into the federation cache (services.
    federation.cache), then sent to ``destination``. (completed, failed) sub-operations;
    a string saying why nothing was sent; None when the study is no such remote study."""
    uid = _single(ident, "0020000D")
    if cache is None or level is not QueryLevel.STUDY or uid is None:
        return None
    if not cache.serves_caller():
        return None
    network = cache.holder(uid)
    if network is None:
        return None
    try:
        files = cache.files(network, uid, f"sent to {destination.ae_title}")
    except (FederationRefused, PeerAnswerError) as exc:
        return f"{network.name}: {exc}"[:_MAX_COMMENT]
    return send_files(destination, files, our_ae_title=our_ae_title, originator=originator)


def send_files(
    destination: ApplicationEntity,
    files: list[Path],
    *,
    our_ae_title: str,
    originator: tuple[str, int],
) -> tuple[int, int]:
    """C-STORE Part 10 files as they are to ``destination``: (completed, failed)."""
    syntaxes: dict[str, set[str]] = {}
    for path in files:
        meta = dcmread(path, stop_before_pixels=True).file_meta
        syntaxes.setdefault(str(meta.MediaStorageSOPClassUID), set()).add(
            str(meta.TransferSyntaxUID)
        )
    ae = AE(ae_title=our_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = DIMSE_TIMEOUT
    for sop_class, transfer in list(syntaxes.items())[:128]:
        ae.add_requested_context(sop_class, sorted(transfer))
    assert destination.port is not None
    assoc = associate(ae, destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise ConnectionError(f"could not associate with {destination.ae_title}")
    completed = failed = 0
    try:
        for path in files:
            try:
                status = assoc.send_c_store(
                    path, originator_aet=originator[0], originator_id=originator[1]
                )
            except Exception as exc:
                log.warning("C-STORE of a remote object to %s failed: %s", destination, exc)
                status = None
            if getattr(status, "Status", None) in (0x0000, 0xB000, 0xB006, 0xB007):
                completed += 1
            else:
                failed += 1
    finally:
        if assoc.is_established:
            assoc.release()
    return completed, failed


async def c_store_arrival(h: AssociationHandlers, msg: Message, arrivals: MoveArrivals) -> None:
    """A C-STORE from a DIMSE network's AE: kept in the federation cache when it is part
    of a C-MOVE we asked of that network; else refused (Not Authorized, audited)."""
    partner = h.principal.partner
    assert partner is not None
    cmd = msg.command
    sop_class = cmd.get_str(c.AFFECTED_SOP_CLASS_UID)
    sop_instance = cmd.get_str(c.AFFECTED_SOP_INSTANCE_UID)
    ctx = h.assoc.contexts[msg.context_id]
    status, why = st.SUCCESS, None
    if sop_class != ctx.abstract_syntax:
        status, why = st.SOP_CLASS_NOT_SUPPORTED, "SOP Class differs from the presentation context"
    elif not arrivals.expects(partner.network):
        status = st.NOT_AUTHORIZED
        why = f"{partner.network} may store only a study we asked it to move to us"
        await h._run(h.s.access.record, Refusal(h.principal, Capability.STORE, why))
    elif msg.data is None:
        status, why = st.OUT_OF_RESOURCES, msg.refused or "no data set"
    else:
        data = msg.data
        chunks = data.chunks() if isinstance(data, Spool) else [data]
        why = await h._run(
            arrivals.store,
            partner.network,
            chunks,
            transfer_syntax_uid=ctx.transfer_syntax,
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
        )
        if why is not None:
            status = st.OUT_OF_RESOURCES if "limit" in why else st.CANNOT_UNDERSTAND
            log.warning("C-STORE from %s not kept: %s", partner.network, why)
    h._reply(
        msg, c.C_STORE_RSP, status, sop_instance_uid=sop_instance, comment=why[:64] if why else None
    )
