"""The OpenID Connect relying party: netpacs's client of the identity provider.

Authlib does the protocol: the authorization request with ``state``, ``nonce`` and a
PKCE S256 challenge (OIDC Core 3.1.2, RFC 7636), the token request (3.1.3) and the
checks of the ID token's claims (3.1.3.7: ``iss``, ``aud``, ``exp``, ``iat``, ``nonce``,
``azp``, ``at_hash``); the ID token's signature is checked by joserfc, Authlib's JOSE
library, against the provider's JWKS. What is fetched from the provider (discovery,
JWKS, userinfo) goes through one httpx client here, so that every failure becomes an
:class:`OidcError` whose :class:`OidcProblem` the routes (:mod:`.oidc`) turn into a page.

The discovery document is cached for an hour and the JWKS for five minutes; an ID
token signed with a key we have not seen fetches the JWKS again at once, so the
provider may rotate its keys at any time.
"""

from __future__ import annotations

import enum
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import httpx
from authlib.oauth2.base import OAuth2Error  # type: ignore[import-untyped]
from authlib.oauth2.client import OAuth2Client  # type: ignore[import-untyped]
from authlib.oidc.core import CodeIDToken  # type: ignore[import-untyped]
from joserfc import jwt
from joserfc.errors import (
    ClaimError,
    ExpiredTokenError,
    InvalidKeyIdError,
    JoseError,
)
from joserfc.jwk import KeySet

from netpacs.adapters.http.config import OidcConfig
from netpacs.services.accounts import ExternalIdentity

_METADATA_SECONDS = 3600
_JWKS_SECONDS = 300
_LEEWAY_SECONDS = 60
_ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
# What each claim's failed check means, said to the user.
_CLAIM_FAULTS = {
    "exp": "the ID token has expired",
    "aud": "the ID token is not for netpacs",
    "azp": "the ID token was issued to another client",
    "iss": "the ID token is from another issuer",
    "nonce": "the ID token's nonce is not this sign-in's (replayed?)",
}


class OidcProblem(enum.Enum):
    NOT_SET_UP = "not set up"
    UNREACHABLE = "provider unreachable"
    PROVIDER_BROKEN = "provider answered nonsense"
    PROVIDER_REFUSED = "provider refused"
    NO_FLOW = "no sign-in in progress"
    STATE_MISMATCH = "state does not match"
    BAD_ID_TOKEN = "ID token not valid"
    NOT_ADMITTED = "not admitted"


class OidcError(Exception):
    def __init__(self, problem: OidcProblem, reason: str, *, username: str | None = None) -> None:
        super().__init__(reason)
        self.problem = problem
        self.reason = reason
        self.username = username


@dataclass(frozen=True, slots=True)
class SignIn:
    """A sign-in just started: where the browser goes, and what its callback must match."""

    url: str  # the provider's authorization endpoint with our request
    state: str
    nonce: str
    code_verifier: str


class OidcClient:
    """The identity provider as netpacs talks to it (one per worker process)."""

    def __init__(self, config: OidcConfig, *, timeout: float = 10.0) -> None:
        self.config = config
        self._http = httpx.Client(timeout=timeout, follow_redirects=False)
        self._lock = threading.Lock()
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._keys: KeySet | None = None
        self._keys_at = 0.0

    def _oauth(self) -> Any:
        """Authlib's OAuth 2.0 client, one per sign-in: it keeps the token it fetched."""
        return OAuth2Client(
            self._http,
            client_id=self.config.client_id,
            client_secret=self.config.client_secret,
            scope=self.config.scopes,
            code_challenge_method="S256",
        )

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
            if self._metadata is None or self._metadata["jwks_uri"] != doc["jwks_uri"]:
                self._keys = None
            self._metadata, self._metadata_at = doc, time.monotonic()
        return doc

    def _json(
        self, send: Callable[..., httpx.Response], url: str, *, what: str, **kw: Any
    ) -> dict[str, Any]:
        try:
            response = send(url, **kw)
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
            raise _refused(what, str(body.get("error", response.status_code)), body)
        return body

    def _key_set(self, *, refresh: bool = False) -> KeySet:
        """The provider's signing keys (its JWKS), kept five minutes. ``refresh``: fetch
        them again at once, for an ID token signed with a key we have not seen. Only ID
        tokens from our own request to the token endpoint get that far, so no one else
        can make us fetch."""
        with self._lock:
            fresh = time.monotonic() - self._keys_at < _JWKS_SECONDS
            if self._keys is not None and fresh and not refresh:
                return self._keys
        doc = self._json(self._http.get, str(self.metadata()["jwks_uri"]), what="JWKS")
        try:
            keys = KeySet.import_key_set(doc)  # type: ignore[arg-type]
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            raise OidcError(
                OidcProblem.PROVIDER_BROKEN, f"its JWKS cannot be used: {exc}"
            ) from None
        with self._lock:
            self._keys, self._keys_at = keys, time.monotonic()
        return keys

    # -- the flow -------------------------------------------------------------------------
    def start(self, *, redirect_uri: str) -> SignIn:
        """A new sign-in: a fresh state, nonce and PKCE verifier, and the authorization
        request that carries them (the verifier as its S256 challenge)."""
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)  # 86 characters (RFC 7636: 43-128)
        url, _ = self._oauth().create_authorization_url(
            str(self.metadata()["authorization_endpoint"]),
            state=state,
            code_verifier=verifier,
            nonce=nonce,
            redirect_uri=redirect_uri,
        )
        return SignIn(str(url), state, nonce, verifier)

    def exchange(self, code: str, *, redirect_uri: str, code_verifier: str) -> dict[str, Any]:
        """The token response for an authorization code (OIDC Core 3.1.3.1)."""
        meta = self.metadata()
        url = str(meta["token_endpoint"])
        client, secret = self._client_authentication(meta)
        try:
            tokens: dict[str, Any] = self._oauth().fetch_token(
                url,
                code=code,
                redirect_uri=redirect_uri,
                code_verifier=code_verifier,
                auth=client,
                **secret,
            )
        except httpx.RequestError as exc:
            raise OidcError(
                OidcProblem.UNREACHABLE, f"its token endpoint ({url}) could not be fetched: {exc}"
            ) from None
        except (httpx.HTTPStatusError, ValueError) as exc:
            raise OidcError(
                OidcProblem.PROVIDER_BROKEN,
                f"its token endpoint ({url}) answered without a token response: {exc}",
            ) from None
        except OAuth2Error as exc:
            description = {"error_description": exc.description}
            raise _refused("token endpoint", str(exc.error), description) from None
        if not isinstance(tokens.get("id_token"), str):
            raise OidcError(OidcProblem.PROVIDER_BROKEN, "its token endpoint gave no ID token")
        return dict(tokens)

    def _client_authentication(self, meta: dict[str, Any]) -> tuple[httpx.Auth, dict[str, str]]:
        """How we prove who we are at the token endpoint (RFC 6749 2.3.1): HTTP Basic if
        the provider takes it, else the id and secret in the form. Given to Authlib as
        the request's httpx authentication and its form fields."""
        methods = meta.get("token_endpoint_auth_methods_supported", ["client_secret_basic"])
        config = self.config
        if "client_secret_basic" in methods:
            # id and secret form-encoded before Basic encoding, as 2.3.1 says (Authlib's
            # own client_secret_basic leaves them as they are)
            basic = [quote_plus(v, safe="") for v in (config.client_id, config.client_secret)]
            return httpx.BasicAuth(*basic), {}
        # httpx.Auth() adds nothing; without it Authlib would add its own
        return httpx.Auth(), {"client_id": config.client_id, "client_secret": config.client_secret}

    def identity_claims(self, tokens: dict[str, Any], *, nonce: str) -> dict[str, Any]:
        """The validated ID token's claims, completed from the userinfo endpoint for the
        claims we need that the ID token leaves out (OIDC Core 5.3, 5.4)."""
        claims = self.validate_id_token(tokens, nonce=nonce)
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

    def validate_id_token(self, tokens: dict[str, Any], *, nonce: str) -> dict[str, Any]:
        """OIDC Core 3.1.3.7: signed by the provider with an asymmetric key it publishes,
        for us, from our issuer, not expired, this sign-in's nonce."""
        meta = self.metadata()
        offered = meta.get("id_token_signing_alg_values_supported", ["RS256"])
        algorithms = [a for a in _ASYMMETRIC if a in offered] or ["RS256"]
        id_token = str(tokens["id_token"])
        try:
            try:
                token = jwt.decode(id_token, self._key_set(), algorithms=algorithms)
            except InvalidKeyIdError:  # a key we have not seen: the provider rotated
                token = jwt.decode(id_token, self._key_set(refresh=True), algorithms=algorithms)
            claims = CodeIDToken(
                token.claims,
                token.header,
                {
                    "iss": {"essential": True, "value": meta["issuer"]},
                    "aud": {"essential": True, "value": self.config.client_id},
                },
                {
                    "nonce": nonce,
                    "client_id": self.config.client_id,
                    "access_token": tokens.get("access_token"),
                },
            )
            claims.validate(leeway=_LEEWAY_SECONDS)
        except JoseError as exc:
            raise OidcError(OidcProblem.BAD_ID_TOKEN, _id_token_fault(exc)) from None
        return dict(claims)

    def end_session_endpoint(self) -> str | None:
        """The provider's RP-initiated logout endpoint, if it has one."""
        endpoint = self.metadata().get("end_session_endpoint")
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
            return None
        return endpoint


def _refused(what: str, error: str, body: dict[str, Any]) -> OidcError:
    description = body.get("error_description")
    return OidcError(
        OidcProblem.PROVIDER_REFUSED,
        f"its {what} refused: {error}" + (f" ({description})" if description else ""),
    )


def _id_token_fault(exc: JoseError) -> str:
    if isinstance(exc, ExpiredTokenError):
        return _CLAIM_FAULTS["exp"]
    if isinstance(exc, ClaimError) and exc.claim in _CLAIM_FAULTS:
        return _CLAIM_FAULTS[exc.claim]
    if isinstance(exc, InvalidKeyIdError):
        return f"the ID token is not signed by a key it publishes: {exc}"
    return f"the ID token is not valid: {exc}"


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
