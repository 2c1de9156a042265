"""The study list page: ``/studies`` (and ``/``), each study linked to the viewer.

Plain server-rendered HTML with a little inline CSS: no scripts, nothing fetched
from elsewhere. Filters come from the query string and are matched by the query
service as C-FIND keys (a name without wild cards matches as a prefix).
"""

from __future__ import annotations

import datetime as dt
import re
from html import escape
from importlib import resources
from string import Template
from typing import Annotated
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse, RedirectResponse

from netpacs.adapters.http.deps import HttpServices, services
from netpacs.adapters.http.pages.reporting_pages import may_report, reporting_links
from netpacs.domain.nhs_number import format_for_people
from netpacs.services.query import QueryError
from netpacs.services.studies import StudyFilter, StudySummary

router = APIRouter(include_in_schema=False)

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
_TEMPLATE = Template(
    resources.files(__package__).joinpath("study_list.html").read_text(encoding="utf-8")
)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class FilterError(ValueError):
    pass


def _e(value: object) -> str:
    return escape(str(value), quote=True)


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


def _patient_id(s: StudySummary) -> str:
    if not s.patient_id:
        return ""
    issuer = f' <span class="muted">({_e(s.issuer_of_patient_id)})</span>'
    return _e(s.patient_id) + (issuer if s.issuer_of_patient_id else "")


def _origin(s: StudySummary) -> str:
    if not s.origin_trust:
        return ""
    name = _e(s.origin_trust_name or s.origin_trust)
    code = f' <span class="muted">({_e(s.origin_trust)})</span>' if s.origin_trust_name else ""
    site = f'<br><span class="muted">{_e(s.origin_site_name)}</span>' if s.origin_site_name else ""
    return name + code + site


_REPORT_STATUSES = ("unreported", "draft", "preliminary", "final")


def _report_cell(uid: str, status: str | None, *, linked: bool) -> str:
    """The study's report status; "—" when it is not on the reporting worklist."""
    if status is None:
        return '<span class="muted" title="not on the reporting worklist">&mdash;</span>'
    shown = f'<span class="report-{_e(status)}">{_e(status)}</span>'
    if linked and status in _REPORT_STATUSES:
        return f'<a href="/report/{_e(quote(uid, safe=""))}">{shown}</a>'
    return shown


def _actions(uid: str, *, may_delete: bool) -> str:
    """Download the study as a ZIP (PS3.18 ``accept`` query parameter: a plain link
    cannot set the Accept header); for PACS administrators, the page that deletes it."""
    quoted = quote(uid, safe="")
    zip_link = f"/dicomweb/studies/{quoted}?accept=application/zip"
    links = [f'<a href="{_e(zip_link)}" class="download" download>Download (ZIP)</a>']
    if may_delete:
        links.append(f'<a href="/studies/{_e(quoted)}/delete" class="delete">Delete&hellip;</a>')
    return "<br>".join(links)


def _row(
    s: StudySummary,
    report_status: str | None = None,
    *,
    linked: bool = False,
    may_delete: bool = False,
) -> str:
    link = "/viewer?StudyInstanceUIDs=" + quote(s.study_instance_uid, safe="")
    when = format_date(s.study_date)
    time = format_time(s.study_time)
    if time:
        when += f' <span class="muted">{_e(time)}</span>'
    nhs = _e(format_for_people(s.nhs_number)) if s.nhs_number else ""
    cells = [
        f'<a href="{_e(link)}">{_e(format_name(s.patient_name) or "(no name)")}</a>',
        _patient_id(s),
        f'<span class="nhs">{nhs}</span>',
        when,
        _e(", ".join(s.modalities)),
        _e(s.study_description),
        _origin(s),
        _report_cell(s.study_instance_uid, report_status, linked=linked),
        _actions(s.study_instance_uid, may_delete=may_delete),
    ]
    return (
        f'<tr data-study="{_e(s.study_instance_uid)}">'
        + "".join(f"<td>{c}</td>" for c in cells)
        + "</tr>"
    )


def _page_link(params: dict[str, str], offset: int, label: str) -> str:
    query = urlencode({k: v for k, v in {**params, "offset": str(offset)}.items() if v})
    return f'<a href="/studies?{_e(query)}">{label}</a>'


@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/studies", status_code=307)


@router.get("/studies", response_class=HTMLResponse)
def studies(
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
    listing = svc.study_list
    error = ""
    rows = ""
    paging = ""
    status = 200
    try:
        where = study_filter(
            name=name,
            patient_id=patient_id,
            date_from=date_from,
            date_to=date_to,
            modality=modality,
        )
        page = listing.page(where, limit=limit, offset=offset)
    except (FilterError, QueryError) as exc:
        status = 400
        error = f'<p class="error">{_e(exc)}</p>'
    else:
        statuses = svc.reporting.statuses([s.study_instance_uid for s in page.studies])
        reporter = may_report(svc.principal)
        admin = svc.principal.sees_everything
        rows = "\n".join(
            _row(s, statuses.get(s.study_instance_uid), linked=reporter, may_delete=admin)
            for s in page.studies
        )
        if not page.studies:
            rows = '<tr><td colspan="9" class="muted">No studies match.</td></tr>'
        links = []
        if offset:
            links.append(_page_link(params, max(0, offset - limit), "&larr; Newer"))
        if page.studies:
            first, last = offset + 1, offset + len(page.studies)
            links.append(f'<span class="muted">studies {first}&ndash;{last}</span>')
        if page.has_more:
            links.append(_page_link(params, offset + limit, "Older &rarr;"))
        paging = " ".join(links)
    html = _TEMPLATE.substitute(
        region=_e(svc.region.name),
        reporting_links=reporting_links(svc.principal),
        name=_e(name),
        patient_id=_e(patient_id),
        date_from=_e(_iso(_dicom_date_or_empty(date_from))),
        date_to=_e(_iso(_dicom_date_or_empty(date_to))),
        modality=_e(modality),
        error=error,
        rows=rows,
        paging=paging,
    )
    return HTMLResponse(html, status_code=status, headers={"cache-control": "no-store"})


def _dicom_date_or_empty(value: str) -> str:
    try:
        return _dicom_date(value, "")
    except FilterError:
        return ""
