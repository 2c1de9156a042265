"""Accounts, sign-in and access tokens.

Local accounts keep an argon2id hash of their password (argon2-cffi). A successful
sign-in gives a signed access token (a JWT, HS256, PyJWT) that names the user, trust
and role and expires after ``token_minutes``; the same token is the browser's session
cookie. Each request's token is checked against the account (a disabled account's
tokens stop working at once).

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
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import jwt
import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from netpacs.domain.region import Region
from netpacs.index.schema import audit_event, revoked_token, user_account
from netpacs.services.access import CLINICAL, Principal, Role, on_behalf_refusal
from netpacs.services.audit import Actor, AuditRecord, AuditService, Event, Outcome
from netpacs.services.edge.clients import EdgeClients
from netpacs.services.partners import PartnerClients

log = logging.getLogger(__name__)

_ISSUER = "netpacs"
_ALGORITHM = "HS256"
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


@dataclass(frozen=True, slots=True)
class Token:
    value: str
    expires_in: int  # seconds


def load_secret(path: Path) -> bytes:
    """The signing key, made on first use (32 random bytes, owner-only file)."""
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    try:
        os.link(tmp, path)  # the first process to get here wins; others read its key
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return bytes.fromhex(path.read_text().strip())


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
        self._state_seconds = state_seconds
        # (user name, token id) -> (monotonic time read, the account or None: refused)
        self._states: dict[tuple[str, str | None], tuple[float, _Account | None]] = {}
        # token -> (user name, token id, expiry as a Unix time, its role): tokens whose
        # signature was checked
        self._tokens: dict[str, tuple[str, str | None, float, str]] = {}
        self._secret = secret
        self._audit = audit
        self._token_seconds = token_minutes * 60
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
                self._hasher.verify(_DUMMY_HASH, password)
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
        if edge is not None and self._read_state(client_id, None, edge=True) is None:
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

    # -- signed state for other sign-in steps ----------------------------------------------
    def seal(self, claims: dict[str, Any], *, purpose: str, seconds: int) -> str:
        """``claims`` signed with our key for ``purpose`` only, valid for ``seconds``
        (e.g. the state of an OpenID Connect sign-in kept in the browser). Never
        accepted as an access token: it has an audience, and tokens have none."""
        now = dt.datetime.now(dt.UTC)
        body = {**claims, "iss": _ISSUER, "aud": purpose, "iat": now}
        body["exp"] = now + dt.timedelta(seconds=seconds)
        return jwt.encode(body, self._secret, algorithm=_ALGORITHM)

    def unseal(self, value: str, *, purpose: str) -> dict[str, Any] | None:
        """What :meth:`seal` signed for ``purpose``, or None (forged, expired, other)."""
        try:
            claims: dict[str, Any] = jwt.decode(
                value, self._secret, algorithms=[_ALGORITHM], issuer=_ISSUER, audience=purpose
            )
        except jwt.PyJWTError:
            return None
        return claims

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

    # -- tokens -------------------------------------------------------------------------
    def issue(self, principal: Principal) -> Token:
        now = dt.datetime.now(dt.UTC)
        claims: dict[str, Any] = {
            "iss": _ISSUER,
            "sub": principal.user_id,
            "trust": principal.trust,
            "role": principal.role.value,
            "iat": now,
            "exp": now + dt.timedelta(seconds=self._token_seconds),
            "jti": secrets.token_urlsafe(16),  # so that signing out can revoke it
        }
        return Token(jwt.encode(claims, self._secret, algorithm=_ALGORITHM), self._token_seconds)

    def principal(self, token: str, *, address: str | None) -> Principal | None:
        """The principal a token stands for, or None (bad, expired, or account gone)."""
        found = self.known_principal(token, address=address)
        if found is not Lookup.NEEDED:
            return found
        known = self._token(token)
        assert known is not None
        key = known[0], known[1]
        if known[2] == Role.PARTNER.value:  # no account row: the token is not revoked
            account = self._read_partner_state(*key)
        else:
            account = self._read_state(*key, edge=known[2] == Role.EDGE.value)
        if self._state_seconds > 0:
            if len(self._states) >= _MAX_STATES:
                self._states.clear()
            self._states[key] = (time.monotonic(), account)
        return self._account_principal(account, known[1], address)

    def known_principal(self, token: str, *, address: str | None) -> Principal | Lookup | None:
        """As :meth:`principal`, without reading the index: ``Lookup.NEEDED`` when the
        token's account state is not known from the last ``state_seconds`` (so that a
        request can be identified without a database round trip or a thread)."""
        known = self._token(token)
        if known is None:
            return None
        username, jti, _role = known
        cached = self._states.get((username, jti))
        if cached is None or time.monotonic() - cached[0] >= self._state_seconds:
            return Lookup.NEEDED
        return self._account_principal(cached[1], jti, address)

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

    def _token(self, token: str) -> tuple[str, str | None, str] | None:
        """(user name, token id, its role) of a valid, unexpired token of ours; None
        otherwise.
        A token's signature is checked once: the same string is then known to be ours
        until it expires."""
        known = self._tokens.get(token)
        if known is None:
            claims = self._claims(token)
            if claims is None:
                return None
            role = str(claims.get("role"))
            known = (str(claims["sub"]), _token_id(claims), float(claims["exp"]), role)
            if len(self._tokens) >= _MAX_STATES:
                self._tokens.clear()
            self._tokens[token] = known
        if known[2] <= time.time():
            self._tokens.pop(token, None)
            return None
        return known[0], known[1], known[3]

    def _claims(self, token: str) -> dict[str, Any] | None:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                issuer=_ISSUER,
                options={"require": ["exp", "iat", "sub"]},
            )
        except jwt.PyJWTError:
            return None
        return claims

    def _read_state(self, username: str, jti: str | None, *, edge: bool = False) -> _Account | None:
        """The account of a token from the index; None: no such account, disabled, or
        the token revoked. An edge node's client (``edge``) needs no row: it is refused
        only while a row says it is disabled (:meth:`set_disabled`)."""
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

    def sign_out(self, principal: Principal, token: str | None = None) -> None:
        """Record the sign-out and revoke ``token`` (the session's access token), so
        that a copy of it is refused from now on, not only when it expires."""
        claims: dict[str, Any] = {}
        if token:
            try:
                claims = jwt.decode(token, self._secret, algorithms=[_ALGORITHM], issuer=_ISSUER)
            except jwt.PyJWTError:
                claims = {}
        jti, exp = claims.get("jti"), claims.get("exp")
        if isinstance(jti, str) and "sub" in claims and self._state_seconds > 0:
            if len(self._states) >= _MAX_STATES:
                self._states.clear()
            self._states[(str(claims["sub"]), jti)] = (time.monotonic(), None)  # refused now
        if isinstance(jti, str) and isinstance(exp, int):
            now = dt.datetime.now(dt.UTC)
            try:
                with self._engine.begin() as conn:
                    conn.execute(sa.delete(revoked_token).where(revoked_token.c.expires_at < now))
                    known = conn.execute(
                        sa.select(revoked_token.c.jti).where(revoked_token.c.jti == jti)
                    ).first()
                    if known is None:
                        conn.execute(
                            sa.insert(revoked_token).values(
                                jti=jti[:64], expires_at=dt.datetime.fromtimestamp(exp, dt.UTC)
                            )
                        )
            except sa.exc.IntegrityError:
                pass  # signed out twice at once: revoked by the other
        self._audit.record(AuditRecord(Event.LOGOUT, principal.actor(), detail="signed out"))


_DUMMY_HASH = PasswordHasher().hash(secrets.token_hex(16))
_MAX_STATES = 10_000  # account states remembered (then forgotten all at once)


class Lookup(enum.Enum):
    NEEDED = "needed"  # the account state must be read from the index


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


def _token_id(claims: dict[str, Any]) -> str | None:
    jti = claims.get("jti")
    return jti if isinstance(jti, str) else None


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
