"""Claim expiry: worklist claims whose time has lapsed are released.

A claim lapses ``claim_minutes`` after its holder's last save; until this job releases
it, the item already counts as unclaimed to everyone. Releasing it makes the worklist
say so and leaves the audit trail a release, as the reporting service audits one
(the rule and its audit are the claims service's; this job only runs it).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Protocol

log = logging.getLogger(__name__)

EVERY = 30.0  # seconds between looks for lapsed claims


class ExpiresClaims(Protocol):
    def expire_claims(self, *, now: dt.datetime) -> int:
        """Release the claims lapsed at ``now``; how many were released."""
        ...


class ClaimExpiry:
    name = "claim expiry"

    def __init__(self, claims: ExpiresClaims, *, every: float = EVERY) -> None:
        self._claims = claims
        self._every = every

    def step(self) -> float:
        released = self._claims.expire_claims(now=dt.datetime.now(dt.UTC))
        if released:
            log.info("released %d worklist claims that had lapsed", released)
        return self._every

    def close(self) -> None:
        pass
