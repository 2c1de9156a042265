"""Access tokens and other signed values (services.accounts is the façade).

The signing key file (:func:`load_secret`); issuing an access token (a JWT, HS256,
PyJWT) that names the user, trust and role and expires after ``token_minutes``;
checking a token's signature (once per token string, then remembered until it
expires); sealing other sign-in steps' state; and revoking a token on sign-out (the
``revoked_token`` table, read back by services.account_state).
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import sqlalchemy as sa

from netpacs.index.schema import revoked_token
from netpacs.services.access import Principal

_ISSUER = "netpacs"
_ALGORITHM = "HS256"
_MAX_TOKENS = 10_000  # tokens whose signature was checked (then forgotten all at once)


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


class Tokens:
    """Issues, checks and revokes the access tokens signed with ``secret``."""

    def __init__(self, engine: sa.Engine, *, secret: bytes, token_minutes: int = 60) -> None:
        self._engine = engine
        # token -> (user name, token id, expiry as a Unix time, its role): tokens whose
        # signature was checked
        self._tokens: dict[str, tuple[str, str | None, float, str]] = {}
        self._secret = secret
        self._token_seconds = token_minutes * 60

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

    def verified(self, token: str) -> tuple[str, str | None, str] | None:
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
            if len(self._tokens) >= _MAX_TOKENS:
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

    # -- revocation -----------------------------------------------------------------------
    def signed_claims(self, token: str) -> dict[str, Any]:
        """The claims of a token signed with our key (none required, unexpired); {}
        otherwise: what signing out revokes."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self._secret, algorithms=[_ALGORITHM], issuer=_ISSUER
            )
        except jwt.PyJWTError:
            return {}
        return claims

    def revoke(self, jti: str, exp: int) -> None:
        """Record token ``jti`` (expiring at Unix time ``exp``) as revoked, so that a copy
        of it is refused from now on, not only when it expires; forget revocations of
        tokens that have expired meanwhile."""
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


def _token_id(claims: dict[str, Any]) -> str | None:
    jti = claims.get("jti")
    return jti if isinstance(jti, str) else None
