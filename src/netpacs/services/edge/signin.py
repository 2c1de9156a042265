"""Sign-in at an edge node: the core checks the password while it answers; for 12
hours after, the edge can check it alone (issue 13).

A user signs in at the edge with their regional account. While the core answers, the
edge passes the user name and password to it (``POST /auth/token``): the core's
accounts decide (a disabled account, a wrong password, a lock-out after too many
failures), and the core records the sign-in. On success the edge keeps the account's
state as the core gives it (``GET /api/me`` for the user: name, trust, role) and an
argon2 hash of the password that worked, with the time (``edge_signin``); a user of
another trust is refused (an edge acts for its own trust's users only).

While the core does not answer, a user whose password the core confirmed at this edge
within ``offline_hours`` signs in against that local hash (with the same lock-out,
counted in the edge's audit trail); anyone else is told why not. A refusal by the core
forgets the confirmation: the account may have been disabled there.

Tokens are the edge's own (signed with its key), checked by the edge itself, so they
keep working while the core is away; what they let the user see is decided by the same
rules (services.access).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import sqlalchemy as sa

from netpacs.index.schema import edge_signin, user_account
from netpacs.services.access import PEOPLE, Principal, Role
from netpacs.services.accounts import AccountService, SignInError, SignInProblem
from netpacs.services.audit import Actor, AuditRecord, Event, Outcome
from netpacs.services.edge.ports import UpstreamPort, UpstreamUnavailable

log = logging.getLogger(__name__)

OFFLINE_HOURS = 12
#: What a sign-in may wait for the core beyond the edge's upstream bound
#: (NETPACS_UPSTREAM_TIMEOUT_SECONDS), in all, before the edge checks the password
#: alone: the core's check is an argon2 hash and two calls (about 0.2 s on a quiet
#: core), so a busy core gets a second more than a query, and a hung one costs the
#: person signing in the bound plus this, not more.
SIGNIN_MARGIN = 1.0


class EdgeAccounts(AccountService):
    """The edge's accounts: sign-in confirmed by the core, or by the edge for users the
    core confirmed here lately."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        upstream: UpstreamPort,
        edge_trust: str,
        timeout: float,
        offline_hours: int = OFFLINE_HOURS,
        **kwargs: Any,
    ) -> None:
        super().__init__(engine, **kwargs)
        self._upstream = upstream
        self._edge_trust = edge_trust
        self._timeout = timeout  # for the whole of the core's check, not per call
        self._offline = dt.timedelta(hours=offline_hours)

    def sign_in(self, username: str, password: str, *, address: str | None) -> Principal:
        now = dt.datetime.now(dt.UTC)
        if self._recent_failures(username, address, now) >= self._attempts:
            return super().sign_in(username, password, address=address)  # refuses, audited
        try:
            state = self._confirm_at_core(username, password)
        except UpstreamUnavailable:
            return self._sign_in_offline(username, password, address=address, now=now)
        if isinstance(state, SignInError):
            self._forget(username)
            self._failed(username, address, f"refused by the regional archive: {state.message}")
            raise state
        role = Role(state["role"]) if state.get("role") in {r.value for r in PEOPLE} else None
        if role is None or state.get("trust") != self._edge_trust:
            message = (
                f"{username} is not a user of {self._edge_trust}: sign in at your own "
                "trust's hospitals, or at the regional archive"
            )
            self._failed(username, address, message)
            raise SignInError(SignInProblem.REFUSED, message)
        self._keep(username, password, role, str(state.get("name") or username), now)
        principal = Principal(
            user_id=username,
            role=role,
            trust=self._edge_trust,
            address=address,
            name=str(state.get("name") or username),
        )
        self._audit.record(
            AuditRecord(
                Event.LOGIN,
                principal.actor(),
                detail="signed in at the edge (password confirmed by the regional archive)",
            )
        )
        return principal

    # -- the core's answer ------------------------------------------------------------------
    def _confirm_at_core(self, username: str, password: str) -> dict[str, Any] | SignInError:
        """The account state the core gives for a correct password, or the SignInError
        saying why the core refused. UpstreamUnavailable: the core did not answer."""
        deadline = time.monotonic() + self._timeout

        def left() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UpstreamUnavailable("the regional archive took too long to check it")
            return remaining

        answer = self._upstream.post(
            "/auth/token",
            timeout=left(),
            data={"grant_type": "password", "username": username, "password": password},
        )
        if answer.status_code != 200:
            problem = SignInProblem.LOCKED if answer.status_code == 429 else SignInProblem.INVALID
            try:
                message = str(answer.json().get("error_description", ""))
            except ValueError:
                message = ""
            return SignInError(problem, message or "wrong user name or password")
        token = str(answer.json().get("access_token", ""))
        try:
            me = self._upstream.get("/api/me", timeout=left(), on_behalf_of=username)
        finally:  # the edge issues its own tokens
            self._revoke_at_core(token, max(deadline - time.monotonic(), 0.5))
        if me.status_code != 200:  # e.g. a user of another trust: the core says so
            try:
                why = str(me.json().get("message", ""))
            except ValueError:
                why = ""
            return SignInError(
                SignInProblem.REFUSED, why or "the regional archive refused the account"
            )
        state: dict[str, Any] = me.json()
        return state

    def _revoke_at_core(self, token: str, timeout: float) -> None:
        try:
            self._upstream.post("/auth/revoke", timeout=timeout, data={"token": token})
        except UpstreamUnavailable:
            log.info("the core's token of a sign-in at the edge was not revoked (it expires)")

    # -- what the edge keeps --------------------------------------------------------------
    def _keep(self, username: str, password: str, role: Role, name: str, now: dt.datetime) -> None:
        values = {
            "password_hash": self._hasher.hash(password),
            "trust": self._edge_trust,
            "role": role.value,
            "display_name": name,
            "disabled": False,
        }
        with self._engine.begin() as conn:
            updated = conn.execute(
                sa.update(user_account).where(user_account.c.username == username).values(values)
            ).rowcount
            if not updated:
                conn.execute(
                    sa.insert(user_account).values(username=username, created_at=now, **values)
                )
            done = conn.execute(
                sa.update(edge_signin)
                .where(edge_signin.c.username == username)
                .values(confirmed_at=now)
            ).rowcount
            if not done:
                conn.execute(sa.insert(edge_signin).values(username=username, confirmed_at=now))

    def _forget(self, username: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(sa.delete(edge_signin).where(edge_signin.c.username == username))

    def confirmed_at(self, username: str) -> dt.datetime | None:
        """When the core last confirmed this user's password at this edge."""
        with self._engine.connect() as conn:
            when = conn.execute(
                sa.select(edge_signin.c.confirmed_at).where(edge_signin.c.username == username)
            ).scalar_one_or_none()
        if not isinstance(when, dt.datetime):
            return None
        return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)

    def _sign_in_offline(
        self, username: str, password: str, *, address: str | None, now: dt.datetime
    ) -> Principal:
        confirmed = self.confirmed_at(username)
        if confirmed is None or now - confirmed > self._offline:
            hours = int(self._offline.total_seconds() // 3600)
            message = (
                "the regional archive cannot check your password now, and only users "
                f"who signed in at this hospital in the last {hours} hours can sign in "
                "without it"
            )
            self._failed(username, address, message)
            raise SignInError(SignInProblem.INVALID, message)
        return super().sign_in(username, password, address=address)

    def _failed(self, username: str, address: str | None, detail: str) -> None:
        self._audit.record(
            AuditRecord(
                Event.LOGIN,
                Actor(user_id=username[:64], address=address),
                Outcome.MINOR_FAILURE,
                detail=detail,
            )
        )
