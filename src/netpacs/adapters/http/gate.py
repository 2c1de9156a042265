"""The gate every HTTP request passes before any route runs or any body is read.

In order:

1. **Host.** The ``Host`` header must name this server (the public URL's host,
   localhost, or ``NETPACS_ALLOWED_HOSTS``): it flows into redirects and the URLs of
   DICOMweb and FHIR answers when no public URL is set. Otherwise 400. The health
   checks (``/healthz``, ``/readyz``) and ``/metrics`` answer whatever host a balancer
   or a scraper names (their answers carry no URL; metrics are refused by address).
2. **Cross-site requests.** A state change (any method but GET, HEAD, OPTIONS) that a
   browser authenticates with the session cookie must come from a page of this origin:
   ``Sec-Fetch-Site: same-origin``, else an ``Origin`` (else a ``Referer``) naming this
   origin. SameSite=Strict alone lets a page on another port of the same host through
   (it is the same *site*). Requests with an ``Authorization`` header cannot be sent
   by another page's form or script without a CORS preflight (which we never grant).
   Sign-in and sign-out are refused only when the browser says the request is
   cross-origin. Otherwise 403.
3. **Sign-in.** The sender is identified (auth.identify) before anything reads the
   body: a request with a body, or a state change, from nobody signed in is 401 at
   once. Other requests go on, and the app-wide dependency answers them 401 (a
   browser asking for a page gets the sign-in form).
4. **Body size.** A body other than STOW-RS's larger than ``max_body_bytes`` is 413:
   at once by its ``Content-Length``, else as soon as that many bytes have arrived
   (Starlette's RequestBodyLimitResponder counts them). STOW-RS streams its parts to
   disk (stow.py) and is not capped here.

Every answer then gets ``X-Content-Type-Options: nosniff``, ``Referrer-Policy:
same-origin``, a Content-Security-Policy that forbids framing (pages and the viewer
set their own, fuller ones) and ``X-Frame-Options``; DICOMweb, FHIR and API answers
get ``Cache-Control: no-store`` (they carry patient data).

Own code rather than Starlette's TrustedHostMiddleware: its refusal says only
"Invalid host header", and the CSRF and sign-in checks need the same request view.
"""

from __future__ import annotations

import re
import socket
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.middleware.body_limit import RequestBodyLimitResponder
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from netpacs.adapters.http import auth, health
from netpacs.adapters.http.config import WebConfig

_ANY_HOST = health.PATHS | {"/metrics"}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
_STOW = re.compile(r"/dicomweb/studies(/[^/]+)?/?")
# Answers with patient data: never kept by a browser or a proxy.
_NO_STORE = ("/dicomweb", "/fhir", "/api/", "/auth/")
#: The policy of answers that set none (JSON, DICOM, images): nothing runs, no framing.
DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"


def host_name(host: str) -> str:
    """The name in a Host header, without the port and IPv6 brackets, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


class Gate:
    """ASGI middleware: the checks above, then the app (see the module docstring)."""

    def __init__(self, app: ASGIApp, web: WebConfig) -> None:
        self.app = app
        self.web = web
        self.public_origin = _origin(web.public_url) if web.public_url else None
        if "*" in web.allowed_hosts:
            self.hosts: frozenset[str] | None = None
        else:
            public = urlsplit(web.public_url).hostname if web.public_url else None
            own = {socket.gethostname().lower()}
            self.hosts = (
                LOOPBACK | web.allowed_hosts | own | ({public.lower()} if public else set())
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        path: str = scope["path"]
        send = self._headers(path, send)
        refusal = self._refusal(request)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if not auth.is_open(path):
            if not auth.identify_known(request):
                await run_in_threadpool(auth.identify, request)
            if request.state.refusal:  # an edge node acting for a user it may not, a
                # partner network's stated user or purpose that cannot be recorded
                status = getattr(request.state, "refusal_status", 403)
                await _json(status, request.state.refusal)(scope, receive, send)
                return
            if request.state.principal is None and (
                request.method not in SAFE_METHODS or _has_body(request)
            ):
                answer = _json(401, request.state.sign_in_problem)
                answer.headers["www-authenticate"] = 'Bearer realm="netpacs"'
                await answer(scope, receive, send)
                return
        app = self.app
        if not (request.method == "POST" and _STOW.fullmatch(path)):
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.web.max_body_bytes:
                too_large = _json(
                    413,
                    f"the request body ({int(declared)} bytes) is larger than the "
                    f"{self.web.max_body_bytes} bytes accepted here",
                )
                await too_large(scope, receive, send)
                return
            app = RequestBodyLimitResponder(self.app, self.web.max_body_bytes)
        await app(scope, receive, send)

    def _refusal(self, request: Request) -> JSONResponse | None:
        host = request.headers.get("host")
        if (
            self.hosts is not None
            and host is not None
            and host_name(host) not in self.hosts
            and request.url.path not in _ANY_HOST
        ):
            return _json(
                400,
                f"this server does not answer to the host name {host_name(host)[:100]!r} "
                "(NETPACS_PUBLIC_URL and NETPACS_ALLOWED_HOSTS name those it does)",
            )
        if request.method not in SAFE_METHODS:
            same = self._same_origin(request)
            token, from_cookie = auth.credentials(request)
            if auth.is_open(request.url.path):
                if same is False:
                    return _json(403, "a sign-in or sign-out from another site's page is refused")
            elif token and from_cookie and same is not True:
                return _json(
                    403,
                    "refused: this change did not come from a page of this site "
                    "(a cross-site request carrying the session cookie)",
                )
        return None

    def _same_origin(self, request: Request) -> bool | None:
        """Whether the browser says the request comes from a page of this origin; None
        when it says nothing (not a browser, or a very old one)."""
        site = request.headers.get("sec-fetch-site")
        if site is not None:
            return site == "same-origin"
        claimed = request.headers.get("origin") or None
        if claimed is None:
            referer = request.headers.get("referer")
            if not referer:
                return None
            claimed = _origin(referer) or "null"
        own = {f"{request.url.scheme}://{request.headers.get('host', '')}".lower()}
        if self.public_origin:
            own.add(self.public_origin)
        return claimed.lower() in own

    def _headers(self, path: str, send: Send) -> Send:
        no_store = path.startswith(_NO_STORE)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("x-content-type-options", "nosniff")
                headers.setdefault("referrer-policy", "same-origin")
                headers.setdefault("content-security-policy", DEFAULT_CSP)
                headers.setdefault("x-frame-options", "DENY")
                if no_store:
                    headers["cache-control"] = "no-store"
            await send(message)

        return send_with_headers


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length", "0")
    return "transfer-encoding" in request.headers or length not in ("", "0")


def _json(status: int, message: str | None) -> JSONResponse:
    return JSONResponse({"status": status, "message": message}, status_code=status)
