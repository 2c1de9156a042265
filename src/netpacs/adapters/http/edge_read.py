"""Reading through an edge node over HTTP (issue 13), both sides.

The core's side: ``POST /api/edge/find`` and ``POST /api/edge/select`` answer a C-FIND
identifier (the form every question at the edge takes) with the matches, or with the
instances a C-MOVE / C-GET of it selects, for the signed-in principal: an edge node,
or the person it acts for (``X-Netpacs-On-Behalf-Of``, checked at sign-in).

The edge's side: ``GET /api/edge/link`` says whether the core answers (the banner's
words when it does not), and ``/edge/banner.js`` keeps the banner over the viewer up
to date.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from netpacs.adapters.http.access import requires
from netpacs.adapters.http.deps import HttpServices, services
from netpacs.adapters.http.errors import HttpError
from netpacs.domain.query import QueryError, QueryLevel, QueryModel, QueryTimeout
from netpacs.domain.uids import is_valid_uid
from netpacs.services.access import Capability
from netpacs.services.edge.audit_outbox import AuditRefused

router = APIRouter(include_in_schema=False)


class _Question(BaseModel):
    identifier: dict[str, Any]
    level: QueryLevel
    model: QueryModel = QueryModel.STUDY_ROOT


class _Find(_Question):
    limit: Annotated[int | None, Field(ge=0)] = None
    offset: Annotated[int, Field(ge=0, le=2**62)] = 0
    linked: bool = False


def _serving(request: Request) -> HttpServices:
    svc = services(request)
    if svc.edge_serving is None:
        raise HttpError(404, "this netpacs serves no edge nodes (it is not a core)")
    return svc


@router.post("/api/edge/find", dependencies=[requires(Capability.QUERY)])
def find(request: Request, body: _Find) -> Response:
    svc = _serving(request)
    assert svc.edge_serving is not None
    try:
        matches = svc.edge_serving.find(
            svc.query,
            body.identifier,
            level=body.level,
            model=body.model,
            limit=body.limit,
            offset=body.offset,
            linked=body.linked,
        )
    except QueryTimeout as exc:
        raise HttpError(503, str(exc)) from None
    except QueryError as exc:
        raise HttpError(400, str(exc)) from None
    return Response(orjson.dumps(matches), media_type="application/json")


@router.post("/api/edge/select", dependencies=[requires(Capability.RETRIEVE)])
def select(request: Request, body: _Question) -> Response:
    svc = _serving(request)
    assert svc.edge_serving is not None
    try:
        located = svc.edge_serving.select(
            svc.query, body.identifier, level=body.level, model=body.model
        )
    except QueryTimeout as exc:
        raise HttpError(503, str(exc)) from None
    except QueryError as exc:
        raise HttpError(400, str(exc)) from None
    return Response(orjson.dumps(located), media_type="application/json")


class _Audit(BaseModel):
    records: Annotated[list[dict[str, Any]], Field(max_length=1000)]


@router.post("/api/edge/audit")
def take_audit(request: Request, body: _Audit) -> JSONResponse:
    """An edge node's audit records, kept in the core's trail once each."""
    svc = _serving(request)
    assert svc.edge_serving is not None
    try:
        kept = svc.edge_serving.audit_intake.take(svc.principal, body.records)
    except AuditRefused as exc:
        raise HttpError(403 if exc.forbidden else 400, str(exc)) from None
    return JSONResponse({"kept": kept, "received": len(body.records)})


# -- the edge's side: the link, and the banner over the viewer ------------------------------


@router.get("/api/edge/link")
async def link(request: Request) -> JSONResponse:
    svc = services(request)
    if svc.edge_read is None:
        raise HttpError(404, "this netpacs is not an edge node")
    down = await run_in_threadpool(svc.edge_read.link_down)
    if down is None:
        return JSONResponse({"up": True, "down_since": None, "banner": None})
    return JSONResponse(
        {
            "up": False,
            "down_since": down.since.isoformat(timespec="seconds"),
            "banner": down.banner(svc.edge_read.zone),
        }
    )


BANNER_ID = "netpacs-link-banner"
#: Over the viewer: the banner index.html was served with, kept up to date every 15 s.
BANNER_SCRIPT = f"""(() => {{
  const id = "{BANNER_ID}";
  async function check() {{
    let state;
    try {{
      const answer = await fetch("/api/edge/link", {{credentials: "same-origin"}});
      if (!answer.ok) return;
      state = await answer.json();
    }} catch (e) {{ return; }}
    let banner = document.getElementById(id);
    if (state.up) {{ if (banner) banner.hidden = true; return; }}
    if (!banner) {{
      banner = document.createElement("div");
      banner.id = id;
      banner.setAttribute("role", "alert");
      banner.style.cssText = "{{style}}";
      document.body.prepend(banner);
    }}
    banner.textContent = state.banner;
    banner.hidden = false;
  }}
  setInterval(check, 15000);
}})();
"""
BANNER_STYLE = (
    "position:fixed;top:0;left:0;right:0;z-index:100000;padding:6px 12px;"
    "background:#b36b00;color:#fff;font:600 14px system-ui,sans-serif;text-align:center"
)


@router.get("/edge/banner.js")
def banner_script() -> Response:
    return Response(
        BANNER_SCRIPT.replace("{style}", BANNER_STYLE),
        media_type="text/javascript; charset=utf-8",
        headers={"cache-control": "no-cache"},
    )


def banner_html(text: str) -> str:
    """The banner as index.html of the viewer carries it (escaped: the text is ours)."""
    from html import escape

    return f'<div id="{BANNER_ID}" role="alert" style="{BANNER_STYLE}">{escape(text)}</div>'


# -- pixel data at the edge: fill the cache before the local answer -----------------------


async def fill_cache(request: Request) -> None:
    """A dependency of the retrieve routes at an edge node: what the request names and
    the cache lacks is fetched from the core for the signed-in user first; the route
    then answers from the cache as everywhere (with its own access check and audit).
    Metadata is not filled (it reads through, wado.py)."""
    svc = services(request)
    if svc.edge_read is None or request.url.path.endswith("/metadata"):
        return
    if not svc.principal.may(Capability.RETRIEVE):
        return  # the route refuses it, and audits the refusal
    params = request.path_params
    query = request.query_params
    study = params.get("study") or query.get("studyUID")
    series = params.get("series") or query.get("seriesUID")
    sop_instance = params.get("instance") or query.get("objectUID")
    if not study or not is_valid_uid(study):
        return  # the route answers what is wrong with it
    if (series and not is_valid_uid(series)) or (sop_instance and not is_valid_uid(sop_instance)):
        return
    await run_in_threadpool(svc.edge_read.fill, svc.principal, study, series, sop_instance)
