"""Sign-in over HTTP: bearer tokens, the session cookie, the sign-in page, break-glass.

Every route of the application depends on :func:`authenticate` (set once in
``create_app``): a request carries ``Authorization: Bearer <token>`` (from
``POST /auth/token``, the OAuth2 password grant) or the session cookie the sign-in
page sets (the same token, HttpOnly, SameSite=Strict), so the viewer's requests carry
it too; a change the cookie authenticates must come from a page of this origin
(gate.py, which also identifies the sender before any body is read). Without
credentials a request is answered 401; a browser asking for a page gets the sign-in
form with that 401. The rules of what a user may then see are in services.access and
apply through the request's scoped services (deps.HttpServices.for_principal).
"""

from __future__ import annotations

import base64
from typing import Annotated
from urllib.parse import quote, unquote_plus, urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from netpacs.adapters.http import health
from netpacs.adapters.http.deps import HttpServices, is_https, services
from netpacs.adapters.http.errors import HttpError
from netpacs.adapters.http.pages.render import render
from netpacs.services import partners
from netpacs.services.access import (
    ON_BEHALF_HEADER,
    BreakGlass,
    BreakGlassError,
    Capability,
    Principal,
)
from netpacs.services.access_policy import Refusal
from netpacs.services.account_state import Lookup
from netpacs.services.accounts import OnBehalfRefused, SignInError, SignInProblem

router = APIRouter()

COOKIE = "netpacs_session"
_OPEN_PATHS = frozenset(
    {
        "/auth/token",
        "/auth/revoke",
        "/signin",
        "/signout",
        "/auth/oidc/login",
        "/auth/oidc/callback",
        *health.PATHS,  # load balancer checks: no patient data
        "/metrics",  # no sign-in: by the client's address (adapters/http/metrics.py)
    }
)


class SignInRequired(HttpError):
    """401: no valid credentials. Browsers asking for a page get the sign-in form."""

    def __init__(self, message: str) -> None:
        super().__init__(401, message, {"WWW-Authenticate": 'Bearer realm="netpacs"'})


def client_address(request: Request) -> str | None:
    """The client's address: the peer's, or the one a trusted proxy forwarded (the
    application's ProxyHeadersMiddleware believes only NETPACS_TRUSTED_PROXIES)."""
    return request.client.host if request.client else None


def credentials(request: Request) -> tuple[str | None, bool]:
    """The request's access token, and whether it came from the session cookie (which a
    browser sends by itself) rather than an ``Authorization: Bearer`` header."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None, False
    cookie = request.cookies.get(COOKIE)
    return cookie or None, cookie is not None


def is_open(path: str) -> bool:
    """Paths anyone may reach without signing in (sign-in itself, sign-out, the
    health checks, metrics)."""
    return path in _OPEN_PATHS


def identify(request: Request) -> None:
    """Who sent the request, in ``request.state``: ``principal`` (None when not signed in,
    with ``sign_in_problem`` saying why) and the services scoped to them. Reads the index
    (revoked tokens, the account): call it in a worker thread."""
    base: HttpServices = request.app.state.services
    token, _ = credentials(request)
    principal = base.accounts.principal(token, address=client_address(request)) if token else None
    request.state.refusal = None
    on_behalf = request.headers.get(ON_BEHALF_HEADER)
    if principal is not None and on_behalf is not None:
        try:
            principal = base.accounts.on_behalf(principal, on_behalf.strip())
        except OnBehalfRefused as exc:
            request.state.refusal = exc.message
            principal = None
    _settle(request, principal, token)


def identify_known(request: Request) -> bool:
    """:func:`identify` without reading the index, when the token's account state is
    known from the last few seconds (NETPACS_ACCOUNT_CACHE_SECONDS): no thread, no
    database round trip. False: call :func:`identify` (also for an edge node acting for
    a user, whose account is read)."""
    if ON_BEHALF_HEADER in request.headers:
        return False
    base: HttpServices = request.app.state.services
    token, _ = credentials(request)
    principal = (
        base.accounts.known_principal(token, address=client_address(request)) if token else None
    )
    if principal is Lookup.NEEDED:
        return False
    request.state.refusal = None
    _settle(request, principal, token)
    return True


def _settle(request: Request, principal: Principal | None, token: str | None) -> None:
    base: HttpServices = request.app.state.services
    if principal is not None and principal.partner is not None:
        principal = _stated(request, principal)
    request.state.principal = principal
    request.state.sign_in_problem = (
        None
        if principal is not None
        else "the token or session is not valid (expired?): sign in again"
        if token
        else "sign in: this needs a bearer token or a session"
    )
    if principal is not None:
        request.state.services = base.for_principal(principal)


def _stated(request: Request, principal: Principal) -> Principal | None:
    """A partner network's principal with the user and purpose of use its request states
    (services.partners); None, and a 400 refusal, when they cannot be recorded."""
    try:
        return partners.stated(
            principal,
            user=request.headers.get(partners.PARTNER_USER_HEADER),
            purpose=request.headers.get(partners.PURPOSE_HEADER),
        )
    except partners.PartnerHeaderError as exc:
        request.state.refusal = str(exc)
        request.state.refusal_status = 400
        return None


def interface_of(path: str) -> str:
    """The interface a path belongs to: its first segment (``dicomweb``, ``fhir``, ...)."""
    return path.lstrip("/").split("/", 1)[0]


async def _partner_interface(request: Request, principal: Principal) -> None:
    """403 for a partner network outside the interfaces it may use (audited)."""
    if request.url.path == "/api/me":
        return
    message = partners.interface_refusal(principal, interface_of(request.url.path))
    if message is not None:
        base: HttpServices = request.app.state.services
        refusal = Refusal(principal, Capability.SEE_IMAGING, message)
        await run_in_threadpool(base.access.record, refusal)
        raise HttpError(403, message)


async def authenticate(request: Request) -> None:
    """App-wide dependency: 401 unless the request's principal is known. The gate
    (gate.py) has identified the sender before any route ran, and before anything read
    the request's body."""
    if is_open(request.url.path):
        return
    if not hasattr(request.state, "sign_in_problem"):  # no gate ran (an app without it)
        await run_in_threadpool(identify, request)
    if getattr(request.state, "refusal", None):
        raise HttpError(getattr(request.state, "refusal_status", 403), request.state.refusal)
    if request.state.principal is None:
        raise SignInRequired(request.state.sign_in_problem)
    if request.state.principal.partner is not None:
        await _partner_interface(request, request.state.principal)


# -- OAuth2 token endpoint ------------------------------------------------------------------


@router.post("/auth/token", summary="Access token (OAuth2 password or client credentials)")
def token(
    request: Request,
    username: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=1000)] = "",
    grant_type: Annotated[str, Form(max_length=40)] = "password",
    client_id: Annotated[str, Form(max_length=200)] = "",
    client_secret: Annotated[str, Form(max_length=1000)] = "",
) -> JSONResponse:
    """``password``: a person's user name and password. ``client_credentials``: an edge
    node of the region file (issue 13) or a partner network (issue 14), its
    ``client_id`` and ``client_secret`` in the form or in HTTP Basic authentication
    (RFC 6749 2.3.1)."""
    base: HttpServices = request.app.state.services
    address = client_address(request)
    try:
        if grant_type == "password":
            if not username:
                return _token_error(400, "invalid_request", "the password grant needs username")
            principal = base.accounts.sign_in(username, password, address=address)
        elif grant_type == "client_credentials":
            basic = _basic_credentials(request)
            if basic is not None:
                client_id, client_secret = basic
            if not client_id:
                return _token_error(
                    400, "invalid_request", "client_credentials needs client_id and client_secret"
                )
            principal = base.accounts.sign_in_client(client_id, client_secret, address=address)
        else:
            return _token_error(
                400, "unsupported_grant_type", "only password and client_credentials"
            )
    except SignInError as exc:
        if exc.problem is SignInProblem.LOCKED:
            return JSONResponse(
                {"error": "invalid_grant", "error_description": exc.message},
                status_code=429,
                headers={"Retry-After": str(exc.retry_after)},
            )
        error = "invalid_client" if grant_type == "client_credentials" else "invalid_grant"
        return _token_error(400, error, exc.message)
    issued = base.accounts.issue(principal)
    return JSONResponse(
        {"access_token": issued.value, "token_type": "bearer", "expires_in": issued.expires_in},
        headers={"Cache-Control": "no-store"},
    )


def _token_error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    """Client id and secret from ``Authorization: Basic`` (form-encoded, RFC 6749)."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    return (unquote_plus(client_id), unquote_plus(secret)) if sep else None


@router.get("/api/me", summary="Who the request is signed in as")
def me(request: Request) -> JSONResponse:
    principal: Principal = request.state.principal
    return JSONResponse(
        {
            "username": principal.user_id,
            "name": principal.name,
            "trust": principal.trust,
            "role": principal.role.value,
        }
    )


# -- the sign-in page -----------------------------------------------------------------------


def sign_in_page(
    request: Request, next_url: str, message: str = "", status: int = 200
) -> HTMLResponse:
    """The sign-in form; when OpenID Connect is configured, also "Sign in with <label>"."""
    return render(
        request,
        "signin.html",
        status=status,
        next_url=next_url,
        message=message,
        oidc_label=oidc_label(request),
    )


def oidc_label(request: Request) -> str | None:
    """The sign-in button's label when OpenID Connect sign-in is configured."""
    oidc = request.app.state.services.web.oidc
    return oidc.display_name if oidc else None


def start_session(request: Request, response: Response, principal: Principal) -> Response:
    """Sign the browser in: the session cookie (an access token) on ``response``."""
    base: HttpServices = request.app.state.services
    issued = base.accounts.issue(principal)
    response.set_cookie(
        COOKIE,
        issued.value,
        max_age=issued.expires_in,
        httponly=True,
        samesite="strict",
        secure=is_https(request),
        path="/",
    )
    return response


def safe_next(value: str) -> str:
    """Only a path of this site (no scheme, no host): never an open redirect."""
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith("/") or value.startswith("//"):
        return "/studies"
    return value


@router.get("/signin", include_in_schema=False)
def signin_form(request: Request, next: str = "/studies") -> HTMLResponse:
    return sign_in_page(request, safe_next(next))


@router.post("/signin", include_in_schema=False)
def signin(
    request: Request,
    username: Annotated[str, Form(max_length=200)],
    password: Annotated[str, Form(max_length=1000)],
    next: Annotated[str, Form(max_length=2000)] = "/studies",
) -> Response:
    base: HttpServices = request.app.state.services
    target = safe_next(next)
    try:
        principal = base.accounts.sign_in(username, password, address=client_address(request))
    except SignInError as exc:
        return sign_in_page(
            request, target, exc.message, 429 if exc.problem is SignInProblem.LOCKED else 401
        )
    return start_session(request, RedirectResponse(target, status_code=303), principal)


@router.post("/signout", include_in_schema=False)
def signout(request: Request) -> Response:
    """End the session; after a provider sign-in, end the provider's session too. Open:
    a browser whose session has already expired is still sent on its way, not a 401."""
    from netpacs.adapters.http import oidc  # oidc builds on this module

    _revoke(request, request.cookies.get(COOKIE))
    response = RedirectResponse(oidc.end_session_url(request) or "/signin", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    response.delete_cookie(oidc.IDP_COOKIE, path="/signout")
    return response


@router.post(
    "/auth/revoke",
    summary="Revoke an access token (OAuth2 token revocation, RFC 7009)",
    response_class=Response,
)
def revoke(
    request: Request,
    token: Annotated[str, Form(max_length=4000)],
    token_type_hint: Annotated[str, Form(max_length=40)] = "access_token",
) -> Response:
    """The token is refused from now on. 200 whether or not it was valid (RFC 7009
    2.2): the answer tells nobody whether a token was ours."""
    _revoke(request, token)
    return Response(status_code=200, headers={"Cache-Control": "no-store"})


def _revoke(request: Request, token: str | None) -> None:
    base: HttpServices = request.app.state.services
    principal = base.accounts.principal(token, address=client_address(request)) if token else None
    if principal is not None:
        base.accounts.sign_out(principal, token)


@router.get("/api/openapi.json", include_in_schema=False)
def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


# -- break-glass ----------------------------------------------------------------------------


class BreakGlassRequest(BaseModel):
    patient_id: str = Field(min_length=1, max_length=64)
    issuer: str = Field(min_length=0, max_length=64)
    reason: str = Field(min_length=1, max_length=2000, description="why, for the audit trail")


def _break_glass(request: Request) -> BreakGlass:
    return services(request).break_glass


@router.post("/api/break-glass", summary="Emergency access to a patient (audited, time-limited)")
def open_break_glass(request: Request, body: BreakGlassRequest) -> JSONResponse:
    glass = _break_glass(request)
    try:
        expires = glass.open(services(request).principal, body.patient_id, body.issuer, body.reason)
    except BreakGlassError as exc:
        raise HttpError(403 if exc.forbidden else 400, exc.message) from None
    return JSONResponse(
        {
            "patient_id": body.patient_id,
            "issuer": body.issuer,
            "expires_at": expires.isoformat(timespec="seconds"),
            "minutes": glass.minutes,
        }
    )


def _glass_page(
    request: Request, message: str = "", status: int = 200, **values: str
) -> HTMLResponse:
    return render(
        request,
        "break_glass.html",
        status=status,
        minutes=_break_glass(request).minutes,
        message=message,
        patient_id=values.get("patient_id", ""),
        issuer=values.get("issuer", ""),
        reason=values.get("reason", ""),
    )


@router.get("/break-glass", include_in_schema=False)
def break_glass_form(request: Request) -> HTMLResponse:
    return _glass_page(request)


@router.post("/break-glass", include_in_schema=False)
def break_glass_submit(
    request: Request,
    patient_id: Annotated[str, Form(max_length=64)],
    issuer: Annotated[str, Form(max_length=64)],
    reason: Annotated[str, Form(max_length=2000)],
) -> Response:
    try:
        _break_glass(request).open(services(request).principal, patient_id, issuer, reason)
    except BreakGlassError as exc:
        return _glass_page(
            request,
            exc.message,
            403 if exc.forbidden else 400,
            patient_id=patient_id,
            issuer=issuer,
            reason=reason,
        )
    return RedirectResponse(f"/studies?patient_id={quote(patient_id)}", status_code=303)
