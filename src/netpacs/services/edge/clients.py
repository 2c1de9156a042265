"""The core's side of the edge nodes: who may sign in with OAuth2 client credentials.

The region file lists the edge nodes (``[[edges]]``); in demo mode every trust without
one gets a demo edge node ``edge.<ods lower>`` (site: the trust's first) whose secret is
the demo password. A signed-in edge is a principal of role ``edge`` bound to its trust
and site; what it may do is decided in :mod:`netpacs.services.access`.
"""

from __future__ import annotations

import hmac
import logging

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from netpacs.domain.region import EdgeNode, Region
from netpacs.services.access import Principal, Role

log = logging.getLogger(__name__)


def demo_client_id(ods_code: str) -> str:
    return f"edge.{ods_code.lower()}"


def demo_edges(region: Region, password: str) -> tuple[EdgeNode, ...]:
    """The demo edge node of every trust the region file gives none (demo mode only)."""
    listed = {e.trust for e in region.edges}
    return tuple(
        EdgeNode(
            name=f"{t.ods_code} edge (demo)",
            trust=t.ods_code,
            site=t.sites[0].code,
            client_id=demo_client_id(t.ods_code),
            demo_secret=password,
        )
        for t in region.trusts
        if t.ods_code not in listed and t.sites
    )


class EdgeClients:
    """The edge nodes that may sign in, by client id."""

    def __init__(self, edges: tuple[EdgeNode, ...]) -> None:
        self._edges = {e.client_id: e for e in edges}
        self._hasher = PasswordHasher()

    def __bool__(self) -> bool:
        return bool(self._edges)

    @property
    def edges(self) -> tuple[EdgeNode, ...]:
        return tuple(self._edges.values())

    def sign_in(self, client_id: str, secret: str, *, address: str | None) -> Principal | None:
        """The edge's principal when ``secret`` is its client secret, else None."""
        edge = self._edges.get(client_id)
        if edge is None or not secret or not self._secret_ok(edge, secret):
            return None
        return self.principal(client_id, address=address)

    def principal(self, client_id: str, *, address: str | None) -> Principal | None:
        """The principal of a listed edge (a token's subject), None for any other."""
        edge = self._edges.get(client_id)
        if edge is None:
            return None
        return Principal(
            user_id=edge.client_id,
            role=Role.EDGE,
            trust=edge.trust,
            address=address,
            name=edge.name,
            site=edge.site,
        )

    def _secret_ok(self, edge: EdgeNode, secret: str) -> bool:
        if edge.demo_secret is not None:
            return hmac.compare_digest(secret.encode(), edge.demo_secret.encode())
        if edge.secret_hash is not None:
            try:
                return self._hasher.verify(edge.secret_hash, secret)
            except (VerificationError, InvalidHashError):
                return False
        if edge.secret_file is not None:
            try:
                expected = edge.secret_file.read_text().strip()
            except OSError as exc:
                log.error("edge %s: its secret_file cannot be read (%s)", edge.name, exc)
                return False
            return bool(expected) and hmac.compare_digest(secret.encode(), expected.encode())
        return False
