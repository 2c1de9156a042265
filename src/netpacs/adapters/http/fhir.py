"""FHIR R4 (4.0.1) ImagingStudy at ``/fhir``: read, search, and the CapabilityStatement.

- ``GET /fhir/ImagingStudy/{id}``: the resource id is the Study Instance UID itself (a
  UID is digits and dots, at most 64: a legal FHIR id).
- ``GET /fhir/ImagingStudy?patient.identifier=[system]|value``: a ``searchset`` Bundle
  of the patient's studies, newest first. Also ``identifier=urn:dicom:uid|urn:oid:<uid>``
  (or an accession number without a system), ``_count`` (default 50, at most 500),
  ``_offset`` (paging, as the Bundle's ``next`` link gives it) and ``_format=json``.
  A comma in a value means OR (FHIR R4 3.1.1.5.3). One of ``patient.identifier`` and
  ``identifier`` is required. Any other parameter is refused with 400 (strict
  handling): an EPR must not take a list filtered on a parameter that was ignored.
- ``GET /fhir/DiagnosticReport/{id}`` and ``GET /fhir/DiagnosticReport?...``: the
  radiology report of a study (issue 6), id again the Study Instance UID, searched with
  the same parameters as ImagingStudy. Preliminary and final reports only (a draft is
  not a result); status ``preliminary``, ``final``, or ``appended`` once an addendum
  was added; ``presentedForm`` is the whole text (report and addenda) as text/plain,
  ``conclusion`` the Conclusion (or Impression) section; ``imagingStudy`` refers to
  the ImagingStudy, ``resultsInterpreter`` is the reporter (by name) and ``performer``
  their trust (by ODS code and name).
- ``GET /fhir/metadata``: the CapabilityStatement.

Patient identifier systems (REGION.md: an identifier means nothing without its issuer):

- ``https://fhir.nhs.uk/Id/nhs-number``: the NHS number; matches a Patient ID issued by
  ``NHS`` (or the NHS number OID 2.16.840.1.113883.2.1.4.1);
- ``urn:netpacs:issuer:<issuer>``: a local identifier with its DICOM Issuer of Patient
  ID; for the region's trusts that is the ODS code, so the hospital number RXC0000001 of
  East Sussex Healthcare is ``urn:netpacs:issuer:RXC|RXC0000001``;
- no system (``|value``): a Patient ID stored without an issuer; a bare ``value`` (no
  bar) matches the Patient ID whatever its issuer.

A system netpacs does not know matches nothing: the Bundle is empty and carries an
OperationOutcome saying which systems are known. Each ImagingStudy has its DICOMweb
endpoint (a contained Endpoint, ``dicom-wado-rs``, address ``{base}/dicomweb``),
identifier ``urn:dicom:uid`` ``urn:oid:<uid>`` and the accession number (type ACSN),
and its subject as a logical reference: the NHS number when known, else the hospital
number with its issuer system. ``started`` is Study Date and Time, in the Timezone
Offset From UTC of the object when given, else in UK time (Europe/London).
Errors are OperationOutcome resources with 400, 404 or 406. The resources themselves are
made in :mod:`.fhir_resources`.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Request, Response

from netpacs import __version__
from netpacs.adapters.http import fhir_networks
from netpacs.adapters.http.access import requires
from netpacs.adapters.http.deps import base_url, services
from netpacs.adapters.http.errors import HttpError
from netpacs.adapters.http.fhir_resources import (
    DEFAULT_COUNT,
    DICOM_UID_SYSTEM,
    FHIR_JSON,
    FHIR_ROOT,
    FHIR_VERSION,
    ISSUER_SYSTEM_PREFIX,
    MAX_COUNT,
    NHS_NUMBER_SYSTEM,
    diagnostic_report,
    imaging_study,
)
from netpacs.domain.query import QueryError, QueryTimeout
from netpacs.domain.uids import is_valid_uid
from netpacs.services.access import Capability
from netpacs.services.imaging_study import (
    NHS_NUMBER_ISSUERS,
    ImagingStudyService,
    PatientIdentifier,
    StudyRecord,
)

router = APIRouter(tags=["FHIR"], dependencies=[requires(Capability.QUERY)])

_SEARCH_PARAMETERS = (
    "patient.identifier",
    "identifier",
    "linked",
    fhir_networks.PARAMETER,
    "_count",
    "_offset",
    "_format",
)
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


class FhirError(Exception):
    """An answer as an OperationOutcome: HTTP ``status``, FHIR issue ``code``, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _json(resource: dict[str, Any], status: int = 200) -> Response:
    return Response(
        orjson.dumps(resource),
        status_code=status,
        media_type=f"{FHIR_JSON}; fhirVersion=4.0; charset=utf-8",
    )


def outcome(severity: str, code: str, message: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": message}],
    }


def _error(exc: FhirError) -> Response:
    return _json(outcome("error", exc.code, exc.message), exc.status)


def _check_format(request: Request) -> None:
    """JSON only: ``_format`` and Accept (FHIR R4 http.html#mime-type); else 406."""
    fmt = request.query_params.get("_format")
    if fmt is not None and fmt.strip().lower() not in ("json", FHIR_JSON, "application/json"):
        raise FhirError(406, "not-supported", f"_format={fmt!r}: netpacs answers JSON only")
    accept = request.headers.get("accept", "").lower()
    if accept and fmt is None:
        ranges = [item.split(";")[0].strip() for item in accept.split(",")]
        if not any(r in (FHIR_JSON, "application/json", "*/*", "application/*") for r in ranges):
            raise FhirError(406, "not-supported", f"cannot answer as {accept!r}: {FHIR_JSON} only")


# -- search parameters ---------------------------------------------------------------------


def _token(text: str) -> tuple[str | None, str]:
    """``system|value``, ``|value`` (system ''), or ``value`` (system None)."""
    if "|" in text:
        system, _, value = text.partition("|")
        return system, value
    return None, text


def _values(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",")]
    if not all(values):
        raise FhirError(400, "invalid", f"{text!r} has an empty value")
    return values


def _patient(text: str) -> tuple[PatientIdentifier | None, str | None]:
    """A patient.identifier token as a PatientIdentifier, or a warning if the system is unknown."""
    system, value = _token(text)
    if not value:
        raise FhirError(400, "invalid", f"patient.identifier={text!r} has no value")
    if system is None:
        return PatientIdentifier(value), None
    if system == "":
        return PatientIdentifier(value, ("",)), None
    if system == NHS_NUMBER_SYSTEM:
        return PatientIdentifier(value.replace(" ", ""), NHS_NUMBER_ISSUERS), None
    if system.startswith(ISSUER_SYSTEM_PREFIX) and len(system) > len(ISSUER_SYSTEM_PREFIX):
        return PatientIdentifier(value, (system[len(ISSUER_SYSTEM_PREFIX) :],)), None
    return None, (
        f"identifier system {system!r} is not known here: use {NHS_NUMBER_SYSTEM} or "
        f"{ISSUER_SYSTEM_PREFIX}<issuer> (the trust's ODS code); it matches nothing"
    )


def _number(params: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    text = params.get(name)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise FhirError(400, "invalid", f"{name}={text!r}: a whole number from {low} to {high}")
    return int(text)


def _flag(params: dict[str, str], name: str) -> bool:
    text = params.get(name, "false")
    if text not in ("true", "false"):
        raise FhirError(400, "invalid", f"{name}={text!r}: true or false")
    return text == "true"


def _parameters(request: Request) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in _SEARCH_PARAMETERS:
            raise FhirError(
                400,
                "not-supported",
                f"search parameter {name!r} is not supported; "
                f"ImagingStudy takes {', '.join(_SEARCH_PARAMETERS)}",
            )
        if name in params:
            raise FhirError(400, "not-supported", f"give {name} once (commas for OR)")
        params[name] = value
    if "patient.identifier" not in params and "identifier" not in params:
        raise FhirError(
            400, "invalid", "say whose studies: patient.identifier=system|value is required"
        )
    return params


def _select(service: ImagingStudyService, params: dict[str, str]) -> tuple[list[str], list[str]]:
    """Matching Study Instance UIDs (newest first) and warnings."""
    warnings: list[str] = []
    chosen: list[str] | None = None
    linked = _flag(params, "linked")
    if "patient.identifier" in params:
        found: dict[str, None] = {}
        for text in _values(params["patient.identifier"]):
            patient, warning = _patient(text)
            if warning:
                warnings.append(warning)
            if patient is not None:
                found.update(dict.fromkeys(service.study_uids(patient=patient, linked=linked)))
        chosen = list(found)
    if "identifier" in params:
        found = {}
        for text in _values(params["identifier"]):
            found.update(dict.fromkeys(_by_study_identifier(service, text, warnings)))
        chosen = [u for u in chosen if u in found] if chosen is not None else list(found)
    return chosen or [], warnings


def _by_study_identifier(service: ImagingStudyService, text: str, warnings: list[str]) -> list[str]:
    system, value = _token(text)
    if system == DICOM_UID_SYSTEM or (system is None and value.startswith("urn:oid:")):
        uid = value.removeprefix("urn:oid:")
        return service.study_uids(study_instance_uids=[uid]) if is_valid_uid(uid) else []
    if system is None:
        return service.study_uids(accession_number=value)
    warnings.append(
        f"identifier system {system!r} is not known here: use {DICOM_UID_SYSTEM} "
        "(urn:oid:<Study Instance UID>) or an accession number without a system"
    )
    return []


def _bundle(
    page: list[StudyRecord],
    warnings: list[str],
    params: dict[str, str],
    base: str,
    *,
    total: int,
    offset: int,
    count: int,
    resource_type: str = "ImagingStudy",
    render: Callable[[StudyRecord], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    url = f"{base}{FHIR_ROOT}/{resource_type}"

    def link(relation: str, at: int) -> dict[str, str]:
        query = {**params, "_count": str(count), "_offset": str(at)}
        return {"relation": relation, "url": f"{url}?{urlencode(query)}"}

    links = [link("self", offset)]
    if offset + count < total and count:
        links.append(link("next", offset + count))
    if offset and count:
        links.append(link("previous", max(offset - count, 0)))
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"{url}/{record.study_instance_uid}",
            "resource": render(record) if render else imaging_study(record, base),
            "search": {"mode": "match"},
        }
        for record in page
    ]
    for warning in warnings:
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": outcome("warning", "not-found", warning),
                "search": {"mode": "outcome"},
            }
        )
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "searchset",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "total": total,
        "link": links,
    }
    if entries:
        bundle["entry"] = entries
    return bundle


def _answer(request: Request, produce: Callable[[], dict[str, Any]]) -> Response:
    """The resource ``produce`` makes, or its error as an OperationOutcome. Its questions
    (a search asks two: its matches with their summaries, and their series) are audited
    together, before the answer."""
    try:
        with services(request).imaging_studies.audited_together():
            resource = produce()
        return _json(resource)
    except FhirError as exc:
        return _error(exc)
    except QueryTimeout as exc:
        return _error(FhirError(503, "timeout", str(exc)))
    except QueryError as exc:
        return _error(FhirError(400, "invalid", str(exc)))


@dataclass(frozen=True)
class _Search:
    params: dict[str, str]
    count: int
    offset: int
    service: ImagingStudyService
    uids: list[str]  # the matching studies, newest first
    warnings: list[str]


def _search(request: Request) -> _Search:
    _check_format(request)
    params = _parameters(request)
    count = _number(params, "_count", DEFAULT_COUNT, 0, MAX_COUNT)
    offset = _number(params, "_offset", 0, 0, 10**9)
    service = services(request).imaging_studies
    uids, warnings = _select(service, params)
    return _Search(params, count, offset, service, uids, warnings)


def _read(request: Request, resource_type: str, resource_id: str) -> StudyRecord:
    """The study a read names (404 as ``resource_type`` when there is none to see)."""
    _check_format(request)
    if not _FHIR_ID.fullmatch(resource_id):
        raise FhirError(400, "invalid", f"{resource_id!r} is not a FHIR id")
    service = services(request).imaging_studies
    record = service.study(resource_id) if is_valid_uid(resource_id) else None
    if record is None:
        raise FhirError(404, "not-found", f"no {resource_type}/{resource_id}")
    return record


# -- routes --------------------------------------------------------------------------------


def _add_networks(request: Request, params: dict[str, str], bundle: dict[str, Any]) -> None:
    """The other networks' studies of the NHS number searched (fhir_networks.py)."""
    nhs_number = fhir_networks.nhs_number_searched(params.get("patient.identifier"))
    if nhs_number is None:
        raise FhirError(
            400,
            "invalid",
            f"{fhir_networks.PARAMETER}=true needs patient.identifier="
            f"{NHS_NUMBER_SYSTEM}|<NHS number> (one): other networks are asked by NHS number",
        )
    try:
        entries = fhir_networks.remote_entries(request, nhs_number)
    except HttpError as exc:
        code = "forbidden" if exc.status == 403 else "invalid"
        raise FhirError(exc.status, code, exc.message) from None
    matches = sum(1 for e in entries if e["search"]["mode"] == "match")
    bundle["total"] += matches
    bundle.setdefault("entry", []).extend(entries)


@router.get(f"{FHIR_ROOT}/ImagingStudy", summary="Search ImagingStudy (FHIR R4)")
def search_imaging_study(request: Request) -> Response:
    def produce() -> dict[str, Any]:
        found = _search(request)
        page = found.service.studies(found.uids[found.offset : found.offset + found.count])
        bundle = _bundle(
            page,
            found.warnings,
            found.params,
            base_url(request),
            total=len(found.uids),
            offset=found.offset,
            count=found.count,
        )
        if _flag(found.params, fhir_networks.PARAMETER) and found.offset == 0:
            _add_networks(request, found.params, bundle)
        return bundle

    return _answer(request, produce)


@router.get(f"{FHIR_ROOT}/ImagingStudy/{{resource_id}}", summary="Read ImagingStudy (FHIR R4)")
def read_imaging_study(resource_id: str, request: Request) -> Response:
    return _answer(
        request,
        lambda: imaging_study(_read(request, "ImagingStudy", resource_id), base_url(request)),
    )


@router.get(f"{FHIR_ROOT}/DiagnosticReport", summary="Search DiagnosticReport (FHIR R4)")
def search_diagnostic_report(request: Request) -> Response:
    def produce() -> dict[str, Any]:
        found = _search(request)
        reports = services(request).reports.published(found.uids)
        reported = [u for u in found.uids if u in reports]
        page = found.service.studies(reported[found.offset : found.offset + found.count])
        base, region = base_url(request), services(request).region
        return _bundle(
            page,
            found.warnings,
            found.params,
            base,
            total=len(reported),
            offset=found.offset,
            count=found.count,
            resource_type="DiagnosticReport",
            render=lambda r: diagnostic_report(r, reports[r.study_instance_uid], base, region),
        )

    return _answer(request, produce)


@router.get(
    f"{FHIR_ROOT}/DiagnosticReport/{{resource_id}}", summary="Read DiagnosticReport (FHIR R4)"
)
def read_diagnostic_report(resource_id: str, request: Request) -> Response:
    def produce() -> dict[str, Any]:
        record = _read(request, "DiagnosticReport", resource_id)
        rep = services(request).reports.published([resource_id]).get(resource_id)
        if rep is None:
            raise FhirError(404, "not-found", f"no DiagnosticReport/{resource_id}")
        return diagnostic_report(record, rep, base_url(request), services(request).region)

    return _answer(request, produce)


@router.get(f"{FHIR_ROOT}/metadata", summary="FHIR CapabilityStatement")
def capability_statement(request: Request) -> Response:
    base = base_url(request)
    return _json(
        {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": dt.date.today().isoformat(),
            "publisher": "netpacs",
            "kind": "instance",
            "software": {"name": "netpacs", "version": __version__},
            "implementation": {
                "description": "netpacs regional PACS: ImagingStudy over the image index",
                "url": base + FHIR_ROOT,
            },
            "fhirVersion": FHIR_VERSION,
            "format": ["json"],
            "rest": [
                {
                    "mode": "server",
                    "resource": [
                        {
                            "type": "ImagingStudy",
                            "interaction": [{"code": "read"}, {"code": "search-type"}],
                            "searchParam": [
                                {
                                    "name": "patient",
                                    "type": "reference",
                                    "documentation": (
                                        "Chained only, as patient.identifier=[system]|value. "
                                        f"Systems: {NHS_NUMBER_SYSTEM}, "
                                        f"{ISSUER_SYSTEM_PREFIX}<ODS code>; none for any issuer."
                                    ),
                                },
                                {
                                    "name": "linked",
                                    "type": "token",
                                    "documentation": (
                                        "netpacs: true to find, for a hospital number, the "
                                        "patient's studies at every trust (identities linked "
                                        "by NHS number); an NHS number always finds them."
                                    ),
                                },
                                {
                                    "name": "identifier",
                                    "type": "token",
                                    "documentation": (
                                        f"{DICOM_UID_SYSTEM}|urn:oid:<Study Instance UID>, "
                                        "or an accession number without a system."
                                    ),
                                },
                            ],
                        },
                        {
                            "type": "DiagnosticReport",
                            "interaction": [{"code": "read"}, {"code": "search-type"}],
                            "documentation": (
                                "The radiology report of a study (id: Study Instance UID); "
                                "searched with the parameters of ImagingStudy."
                            ),
                        },
                    ],
                }
            ],
        }
    )
