"""Orders (issue 15): HL7 ORM/OMI in, Modality Worklist and MPPS out; IOCM rejection
notes."""

from __future__ import annotations

import sqlalchemy as sa

from netpacs.index.schema.base import TS, UID, metadata

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
