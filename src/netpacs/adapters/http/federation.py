"""The federation gateway over HTTP (issue 14): other networks' studies in a QIDO-RS
answer (``includenetworks=true``), and the names of networks that did not answer as
``Warning`` values (PS3.18 8.3.3.4; RFC 7234 5.5 warn-code 299).

A remote study's RetrieveURL (0008,1190) is our pass-through of the network that holds
it, ``/dicomweb/networks/<name>/studies/<uid>`` (a DICOMweb network), and its Retrieve
AE Title (0008,0054) the network's AE (a DIMSE network): each answer says which
network holds it.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from typing import Any
from urllib.parse import quote

from fastapi import Request

from netpacs.adapters.http.deps import DICOMWEB_ROOT, base_url, services
from netpacs.adapters.http.errors import HttpError
from netpacs.domain.dicom.header import first_str
from netpacs.domain.federation import (
    ISSUER_OF_PATIENT_ID,
    RETRIEVE_AE_TITLE,
    RETRIEVE_URL,
    FederatedAnswer,
    RemoteStudy,
)
from netpacs.domain.nhs_number import is_nhs_issuer, is_valid
from netpacs.domain.query import QueryLevel
from netpacs.services.federation import FederationRefused

NETWORKS_ROOT = f"{DICOMWEB_ROOT}/networks"


def nhs_number_asked(request: Request, level: QueryLevel) -> str:
    """The NHS number an ``includenetworks=true`` search asks for; 400 otherwise."""
    params = request.query_params
    if level is not QueryLevel.STUDY:
        raise HttpError(400, "includenetworks is for a search of studies (/dicomweb/studies)")
    numbers = params.getlist("PatientID") or params.getlist("00100020")
    issuers = params.getlist("IssuerOfPatientID") or params.getlist("00100021")
    if len(numbers) != 1 or len(issuers) != 1 or not is_nhs_issuer(issuers[0].strip()):
        raise HttpError(
            400,
            "includenetworks=true needs PatientID=<NHS number>&IssuerOfPatientID=NHS: "
            "other networks are asked by NHS number only",
        )
    return numbers[0].strip()


def warning(network: str, why: str) -> str:
    """A ``Warning`` header value naming a network (quotes and controls removed)."""
    text = "".join(c for c in f"{network}: {why}" if c.isprintable() and c not in '"\\')
    return f'299 netpacs "{text[:200]}"'


def ask_networks(request: Request, nhs_number: str) -> FederatedAnswer:
    """The federated search for the request's user: 400 for a number that is not an NHS
    number, 403 when the user may not ask about this patient."""
    svc = services(request)
    if svc.federation is None:
        return FederatedAnswer(nhs_number, refused="no other networks are configured")
    try:
        return svc.federation.search(nhs_number)
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None
    except FederationRefused as exc:
        raise HttpError(403, f"other networks not asked: {exc}") from None


def remote_dataset(request: Request, study: RemoteStudy) -> dict[str, Any]:
    """A remote study as a QIDO-RS match, with where to retrieve it."""
    svc = services(request)
    dataset = dict(study.dataset)
    network = svc.region.network(study.network)
    # Opened through us: passed through (DICOMweb), or from the federation cache (DIMSE).
    if network is not None and svc.remote is not None and svc.remote.openable(network.name):
        url = (
            f"{base_url(request)}{NETWORKS_ROOT}/{quote(network.name, safe='')}"
            f"/studies/{study.study_instance_uid}"
        )
        dataset[RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
    if network is not None and network.dimse is not None:
        dataset[RETRIEVE_AE_TITLE] = {"vr": "AE", "Value": [network.dimse.ae_title]}
    dataset.setdefault(ISSUER_OF_PATIENT_ID, {"vr": "LO"})
    return dataset


def federated_in_background(
    request: Request, nhs_number: str
) -> cf.Future[tuple[list[dict[str, Any]], list[str]]]:
    """:func:`federated_matches` started in a thread of its own (its errors are raised
    by ``result()``)."""
    future: cf.Future[tuple[list[dict[str, Any]], list[str]]] = cf.Future()

    def run() -> None:
        try:
            future.set_result(federated_matches(request, nhs_number))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name="federated-qido", daemon=True).start()
    return future


def federated_matches(request: Request, nhs_number: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The other networks' studies of ``nhs_number`` as QIDO-RS matches, and a
    ``Warning`` value per network that did not answer fully."""
    answer = ask_networks(request, nhs_number)
    if answer.refused:
        return [], [warning("other networks", answer.refused)]
    matches = [remote_dataset(request, s) for s in answer.studies]
    return matches, [warning(name, why) for name, why in answer.warnings]


def with_network_priors(request: Request, answer: dict[str, Any]) -> None:
    """The report page's priors (``answer``, services.reporting) with the other
    networks' studies of the patient, newest first, and ``networks_note`` naming the
    networks that did not answer (nothing when no network is configured, or the
    patient has no valid NHS number)."""
    svc = services(request)
    nhs_number = str(answer.get("study", {}).get("nhs_number") or "")
    if svc.federation is None or not is_valid(nhs_number):
        return
    try:
        found = svc.federation.search(nhs_number)
    except (ValueError, FederationRefused) as exc:
        answer["networks_note"] = f"Other networks not asked: {exc}."
        return
    current = answer.get("study", {}).get("study_instance_uid")
    remote = [
        {
            "study_instance_uid": s.study_instance_uid,
            "study_date": first_str(s.dataset, "00080020"),
            "modality": ", ".join(
                str(m) for m in (s.dataset.get("00080061") or {}).get("Value", [])
            ),
            "description": first_str(s.dataset, "00081030"),
            "trust": None,
            "network": s.network,
            "report_status": None,
        }
        for s in found.studies
        if s.study_instance_uid != current
    ]
    priors = list(answer.get("priors", [])) + remote
    priors.sort(key=lambda p: str(p.get("study_date") or ""), reverse=True)
    answer["priors"] = priors
    failed = "; ".join(f"{name} ({why})" for name, why in found.warnings)
    if failed:
        answer["networks_note"] = f"Other networks that did not answer fully: {failed}."
