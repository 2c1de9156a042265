"""The account state behind a token, read from the index and briefly cached.

A valid token (services.tokens) stands for a principal only while its account exists
and is enabled and the token is not revoked: an edge node's client by the region file
(services.edge.clients) unless an account row disables it, a partner network's
(services.partners) unless its token is revoked. That state is read from the index and
believed for ``state_seconds`` (0: read for every request), so that a request can be
identified without a database round trip; a token revoked through this process is
refused at once.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

import sqlalchemy as sa

from netpacs.index.schema import revoked_token, user_account
from netpacs.services.access import Principal, Role
from netpacs.services.edge.clients import EdgeClients
from netpacs.services.partners import PartnerClients
from netpacs.services.tokens import Tokens

_MAX_STATES = 10_000  # account states remembered (then forgotten all at once)


class Lookup(enum.Enum):
    NEEDED = "needed"  # the account state must be read from the index


class AccountStates:
    """The principal a token stands for now (services.accounts is the façade)."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        tokens: Tokens,
        edges: EdgeClients,
        partners: PartnerClients,
        state_seconds: float = 0.0,
    ) -> None:
        self._engine = engine
        self._tokens = tokens
        self._edges = edges
        self._partners = partners
        self._state_seconds = state_seconds
        # (user name, token id) -> (monotonic time read, the account or None: refused)
        self._states: dict[tuple[str, str | None], tuple[float, _Account | None]] = {}

    def principal(self, token: str, *, address: str | None) -> Principal | None:
        """The principal a token stands for, or None (bad, expired, or account gone)."""
        found = self.known_principal(token, address=address)
        if found is not Lookup.NEEDED:
            return found
        known = self._tokens.verified(token)
        assert known is not None
        key = known[0], known[1]
        if known[2] == Role.PARTNER.value:  # no account row: the token is not revoked
            account = self._read_partner_state(*key)
        else:
            account = self.read(*key, edge=known[2] == Role.EDGE.value)
        if self._state_seconds > 0:
            if len(self._states) >= _MAX_STATES:
                self._states.clear()
            self._states[key] = (time.monotonic(), account)
        return self._account_principal(account, known[1], address)

    def known_principal(self, token: str, *, address: str | None) -> Principal | Lookup | None:
        """As :meth:`principal`, without reading the index: ``Lookup.NEEDED`` when the
        token's account state is not known from the last ``state_seconds`` (so that a
        request can be identified without a database round trip or a thread)."""
        known = self._tokens.verified(token)
        if known is None:
            return None
        username, jti, _role = known
        cached = self._states.get((username, jti))
        if cached is None or time.monotonic() - cached[0] >= self._state_seconds:
            return Lookup.NEEDED
        return self._account_principal(cached[1], jti, address)

    def refuse(self, username: str, jti: str) -> None:
        """Refuse the token ``jti`` of ``username`` from now on in this process (it was
        revoked here), without waiting for ``state_seconds``."""
        if self._state_seconds > 0:
            if len(self._states) >= _MAX_STATES:
                self._states.clear()
            self._states[(username, jti)] = (time.monotonic(), None)  # refused now

    def _account_principal(
        self, account: _Account | None, jti: str | None, address: str | None
    ) -> Principal | None:
        if account is None:
            return None
        if account.role is Role.PARTNER:  # a partner network (services.partners)
            return self._partners.principal(account.username, session=jti or "", address=address)
        if account.role is Role.EDGE:  # as the region file (or demo mode) says it is now
            return self._edges.principal(account.username, address=address)
        return account.principal(address)

    def _read_partner_state(self, client_id: str, jti: str | None) -> _Account | None:
        """A partner network's token state: None when revoked (or without an id)."""
        if jti is None:
            return None
        with self._engine.connect() as conn:
            revoked = conn.execute(
                sa.select(revoked_token.c.jti).where(revoked_token.c.jti == jti)
            ).first()
        return None if revoked else _Account(client_id, Role.PARTNER, "", "")

    def read(self, username: str, jti: str | None, *, edge: bool = False) -> _Account | None:
        """The account of a token from the index; None: no such account, disabled, or
        the token revoked. An edge node's client (``edge``) needs no row: it is refused
        only while a row says it is disabled (``AccountService.set_disabled``)."""
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(user_account).where(user_account.c.username == username)
            ).first()
            revoked = (
                jti is not None
                and conn.execute(
                    sa.select(revoked_token.c.jti).where(revoked_token.c.jti == jti)
                ).first()
            )
        if edge:
            node = self._edges.principal(username, address=None)
            if node is None or revoked or (row is not None and row.disabled):
                return None
            return _Account(username, Role.EDGE, node.trust or "", node.name or "")
        if row is None or row.disabled or revoked:
            return None
        return _Account(row.username, Role(row.role), row.trust, row.display_name)


@dataclass(frozen=True, slots=True)
class _Account:
    username: str
    role: Role
    trust: str
    display_name: str

    def principal(self, address: str | None) -> Principal:
        return Principal(
            user_id=self.username,
            role=self.role,
            trust=self.trust,
            address=address,
            name=self.display_name,
        )
