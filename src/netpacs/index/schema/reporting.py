"""Networked reporting (issue 6): the worklist, reports and their events, the results
outbox, store tallies."""

from __future__ import annotations

import sqlalchemy as sa

from netpacs.index.schema.base import TS, UID, metadata

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
    # The study's row is out of the index (rejected, evicted): kept by the database
    # (migration 0020); such an item is neither listed nor counted.
    sa.Column("study_gone", sa.Boolean(), nullable=False, server_default=sa.false()),
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
