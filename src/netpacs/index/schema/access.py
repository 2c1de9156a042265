"""Access and audit (issue 5): accounts, revoked tokens, break-glass grants, the audit
trail; and what a partner network found (federation inbound, issue 14)."""

from __future__ import annotations

import sqlalchemy as sa

from netpacs.index.schema.base import TS, UID, metadata

user_account = sa.Table(
    "user_account",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("username", sa.String(), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(), nullable=True),  # argon2; None: sign-in elsewhere
    sa.Column("trust", sa.String(), nullable=False),  # ODS code of the user's organisation
    sa.Column("role", sa.String(), nullable=False),  # services.access.Role
    sa.Column("display_name", sa.String(), nullable=False, server_default=""),
    sa.Column("demo", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("created_at", TS, nullable=False),
)

# Access tokens (sessions) ended by signing out before they expire: a token whose id is
# here is refused. Rows are deleted once the token would have expired anyway.
revoked_token = sa.Table(
    "revoked_token",
    metadata,
    sa.Column("jti", sa.String(64), primary_key=True),
    sa.Column("expires_at", TS, nullable=False, index=True),
)

break_glass = sa.Table(
    "break_glass",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("username", sa.String(), nullable=False),
    sa.Column("trust", sa.String(), nullable=False),
    sa.Column("patient_id", sa.String(), nullable=False),
    sa.Column("issuer", sa.String(), nullable=False),
    sa.Column("nhs_number", sa.String(10), nullable=True),  # the person, when linked
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("expires_at", TS, nullable=False),
)
sa.Index(None, break_glass.c.username, break_glass.c.expires_at)

audit_event = sa.Table(
    "audit_event",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("event_time", TS, nullable=False),
    sa.Column("event_id", sa.String(), nullable=False),  # DCM code, e.g. 110112 Query
    sa.Column("event_type", sa.String(), nullable=True),  # DCM code of EventTypeCode
    sa.Column("action", sa.String(1), nullable=False),  # C R U D E
    sa.Column("outcome", sa.Integer(), nullable=False),  # 0, 4, 8, 12
    sa.Column("user_id", sa.String(), nullable=False),  # user name or calling AE title
    sa.Column("trust", sa.String(), nullable=True),
    sa.Column("role", sa.String(), nullable=True),
    sa.Column("purpose_of_use", sa.String(), nullable=True),
    sa.Column("source", sa.String(), nullable=True),  # network address of the requestor
    sa.Column("patient_id", sa.String(), nullable=True),
    sa.Column("issuer", sa.String(), nullable=True),
    sa.Column("study_uids", sa.Text(), nullable=True),  # space-separated
    sa.Column("detail", sa.Text(), nullable=False, server_default=""),
    sa.Column("message_xml", sa.Text(), nullable=False),  # the PS3.15 A.5 audit message
    sa.Column("forwarded_at", TS, nullable=True),  # sent to the audit record repository
)
sa.Index(None, audit_event.c.patient_id, audit_event.c.issuer)
sa.Index(None, audit_event.c.event_time)
sa.Index(None, audit_event.c.trust, audit_event.c.event_time)
sa.Index(None, audit_event.c.forwarded_at, audit_event.c.id)
sa.Index(None, audit_event.c.user_id, audit_event.c.event_time)  # the sign-in throttle


# The studies a partner network found by NHS number, per access token (``session``: the
# token's id): it may retrieve them, and search their series and instances, until the
# token expires; never a study it did not find with that token.
partner_found = sa.Table(
    "partner_found",
    metadata,
    sa.Column("session", sa.String(64), primary_key=True),
    sa.Column("study_instance_uid", UID, primary_key=True),
    sa.Column("client_id", sa.String(100), nullable=False),
    sa.Column("expires_at", TS, nullable=False, index=True),
)
