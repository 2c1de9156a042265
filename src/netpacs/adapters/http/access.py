"""Route dependencies that ask the access policy whether the signed-in user may do what
a group of routes does (query, retrieve, ...); a refusal is a 403 with the reason, and
the policy has audited it."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from netpacs.adapters.http.deps import services
from netpacs.adapters.http.errors import HttpError
from netpacs.services.access import Capability


def requires(capability: Capability) -> Any:
    """A dependency for a router or route: 403 unless the principal has ``capability``.

    Decided on the event loop (no I/O); only a refusal goes to a worker thread, to be
    audited, so that an allowed request takes no extra thread hop.
    """

    async def check(request: Request) -> None:
        svc = services(request)
        refusal = svc.access.decide(svc.principal, capability)
        if refusal is not None:
            await run_in_threadpool(svc.access.record, refusal)
            raise HttpError(403, refusal.message)

    return Depends(check)
