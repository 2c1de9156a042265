"""What the HTTP adapter is configured with, filled in by the composition root."""

from __future__ import annotations

from dataclasses import dataclass
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
    # Resource bounds: a STOW-RS body that sends nothing for this long is answered 408
    # and its connection closed (NETPACS_UPLOAD_IDLE_SECONDS).
    upload_idle_seconds: float = 30.0
