"""The study list page: ``/studies`` (and ``/``), each study linked to the viewer.

Plain server-rendered HTML with a little inline CSS: no scripts, nothing fetched
from elsewhere. Filters come from the query string and are matched by the query
service as C-FIND keys (a name without wild cards matches as a prefix).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from netpacs.adapters.http.access import requires
from netpacs.adapters.http.deps import HttpServices, services
from netpacs.adapters.http.pages.render import navigation, render
from netpacs.domain.nhs_number import format_for_people
from netpacs.domain.query import QueryError
from netpacs.services.access import Capability
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
    *, name: str, patient_id: str, date_from: str, date_to: str, modality: str
) -> StudyFilter:
    low, high = _dicom_date(date_from, "From"), _dicom_date(date_to, "To")
    if low and high and low > high:
        raise FilterError("the From date is after the To date")
    date = low if low and low == high else f"{low}-{high}" if low or high else ""
    name = name.strip()
    if name and not any(ch in name for ch in "*?"):
        name += "*"
    return StudyFilter(
        patient_name=name,
        patient_id=patient_id.strip(),
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
    zip_url: str
    delete_url: str | None


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


@dataclass(frozen=True, slots=True)
class _Listing:
    rows: list[_Row]
    shown: tuple[int, int] | None  # the first and last study's place, from 1
    newer_url: str | None
    older_url: str | None


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
) -> HTMLResponse:
    """The studies the archive holds, newest first, filtered by the query string."""
    params = {
        "name": name,
        "patient_id": patient_id,
        "date_from": date_from,
        "date_to": date_to,
        "modality": modality,
    }
    if limit != DEFAULT_LIMIT:
        params["limit"] = str(limit)
    filters = {
        "name": name,
        "patient_id": patient_id,
        "date_from": _iso(_dicom_date_or_empty(date_from)),
        "date_to": _iso(_dicom_date_or_empty(date_to)),
        "modality": modality,
    }
    try:
        where = study_filter(
            name=name,
            patient_id=patient_id,
            date_from=date_from,
            date_to=date_to,
            modality=modality,
        )
        page = svc.study_list.page(where, limit=limit, offset=offset)
    except (FilterError, QueryError) as exc:
        return render(
            request, "study_list.html", status=400, filters=filters, error=str(exc), listing=None
        )
    listing = _listing(svc, page, params, limit=limit, offset=offset)
    return render(request, "study_list.html", filters=filters, error="", listing=listing)


def _dicom_date_or_empty(value: str) -> str:
    try:
        return _dicom_date(value, "")
    except FilterError:
        return ""
