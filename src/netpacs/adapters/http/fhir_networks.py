"""FHIR ImagingStudy of the other networks (issue 14): ``_include-networks=true`` with
``patient.identifier=https://fhir.nhs.uk/Id/nhs-number|<NHS number>`` adds the studies
the neighbouring networks hold to the search's first page.

Each remote ImagingStudy carries its own Endpoint (as in IHE MADO): our pass-through of
the DICOMweb network that holds it (``/dicomweb/networks/<name>``), so an EPR links to
each study whoever holds it; a study of a DIMSE network names the network and its AE in
a note (no DICOMweb endpoint reaches it). A network that did not answer is an
OperationOutcome warning in the Bundle.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

from fastapi import Request

from netpacs.adapters.http.deps import base_url, services
from netpacs.adapters.http.federation import NETWORKS_ROOT, ask_networks
from netpacs.adapters.http.fhir_resources import (
    DCM_SYSTEM,
    DICOM_UID_SYSTEM,
    ENDPOINT_TYPE_SYSTEM,
    NHS_NUMBER_SYSTEM,
    started,
)
from netpacs.domain.dicom.header import first_int, first_str
from netpacs.domain.federation import RemoteStudy
from netpacs.domain.networks import Protocol

PARAMETER = "_include-networks"


def nhs_number_searched(patient_identifier: str | None) -> str | None:
    """The NHS number of a ``patient.identifier`` token naming exactly one, else None."""
    if not patient_identifier or "," in patient_identifier:
        return None
    system, _, value = patient_identifier.partition("|")
    return value.replace(" ", "") if system == NHS_NUMBER_SYSTEM and value else None


def _resource(request: Request, study: RemoteStudy) -> dict[str, Any]:
    d = study.dataset
    uid = study.study_instance_uid
    network = services(request).region.network(study.network)
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": uid,
        "identifier": [{"use": "official", "system": DICOM_UID_SYSTEM, "value": f"urn:oid:{uid}"}],
        "status": "available",
        "subject": {
            "identifier": {"system": NHS_NUMBER_SYSTEM, "value": first_str(d, "00100020")},
            "display": first_str(d, "00100010").replace("^", " ").strip() or None,
        },
        "note": [{"text": f"Held by the {study.network} network (not stored here)"}],
    }
    if not resource["subject"]["display"]:
        del resource["subject"]["display"]
    if network is not None and network.protocol is Protocol.DICOMWEB:
        resource["contained"] = [
            {
                "resourceType": "Endpoint",
                "id": "dicomweb",
                "status": "active",
                "connectionType": {"system": ENDPOINT_TYPE_SYSTEM, "code": "dicom-wado-rs"},
                "name": f"{study.network} DICOMweb (through netpacs)",
                "payloadType": [{"text": "DICOM"}],
                "payloadMimeType": ["application/dicom"],
                "address": f"{base_url(request)}{NETWORKS_ROOT}/{quote(study.network, safe='')}",
            }
        ]
        resource["endpoint"] = [{"reference": "#dicomweb"}]
    elif network is not None and network.dimse is not None:
        resource["note"][0]["text"] += f"; DICOM AE {network.dimse.ae_title}"
    modalities = (d.get("00080061") or {}).get("Value", [])
    if modalities:
        resource["modality"] = [{"system": DCM_SYSTEM, "code": str(m)} for m in modalities]
    when = started(first_str(d, "00080020"), first_str(d, "00080030"), "")
    if when:
        resource["started"] = when
    for tag, name in (("00201206", "numberOfSeries"), ("00201208", "numberOfInstances")):
        count = first_int(d, tag)
        if count is not None:
            resource[name] = count
    if first_str(d, "00081030"):
        resource["description"] = first_str(d, "00081030")
    return resource


def remote_entries(request: Request, nhs_number: str) -> list[dict[str, Any]]:
    """Bundle entries: the networks' ImagingStudy resources, then a warning outcome per
    network that did not answer fully (raises the HTTP errors of :func:`ask_networks`)."""
    answer = ask_networks(request, nhs_number)
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": _resource(request, s),
            "search": {"mode": "match"},
        }
        for s in answer.studies
    ]
    problems = [(name, why) for name, why in answer.warnings]
    if answer.refused:
        problems.append(("other networks", answer.refused))
    for name, why in problems:
        issue = {"severity": "warning", "code": "transient", "diagnostics": f"{name}: {why}"}
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [issue],
                },
                "search": {"mode": "outcome"},
            }
        )
    return entries
