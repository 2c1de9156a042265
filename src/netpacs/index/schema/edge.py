"""The edge node (issue 13) and the change feed it follows: prefetch, cache, forwarding,
sign-ins and audit kept while cut off."""

from __future__ import annotations

import sqlalchemy as sa

from netpacs.index.schema.base import TS, UID, metadata

# What changed at this archive that a cache of its studies must follow (issue 13): merges
# and undone merges (the studies moved), demographic updates, deletions, and admissions
# (ADT A01/A04/A05: an edge prefetches the patient's priors). Appended in the
# transaction that made the change; read by the edges through ``GET /edge/changes``.
change_feed = sa.Table(
    "change_feed",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("at", TS, nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),  # index.changes.ChangeKind
    sa.Column("patient_id", sa.String(), nullable=False, server_default=""),
    sa.Column("issuer", sa.String(), nullable=False, server_default=""),
    sa.Column("nhs_number", sa.String(), nullable=True),
    sa.Column("prior_patient_id", sa.String(), nullable=True),  # a merge's MRG-1
    sa.Column("study_uids", sa.Text(), nullable=False, server_default=""),  # space-separated
)

# An edge's prefetch of one patient's earlier studies, asked by an admission (ADT
# A01/A04/A05 at the edge or relayed by the core); one row per local identity.
edge_prefetch = sa.Table(
    "edge_prefetch",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("patient_id", sa.String(), nullable=False),
    sa.Column("issuer", sa.String(), nullable=False),
    sa.Column("nhs_number", sa.String(), nullable=True),
    sa.Column("reason", sa.String(), nullable=False),  # e.g. "ADT^A04 at the edge"
    sa.Column("status", sa.String(16), nullable=False),  # queued | running | done | failed
    sa.Column("requested_at", TS, nullable=False),
    sa.Column("next_attempt_at", TS, nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("started_at", TS, nullable=True),
    sa.Column("finished_at", TS, nullable=True),
    sa.Column("studies_found", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("studies_cached", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("instances_fetched", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("bytes_fetched", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.UniqueConstraint("patient_id", "issuer"),
)
sa.Index(None, edge_prefetch.c.status, edge_prefetch.c.next_attempt_at)

# An edge's cache bookkeeping per study: until when a prefetch keeps it, and when it was
# last read (for least-recently-used eviction).
edge_cached_study = sa.Table(
    "edge_cached_study",
    metadata,
    sa.Column("study_instance_uid", UID, primary_key=True),
    sa.Column("prefetched_at", TS, nullable=True),
    sa.Column("last_access_at", TS, nullable=False, index=True),
)

# Where an edge's jobs are in a sequence they follow (the core's change feed, its own
# audit trail): name -> the last id taken.
edge_cursor = sa.Table(
    "edge_cursor",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("position", sa.BigInteger(), nullable=False),
)

# -- edge: edge-fwd -- (issue 13) --------------------------------------------------------
# The edge's link to the core (one row, id 1): up, or down since the first failed call.
edge_link = sa.Table(
    "edge_link",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("up", sa.Boolean(), nullable=False),
    sa.Column("down_since", TS, nullable=True),
    sa.Column("last_contact", TS, nullable=True),  # the core's last answer
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("updated_at", TS, nullable=False),
)

# The edge's forward queue: every object stored at the edge from the site, until the
# core has confirmed it holds it (forwarded_at set; the row stays, for the cache policy).
edge_forward = sa.Table(
    "edge_forward",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("sop_instance_uid", UID, nullable=False, unique=True),
    sa.Column("study_instance_uid", UID, nullable=False, index=True),
    sa.Column("enqueued_at", TS, nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("next_attempt_at", TS, nullable=True),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("forwarded_at", TS, nullable=True),
    sa.Column("how", sa.String(16), nullable=True),  # sent | reconciled
)
sa.Index(None, edge_forward.c.forwarded_at, edge_forward.c.enqueued_at)

# The core's record of its edge nodes, from their heartbeats (one row per client id).
edge_node_status = sa.Table(
    "edge_node_status",
    metadata,
    sa.Column("client_id", sa.String(100), primary_key=True),
    sa.Column("last_contact", TS, nullable=False),
    sa.Column("address", sa.String(), nullable=True),
    sa.Column("report_json", sa.Text(), nullable=False),  # the edge's figures
)

# -- edge: edge-read (issue 13) ------------------------------------------------------------

# At an edge node: each user whose password the core confirmed at a sign-in here, and
# when. Within 12 hours of it they can sign in while the core is away (their account
# row keeps the state the core gave and a hash of that password).
edge_signin = sa.Table(
    "edge_signin",
    metadata,
    sa.Column("username", sa.String(64), primary_key=True),
    sa.Column("confirmed_at", TS, nullable=False),
)

# Audit records sent to the core: at an edge node, the last audit_event id the core
# took (one row, ``sender`` = ''); at the core, the last id taken from each edge node
# (``sender`` = its client id), so that a batch sent twice is kept once.
edge_audit_mark = sa.Table(
    "edge_audit_mark",
    metadata,
    sa.Column("sender", sa.String(100), primary_key=True),
    sa.Column("last_id", sa.BigInteger(), nullable=False),
)

# MPPS messages an edge node accepted from its site's modalities, waiting to reach the
# core in order (services/edge/mpps.py); a row goes once the core has taken or refused it.
edge_mpps_outbox = sa.Table(
    "edge_mpps_outbox",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("sop_instance_uid", UID, nullable=False),
    sa.Column("operation", sa.String(8), nullable=False),  # create | update
    sa.Column("calling_ae", sa.String(16), nullable=False),
    sa.Column("values_json", sa.Text(), nullable=False),
    sa.Column("received_at", TS, nullable=False),
)
