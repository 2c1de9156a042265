"""Index tables (SQLAlchemy Core). Migrations in ``index/migrations`` must match them.

Patients are keyed by (patient_id, issuer): a hospital number means nothing without
the trust that issued it (REGION.md). Attributes that C-FIND and QIDO-RS match on
are columns; every instance's full header (DICOM JSON, bulk data left out) is kept
in ``instance.metadata_json`` so that metadata is answered without reading files.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

UID = sa.String(64)
# The info of a column the database writes itself (a trigger), never the code.
BY_DATABASE = {"by_database": True}
TS = sa.DateTime(timezone=True)

patient = sa.Table(
    "patient",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("patient_id", sa.String(), nullable=False),
    sa.Column("issuer", sa.String(), nullable=False),  # '' when unknown
    sa.Column("patient_name", sa.String(), nullable=False, server_default=""),
    sa.Column("patient_birth_date", sa.String(), nullable=False, server_default=""),
    sa.Column("patient_sex", sa.String(), nullable=False, server_default=""),
    sa.Column("created_at", TS, nullable=False),
    # The verified NHS number that links this local identity to the same person's
    # identities at other trusts (issue 4); None while unknown or held for a person.
    sa.Column("nhs_number", sa.String(10), nullable=True),
    sa.UniqueConstraint("patient_id", "issuer"),
)
sa.Index(None, patient.c.patient_name)
sa.Index(None, patient.c.nhs_number)

study = sa.Table(
    "study",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("study_instance_uid", UID, nullable=False, unique=True),
    sa.Column("patient_fk", sa.ForeignKey("patient.id"), nullable=False, index=True),
    sa.Column("study_date", sa.String(), nullable=False, server_default=""),
    sa.Column("study_time", sa.String(), nullable=False, server_default=""),
    sa.Column("accession_number", sa.String(), nullable=False, server_default=""),
    sa.Column("study_id", sa.String(), nullable=False, server_default=""),
    sa.Column("study_description", sa.String(), nullable=False, server_default=""),
    sa.Column("referring_physician_name", sa.String(), nullable=False, server_default=""),
    sa.Column("origin_trust", sa.String(), nullable=True),
    sa.Column("origin_site", sa.String(), nullable=True),
    sa.Column("created_at", TS, nullable=False),
    # Its patient's name, kept equal to patient.patient_name by the database's triggers
    # (migration 0018): never written by the code. A name-and-date search reads it
    # from one index (name, study date).
    sa.Column("patient_name", sa.String(), nullable=False, server_default="", info=BY_DATABASE),
)
sa.Index(None, study.c.study_date)
sa.Index(None, study.c.accession_number)

series = sa.Table(
    "series",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("series_instance_uid", UID, nullable=False, unique=True),
    sa.Column("study_fk", sa.ForeignKey("study.id"), nullable=False, index=True),
    sa.Column("modality", sa.String(), nullable=False, server_default=""),
    sa.Column("series_number", sa.Integer(), nullable=True),
    sa.Column("series_description", sa.String(), nullable=False, server_default=""),
    sa.Column("body_part_examined", sa.String(), nullable=False, server_default=""),
    sa.Column("series_date", sa.String(), nullable=False, server_default=""),
    sa.Column("series_time", sa.String(), nullable=False, server_default=""),
    sa.Column("institution_name", sa.String(), nullable=False, server_default=""),
    sa.Column("station_name", sa.String(), nullable=False, server_default=""),
    sa.Column("created_at", TS, nullable=False),
)
sa.Index(None, series.c.modality)

instance = sa.Table(
    "instance",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("sop_instance_uid", UID, nullable=False, unique=True),
    sa.Column("series_fk", sa.ForeignKey("series.id"), nullable=False, index=True),
    sa.Column("sop_class_uid", UID, nullable=False),
    sa.Column("instance_number", sa.Integer(), nullable=True),
    sa.Column("transfer_syntax_uid", UID, nullable=False),
    sa.Column("content_date", sa.String(), nullable=False, server_default=""),
    sa.Column("content_time", sa.String(), nullable=False, server_default=""),
    sa.Column("image_rows", sa.Integer(), nullable=True),
    sa.Column("image_columns", sa.Integer(), nullable=True),
    sa.Column("number_of_frames", sa.Integer(), nullable=True),
    sa.Column("blob_key", sa.String(), nullable=False, unique=True),
    sa.Column("blob_size", sa.BigInteger(), nullable=False),
    sa.Column("blob_crc32", sa.BigInteger(), nullable=False),  # CRC-32 of the whole blob
    sa.Column("dataset_offset", sa.Integer(), nullable=False),  # data set start in the blob
    sa.Column("metadata_json", sa.Text(), nullable=False),  # DICOM JSON, no bulk data
    sa.Column("origin_protocol", sa.String(), nullable=False),
    sa.Column("origin_ae", sa.String(), nullable=True),
    sa.Column("origin_trust", sa.String(), nullable=True),
    sa.Column("origin_user", sa.String(), nullable=True),
    sa.Column("received_at", TS, nullable=False),
)

# The lowest instance of a series (or study) without reading the others (migration 0012).
sa.Index(None, instance.c.series_fk, instance.c.id)

# One row (id 1): bumped by every change that removes or renumbers archive rows (a study
# deleted, a patient removed by an undone merge). Each process's index writer caches
# the ids of the patients, studies and series it wrote; it drops them when this moves.
index_epoch = sa.Table(
    "index_epoch",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("epoch", sa.BigInteger(), nullable=False),
)

# -- HL7 ADT (issue 4): identities as the trusts' patient administration systems say ------

hl7_message = sa.Table(
    "hl7_message",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("sending_application", sa.String(), nullable=False),  # MSH-3 as received
    sa.Column("sending_facility", sa.String(), nullable=False),  # MSH-4
    sa.Column("message_control_id", sa.String(), nullable=False),  # MSH-10
    sa.Column("message_type", sa.String(), nullable=False),  # e.g. ADT^A08
    sa.Column("content_sha256", sa.String(64), nullable=False),  # a resend has the same
    sa.Column("ack_code", sa.String(2), nullable=False),  # MSA-1
    sa.Column("ack_text", sa.Text(), nullable=False),
    sa.Column("ack_message", sa.Text(), nullable=False),  # the ACK sent, sent again on resend
    sa.Column("received_at", TS, nullable=False),
    sa.UniqueConstraint(
        "sending_application",
        "sending_facility",
        "message_control_id",
        name="uq_hl7_message_sender_control_id",  # the conventional name is over 63 chars
    ),
)

adt_identity = sa.Table(
    "adt_identity",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("patient_id", sa.String(), nullable=False),  # hospital number
    sa.Column("issuer", sa.String(), nullable=False),  # ODS code of the trust
    sa.Column("patient_name", sa.String(), nullable=False, server_default=""),  # DICOM PN
    sa.Column("patient_birth_date", sa.String(), nullable=False, server_default=""),
    sa.Column("patient_sex", sa.String(), nullable=False, server_default=""),  # HL7 table 0001
    sa.Column("nhs_number", sa.String(), nullable=True),  # as received when invalid
    sa.Column("nhs_number_problem", sa.String(), nullable=True),  # None: valid (or none)
    sa.Column("updated_at", TS, nullable=False),
    sa.Column("last_control_id", sa.String(), nullable=False),
    sa.UniqueConstraint("patient_id", "issuer"),
)
sa.Index(None, adt_identity.c.nhs_number)

patient_merge = sa.Table(
    "patient_merge",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("trigger", sa.String(), nullable=False),  # A40 merge, A47 change identifier
    sa.Column("issuer", sa.String(), nullable=False),
    sa.Column("prior_patient_id", sa.String(), nullable=False),  # MRG-1
    sa.Column("patient_id", sa.String(), nullable=False),  # PID-3: survivor / new number
    # No foreign keys: history outlives the rows (undoing an A47 removes the new one).
    sa.Column("prior_patient_fk", sa.BigInteger(), nullable=False, index=True),
    sa.Column("patient_fk", sa.BigInteger(), nullable=False, index=True),
    sa.Column("message_control_id", sa.String(), nullable=False),
    sa.Column("snapshot_json", sa.Text(), nullable=False),  # prior state, for an exact undo
    sa.Column("created_at", TS, nullable=False),
    sa.Column("undone_at", TS, nullable=True),
)

reconciliation = sa.Table(
    "reconciliation",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("kind", sa.String(), nullable=False),  # services.identity.Kind
    sa.Column("status", sa.String(), nullable=False),  # open | resolved
    # The local identity the item is about (by value: it outlives merges).
    sa.Column("patient_id", sa.String(), nullable=False),
    sa.Column("issuer", sa.String(), nullable=False),
    sa.Column("nhs_number", sa.String(), nullable=True),  # the number in question
    sa.Column("other_patient_id", sa.String(), nullable=True),  # the other identity, if any
    sa.Column("other_issuer", sa.String(), nullable=True),
    sa.Column("study_instance_uid", UID, nullable=True),
    sa.Column("detail", sa.Text(), nullable=False),  # for the person who resolves it
    sa.Column("source", sa.String(), nullable=False),  # what raised it
    sa.Column("dedup_key", sa.String(), nullable=False, unique=True),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("resolution", sa.String(), nullable=True),  # link | unlink | merge | reject
    sa.Column("resolution_note", sa.Text(), nullable=True),
    sa.Column("resolved_by", sa.String(), nullable=True),
    sa.Column("resolved_at", TS, nullable=True),
    sa.Column("merge_fk", sa.BigInteger(), nullable=True),  # patient_merge.id of a merge
)
sa.Index(None, reconciliation.c.status, reconciliation.c.created_at)
sa.Index(None, reconciliation.c.patient_id, reconciliation.c.issuer)


# -- access and audit (issue 5) -----------------------------------------------------------

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


# -- networked reporting (issue 6) --------------------------------------------------------

worklist_item = sa.Table(
    "worklist_item",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    # By UID, not a foreign key: the item and its report outlive a reindex of the study.
    sa.Column("study_instance_uid", UID, nullable=False, unique=True),
    sa.Column("requesting_trust", sa.String(), nullable=False),  # ODS code
    sa.Column("requesting_site", sa.String(), nullable=True),  # site code of the region
    sa.Column("modality", sa.String(), nullable=False, server_default=""),
    sa.Column("body_part", sa.String(), nullable=False, server_default=""),
    sa.Column("study_description", sa.String(), nullable=False, server_default=""),
    sa.Column("subspecialty", sa.String(), nullable=False),  # services.reporting.Subspecialty
    sa.Column("priority", sa.String(), nullable=False),  # services.reporting.Priority
    sa.Column("arrived_at", TS, nullable=False),
    sa.Column("due_at", TS, nullable=False),
    # unreported | draft | preliminary | final (an addendum keeps it final)
    sa.Column("status", sa.String(), nullable=False),
    sa.Column("claimed_by", sa.String(), nullable=True),  # user name
    sa.Column("claimed_by_name", sa.String(), nullable=True),
    sa.Column("claimed_by_trust", sa.String(), nullable=True),
    sa.Column("claimed_at", TS, nullable=True),
    sa.Column("claim_expires_at", TS, nullable=True),
    sa.Column("reported_at", TS, nullable=True),  # first signed final
    sa.Column("reported_by", sa.String(), nullable=True),
)
sa.Index(None, worklist_item.c.status, worklist_item.c.due_at)
sa.Index(None, worklist_item.c.requesting_trust, worklist_item.c.status)

report = sa.Table(
    "report",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("study_instance_uid", UID, nullable=False, unique=True),
    sa.Column("status", sa.String(), nullable=False),  # draft | preliminary | final
    sa.Column("text", sa.Text(), nullable=False),  # the body; never changed once final
    sa.Column("template", sa.String(), nullable=True),
    sa.Column("author", sa.String(), nullable=False),  # user name of the reporter
    sa.Column("author_name", sa.String(), nullable=False, server_default=""),
    sa.Column("author_trust", sa.String(), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Column("preliminary_at", TS, nullable=True),
    sa.Column("signed_at", TS, nullable=True),
    sa.Column("version", sa.Integer(), nullable=False, server_default="1"),
    sa.Column("second_opinion_requested_by", sa.String(), nullable=True),
    sa.Column("second_opinion_reason", sa.Text(), nullable=True),
    sa.Column("discrepancy", sa.Text(), nullable=True),  # flagged by a later reader
    sa.Column("discrepancy_by", sa.String(), nullable=True),
    sa.Column("sr_sop_instance_uid", UID, nullable=True),  # the latest SR stored
)

report_event = sa.Table(
    "report_event",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("report_fk", sa.ForeignKey("report.id"), nullable=False, index=True),
    # draft | preliminary | final | addendum | second-opinion | discrepancy
    sa.Column("kind", sa.String(), nullable=False),
    sa.Column("text", sa.Text(), nullable=True),  # the addendum, note or signed text
    sa.Column("author", sa.String(), nullable=False),
    sa.Column("author_name", sa.String(), nullable=False, server_default=""),
    sa.Column("author_trust", sa.String(), nullable=False),
    sa.Column("at", TS, nullable=False),
)

result_outbox = sa.Table(
    "result_outbox",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("trust", sa.String(), nullable=False),  # where it goes (the requesting trust)
    sa.Column("study_instance_uid", UID, nullable=False),
    sa.Column("report_event_fk", sa.ForeignKey("report_event.id"), nullable=False),
    sa.Column("control_id", sa.String(), nullable=False, unique=True),  # MSH-10
    # The result as queued, JSON (rendered to an ORU^R01 at each attempt; ER7 text in
    # rows queued by netpacs before the jobs were services).
    sa.Column("message", sa.Text(), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("next_attempt_at", TS, nullable=False),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("sent_at", TS, nullable=True),  # acknowledged (MSA-1 AA/CA)
)
sa.Index(None, result_outbox.c.sent_at, result_outbox.c.trust, result_outbox.c.id)

# What an association, STOW-RS request or import run has stored of each study so far,
# kept while it runs so that its audit message is not lost with its process: written
# as the batch goes, turned into the study's DICOM Instances Transferred message and
# deleted when it ends; rows of a batch whose process died are audited by a job.
store_tally = sa.Table(
    "store_tally",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("batch", sa.String(32), nullable=False),  # one per association / request
    sa.Column("study_instance_uid", sa.String(), nullable=False),  # '' before a study
    sa.Column("actor_json", sa.Text(), nullable=False),  # who stored (audit Actor)
    sa.Column("origin", sa.Text(), nullable=False),  # how, for people: "C-STORE from ..."
    sa.Column("patients_json", sa.Text(), nullable=False),  # [[patient ID, issuer], ...]
    sa.Column("stored", sa.Integer(), nullable=False),
    sa.Column("refused_json", sa.Text(), nullable=False),  # {"why": count}
    sa.Column("touched_at", TS, nullable=False, index=True),
    sa.UniqueConstraint("batch", "study_instance_uid"),
)


# -- edge: edge-prefetch ------------------------------------------------------------------

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

# -- federation: inbound (issue 14) -------------------------------------------------------

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

# -- orders (issue 15): HL7 ORM/OMI in, Modality Worklist and MPPS out ---------------------

imaging_order = sa.Table(
    "imaging_order",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("trust", sa.String(), nullable=False),  # ODS code of the ordering trust
    sa.Column("accession_number", sa.String(16), nullable=False),  # OBR-18 / IPC-1
    sa.Column("placer_order_number", sa.String(), nullable=False, server_default=""),
    sa.Column("filler_order_number", sa.String(), nullable=False, server_default=""),
    # scheduled | in progress | completed | cancelled | discontinued (services.orders)
    sa.Column("status", sa.String(), nullable=False),
    # The patient: a hospital number at the trust (PID-3) and what PID said of them.
    sa.Column("patient_id", sa.String(), nullable=False),
    sa.Column("issuer", sa.String(), nullable=False),
    sa.Column("nhs_number", sa.String(10), nullable=True),
    sa.Column("patient_name", sa.String(), nullable=False, server_default=""),  # DICOM PN
    sa.Column("patient_birth_date", sa.String(), nullable=False, server_default=""),
    sa.Column("patient_sex", sa.String(), nullable=False, server_default=""),  # DICOM CS
    sa.Column("study_instance_uid", UID, nullable=False, unique=True),
    sa.Column("requested_procedure_id", sa.String(16), nullable=False),
    sa.Column("scheduled_step_id", sa.String(16), nullable=False),
    sa.Column("procedure_code", sa.String(), nullable=False, server_default=""),
    sa.Column("procedure_scheme", sa.String(), nullable=False, server_default=""),
    sa.Column("procedure_text", sa.String(), nullable=False, server_default=""),
    sa.Column("modality", sa.String(16), nullable=False),
    sa.Column("priority", sa.String(), nullable=False),  # services.orders.Priority
    sa.Column("requesting_clinician", sa.String(), nullable=False, server_default=""),  # PN
    sa.Column("requesting_location", sa.String(), nullable=False, server_default=""),
    sa.Column("patient_class", sa.String(), nullable=False, server_default=""),  # PV1-2
    sa.Column("reason", sa.Text(), nullable=False, server_default=""),
    sa.Column("site", sa.String(), nullable=False),  # site code where it is performed
    sa.Column("scheduled_at", sa.String(14), nullable=False),  # YYYYMMDDHHMMSS local
    sa.Column("scheduled_station_ae", sa.String(16), nullable=False, server_default=""),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Column("last_control_id", sa.String(), nullable=False),
    sa.UniqueConstraint("trust", "accession_number"),
)
sa.Index(None, imaging_order.c.site, imaging_order.c.modality, imaging_order.c.scheduled_at)
sa.Index(None, imaging_order.c.status, imaging_order.c.scheduled_at)

performed_step = sa.Table(
    "performed_step",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("sop_instance_uid", UID, nullable=False, unique=True),  # the MPPS instance
    sa.Column("trust", sa.String(), nullable=False),  # the performing AE's trust
    sa.Column("performed_station_ae", sa.String(16), nullable=False),
    # IN PROGRESS | COMPLETED | DISCONTINUED (PS3.3 C.4.14, Performed Procedure Step Status)
    sa.Column("status", sa.String(), nullable=False),
    sa.Column("order_fk", sa.ForeignKey("imaging_order.id"), nullable=True, index=True),
    sa.Column("study_instance_uid", UID, nullable=False, server_default=""),
    sa.Column("accession_number", sa.String(16), nullable=False, server_default=""),
    sa.Column("modality", sa.String(16), nullable=False, server_default=""),
    sa.Column("performed_series_json", sa.Text(), nullable=False, server_default="[]"),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
)
sa.Index(None, performed_step.c.study_instance_uid)

# IHE IOCM rejection notes (issue 15, services/rejection.py): one row per Key Object
# Selection rejection note received, with what it did and whether a PACS administrator
# undid it or the retention job purged what it rejected.
rejection = sa.Table(
    "rejection",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("note_sop_instance_uid", UID, nullable=False, unique=True),
    sa.Column("code_value", sa.String(16), nullable=False),
    sa.Column("code_meaning", sa.String(), nullable=False, server_default=""),
    sa.Column("study_instance_uid", UID, nullable=False, server_default=""),
    sa.Column("patient_id", sa.String(), nullable=False, server_default=""),
    sa.Column("issuer", sa.String(), nullable=False, server_default=""),
    sa.Column("sender", sa.String(), nullable=False, server_default=""),  # AE title or user
    sa.Column("sender_trust", sa.String(), nullable=True),
    sa.Column("received_at", TS, nullable=False),
    sa.Column("referenced", sa.Integer(), nullable=False),  # instances the note names
    sa.Column("rejected", sa.Integer(), nullable=False),  # of them, hidden by it
    sa.Column("undone_at", TS, nullable=True),
    sa.Column("undone_by", sa.String(), nullable=True),
    sa.Column("purged_at", TS, nullable=True),
)
sa.Index(None, rejection.c.received_at)

# The index rows a rejection took out of ``instance`` (and of ``series`` and ``study``
# when it left them empty), as JSON, so that every query and retrieve stops seeing
# them at once and an undo puts them back as they were. The note itself is kept here
# too (``is_note``): hidden from normal queries, as dcm4chee keeps it.
rejected_instance = sa.Table(
    "rejected_instance",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("rejection_fk", sa.ForeignKey("rejection.id"), nullable=False, index=True),
    sa.Column("sop_instance_uid", UID, nullable=False, unique=True),
    sa.Column("blob_key", sa.String(), nullable=False, unique=True),
    sa.Column("is_note", sa.Boolean(), nullable=False),
    sa.Column("instance_row", sa.Text(), nullable=False),
    sa.Column("series_row", sa.Text(), nullable=False),
    sa.Column("study_row", sa.Text(), nullable=False),
)
