"""Errors as HTTP answers: a status and a message a person can act on, never a 500 for bad input.

Routes raise :class:`HttpError` (or FastAPI's ``HTTPException``); request validation
errors become 400 with the offending parameter named. Anything else is a defect in
netpacs: it is logged with its traceback and answered 500 without internals. A
browser navigating to a page gets the answer as a page (the one layout of
pages/render.py); every other client gets ``{"status", "message"}``.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY

from netpacs.adapters.http.pages.render import error_page, wants_page
from netpacs.domain.outcomes import Problem, Refused
from netpacs.services.access_policy import AccessDenied

log = logging.getLogger(__name__)

# Programming interfaces answer JSON even to a browser.
_APIS = ("/dicomweb", "/fhir", "/api/", "/auth/")
_TITLES = {
    400: "Not accepted",
    403: "Not allowed",
    404: "Not found",
    405: "Not possible here",
    409: "Not possible now",
    413: "Too large",
    500: "netpacs failed",
    503: "Not available now",
}


#: The HTTP status of each problem a service refuses a request with: the one table.
STATUS: dict[Problem, int] = {
    Problem.NOT_FOUND: 404,
    Problem.FORBIDDEN: 403,
    Problem.CONFLICT: 409,
    Problem.INVALID: 422,
    Problem.MALFORMED: 400,
    Problem.NOT_ACCEPTABLE: 406,
}


class HttpError(Exception):
    """An answer other than success: ``status`` and a message for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def _answer(
    request: Request, status: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    if wants_page(request) and not request.url.path.startswith(_APIS):
        if not hasattr(request.state, "principal"):
            _identify(request)
        title = _TITLES.get(status, f"Error {status}")
        return error_page(request, status, title, message, headers=headers)
    return JSONResponse({"status": status, "message": message}, status_code=status, headers=headers)


def _identify(request: Request) -> None:
    """Who is signed in, for the page's header: no route (hence no authentication) ran
    for a path that does not exist."""
    from netpacs.adapters.http import auth  # auth builds on this module

    if not auth.is_open(request.url.path):
        auth.identify(request)


def install(app: FastAPI) -> None:
    @app.exception_handler(HttpError)
    async def _http_error(request: Request, exc: HttpError) -> Response:
        return _answer(request, exc.status, exc.message, exc.headers)

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> Response:
        return _answer(request, STATUS[exc.problem], exc.message)

    @app.exception_handler(AccessDenied)
    async def _denied(request: Request, exc: AccessDenied) -> Response:
        return _answer(request, 403, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette(request: Request, exc: StarletteHTTPException) -> Response:
        message = str(exc.detail)
        limit = request.scope.get(MAX_BODY_SIZE_SCOPE_KEY)
        if exc.status_code == 413 and limit is not None:  # the gate's body cap (gate.py)
            message = f"the request body is larger than the {limit} bytes accepted here"
        return _answer(request, exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path"))
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return _answer(request, 400, "; ".join(problems) or "invalid request")

    @app.exception_handler(Exception)
    async def _defect(request: Request, exc: Exception) -> Response:
        services = getattr(request.app.state, "services", None)
        if services is not None and services.web.unavailable(exc):
            log.warning("index database unavailable answering %s: %s", request.url.path, exc)
            return _answer(
                request,
                503,
                "the index database is unavailable (failing over); try again shortly",
                {"retry-after": "5"},
            )
        log.exception("unhandled error answering %s %s", request.method, request.url.path)
        return _answer(request, 500, "internal error; the server log has the details")
