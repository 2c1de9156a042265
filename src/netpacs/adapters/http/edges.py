"""The core's routes for its edge nodes (issue 13), over :mod:`netpacs.services.edge.nodes`.

- ``POST /api/edge/held`` (an edge): ``{"sop_instance_uids": [...]}`` -> what the core
  holds of them (size, CRC-32, data set offset, the file meta's CRC-32 read back now).
- ``POST /api/edge/heartbeat`` (an edge): its figures, kept for the list below.
- ``GET /api/edge/orders`` (an edge): the open orders of its own trust and site, for
  its Modality Worklist (services.edge.orders).
- ``POST /api/edge/mpps`` (an edge): an MPPS N-CREATE or N-SET one of its site's AEs
  sent it, applied for that AE (services.edge.mpps); 409 with the reason when refused.
- ``GET /api/edges`` and the page ``/edges`` (PACS administrators): every edge node,
  last contact, link, backlog, cache use, last prefetch.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from netpacs.adapters.http.auth import client_address
from netpacs.adapters.http.deps import services
from netpacs.adapters.http.errors import HttpError
from netpacs.adapters.http.pages.render import render
from netpacs.services.edge.mpps import RelayError
from netpacs.services.edge.nodes import MAX_UIDS, EdgeNodes, HeartbeatError

router = APIRouter()


class HeldQuestion(BaseModel):
    sop_instance_uids: list[Annotated[str, Field(max_length=64)]] = Field(max_length=MAX_UIDS)


def _nodes(request: Request) -> EdgeNodes:
    nodes = services(request).edges
    if nodes is None:
        raise HttpError(404, "this server keeps no edge nodes (it is an edge itself)")
    return nodes


@router.post("/api/edge/held", tags=["edge"], summary="What the core holds (edge nodes)")
def held(request: Request, question: Annotated[HeldQuestion, Body()]) -> JSONResponse:
    found = _nodes(request).held(question.sop_instance_uids)
    return JSONResponse({"held": {uid: asdict(h) for uid, h in found.items()}})


@router.post(
    "/api/edge/heartbeat",
    tags=["edge"],
    summary="An edge node's figures",
    response_class=Response,
    status_code=204,
)
def heartbeat(request: Request, report: Annotated[dict[str, Any], Body()]) -> Response:
    try:
        _nodes(request).heartbeat(report, address=client_address(request))
    except HeartbeatError as exc:
        raise HttpError(400, str(exc)) from None
    return Response(status_code=204)


@router.get("/api/edge/orders", tags=["edge"], summary="The edge's site's open orders")
def orders(request: Request) -> JSONResponse:
    return JSONResponse({"orders": _nodes(request).site_orders()})


@router.post("/api/edge/mpps", tags=["edge"], summary="An MPPS message of the edge's site")
def mpps(request: Request, message: Annotated[dict[str, Any], Body()]) -> JSONResponse:
    try:
        done = _nodes(request).relay_mpps(message)
    except RelayError as exc:
        raise HttpError(exc.status, str(exc)) from None
    return JSONResponse({"done": done})


@router.get("/api/edges", tags=["edge"], summary="The edge nodes (PACS administrators)")
def edge_list(request: Request) -> JSONResponse:
    return JSONResponse({"edges": _nodes(request).listing()})


@router.get("/edges", include_in_schema=False)
def edge_page(request: Request) -> HTMLResponse:
    return render(request, "edges.html", edges=_nodes(request).listing())
