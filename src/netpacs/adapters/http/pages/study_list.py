"""The study list page: ``/studies`` (and ``/``), each study linked to the viewer.

Plain server-rendered HTML with a little inline CSS: no scripts, nothing fetched
from elsewhere. Filters come from the query string and are matched by the query
service as C-FIND keys (a name without wild cards matches as a prefix).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, replace
from typing import Annotated
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from netpacs.adapters.http.access import requires
from netpacs.adapters.http.deps import HttpServices, services
from netpacs.adapters.http.pages.render import navigation, render
from netpacs.domain.dicom.header import first_str
from netpacs.domain.federation import RemoteStudy
from netpacs.domain.nhs_number import format_for_people, is_valid
from netpacs.domain.nhs_number import parse as parse_nhs_number
from netpacs.domain.query import QueryError
from netpacs.services.access import Capability
from netpacs.services.federation import FederationRefused
from netpacs.services.studies import StudyFilter, StudyPage, StudySummary

router = APIRouter(include_in_schema=False)

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class FilterError(ValueError):
    pass


def format_name(value: str) -> str:
    """A DICOM person name (Alphabetic group) as ``FAMILY, Given Middle``."""
    parts = [p.strip() for p in value.split("=")[0].split("^")]
    family = parts[0] if parts else ""
    rest = " ".join(p for p in parts[1:4] if p)
    return f"{family}, {rest}" if family and rest else family or rest


def format_date(value: str) -> str:
    """A DA value as ``02 Jan 2024`` (the value itself when it is not a date)."""
    if re.fullmatch(r"\d{8}", value) and 1 <= int(value[4:6]) <= 12:
        return f"{value[6:8]} {_MONTHS[int(value[4:6]) - 1]} {value[:4]}"
    return value


def format_time(value: str) -> str:
    return f"{value[:2]}:{value[2:4]}" if re.fullmatch(r"\d{4}.*", value) else ""


def _dicom_date(value: str, what: str) -> str:
    """``2024-01-31`` (an HTML date input) or ``20240131`` as a DA value."""
    value = value.strip()
    if not value:
        return ""
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(value, fmt).strftime("%Y%m%d")
        except ValueError:
            continue
    raise FilterError(f"{what}: {value!r} is not a date (YYYY-MM-DD)")


def _iso(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:]}" if re.fullmatch(r"\d{8}", value) else ""


def study_filter(
    *,
    name: str,
    patient_id: str,
    date_from: str,
    date_to: str,
    modality: str,
    by_nhs_number: bool = False,
) -> StudyFilter:
    """The filter of the form; ``by_nhs_number``: a valid NHS number in Patient ID
    matches every identity linked to it (as with the other networks)."""
    low, high = _dicom_date(date_from, "From"), _dicom_date(date_to, "To")
    if low and high and low > high:
        raise FilterError("the From date is after the To date")
    date = low if low and low == high else f"{low}-{high}" if low or high else ""
    name = name.strip()
    if name and not any(ch in name for ch in "*?"):
        name += "*"
    nhs = parse_nhs_number(patient_id) if by_nhs_number else None
    return StudyFilter(
        patient_name=name,
        patient_id=nhs.digits if nhs and nhs.problem is None else patient_id.strip(),
        issuer="NHS" if nhs and nhs.problem is None else "",
        study_date=date,
        modality=modality.strip().upper(),
    )


_REPORT_STATUSES = ("unreported", "draft", "preliminary", "final")


@dataclass(frozen=True, slots=True)
class _Row:
    """One study as the list shows it."""

    uid: str
    viewer_url: str
    name: str
    patient_id: str
    issuer: str
    nhs_number: str
    date: str
    time: str
    modalities: str
    description: str
    origin: str
    origin_code: str
    origin_site: str
    report_status: str | None  # None: not on the reporting worklist
    report_url: str | None
    zip_url: str | None
    delete_url: str | None
    network: str = ""  # another network that holds it (issue 14); "" ours


def _row(s: StudySummary, report_status: str | None, *, reporter: bool, may_delete: bool) -> _Row:
    quoted = quote(s.study_instance_uid, safe="")
    linked = reporter and report_status in _REPORT_STATUSES
    return _Row(
        uid=s.study_instance_uid,
        viewer_url=f"/viewer?StudyInstanceUIDs={quoted}",
        name=format_name(s.patient_name) or "(no name)",
        patient_id=s.patient_id,
        issuer=s.issuer_of_patient_id,
        nhs_number=format_for_people(s.nhs_number) if s.nhs_number else "",
        date=format_date(s.study_date),
        time=format_time(s.study_time),
        modalities=", ".join(s.modalities),
        description=s.study_description,
        origin=s.origin_trust_name or s.origin_trust or "",
        origin_code=(s.origin_trust or "") if s.origin_trust_name else "",
        origin_site=s.origin_site_name or "",
        report_status=report_status,
        report_url=f"/report/{quoted}" if linked else None,
        # PS3.18 ``accept`` query parameter: a plain link cannot set the Accept header.
        zip_url=f"/dicomweb/studies/{quoted}?accept=application/zip",
        delete_url=f"/studies/{quoted}/delete" if may_delete else None,
    )


def _page_url(params: dict[str, str], offset: int) -> str:
    return "/studies?" + urlencode(
        {k: v for k, v in {**params, "offset": str(offset)}.items() if v}
    )


def _remote_row(study: RemoteStudy, *, opens: bool) -> _Row:
    """A study another network holds: opened in the viewer when it can be passed
    through; never ours to report, export or delete."""
    d = study.dataset
    quoted = quote(study.study_instance_uid, safe="")
    nhs = first_str(d, "00100020")
    return _Row(
        uid=study.study_instance_uid,
        viewer_url=f"/viewer?StudyInstanceUIDs={quoted}" if opens else "",
        name=format_name(first_str(d, "00100010")) or "(no name)",
        patient_id=nhs,
        issuer="NHS",
        nhs_number=format_for_people(nhs) if is_valid(nhs) else "",
        date=format_date(first_str(d, "00080020")),
        time=format_time(first_str(d, "00080030")),
        modalities=", ".join(str(v) for v in (d.get("00080061") or {}).get("Value", [])),
        description=first_str(d, "00081030"),
        origin="",
        origin_code="",
        origin_site="",
        report_status=None,
        report_url=None,
        zip_url=None,
        delete_url=None,
        network=study.network,
    )


@dataclass(frozen=True, slots=True)
class _Listing:
    rows: list[_Row]
    shown: tuple[int, int] | None  # the first and last study's place, from 1
    newer_url: str | None
    older_url: str | None
    networks: bool = False  # the other networks were asked: a Network column
    network_note: str = ""  # networks that did not answer, or why none was asked


def _with_networks(svc: HttpServices, listing: _Listing, patient_id: str) -> _Listing:
    """The listing with the other networks' studies of the NHS number in Patient ID
    (first page only), and a note naming the networks that did not answer."""
    parsed = parse_nhs_number(patient_id)
    if parsed.problem is not None:
        note = "Other networks are asked by NHS number: type a valid NHS number in Patient ID."
        return replace(listing, networks=True, network_note=note)
    if svc.federation is None:
        return replace(listing, networks=True, network_note="No other networks are configured.")
    try:
        answer = svc.federation.search(parsed.digits)
    except FederationRefused as exc:
        return replace(listing, networks=True, network_note=f"Other networks not asked: {exc}.")
    opens = {
        name
        for name in (n.name for n in svc.federation.networks)
        if svc.remote and svc.remote.openable(name)
    }
    rows = listing.rows + [_remote_row(s, opens=s.network in opens) for s in answer.studies]
    failed = "; ".join(f"{name} ({why})" for name, why in answer.warnings)
    note = f"Did not answer fully: {failed}." if failed else ""
    return replace(listing, rows=rows, networks=True, network_note=note)


def _listing(
    svc: HttpServices, page: StudyPage, params: dict[str, str], *, limit: int, offset: int
) -> _Listing:
    statuses = svc.worklist.statuses([s.study_instance_uid for s in page.studies])
    reporter = svc.principal.may(Capability.REPORT)
    may_delete = svc.principal.may(Capability.DELETE)
    return _Listing(
        rows=[
            _row(s, statuses.get(s.study_instance_uid), reporter=reporter, may_delete=may_delete)
            for s in page.studies
        ],
        shown=(offset + 1, offset + len(page.studies)) if page.studies else None,
        newer_url=_page_url(params, max(0, offset - limit)) if offset else None,
        older_url=_page_url(params, offset + limit) if page.has_more else None,
    )


@router.get("/")
def home(request: Request) -> RedirectResponse:
    """The first page of the navigation the user may use (an auditor: the audit trail)."""
    pages = navigation(services(request).principal)
    return RedirectResponse(pages[0].href if pages else "/studies", status_code=307)


@router.get("/studies", response_class=HTMLResponse, dependencies=[requires(Capability.QUERY)])
def studies(
    request: Request,
    svc: Annotated[HttpServices, Depends(services)],
    name: str = "",
    patient_id: str = "",
    date_from: str = "",
    date_to: str = "",
    modality: str = "",
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    offset: Annotated[int, Query(ge=0)] = 0,
    networks: str = "",
) -> HTMLResponse:
    """The studies the archive holds, newest first, filtered by the query string."""
    params = {
        "name": name,
        "patient_id": patient_id,
        "date_from": date_from,
        "date_to": date_to,
        "modality": modality,
        "networks": "1" if networks else "",
    }
    if limit != DEFAULT_LIMIT:
        params["limit"] = str(limit)
    filters = {
        "name": name,
        "patient_id": patient_id,
        "date_from": _iso(_dicom_date_or_empty(date_from)),
        "date_to": _iso(_dicom_date_or_empty(date_to)),
        "modality": modality,
        "networks": bool(networks),
    }
    try:
        where = study_filter(
            name=name,
            patient_id=patient_id,
            date_from=date_from,
            date_to=date_to,
            modality=modality,
            by_nhs_number=bool(networks),
        )
        page = svc.study_list.page(where, limit=limit, offset=offset)
    except (FilterError, QueryError) as exc:
        return render(
            request, "study_list.html", status=400, filters=filters, error=str(exc), listing=None
        )
    listing = _listing(svc, page, params, limit=limit, offset=offset)
    if networks and offset == 0:
        listing = _with_networks(svc, listing, patient_id)
    return render(request, "study_list.html", filters=filters, error="", listing=listing)


def _dicom_date_or_empty(value: str) -> str:
    try:
        return _dicom_date(value, "")
    except FilterError:
        return ""
