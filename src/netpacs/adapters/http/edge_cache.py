"""The edge's cache over HTTP (issue 13): the core's change feed for its edges
(``GET /edge/changes``) and an edge's prefetch status (``/admin/prefetch``, a page for
a browser, JSON otherwise). The rules are in services.edge.feed."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from netpacs.adapters.http.deps import services
from netpacs.adapters.http.errors import HttpError
from netpacs.adapters.http.pages.render import render, wants_page

router = APIRouter()

After = Annotated[int | None, Query(ge=0, le=2**62)]
Limit = Annotated[int, Query(ge=1, le=1000)]


@router.get("/edge/changes", summary="The core's change feed, for its edge nodes")
def changes(request: Request, after: After = None, limit: Limit = 500) -> JSONResponse:
    svc = services(request)
    if svc.change_feed is None:
        raise HttpError(404, "this netpacs offers no change feed")
    page = svc.change_feed.read(svc.principal, after=after, limit=limit)
    return JSONResponse(
        {
            "changes": [c.as_json() for c in page.changes],
            "cursor": page.cursor,
            "more": page.more,
            "resync": page.resync,
        }
    )


def _when(value: Any) -> str:
    if not isinstance(value, dt.datetime):
        return ""
    aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return aware.isoformat(timespec="seconds")


@router.get("/admin/prefetch", summary="Prefetch status per patient (an edge node)")
def prefetch_status(request: Request) -> Response:
    svc = services(request)
    if svc.prefetch_status is None:
        raise HttpError(404, "prefetch runs on an edge node (NETPACS_ROLE=edge)")
    rows = [
        {
            **{k: v for k, v in row.items() if not isinstance(v, dt.datetime)},
            **{k: _when(v) for k, v in row.items() if isinstance(v, dt.datetime)},
        }
        for row in svc.prefetch_status.rows(svc.principal)
    ]
    if wants_page(request):
        return render(request, "prefetch.html", rows=rows)
    return JSONResponse({"patients": rows})
