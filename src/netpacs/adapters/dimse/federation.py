"""C-FIND from a workstation across the other networks (issue 14).

A workstation named in NETPACS_FEDERATION_FIND_AES that sends a Study Root or Patient
Root C-FIND at STUDY level with one Patient ID and Issuer of Patient ID ``NHS`` gets,
after our matches, the studies the neighbouring networks hold (the federation service
decides who may, and audits). Each remote match carries the keys the workstation asked
for that the network answered, with where it is: Retrieve AE Title (0008,0054) of a
DIMSE network, or Retrieve URL (0008,1190) of our pass-through of a DICOMweb network
(PS3.4 C.4.1.1.3.2). Networks that did not answer are named in the Error Comment of a
Warning final status (0xB000), as an edge node says its answer came from its cache.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from netpacs.domain.federation import RETRIEVE_AE_TITLE, RETRIEVE_URL
from netpacs.domain.networks import Protocol
from netpacs.domain.nhs_number import is_nhs_issuer
from netpacs.domain.query import QueryLevel
from netpacs.services.federation import FederatedSearch, FederationRefused

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
        elif network is not None and network.protocol is Protocol.DICOMWEB and public_url:
            url = f"{public_url}/dicomweb/networks/{quote(network.name, safe='')}"
            url += f"/studies/{study.study_instance_uid}"
            match[RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
        matches.append(match)
    failed = ", ".join(name for name, _ in answer.warnings)
    return matches, (f"no full answer from {failed}"[:_MAX_COMMENT] if failed else None)
