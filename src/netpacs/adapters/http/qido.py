"""QIDO-RS (PS3.18 10.6): search studies, series and instances, answered from the index.

A search's query parameters (PS3.18 8.3.4) become a C-FIND identifier in DICOM JSON
and go to the same :class:`~netpacs.services.query.QueryService` as C-FIND, so both
match alike (PS3.4 C.2.2.2). Attributes are named by keyword (``PatientName``) or tag
(``00100010``), with ``.`` between the levels of a sequence; UIDs may be listed with
commas. Each answer carries the default attributes of PS3.18 Table 10.6.3-3/4/5 for
its level (and the levels above, for searches not scoped to a study or series), the
``includefield`` ones, and RetrieveURL (0008,1190) pointing to our WADO-RS.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request, Response
from pydicom.datadict import dictionary_VR, tag_for_keyword

from netpacs.adapters.http.access import requires
from netpacs.adapters.http.deps import DICOMWEB_ROOT, base_url, check_url_uids, services
from netpacs.adapters.http.errors import HttpError
from netpacs.adapters.http.federation import federated_in_background, nhs_number_asked
from netpacs.domain.dicom.header import first_str
from netpacs.domain.query import QueryError, QueryLevel, QueryModel, QueryTimeout
from netpacs.services.access import Capability

router = APIRouter(tags=["QIDO-RS"], dependencies=[requires(Capability.QUERY)])

DICOM_JSON = "application/dicom+json"
JSON = "application/json"
# Without a limit, a search answers at most this many matches, and says so (PS3.18 8.3.4.4).
MAX_RESULTS = 10_000
_TOO_MANY = (
    '299 netpacs "The number of results exceeded the maximum supported by the server. '
    'Additional results can be requested."'
)

_STUDY_UID, _SERIES_UID, _SOP_UID = "0020000D", "0020000E", "00080018"
_RETRIEVE_URL = "00081190"
_QUERY_RETRIEVE_LEVEL = "00080052"

# PS3.18 Table 10.6.3-3 (with IssuerOfPatientID and StudyDescription, which every
# study list shows).
STUDY_DEFAULTS = (
    "00080020",  # StudyDate
    "00080030",  # StudyTime
    "00080050",  # AccessionNumber
    "00080056",  # InstanceAvailability
    "00080061",  # ModalitiesInStudy
    "00080090",  # ReferringPhysicianName
    "00081030",  # StudyDescription
    "00100010",  # PatientName
    "00100020",  # PatientID
    "00100021",  # IssuerOfPatientID
    "00100030",  # PatientBirthDate
    "00100040",  # PatientSex
    "0020000D",  # StudyInstanceUID
    "00200010",  # StudyID
    "00201206",  # NumberOfStudyRelatedSeries
    "00201208",  # NumberOfStudyRelatedInstances
)
# PS3.18 Table 10.6.3-4 (with SeriesDate and SeriesTime).
SERIES_DEFAULTS = (
    "00080021",  # SeriesDate
    "00080031",  # SeriesTime
    "00080056",  # InstanceAvailability
    "00080060",  # Modality
    "0008103E",  # SeriesDescription
    "0020000E",  # SeriesInstanceUID
    "00200011",  # SeriesNumber
    "00201209",  # NumberOfSeriesRelatedInstances
    "00400244",  # PerformedProcedureStepStartDate
    "00400245",  # PerformedProcedureStepStartTime
    "00400275",  # RequestAttributesSequence
)
# PS3.18 Table 10.6.3-5.
INSTANCE_DEFAULTS = (
    "00080016",  # SOPClassUID
    "00080018",  # SOPInstanceUID
    "00080056",  # InstanceAvailability
    "00200013",  # InstanceNumber
    "00280008",  # NumberOfFrames
    "00280010",  # Rows
    "00280011",  # Columns
    "00280100",  # BitsAllocated
)
# includefield=all adds what else the index keeps for the level.
_ALL_EXTRA = {
    QueryLevel.STUDY: ("00080062",),  # SOPClassesInStudy
    QueryLevel.SERIES: ("00080080", "00081010", "00180015"),  # Institution, Station, Body Part
    QueryLevel.IMAGE: ("00080023", "00080033", "00083002"),  # Content Date/Time, Syntax
}
_DEFAULTS = {
    QueryLevel.STUDY: STUDY_DEFAULTS,
    QueryLevel.SERIES: SERIES_DEFAULTS,
    QueryLevel.IMAGE: INSTANCE_DEFAULTS,
}
_LIST_VRS = frozenset({"UI"})  # comma-separated lists (PS3.18 8.3.4.1)
_TAG = re.compile(r"[0-9A-Fa-f]{8}")


# -- content negotiation -----------------------------------------------------------------


def negotiate_json(request: Request) -> str:
    """The JSON media type to answer with, from the Accept header; 406 if none fits."""
    accept = request.headers.get("accept")
    if not accept:
        return DICOM_JSON
    acceptable: set[str] = set()
    for item in accept.split(","):
        mime, *params = (p.strip() for p in item.split(";"))
        if any(re.fullmatch(r"q\s*=\s*0(\.0*)?", p) for p in params):
            continue
        acceptable.add(mime.lower())
    if acceptable & {DICOM_JSON, "*/*", "application/*"}:
        return DICOM_JSON
    if JSON in acceptable:
        return JSON
    raise HttpError(406, f"cannot answer as {accept!r}: netpacs answers {DICOM_JSON} or {JSON}")


# -- query parameters to an identifier ---------------------------------------------------


def _tag(name: str, whole: str) -> str:
    if _TAG.fullmatch(name):
        return name.upper()
    tag = tag_for_keyword(name)
    if tag is None:
        raise HttpError(400, f"unknown attribute {whole!r}: not a DICOM keyword or tag (GGGGEEEE)")
    return f"{tag:08X}"


def _vr(tag: str) -> str:
    try:
        return str(dictionary_VR(int(tag, 16))).split(" or ")[0]
    except KeyError:
        return "UN"


def _path(name: str) -> list[str]:
    """``Keyword`` or ``00100010`` or ``Sequence.Keyword`` as a list of tags."""
    if not name or any(not part for part in name.split(".")):
        raise HttpError(400, f"attribute {name!r} is not valid")
    tags = [_tag(part, name) for part in name.split(".")]
    for tag in tags[:-1]:
        if _vr(tag) != "SQ":
            raise HttpError(400, f"{name!r}: {tag} is not a sequence")
    return tags


def _node(identifier: dict[str, Any], tags: list[str]) -> dict[str, Any]:
    """The element for ``tags`` in ``identifier``, made (empty) where missing."""
    level = identifier
    for tag in tags[:-1]:
        element = level.setdefault(tag, {"vr": "SQ"})
        items = element.setdefault("Value", [{}])
        level = items[0]
    found: dict[str, Any] = level.setdefault(tags[-1], {"vr": _vr(tags[-1])})
    return found


def _add_values(element: dict[str, Any], value: str) -> None:
    if not value:
        return  # an empty value is universal matching: a return key
    values: list[str] = element.setdefault("Value", [])
    if element.get("vr") in _LIST_VRS:
        values.extend(v.strip() for v in value.replace(",", "\\").split("\\") if v.strip())
    else:
        values.append(value)


def _identifier(
    params: Iterable[tuple[str, str]],
    includefield: list[str] | None,
    level: QueryLevel,
    scope: dict[str, str],
) -> dict[str, Any]:
    identifier: dict[str, Any] = {}
    for path in _return_keys(level, scope, includefield):
        _node(identifier, path)
    for name, value in params:
        if name in _RESERVED:
            continue
        tags = _path(name)
        if len(tags) == 1 and tags[0] in scope:
            raise HttpError(400, f"{name} is given by the URL; it cannot also be a parameter")
        element = _node(identifier, tags)
        _add_values(element, value)
    for tag, uid in scope.items():
        identifier[tag] = {"vr": "UI", "Value": [uid]}
    return identifier


def _return_keys(
    level: QueryLevel, scope: dict[str, str], includefield: list[str] | None
) -> list[list[str]]:
    """Default keys of the level, and of the levels above that the URL leaves open."""
    keys = list(_DEFAULTS[level])
    if level is not QueryLevel.STUDY and _STUDY_UID not in scope:
        keys += STUDY_DEFAULTS
    if level is QueryLevel.IMAGE and _SERIES_UID not in scope:
        keys += SERIES_DEFAULTS
    keys.append(_STUDY_UID)  # for RetrieveURL
    if level is not QueryLevel.STUDY:
        keys.append(_SERIES_UID)
    paths = [[tag] for tag in dict.fromkeys(keys)]
    for value in includefield or ():
        for field in (f.strip() for f in value.split(",")):
            if field == "all":
                paths += [[tag] for tag in _ALL_EXTRA[level]]
                if level is not QueryLevel.STUDY:
                    paths += [[tag] for tag in _ALL_EXTRA[QueryLevel.STUDY]]
            elif field:
                paths.append(_path(field))
    return paths


_RESERVED = frozenset(
    {"limit", "offset", "fuzzymatching", "includefield", "linked", "includenetworks"}
)


# -- answers -----------------------------------------------------------------------------


def _with_urls(matches: list[dict[str, Any]], level: QueryLevel, root: str) -> None:
    for match in matches:
        match.pop(_QUERY_RETRIEVE_LEVEL, None)  # a C-FIND attribute, not one of QIDO-RS
        url = f"{root}/studies/{first_str(match, _STUDY_UID)}"
        if level is not QueryLevel.STUDY:
            url += f"/series/{first_str(match, _SERIES_UID)}"
        if level is QueryLevel.IMAGE:
            url += f"/instances/{first_str(match, _SOP_UID)}"
        match[_RETRIEVE_URL] = {"vr": "UR", "Value": [url]}


def _search(
    request: Request,
    level: QueryLevel,
    scope: dict[str, str],
    *,
    limit: int | None,
    offset: int,
    includefield: list[str] | None,
    linked: bool = False,
    includenetworks: bool = False,
) -> Response:
    media_type = negotiate_json(request)
    check_url_uids(Study=scope.get(_STUDY_UID), Series=scope.get(_SERIES_UID))
    identifier = _identifier(request.query_params.multi_items(), includefield, level, scope)
    nhs_number = nhs_number_asked(request, level) if includenetworks else None
    # The networks are asked while we search our own archive (our time is then hidden
    # behind the slowest network's).
    remote = federated_in_background(request, nhs_number) if nhs_number else None
    svc = services(request)
    # A larger limit is answered with at most MAX_RESULTS and a Warning (PS3.18 8.3.4.4).
    capped = limit is None or limit > MAX_RESULTS
    wanted = MAX_RESULTS + 1 if capped else limit
    warnings: list[str] = []
    try:
        if svc.edge_read is not None:  # an edge node: the core answers, else the cache
            answer = svc.edge_read.find(
                svc.query,
                identifier,
                level=level,
                model=QueryModel.STUDY_ROOT,
                limit=wanted,
                offset=offset,
                linked=linked,
                interface="qido-rs",
            )
            matches = answer.matches
            if answer.fallback is not None:
                warnings.append(answer.fallback.warning(svc.edge_read.zone))
        else:
            found = svc.query.find(
                identifier,
                level=level,
                model=QueryModel.STUDY_ROOT,
                limit=wanted,
                offset=offset,
                linked=linked,
                interface="qido-rs",
            )
            matches = list(found)
    except QueryTimeout as exc:
        raise HttpError(503, str(exc)) from None
    except QueryError as exc:
        raise HttpError(400, str(exc)) from None
    if capped and len(matches) > MAX_RESULTS:
        del matches[MAX_RESULTS:]
        warnings.append(_TOO_MANY)
    _with_urls(matches, level, base_url(request) + DICOMWEB_ROOT)
    if remote is not None:
        remote_matches, remote_warnings = remote.result()
        matches += remote_matches
        warnings += remote_warnings
    headers = {"Warning": ", ".join(warnings)} if warnings else None
    return Response(orjson.dumps(matches), media_type=media_type, headers=headers)


# -- routes ------------------------------------------------------------------------------

Limit = Annotated[int | None, Query(ge=0, description="at most this many matches")]
Offset = Annotated[int, Query(ge=0, le=2**62, description="skip this many matches first")]
Fuzzy = Annotated[bool, Query(description="ignored: matching is never fuzzy")]
IncludeField = Annotated[
    list[str] | None,
    Query(description="more attributes to return (keyword or tag, comma-separated, or all)"),
]
Linked = Annotated[
    bool,
    Query(
        description="netpacs: a PatientID with its IssuerOfPatientID also matches the "
        "patient's hospital numbers at other trusts (linked by NHS number)"
    ),
]


IncludeNetworks = Annotated[
    bool,
    Query(
        description="netpacs: with PatientID=<NHS number>&IssuerOfPatientID=NHS, also the "
        "studies the neighbouring networks hold (docs/interfaces.md, Federation)"
    ),
]


@router.get(f"{DICOMWEB_ROOT}/studies", summary="Search for studies (QIDO-RS)")
def search_studies(
    request: Request,
    limit: Limit = None,
    offset: Offset = 0,
    fuzzymatching: Fuzzy = False,
    includefield: IncludeField = None,
    linked: Linked = False,
    includenetworks: IncludeNetworks = False,
) -> Response:
    return _search(
        request,
        QueryLevel.STUDY,
        {},
        limit=limit,
        offset=offset,
        includefield=includefield,
        linked=linked,
        includenetworks=includenetworks,
    )


@router.get(f"{DICOMWEB_ROOT}/series", summary="Search for series")
def search_series(
    request: Request,
    limit: Limit = None,
    offset: Offset = 0,
    fuzzymatching: Fuzzy = False,
    includefield: IncludeField = None,
    linked: Linked = False,
) -> Response:
    return _search(
        request,
        QueryLevel.SERIES,
        {},
        limit=limit,
        offset=offset,
        includefield=includefield,
        linked=linked,
    )


@router.get(f"{DICOMWEB_ROOT}/studies/{{study}}/series", summary="Search for series of a study")
def search_study_series(
    request: Request,
    study: str,
    limit: Limit = None,
    offset: Offset = 0,
    fuzzymatching: Fuzzy = False,
    includefield: IncludeField = None,
    linked: Linked = False,
) -> Response:
    scope = {_STUDY_UID: study}
    return _search(
        request,
        QueryLevel.SERIES,
        scope,
        limit=limit,
        offset=offset,
        includefield=includefield,
        linked=linked,
    )


@router.get(f"{DICOMWEB_ROOT}/instances", summary="Search for instances")
def search_instances(
    request: Request,
    limit: Limit = None,
    offset: Offset = 0,
    fuzzymatching: Fuzzy = False,
    includefield: IncludeField = None,
    linked: Linked = False,
) -> Response:
    return _search(
        request,
        QueryLevel.IMAGE,
        {},
        limit=limit,
        offset=offset,
        includefield=includefield,
        linked=linked,
    )


@router.get(
    f"{DICOMWEB_ROOT}/studies/{{study}}/instances", summary="Search for instances of a study"
)
def search_study_instances(
    request: Request,
    study: str,
    limit: Limit = None,
    offset: Offset = 0,
    fuzzymatching: Fuzzy = False,
    includefield: IncludeField = None,
    linked: Linked = False,
) -> Response:
    scope = {_STUDY_UID: study}
    return _search(
        request,
        QueryLevel.IMAGE,
        scope,
        limit=limit,
        offset=offset,
        includefield=includefield,
        linked=linked,
    )


@router.get(
    f"{DICOMWEB_ROOT}/studies/{{study}}/series/{{series}}/instances",
    summary="Search for instances of a series",
)
def search_series_instances(
    request: Request,
    study: str,
    series: str,
    limit: Limit = None,
    offset: Offset = 0,
    fuzzymatching: Fuzzy = False,
    includefield: IncludeField = None,
    linked: Linked = False,
) -> Response:
    scope = {_STUDY_UID: study, _SERIES_UID: series}
    return _search(
        request,
        QueryLevel.IMAGE,
        scope,
        limit=limit,
        offset=offset,
        includefield=includefield,
        linked=linked,
    )
