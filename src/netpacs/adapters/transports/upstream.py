"""The edge node's HTTP client of the regional core (issue 13).

One :class:`Upstream` per process: it signs in with the edge's OAuth2 client credentials
(``POST <core>/auth/token``, ``grant_type=client_credentials``), renews the token a
minute before it expires (or at once when the core answers 401), and sends requests
with ``Authorization: Bearer``, and ``X-Netpacs-On-Behalf-Of: <user>`` when the edge
passes a user's request through. Every failure that means "the core cannot answer now"
(no connection, a timeout, 5xx, 429) is one :class:`UpstreamUnavailable`, so callers
can fall back to what the edge holds; other answers (4xx) are returned to the caller.
``on_contact`` hears of each call's outcome (the link state, services.edge.link).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from netpacs.services.edge.ports import UpstreamUnavailable

__all__ = ["ON_BEHALF_HEADER", "Upstream", "UpstreamConfig", "UpstreamUnavailable"]

log = logging.getLogger(__name__)

ON_BEHALF_HEADER = "X-Netpacs-On-Behalf-Of"
_RENEW_BEFORE = 60.0  # seconds before expiry a token is renewed


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    base_url: str  # the core's base URL, no trailing slash
    client_id: str
    client_secret: str
    timeout: float = 2.0
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


#: Told of every call: True (the core answered), or False and why not.
ContactListener = Callable[[bool, str | None], None]


def _tls(config: UpstreamConfig) -> ssl.SSLContext | bool:
    if config.ca_file is None and config.cert_file is None:
        return True
    context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.cert_file is not None:
        context.load_cert_chain(
            str(config.cert_file), str(config.key_file) if config.key_file else None
        )
    return context


class Upstream:
    """The core, as the edge reaches it (thread-safe)."""

    def __init__(
        self,
        config: UpstreamConfig,
        *,
        on_contact: ContactListener | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.config = config
        self._on_contact = on_contact
        self._client = httpx.Client(
            base_url=config.base_url.rstrip("/"),
            timeout=config.timeout,
            verify=_tls(config),
            transport=transport,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=8),
        )
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = 0.0

    @property
    def base_url(self) -> str:
        return self.config.base_url.rstrip("/")

    def close(self) -> None:
        self._client.close()

    # -- the token ------------------------------------------------------------------------
    def _bearer(self, timeout: float | None, *, renew: bool = False) -> str:
        with self._lock:
            if renew or self._token is None or time.monotonic() > self._expires - _RENEW_BEFORE:
                self._token, self._expires = self._sign_in(timeout)
            return self._token

    def _sign_in(self, timeout: float | None) -> tuple[str, float]:
        try:
            response = self._client.post(
                "/auth/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": self.config.client_id,
                    "client_secret": self.config.client_secret,
                },
                timeout=timeout or self.config.timeout,
            )
        except httpx.HTTPError as exc:
            raise self._unavailable(f"sign-in at the core failed: {_why(exc)}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise self._unavailable(f"sign-in at the core: HTTP {response.status_code}")
        if response.status_code != 200:
            # Wrong credentials: the core answers, but nothing can be done until the
            # settings change; the edge works from its cache meanwhile.
            message = f"the core refused the edge's client credentials: {response.text[:200]}"
            log.error("%s (NETPACS_UPSTREAM_CLIENT_ID=%s)", message, self.config.client_id)
            raise self._unavailable(message)
        body = response.json()
        return str(body["access_token"]), time.monotonic() + float(body.get("expires_in", 300))

    # -- requests -------------------------------------------------------------------------
    def _headers(
        self, token: str, on_behalf_of: str | None, headers: Mapping[str, str] | None
    ) -> dict[str, str]:
        out = dict(headers or {})
        out["Authorization"] = f"Bearer {token}"
        if on_behalf_of:
            out[ON_BEHALF_HEADER] = on_behalf_of
        return out

    def request(
        self,
        method: str,
        path: str,
        *,
        timeout: float | None = None,
        on_behalf_of: str | None = None,
        headers: Mapping[str, str] | None = None,
        params: Any = None,
        content: bytes | Iterator[bytes] | None = None,
        data: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One request (read whole); a 401 signs in again once."""
        for attempt in (0, 1):
            token = self._bearer(timeout, renew=attempt == 1)
            try:
                response = self._client.request(
                    method,
                    path,
                    headers=self._headers(token, on_behalf_of, headers),
                    params=params,
                    content=content,
                    data=data,
                    timeout=timeout or self.config.timeout,
                )
            except httpx.HTTPError as exc:
                raise self._unavailable(f"{method} {path}: {_why(exc)}") from exc
            if response.status_code == 401 and attempt == 0 and not on_behalf_of:
                continue
            return self._checked(response, method, path)
        raise AssertionError("unreachable")

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    @contextlib.contextmanager
    def stream(
        self,
        method: str,
        path: str,
        *,
        timeout: float | None = None,
        on_behalf_of: str | None = None,
        headers: Mapping[str, str] | None = None,
        params: Any = None,
    ) -> Iterator[httpx.Response]:
        """A response whose body is read as it arrives (``iter_bytes``); a failure
        while reading it is an :class:`UpstreamUnavailable` too."""
        token = self._bearer(timeout)
        try:
            with self._client.stream(
                method,
                path,
                headers=self._headers(token, on_behalf_of, headers),
                params=params,
                timeout=timeout or self.config.timeout,
            ) as response:
                if response.status_code >= 500 or response.status_code == 429:
                    response.read()
                self._checked(response, method, path)
                yield response
        except httpx.HTTPError as exc:
            raise self._unavailable(f"{method} {path}: {_why(exc)}") from exc

    def _checked(self, response: httpx.Response, method: str, path: str) -> httpx.Response:
        if response.status_code >= 500 or response.status_code == 429:
            raise self._unavailable(f"{method} {path}: HTTP {response.status_code}")
        self._contact(True, None)
        return response

    def _unavailable(self, why: str) -> UpstreamUnavailable:
        self._contact(False, why)
        return UpstreamUnavailable(why)

    def _contact(self, ok: bool, why: str | None) -> None:
        if self._on_contact is None:
            return
        try:
            self._on_contact(ok, why)
        except Exception:  # the link record is not worth failing the call for
            log.exception("recording the link state failed")


def _why(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer in time ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({exc})"
    return f"{type(exc).__name__}: {exc}"
