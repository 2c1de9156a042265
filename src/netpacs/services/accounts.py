"""Accounts and sign-in: the façade of services.tokens and services.account_state.

Local accounts keep an argon2id hash of their password (argon2-cffi). A successful
sign-in gives a signed access token (services.tokens: a JWT that names the user, trust
and role and expires after ``token_minutes``); the same token is the browser's session
cookie. Each request's token is checked against the account (services.account_state: a
disabled account's tokens stop working at once).

Failed sign-ins are audited (services.audit), and the audit trail is also the rate
limit: more than ``signin_attempts`` failures for one user from one address within
the window refuse further attempts for the rest of it, in every worker process, with
a security alert. In demo mode (NETPACS_DEMO) every trust has a user per role,
``<ods>.<role>`` (e.g. ``rxc.clinician``) with the demo password; outside demo mode
they are never created, and the server refuses to start while one exists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
import functools
import logging
import secrets
from dataclasses import dataclass
from typing import Any, NoReturn

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from netpacs.domain.region import Region
from netpacs.index.schema import audit_event, user_account
from netpacs.services.access import CLINICAL, Principal, Role, on_behalf_refusal
from netpacs.services.account_state import AccountStates, Lookup
from netpacs.services.audit import Actor, AuditRecord, AuditService, Event, Outcome
from netpacs.services.edge.clients import EdgeClients
from netpacs.services.partners import PartnerClients
from netpacs.services.tokens import Token, Tokens

log = logging.getLogger(__name__)

DEMO_ROLES = (Role.RADIOLOGIST, Role.RADIOGRAPHER, Role.CLINICIAN, Role.ADMIN, Role.AUDITOR)
_HUMAN_ROLES = frozenset({*CLINICAL, Role.ADMIN, Role.AUDITOR})


class SignInProblem(enum.Enum):
    INVALID = "invalid"  # unknown user or wrong password (never said which)
    LOCKED = "locked"  # too many failures: wait
    REFUSED = "refused"  # signed in elsewhere (OpenID Connect) but not admitted here


class SignInError(Exception):
    def __init__(self, problem: SignInProblem, message: str, retry_after: int = 0) -> None:
        super().__init__(message)
        self.problem = problem
        self.message = message
        self.retry_after = retry_after


class AccountError(ValueError):
    pass


class OnBehalfRefused(Exception):
    """An edge node asked to act for a user it may not act for (403)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class ExternalIdentity:
    """Who an identity provider says signed in (from its ID token and userinfo)."""

    provider: str  # issuer URL, for the audit trail
    username: str
    display_name: str = ""
    trust: str | None = None  # as the trust claim gave it (None: no claim)
    role: str | None = None


class AccountService:
    def __init__(
        self,
        engine: sa.Engine,
        *,
        secret: bytes,
        audit: AuditService,
        token_minutes: int = 60,
        signin_attempts: int = 5,
        signin_window_minutes: int = 15,
        edges: EdgeClients | None = None,
        state_seconds: float = 0.0,
        partners: PartnerClients | None = None,
    ) -> None:
        """``state_seconds``: how long a token's account state (the account exists and
        is enabled, the token is not revoked) read from the index is believed before it
        is read again; 0: read for every request. A token revoked through this process
        is refused at once."""
        self._engine = engine
        self._edges = edges or EdgeClients(())
        self._partners = partners or PartnerClients((), demo_password=None)
        self._tokens = Tokens(engine, secret=secret, token_minutes=token_minutes)
        self._states = AccountStates(
            engine,
            tokens=self._tokens,
            edges=self._edges,
            partners=self._partners,
            state_seconds=state_seconds,
        )
        self._audit = audit
        self._attempts = signin_attempts
        self._window = dt.timedelta(minutes=signin_window_minutes)
        self._hasher = PasswordHasher()

    # -- accounts -----------------------------------------------------------------------
    def create(
        self,
        username: str,
        password: str,
        *,
        trust: str,
        role: Role,
        display_name: str = "",
        demo: bool = False,
        region: Region | None = None,
        password_hash: str | None = None,
        external: bool = False,
    ) -> None:
        """A new account; ``external``: no password, signs in through OpenID Connect."""
        if role not in _HUMAN_ROLES:
            raise AccountError(f"role {role.value!r} is not one people sign in with")
        if not username or username != username.strip() or len(username) > 64:
            raise AccountError("a user name is 1-64 characters without surrounding spaces")
        if region is not None and region.trust(trust) is None:
            raise AccountError(f"{trust!r} is not the ODS code of a trust of the region")
        if not external and len(password) < (4 if demo else 12):
            raise AccountError("a password has at least 12 characters")
        if external:
            password_hash = None
        elif password_hash is None:
            password_hash = self._hasher.hash(password)
        with self._engine.begin() as conn:
            conn.execute(
                sa.insert(user_account).values(
                    username=username,
                    password_hash=password_hash,
                    trust=trust,
                    role=role.value,
                    display_name=display_name or username,
                    demo=demo,
                    created_at=dt.datetime.now(dt.UTC),
                )
            )

    def set_disabled(self, username: str, disabled: bool, *, by: Principal) -> None:
        """Disable (or enable again) an account: its sign-ins are refused at once, and its
        tokens by every worker within ``state_seconds``; audited as a security alert.

        An edge node's client (the region file's, or a demo one) has no account row
        while it is enabled: disabling it writes one (role ``edge``, no password, so
        nothing else can sign in with it), enabling it deletes it again."""
        edge = self._edges.principal(username, address=None)
        with self._engine.begin() as conn:
            if edge is not None:
                conn.execute(sa.delete(user_account).where(user_account.c.username == username))
                if disabled:
                    conn.execute(
                        sa.insert(user_account).values(
                            username=username,
                            password_hash=None,
                            trust=edge.trust or "",
                            role=Role.EDGE.value,
                            display_name=edge.name,
                            disabled=True,
                            created_at=dt.datetime.now(dt.UTC),
                        )
                    )
                found = 1
            else:
                found = conn.execute(
                    sa.update(user_account)
                    .where(user_account.c.username == username)
                    .values(disabled=disabled)
                ).rowcount
        if not found:
            raise AccountError(f"there is no account {username!r}")
        what = "disabled" if disabled else "enabled again"
        self._audit.record(
            AuditRecord(Event.SECURITY_ALERT, by.actor(), detail=f"account {username} {what}")
        )

    def ensure_demo_users(self, region: Region, password: str) -> int:
        """Create the missing ``<ods>.<role>`` demo users; how many were made."""
        with self._engine.connect() as conn:
            existing = set(conn.execute(sa.select(user_account.c.username)).scalars())
        made = 0
        # One hash for all: they share the password, and 30 argon2 hashes take seconds.
        shared = self._hasher.hash(password)
        for trust in region.trusts:
            for role in DEMO_ROLES:
                name = f"{trust.ods_code.lower()}.{role.value}"
                if name in existing:
                    continue
                try:
                    self.create(
                        name,
                        password,
                        trust=trust.ods_code,
                        role=role,
                        display_name=f"Demo {role.value} ({trust.ods_code})",
                        demo=True,
                        password_hash=shared,
                    )
                    made += 1
                except sa.exc.IntegrityError:
                    pass  # another worker made it meanwhile
        return made

    def demo_users(self) -> list[str]:
        with self._engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(user_account.c.username).where(user_account.c.demo.is_(True))
                ).scalars()
            )

    # -- sign-in ------------------------------------------------------------------------
    def sign_in(self, username: str, password: str, *, address: str | None) -> Principal:
        """The principal for a user name and password; SignInError otherwise (audited)."""
        now = dt.datetime.now(dt.UTC)
        failures = self._recent_failures(username, address, now)
        if failures >= self._attempts:
            self._audit.record(
                AuditRecord(
                    Event.SECURITY_ALERT,
                    _attempt(username, address),
                    Outcome.MINOR_FAILURE,
                    detail=f"sign-in refused: {failures} failed attempts within "
                    f"{int(self._window.total_seconds() // 60)} minutes",
                )
            )
            raise SignInError(
                SignInProblem.LOCKED,
                "too many failed sign-ins: try again later",
                retry_after=int(self._window.total_seconds()),
            )
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(user_account).where(user_account.c.username == username)
            ).first()
        ok = False
        if row is not None and row.password_hash and not row.disabled:
            try:
                ok = self._hasher.verify(row.password_hash, password)
            except (VerificationError, InvalidHashError):
                ok = False
        else:
            # The same work for an unknown user, so timing does not tell who exists.
            with contextlib.suppress(VerificationError, InvalidHashError):
                self._hasher.verify(_dummy_hash(), password)
        if not ok or row is None:
            self._audit.record(
                AuditRecord(
                    Event.LOGIN,
                    _attempt(username, address),
                    Outcome.MINOR_FAILURE,
                    detail="wrong user name or password",
                )
            )
            raise SignInError(SignInProblem.INVALID, "wrong user name or password")
        principal = _principal(row, address)
        self._audit.record(AuditRecord(Event.LOGIN, principal.actor(), detail="signed in"))
        return principal

    def sign_in_client(self, client_id: str, secret: str, *, address: str | None) -> Principal:
        """An edge node's or a partner network's principal for its OAuth2 client
        credentials; SignInError otherwise (audited, and counted like a user's failures)."""
        now = dt.datetime.now(dt.UTC)
        failures = self._recent_failures(client_id, address, now)
        if failures >= self._attempts:
            raise SignInError(
                SignInProblem.LOCKED,
                "too many failed sign-ins: try again later",
                retry_after=int(self._window.total_seconds()),
            )
        edge = self._edges.sign_in(client_id, secret, address=address)
        if edge is not None and self._states.read(client_id, None, edge=True) is None:
            self._audit.record(
                AuditRecord(
                    Event.LOGIN,
                    _attempt(client_id, address),
                    Outcome.MINOR_FAILURE,
                    detail="edge client disabled",
                )
            )
            raise SignInError(SignInProblem.INVALID, f"the edge client {client_id} is disabled")
        principal = edge or self._partners.sign_in(client_id, secret, address=address)
        if principal is None:
            self._audit.record(
                AuditRecord(
                    Event.LOGIN,
                    _attempt(client_id, address),
                    Outcome.MINOR_FAILURE,
                    detail="wrong client id or client secret",
                )
            )
            raise SignInError(SignInProblem.INVALID, "wrong client id or client secret")
        who = "partner network" if principal.partner else "edge"
        self._audit.record(AuditRecord(Event.LOGIN, principal.actor(), detail=f"{who} signed in"))
        return principal

    def on_behalf(self, edge: Principal, username: str) -> Principal:
        """The principal of the user ``edge`` acts for (``X-Netpacs-On-Behalf-Of``), at
        the edge's address and naming the edge; :class:`OnBehalfRefused` saying why not
        (services.access decides)."""
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(user_account).where(user_account.c.username == username)
            ).first()
        user = None if row is None or row.disabled else _principal(row, edge.address)
        refusal = on_behalf_refusal(edge, user, username)
        if refusal is not None or user is None:
            raise OnBehalfRefused(refusal or "refused")
        return dataclasses.replace(user, via=edge.name or edge.user_id)

    def sign_in_external(
        self,
        identity: ExternalIdentity,
        *,
        claims_decide: bool,
        region: Region,
        address: str | None,
    ) -> Principal:
        """The principal of a user an identity provider vouches for; SignInError if we
        do not admit them (audited either way).

        Only an account without a password is ever signed in this way, so the
        provider cannot take over a local account of the same name. Without
        ``claims_decide`` the account must have been made beforehand (``netpacs user
        add --external``) and its trust and role count; with it, the trust and role
        claims decide at every sign-in and the account follows them (made on first
        sign-in). A disabled account stays refused either way.
        """
        name = identity.username
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(user_account).where(user_account.c.username == name)
            ).first()
        if row is not None and row.password_hash:
            self._refuse(name, address, f"{name} is a local account (it signs in with a password)")
        if row is not None and row.disabled:
            self._refuse(name, address, f"the account {name} is disabled")
        if claims_decide:
            trust, role = self._from_claims(identity, region, address)
            row = self._provision(identity, trust, role, exists=row is not None, address=address)
        elif row is None:
            self._refuse(
                name,
                address,
                f"{name} has no netpacs account: a PACS administrator adds it "
                "(netpacs user add --external)",
            )
        assert row is not None
        principal = _principal(row, address)
        self._audit.record(
            AuditRecord(
                Event.LOGIN, principal.actor(), detail=f"signed in through {identity.provider}"
            )
        )
        return principal

    def external_sign_in_failed(self, reason: str, *, username: str, address: str | None) -> None:
        """Audit a sign-in through an identity provider that failed before we knew who."""
        self._audit.record(
            AuditRecord(
                Event.LOGIN, _attempt(username, address), Outcome.MINOR_FAILURE, detail=reason
            )
        )

    def _refuse(self, username: str, address: str | None, reason: str) -> NoReturn:
        self.external_sign_in_failed(reason, username=username, address=address)
        raise SignInError(SignInProblem.REFUSED, reason)

    def _from_claims(
        self, identity: ExternalIdentity, region: Region, address: str | None
    ) -> tuple[str, Role]:
        ods = (identity.trust or "").strip().upper()
        trust = region.trust(ods) if ods else None
        try:
            role: Role | None = Role((identity.role or "").strip().lower())
        except ValueError:
            role = None
        if trust is None or role not in _HUMAN_ROLES:
            self._refuse(
                identity.username,
                address,
                f"{identity.username} has no trust and role netpacs knows "
                f"(trust {identity.trust!r}, role {identity.role!r}): ask your identity "
                "provider's administrators",
            )
        assert role is not None
        return trust.ods_code, role

    def _provision(
        self,
        identity: ExternalIdentity,
        trust: str,
        role: Role,
        *,
        exists: bool,
        address: str | None,
    ) -> sa.Row[Any]:
        values = {
            "trust": trust,
            "role": role.value,
            "display_name": identity.display_name or identity.username,
        }
        match = (user_account.c.username == identity.username) & user_account.c.password_hash.is_(
            None
        )
        if not exists:
            try:
                with self._engine.begin() as conn:
                    conn.execute(
                        sa.insert(user_account).values(
                            username=identity.username,
                            password_hash=None,
                            created_at=dt.datetime.now(dt.UTC),
                            **values,
                        )
                    )
            except sa.exc.IntegrityError:
                exists = True  # another worker made it meanwhile
        if exists:
            with self._engine.begin() as conn:
                conn.execute(sa.update(user_account).where(match).values(**values))
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(user_account).where(match)).first()
        if row is None or row.disabled:
            self._refuse(identity.username, address, f"the account {identity.username} is disabled")
        return row

    def _recent_failures(self, username: str, address: str | None, now: dt.datetime) -> int:
        with self._engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(audit_event)
                    .where(
                        audit_event.c.event_id == Event.LOGIN.event_id.code,
                        audit_event.c.outcome != int(Outcome.SUCCESS),
                        audit_event.c.user_id == username,
                        audit_event.c.source == address
                        if address is not None
                        else audit_event.c.source.is_(None),
                        audit_event.c.event_time > now - self._window,
                    )
                ).scalar_one()
            )

    # -- signed state for other sign-in steps (services.tokens) -----------------------------
    def seal(self, claims: dict[str, Any], *, purpose: str, seconds: int) -> str:
        """``claims`` signed with our key for ``purpose`` only, valid for ``seconds``
        (:meth:`Tokens.seal`)."""
        return self._tokens.seal(claims, purpose=purpose, seconds=seconds)

    def unseal(self, value: str, *, purpose: str) -> dict[str, Any] | None:
        """What :meth:`seal` signed for ``purpose``, or None (forged, expired, other)."""
        return self._tokens.unseal(value, purpose=purpose)

    # -- tokens (services.tokens, services.account_state) -------------------------------
    def issue(self, principal: Principal) -> Token:
        return self._tokens.issue(principal)

    def principal(self, token: str, *, address: str | None) -> Principal | None:
        """The principal a token stands for, or None (bad, expired, or account gone)."""
        return self._states.principal(token, address=address)

    def known_principal(self, token: str, *, address: str | None) -> Principal | Lookup | None:
        """As :meth:`principal`, without reading the index: ``Lookup.NEEDED`` when the
        token's account state is not known from the last ``state_seconds`` (so that a
        request can be identified without a database round trip or a thread)."""
        return self._states.known_principal(token, address=address)

    def sign_out(self, principal: Principal, token: str | None = None) -> None:
        """Record the sign-out and revoke ``token`` (the session's access token), so
        that a copy of it is refused from now on, not only when it expires."""
        claims: dict[str, Any] = self._tokens.signed_claims(token) if token else {}
        jti, exp = claims.get("jti"), claims.get("exp")
        if isinstance(jti, str) and "sub" in claims:
            self._states.refuse(str(claims["sub"]), jti)
        if isinstance(jti, str) and isinstance(exp, int):
            self._tokens.revoke(jti, exp)
        self._audit.record(AuditRecord(Event.LOGOUT, principal.actor(), detail="signed out"))


@functools.cache
def _dummy_hash() -> str:
    """A hash of a random password, verified against for unknown users: made on the first
    such sign-in (an Argon2 hash costs a tenth of a second, too much for every process
    start, the command line's included)."""
    return PasswordHasher().hash(secrets.token_hex(16))


def _attempt(username: str, address: str | None) -> Actor:
    return Actor(user_id=username[:64], address=address)


def _principal(row: sa.Row[Any], address: str | None) -> Principal:
    return Principal(
        user_id=row.username,
        role=Role(row.role),
        trust=row.trust,
        address=address,
        name=row.display_name,
    )
