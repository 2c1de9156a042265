"""HL7 ADT (issue 4): identities as the trusts' patient administration systems say,
merges and the reconciliation queue."""

from __future__ import annotations

import sqlalchemy as sa

from netpacs.index.schema.base import TS, UID, metadata

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
