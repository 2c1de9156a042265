"""What the HTTP adapter is configured with, filled in by the composition root."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str
    display_name: str
    scopes: str
    username_claim: str
    trust_claim: str | None
    role_claim: str | None

    @property
    def claims_decide(self) -> bool:
        return self.trust_claim is not None and self.role_claim is not None


@dataclass(frozen=True)
class WebConfig:
    """How this HTTP server is reached and what it serves (from the composition root)."""

    public_url: str | None  # without a trailing slash; None: from each request's Host
    viewer_dir: Path
    spool_dir: Path  # STOW-RS parts over the spooling threshold go to files here
    oidc: OidcConfig | None
    token_minutes: int
    # Reverse proxies whose X-Forwarded-For/-Proto are believed (addresses or networks);
    # empty: nobody's, the client address is the peer's.
    trusted_proxies: tuple[str, ...] = ()
    # Host names this server answers to besides the public URL's and localhost's; "*"
    # in it: any (the Host header then flows into redirects and URLs).
    allowed_hosts: frozenset[str] = frozenset()
    max_body_bytes: int = 1 << 20  # JSON and form bodies; STOW-RS is not capped by it
    # Resource bounds: a STOW-RS body that sends nothing for this long is answered 408
    # and its connection closed (NETPACS_UPLOAD_IDLE_SECONDS).
    upload_idle_seconds: float = 30.0
    # Whether an unexpected error says the index database is failing over (the
    # composition root's test, netpacs.index.db.lost_primary): answered 503 with
    # Retry-After instead of 500, the client tries again.
    unavailable: Callable[[BaseException], bool] = field(default=lambda _exc: False)

    @property
    def https(self) -> bool:
        """Clients reach us over https whatever a request's own scheme (TLS ends at a proxy)."""
        return (self.public_url or "").startswith("https://")
