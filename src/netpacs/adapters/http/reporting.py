"""Networked reporting over HTTP: the worklist, claims and reports as JSON (issue 6).

``/api/worklist`` lists and claims items, ``/api/reports/{study}`` saves, signs and
amends reports, ``/api/turnaround`` gives the dashboard's figures. The rules are in
services.reporting; this module translates HTTP to them. What they refuse is answered
through the one table of :mod:`.errors` (403 for a role that may not, 404 for a study
that does not exist or is not the user's to report, 409 when another reporter holds the
claim or the report is already final, 422 for bad input; bodies ``{"status",
"message"}`` as everywhere).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from netpacs.adapters.http.deps import check_url_uids, services
from netpacs.adapters.http.federation import with_network_priors
from netpacs.services.reporting import MAX_TEXT

router = APIRouter()


class ReportBody(BaseModel):
    text: str = Field(max_length=MAX_TEXT, description="the report: free text with sections")
    status: Literal["draft", "preliminary", "final"] = Field(
        description="draft (autosave), preliminary, or final (signed; never edited again)"
    )
    template: str | None = Field(None, max_length=32, description="the template it began from")
    version: int | None = Field(
        None, description="the version the client loaded: a save over a newer one is refused"
    )


class TextBody(BaseModel):
    text: str = Field(max_length=MAX_TEXT)


class ReasonBody(BaseModel):
    reason: str = Field(max_length=4000)


class AssignBody(BaseModel):
    username: str = Field(max_length=200, description="the radiologist to give the item to")


class PriorityBody(BaseModel):
    priority: str = Field(max_length=32)


@router.get("/api/worklist", tags=["reporting"])
def worklist(
    request: Request,
    view: Annotated[Literal["all", "mine", "subspecialty", "trust"], Query()] = "all",
    trust: Annotated[str | None, Query(max_length=16)] = None,
    subspecialty: Annotated[str | None, Query(max_length=32)] = None,
    status: Annotated[Literal["open", "reported", "all"], Query()] = "open",
    priority: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=2000)] = 500,
) -> Response:
    """Worklist items the user may report, by priority and time to breach."""
    listed = services(request).worklist.worklist(
        view=view,
        trust=trust,
        subspecialty=subspecialty,
        status=status,
        priority=priority,
        limit=limit,
    )
    # Hundreds of items of plain values: encoded at once (FastAPI's validating encoder
    # was a tenth of the request's time at 500 items).
    return Response(orjson.dumps(listed), media_type="application/json")


class QueueBody(BaseModel):
    study_instance_uid: str = Field(max_length=64)
    priority: str | None = Field(None, max_length=32, description="default: from the header")


@router.post("/api/worklist", tags=["reporting"], status_code=201)
def queue(request: Request, body: QueueBody) -> dict[str, Any]:
    """An admin puts a stored study on the worklist (one not queued on arrival)."""
    check_url_uids(Study=body.study_instance_uid)
    return services(request).worklist.queue(body.study_instance_uid, priority=body.priority)


@router.get("/api/worklist/{study}", tags=["reporting"])
def worklist_item(request: Request, study: str) -> dict[str, Any]:
    check_url_uids(Study=study)
    return services(request).worklist.item(study)


@router.post("/api/worklist/{study}/claim", tags=["reporting"])
def claim(request: Request, study: str) -> dict[str, Any]:
    """Claim the item (409 with who holds it when someone else does)."""
    check_url_uids(Study=study)
    return services(request).claims.claim(study)


@router.delete("/api/worklist/{study}/claim", tags=["reporting"])
def release(request: Request, study: str) -> dict[str, Any]:
    check_url_uids(Study=study)
    return services(request).claims.release(study)


@router.post("/api/worklist/{study}/assign", tags=["reporting"])
def assign(request: Request, study: str, body: AssignBody) -> dict[str, Any]:
    """An admin gives the item to a radiologist."""
    check_url_uids(Study=study)
    return services(request).claims.assign(study, body.username)


@router.post("/api/worklist/{study}/priority", tags=["reporting"])
def set_priority(request: Request, study: str, body: PriorityBody) -> dict[str, Any]:
    check_url_uids(Study=study)
    return services(request).claims.set_priority(study, body.priority)


@router.get("/api/worklist/{study}/priors", tags=["reporting"])
def priors(request: Request, study: str, networks: bool = True) -> dict[str, Any]:
    """The study and the person's priors from every trust, newest first; with
    ``networks`` (the default) also those the other networks hold (issue 14)."""
    check_url_uids(Study=study)
    answer = services(request).reports.priors(study)
    if networks:
        with_network_priors(request, answer)
    return answer


@router.get("/api/reports/templates", tags=["reporting"])
def templates(request: Request) -> dict[str, str]:
    return services(request).reports.templates()


@router.get("/api/reports/{study}", tags=["reporting"])
def get_report(request: Request, study: str) -> dict[str, Any]:
    check_url_uids(Study=study)
    return services(request).reports.report(study)


@router.put("/api/reports/{study}", tags=["reporting"])
def put_report(request: Request, study: str, body: ReportBody) -> dict[str, Any]:
    """Save a draft or a preliminary report, or sign it final."""
    check_url_uids(Study=study)
    return services(request).reports.save(
        study,
        body.text,
        body.status,
        template=body.template,
        version=body.version,
    )


@router.post("/api/reports/{study}/addenda", tags=["reporting"])
def add_addendum(request: Request, study: str, body: TextBody) -> dict[str, Any]:
    check_url_uids(Study=study)
    return services(request).reports.addendum(study, body.text)


@router.post("/api/reports/{study}/second-opinion", tags=["reporting"])
def second_opinion(request: Request, study: str, body: ReasonBody) -> dict[str, Any]:
    check_url_uids(Study=study)
    return services(request).reports.second_opinion(study, body.reason)


@router.post("/api/reports/{study}/discrepancy", tags=["reporting"])
def discrepancy(request: Request, study: str, body: TextBody) -> dict[str, Any]:
    check_url_uids(Study=study)
    return services(request).reports.discrepancy(study, body.text)


@router.get("/api/results", tags=["reporting"])
def results(
    request: Request,
    status: Annotated[Literal["waiting", "all"], Query()] = "waiting",
    trust: Annotated[str | None, Query(max_length=16)] = None,
    limit: Annotated[int, Query(ge=1, le=2000)] = 200,
) -> dict[str, Any]:
    """HL7 results (ORU^R01) for the trusts' listeners: waiting ones with their last
    error, and how many wait per trust (PACS admins)."""
    return services(request).reports.results(waiting=status == "waiting", trust=trust, limit=limit)


@router.get("/api/turnaround", tags=["reporting"])
def turnaround(request: Request, days: Annotated[int, Query(ge=1, le=366)] = 30) -> dict[str, Any]:
    """Arrival-to-report times, backlog and breaches per trust and modality."""
    return services(request).turnaround.turnaround(days)
