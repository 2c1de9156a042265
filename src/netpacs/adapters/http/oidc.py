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

The discovery document is cached for an hour and the JWKS (PyJWT's PyJWKClient) for
five minutes; an ID token signed with a key we have not seen fetches the JWKS again
at once, so the provider may rotate its keys at any time. Every failure is a page
that says what went wrong (4xx, or 502 when the provider cannot be reached or
answers nonsense), audited as a failed sign-in; never a 500.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import logging
import secrets
import threading
import time
from typing import Any
from urllib.parse import quote, quote_plus, urlencode

import httpx
import jwt
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from netpacs.adapters.http import auth
from netpacs.adapters.http.config import OidcConfig
from netpacs.adapters.http.deps import HttpServices, base_url
from netpacs.adapters.http.errors import HttpError
from netpacs.adapters.http.pages.render import render
from netpacs.services.accounts import ExternalIdentity, SignInError

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
_METADATA_SECONDS = 3600
_JWKS_SECONDS = 300
_LEEWAY_SECONDS = 60
_ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
_UNKNOWN_USER = "(OpenID Connect)"


class OidcProblem(enum.Enum):
    NOT_SET_UP = "not set up"
    UNREACHABLE = "provider unreachable"
    PROVIDER_BROKEN = "provider answered nonsense"
    PROVIDER_REFUSED = "provider refused"
    NO_FLOW = "no sign-in in progress"
    STATE_MISMATCH = "state does not match"
    BAD_ID_TOKEN = "ID token not valid"
    NOT_ADMITTED = "not admitted"


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


class OidcError(Exception):
    def __init__(self, problem: OidcProblem, reason: str, *, username: str | None = None) -> None:
        super().__init__(reason)
        self.problem = problem
        self.reason = reason
        self.username = username


class OidcClient:
    """The identity provider as netpacs talks to it (one per worker process)."""

    def __init__(self, config: OidcConfig, *, timeout: float = 10.0) -> None:
        self.config = config
        self._timeout = timeout
        self._http = httpx.Client(timeout=timeout, follow_redirects=False)
        self._lock = threading.Lock()
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._jwks: jwt.PyJWKClient | None = None

    # -- discovery (OpenID Connect Discovery 1.0) ----------------------------------------
    def metadata(self) -> dict[str, Any]:
        with self._lock:
            if self._metadata and time.monotonic() - self._metadata_at < _METADATA_SECONDS:
                return self._metadata
        url = f"{self.config.issuer}/.well-known/openid-configuration"
        doc = self._json(self._http.get, url, what="discovery document")
        # Discovery 4.3: the issuer it names must be exactly the one we were given.
        if str(doc.get("issuer", "")).rstrip("/") != self.config.issuer:
            raise OidcError(
                OidcProblem.PROVIDER_BROKEN,
                f"the discovery document names issuer {doc.get('issuer')!r}, "
                f"not {self.config.issuer!r}",
            )
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(doc.get(key), str):
                raise OidcError(OidcProblem.PROVIDER_BROKEN, f"the discovery document has no {key}")
        with self._lock:
            self._metadata, self._metadata_at = doc, time.monotonic()
            if self._jwks is None or self._jwks.uri != doc["jwks_uri"]:
                # cooldown 0: an unknown key id refetches at once (rotation). Only ID
                # tokens from our own request to the token endpoint get this far, so no
                # one else can make us fetch.
                self._jwks = jwt.PyJWKClient(
                    doc["jwks_uri"],
                    lifespan=_JWKS_SECONDS,
                    timeout=int(self._timeout),
                    cooldown_duration=0,
                )
        return doc

    def _json(self, send: Any, url: str, *, what: str, **kw: Any) -> dict[str, Any]:
        try:
            response: httpx.Response = send(url, **kw)
        except httpx.HTTPError as exc:
            raise OidcError(
                OidcProblem.UNREACHABLE, f"its {what} ({url}) could not be fetched: {exc}"
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 500 or not isinstance(body, dict):
            raise OidcError(
                OidcProblem.PROVIDER_BROKEN,
                f"its {what} ({url}) answered {response.status_code} without a JSON object",
            )
        if response.status_code >= 400:
            raise OidcError(
                OidcProblem.PROVIDER_REFUSED,
                f"its {what} refused: {body.get('error', response.status_code)}"
                + (f" ({body['error_description']})" if body.get("error_description") else ""),
            )
        return body

    # -- the flow -------------------------------------------------------------------------
    def authorization_url(
        self, *, redirect_uri: str, state: str, nonce: str, code_challenge: str
    ) -> str:
        endpoint = str(self.metadata()["authorization_endpoint"])
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.config.client_id,
                "redirect_uri": redirect_uri,
                "scope": self.config.scopes,
                "state": state,
                "nonce": nonce,
                "code_challenge": code_challenge,
                "code_challenge_method": "S256",
            }
        )
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    def exchange(self, code: str, *, redirect_uri: str, code_verifier: str) -> dict[str, Any]:
        """The token response for an authorization code (OIDC Core 3.1.3.1)."""
        meta = self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        }
        methods = meta.get("token_endpoint_auth_methods_supported", ["client_secret_basic"])
        if "client_secret_basic" in methods:
            # RFC 6749 2.3.1: id and secret are form-encoded before Basic encoding.
            pair = ":".join(
                quote_plus(v, safe="") for v in (self.config.client_id, self.config.client_secret)
            )
            headers = {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
        else:
            form |= {"client_id": self.config.client_id, "client_secret": self.config.client_secret}
            headers = {}
        tokens = self._json(
            self._http.post,
            str(meta["token_endpoint"]),
            what="token endpoint",
            data=form,
            headers={**headers, "Accept": "application/json"},
        )
        if not isinstance(tokens.get("id_token"), str):
            raise OidcError(OidcProblem.PROVIDER_BROKEN, "its token endpoint gave no ID token")
        return tokens

    def identity_claims(self, tokens: dict[str, Any], *, nonce: str) -> dict[str, Any]:
        """The validated ID token's claims, completed from the userinfo endpoint for the
        claims we need that the ID token leaves out (OIDC Core 5.3, 5.4)."""
        claims = self.validate_id_token(str(tokens["id_token"]), nonce=nonce)
        wanted = [self.config.username_claim]
        if self.config.claims_decide:
            wanted += [str(self.config.trust_claim), str(self.config.role_claim)]
        endpoint = self.metadata().get("userinfo_endpoint")
        if all(k in claims for k in wanted) or not endpoint or "access_token" not in tokens:
            return claims
        info = self._json(
            self._http.get,
            str(endpoint),
            what="userinfo endpoint",
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
        )
        if info.get("sub") != claims["sub"]:  # 5.3.2: must be the same person
            raise OidcError(OidcProblem.BAD_ID_TOKEN, "the userinfo is about someone else")
        return {**info, **claims}

    def validate_id_token(self, id_token: str, *, nonce: str) -> dict[str, Any]:
        """OIDC Core 3.1.3.7: signed by the provider, for us, not expired, this nonce."""
        meta = self.metadata()
        assert self._jwks is not None
        try:
            key = self._jwks.get_signing_key_from_jwt(id_token)
        except jwt.PyJWKClientConnectionError as exc:
            raise OidcError(
                OidcProblem.UNREACHABLE, f"its JWKS could not be fetched: {exc}"
            ) from None
        except jwt.PyJWTError as exc:
            raise OidcError(
                OidcProblem.BAD_ID_TOKEN, f"the ID token is not signed by a key it publishes: {exc}"
            ) from None
        offered = meta.get("id_token_signing_alg_values_supported", ["RS256"])
        algorithms = [a for a in _ASYMMETRIC if a in offered] or ["RS256"]
        try:
            claims: dict[str, Any] = jwt.decode(
                id_token,
                key.key,
                algorithms=algorithms,
                audience=self.config.client_id,
                issuer=meta["issuer"],
                leeway=_LEEWAY_SECONDS,
                options={"require": ["iss", "sub", "aud", "exp", "iat"]},
            )
        except jwt.ExpiredSignatureError:
            raise OidcError(OidcProblem.BAD_ID_TOKEN, "the ID token has expired") from None
        except jwt.InvalidAudienceError:
            raise OidcError(OidcProblem.BAD_ID_TOKEN, "the ID token is not for netpacs") from None
        except jwt.InvalidIssuerError:
            raise OidcError(
                OidcProblem.BAD_ID_TOKEN, "the ID token is from another issuer"
            ) from None
        except jwt.PyJWTError as exc:
            raise OidcError(OidcProblem.BAD_ID_TOKEN, f"the ID token is not valid: {exc}") from None
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self.config.client_id:
            raise OidcError(OidcProblem.BAD_ID_TOKEN, "the ID token was issued to another client")
        if not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
            raise OidcError(
                OidcProblem.BAD_ID_TOKEN, "the ID token's nonce is not this sign-in's (replayed?)"
            )
        return claims


def code_challenge(verifier: str) -> str:
    """PKCE S256 (RFC 7636 4.2): BASE64URL(SHA256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def identity_of(claims: dict[str, Any], config: OidcConfig) -> ExternalIdentity:
    username = claims.get(config.username_claim)
    if not isinstance(username, str) or not 0 < len(username.strip()) <= 64:
        raise OidcError(
            OidcProblem.NOT_ADMITTED,
            f"the identity provider gave no usable user name (claim {config.username_claim!r})",
        )

    def text(claim: str | None) -> str | None:
        value = claims.get(claim) if claim else None
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        return value if isinstance(value, str) else None  # several roles: none chosen

    name = claims.get("name")
    return ExternalIdentity(
        provider=config.issuer,
        username=username.strip(),
        display_name=name if isinstance(name, str) else "",
        trust=text(config.trust_claim),
        role=text(config.role_claim),
    )


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
        client = _client(request)
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)  # 86 characters (RFC 7636: 43-128)
        url = client.authorization_url(
            redirect_uri=_redirect_uri(request),
            state=state,
            nonce=nonce,
            code_challenge=code_challenge(verifier),
        )
    except OidcError as exc:
        return _failure(request, exc, target)
    base: HttpServices = request.app.state.services
    flow = base.accounts.seal(
        {"state": state, "nonce": nonce, "verifier": verifier, "next": target},
        purpose=_FLOW_PURPOSE,
        seconds=_FLOW_SECONDS,
    )
    response = RedirectResponse(url, status_code=303)
    # Lax, not Strict: the provider's redirect back is a cross-site navigation.
    response.set_cookie(
        FLOW_COOKIE,
        flow,
        max_age=_FLOW_SECONDS,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
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
        secure=request.url.scheme == "https",
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
        endpoint = client.metadata().get("end_session_endpoint")
    except (OidcError, HttpError) as exc:
        log.warning("signing out at the identity provider is not possible now: %s", exc)
        return None
    if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
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
