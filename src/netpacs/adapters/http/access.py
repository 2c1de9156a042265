"""Route dependencies that ask the access policy whether the signed-in user may do what
a group of routes does (query, retrieve, ...); a refusal is a 403 with the reason, and
the policy has audited it."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Request

from netpacs.adapters.http.deps import services
from netpacs.adapters.http.errors import HttpError
from netpacs.services.access import Capability


def requires(capability: Capability) -> Any:
    """A dependency for a router or route: 403 unless the principal has ``capability``."""

    def check(request: Request) -> None:
        svc = services(request)
        refusal = svc.access.check(svc.principal, capability)
        if refusal is not None:
            raise HttpError(403, refusal.message)

    return Depends(check)
