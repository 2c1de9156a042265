"""OpenID Connect sign-in: authorization code flow with PKCE, state and nonce.

For NHS Identity or a trust's identity provider (``oidc_issuer``). ``GET
/auth/oidc/login`` sends the browser to the provider's authorization endpoint (OIDC
Core 3.1.2) with a fresh ``state``, ``nonce`` and PKCE S256 challenge (RFC 7636); the
three and the page the user wanted are kept in a short-lived cookie signed with our
key. ``GET /auth/oidc/callback`` checks the state, exchanges the code at the token
endpoint with the client secret (3.1.3) and validates the ID token (3.1.3.7: signature
from the provider's JWKS, ``iss``, ``aud``, ``exp``, ``nonce``); the user is then
admitted or refused by services.accounts (pre-provisioned account or trust and role
claims) and gets the same session cookie as a password sign-in.

Signing out of netpacs (``POST /signout``) after a provider sign-in also ends the
session at the provider when it offers RP-initiated logout (``end_session_endpoint``,
OpenID Connect RP-Initiated Logout 1.0): the browser is sent there with the ID token as
``id_token_hint`` (kept for this in a cookie signed with our key, sent only to
``/signout``) and comes back to ``/signin``, which the client registration at the
provider must list as a post-logout redirect URI. On a shared ward workstation the next
user then meets the provider's login, not the last user's provider session.

The protocol itself (Authlib and joserfc) is :mod:`.oidc_client`'s; here are the
routes, the cookies and the pages. Every failure is a page that says what went wrong
(4xx, or 502 when the provider cannot be reached or answers nonsense), audited as a
failed sign-in; never a 500.
"""

from __future__ import annotations

import hmac
import logging
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from netpacs.adapters.http import auth
from netpacs.adapters.http.deps import HttpServices, base_url, is_https
from netpacs.adapters.http.errors import HttpError
from netpacs.adapters.http.oidc_client import OidcClient, OidcError, OidcProblem, identity_of
from netpacs.adapters.http.pages.render import render
from netpacs.services.accounts import SignInError

log = logging.getLogger(__name__)

router = APIRouter()

LOGIN = "/auth/oidc/login"
CALLBACK = "/auth/oidc/callback"
FLOW_COOKIE = "netpacs_oidc"
_FLOW_PURPOSE = "netpacs:oidc-flow"
_FLOW_SECONDS = 600
IDP_COOKIE = "netpacs_idp"  # the ID token, for the provider's sign-out (id_token_hint)
_IDP_PURPOSE = "netpacs:oidc-id-token"
SIGNED_OUT = "/signin"  # post_logout_redirect_uri: register it at the provider
_UNKNOWN_USER = "(OpenID Connect)"

# The HTTP status of each problem: what the browser is told.
HTTP_STATUS: dict[OidcProblem, int] = {
    OidcProblem.NOT_SET_UP: 503,
    OidcProblem.UNREACHABLE: 502,
    OidcProblem.PROVIDER_BROKEN: 502,
    OidcProblem.PROVIDER_REFUSED: 401,
    OidcProblem.NO_FLOW: 400,
    OidcProblem.STATE_MISMATCH: 400,
    OidcProblem.BAD_ID_TOKEN: 401,
    OidcProblem.NOT_ADMITTED: 403,
}


# -- routes ------------------------------------------------------------------------------


def _client(request: Request) -> OidcClient:
    """This worker's client of the identity provider, made on first use; 404 if none."""
    client: OidcClient | None = getattr(request.app.state, "oidc_client", None)
    if client is not None:
        return client
    base: HttpServices = request.app.state.services
    if base.web.oidc is None:
        raise HttpError(404, "OpenID Connect sign-in is not configured")
    client = OidcClient(base.web.oidc)
    request.app.state.oidc_client = client
    return client


def _label(request: Request) -> str:
    base: HttpServices = request.app.state.services
    return base.web.oidc.display_name if base.web.oidc else ""


def _redirect_uri(request: Request) -> str:
    return base_url(request) + CALLBACK


@router.get(LOGIN, include_in_schema=False)
def oidc_login(request: Request, next: str = "/studies") -> Response:
    target = auth.safe_next(next)
    try:
        sign_in = _client(request).start(redirect_uri=_redirect_uri(request))
    except OidcError as exc:
        return _failure(request, exc, target)
    base: HttpServices = request.app.state.services
    flow = base.accounts.seal(
        {
            "state": sign_in.state,
            "nonce": sign_in.nonce,
            "verifier": sign_in.code_verifier,
            "next": target,
        },
        purpose=_FLOW_PURPOSE,
        seconds=_FLOW_SECONDS,
    )
    response = RedirectResponse(sign_in.url, status_code=303)
    # Lax, not Strict: the provider's redirect back is a cross-site navigation.
    response.set_cookie(
        FLOW_COOKIE,
        flow,
        max_age=_FLOW_SECONDS,
        httponly=True,
        samesite="lax",
        secure=is_https(request),
        path=CALLBACK,
    )
    return response


@router.get(CALLBACK, include_in_schema=False)
def oidc_callback(
    request: Request,
    code: str | None = None,
    state: str | None = None,
    error: str | None = None,
    error_description: str | None = None,
    iss: str | None = None,
) -> Response:
    base: HttpServices = request.app.state.services
    cookie = request.cookies.get(FLOW_COOKIE)
    flow = base.accounts.unseal(cookie, purpose=_FLOW_PURPOSE) if cookie else None
    target = auth.safe_next(str(flow.get("next", "/studies"))) if flow else "/studies"
    try:
        client = _client(request)
        if flow is None:
            raise OidcError(
                OidcProblem.NO_FLOW,
                "no sign-in is in progress in this browser: it was already completed or "
                f"refused, or it took longer than {_FLOW_SECONDS // 60} minutes",
            )
        if not state or not hmac.compare_digest(state, str(flow["state"])):
            raise OidcError(
                OidcProblem.STATE_MISMATCH,
                "the answer does not belong to the sign-in this browser started (state "
                "does not match)",
            )
        if iss is not None and iss.rstrip("/") != client.config.issuer:
            raise OidcError(  # RFC 9207: an answer from another provider (mix-up)
                OidcProblem.PROVIDER_REFUSED, f"the answer comes from {iss}, not our provider"
            )
        if error:
            raise OidcError(
                OidcProblem.PROVIDER_REFUSED,
                f"the identity provider refused: {error}"
                + (f" ({error_description})" if error_description else ""),
            )
        if not code:
            raise OidcError(OidcProblem.PROVIDER_BROKEN, "the identity provider sent no code")
        tokens = client.exchange(
            code, redirect_uri=_redirect_uri(request), code_verifier=str(flow["verifier"])
        )
        claims = client.identity_claims(tokens, nonce=str(flow["nonce"]))
        identity = identity_of(claims, client.config)
    except OidcError as exc:
        return _failure(request, exc, target)
    try:
        principal = base.accounts.sign_in_external(
            identity,
            claims_decide=client.config.claims_decide,
            region=base.region,
            address=auth.client_address(request),
        )
    except SignInError as exc:  # audited by the accounts service
        return _page(request, OidcProblem.NOT_ADMITTED, exc.message, target)
    response = auth.start_session(request, _continue_page(request, target), principal)
    seconds = base.web.token_minutes * 60
    response.set_cookie(
        IDP_COOKIE,
        base.accounts.seal(
            {"id_token": str(tokens["id_token"])}, purpose=_IDP_PURPOSE, seconds=seconds
        ),
        max_age=seconds,
        httponly=True,
        samesite="strict",
        secure=is_https(request),
        path="/signout",
    )
    return response


def end_session_url(request: Request) -> str | None:
    """Where to send the browser to end its session at the provider too, or None (not
    signed in through the provider, or it offers no RP-initiated logout)."""
    cookie = request.cookies.get(IDP_COOKIE)
    base: HttpServices = request.app.state.services
    if not cookie or base.web.oidc is None:
        return None
    sealed = base.accounts.unseal(cookie, purpose=_IDP_PURPOSE)
    if sealed is None:
        return None
    try:
        client = _client(request)
        endpoint = client.end_session_endpoint()
    except (OidcError, HttpError) as exc:
        log.warning("signing out at the identity provider is not possible now: %s", exc)
        return None
    if endpoint is None:
        return None
    query = urlencode(
        {
            "id_token_hint": sealed["id_token"],
            "client_id": client.config.client_id,
            "post_logout_redirect_uri": base_url(request) + SIGNED_OUT,
        }
    )
    return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"


def _failure(request: Request, exc: OidcError, target: str) -> HTMLResponse:
    base: HttpServices = request.app.state.services
    log.warning("OpenID Connect sign-in failed (%s): %s", exc.problem.value, exc.reason)
    base.accounts.external_sign_in_failed(
        f"OpenID Connect sign-in failed ({exc.problem.value}): {exc.reason}",
        username=exc.username or _UNKNOWN_USER,
        address=auth.client_address(request),
    )
    return _page(request, exc.problem, exc.reason, target)


def _page(request: Request, problem: OidcProblem, reason: str, target: str) -> HTMLResponse:
    label = _label(request)
    nxt = quote(target, safe="/")
    unreachable = problem is OidcProblem.UNREACHABLE
    response = render(
        request,
        "oidc_refused.html",
        status=HTTP_STATUS[problem],
        title=f"{label} cannot be reached" if unreachable else f"Sign-in with {label} did not work",
        reason=reason,
        label=label,
        again=f"{LOGIN}?next={nxt}",
        next_url=nxt,
    )
    response.delete_cookie(FLOW_COOKIE, path=CALLBACK)  # a callback is good for one try
    return response


def _continue_page(request: Request, target: str) -> HTMLResponse:
    """Signed in: on to ``target`` from a page of ours. A redirect would not do: the
    navigation started at the provider, so the browser would withhold the new
    SameSite=Strict session cookie from it."""
    response = render(request, "signed_in.html", url=target)
    response.delete_cookie(FLOW_COOKIE, path=CALLBACK)
    return response
