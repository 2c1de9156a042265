"""One way to render an HTML page: Jinja2 templates on one base layout, autoescaped.

Every page extends ``templates/base.html``: a header with the region's name, the
navigation the signed-in user's role may use (decided from its capabilities in
services.access), who is signed in and a Sign out button. A page for someone not
signed in (the sign-in form, a refused sign-in) has the same header without them.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined

from netpacs.services.access import Capability, Principal

if TYPE_CHECKING:
    from netpacs.adapters.http.deps import HttpServices

_ENV = Environment(
    loader=PackageLoader("netpacs.adapters.http", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
# Every page shows who is signed in, and most show patients: no copy in any cache.
NO_STORE = {"cache-control": "no-store"}


def page_policy(nonce: str) -> str:
    """The Content-Security-Policy of a page: only its own scripts and style blocks
    (those carrying ``nonce``) run, everything is fetched from this origin, and no
    other site may frame it. The report page frames the viewer (same origin)."""
    return (
        "default-src 'self'; "
        f"script-src 'nonce-{nonce}'; "
        f"style-src 'self' 'nonce-{nonce}'; "
        "style-src-attr 'unsafe-inline'; "
        "img-src 'self' data: blob:; "
        "frame-src 'self'; "
        "frame-ancestors 'none'; "
        "object-src 'none'; "
        "base-uri 'none'"
    )


@dataclass(frozen=True, slots=True)
class Link:
    href: str
    label: str


#: The main navigation, each page with the capability a role needs to use it.
NAVIGATION: tuple[tuple[Capability, Link], ...] = (
    (Capability.QUERY, Link("/studies", "Studies")),
    (Capability.REPORT, Link("/worklist", "Worklist")),
    (Capability.REPORT, Link("/turnaround", "Turnaround")),
    (Capability.RECONCILE, Link("/reconciliation", "Reconciliation")),
    (Capability.DELETE, Link("/rejections", "Rejections")),
    (Capability.READ_AUDIT, Link("/audit", "Audit trail")),
    (Capability.BREAK_GLASS, Link("/break-glass", "Break-glass")),
    (Capability.SEE_EDGES, Link("/edges", "Edge nodes")),
)


def navigation(principal: Principal) -> tuple[Link, ...]:
    return tuple(link for needed, link in NAVIGATION if principal.may(needed))


@dataclass(frozen=True, slots=True)
class SignedIn:
    """Who the header shows as signed in."""

    name: str
    trust: str
    role: str
    navigation: tuple[Link, ...]


@dataclass(frozen=True, slots=True)
class Layout:
    region: str
    path: str  # the page's own path: its navigation link is marked current
    user: SignedIn | None
    nonce: str  # of this answer's <script> and <style> elements (page_policy)
    # An edge node cut off from the core: what every page says about its answers.
    banner: str | None = None


def _signed_in(request: Request, base: HttpServices) -> SignedIn | None:
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        return None
    trust = base.region.trust(principal.trust) if principal.trust else None
    return SignedIn(
        name=principal.name or principal.user_id,
        trust=f"{trust.name} ({trust.ods_code})" if trust else principal.trust or "",
        role=principal.role.value,
        navigation=navigation(principal),
    )


def link_banner(base: HttpServices) -> str | None:
    """At an edge node whose core does not answer: the banner's words; else None."""
    if base.edge_read is None:
        return None
    down = base.edge_read.link_down()
    return None if down is None else down.banner(base.edge_read.zone)


def wants_page(request: Request) -> bool:
    """A browser navigating to a page (not a script or a DICOMweb client)."""
    return request.method == "GET" and "text/html" in request.headers.get("accept", "")


def render(
    request: Request,
    template: str,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """``template`` (a file of ``templates/``) on the layout of the request's user."""
    base: HttpServices = request.app.state.services
    nonce = secrets.token_urlsafe(16)
    layout = Layout(
        region=base.region.name,
        path=request.url.path,
        user=_signed_in(request, base),
        nonce=nonce,
        banner=link_banner(base),
    )
    html = _ENV.get_template(template).render(layout=layout, **context)
    security = {"content-security-policy": page_policy(nonce), "x-frame-options": "DENY"}
    return HTMLResponse(
        html, status_code=status, headers={**NO_STORE, **security, **(headers or {})}
    )


def error_page(
    request: Request,
    status: int,
    title: str,
    message: str,
    *,
    back: Link | None = None,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """A page that says what went wrong (``role=alert``), and ``back`` where to go."""
    return render(
        request,
        "error.html",
        status=status,
        headers=headers,
        title=title,
        message=message,
        back=back,
    )
