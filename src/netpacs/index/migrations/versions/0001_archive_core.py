"""archive core tables

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "patient",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("patient_id", sa.String(), nullable=False),
        sa.Column("issuer", sa.String(), nullable=False),
        sa.Column("patient_name", sa.String(), server_default="", nullable=False),
        sa.Column("patient_birth_date", sa.String(), server_default="", nullable=False),
        sa.Column("patient_sex", sa.String(), server_default="", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patient")),
        sa.UniqueConstraint("patient_id", "issuer", name=op.f("uq_patient_patient_id_issuer")),
    )
    with op.batch_alter_table("patient", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_patient_patient_name"), ["patient_name"], unique=False)

    op.create_table(
        "study",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column(
            "patient_fk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("study_date", sa.String(), server_default="", nullable=False),
        sa.Column("study_time", sa.String(), server_default="", nullable=False),
        sa.Column("accession_number", sa.String(), server_default="", nullable=False),
        sa.Column("study_id", sa.String(), server_default="", nullable=False),
        sa.Column("study_description", sa.String(), server_default="", nullable=False),
        sa.Column("referring_physician_name", sa.String(), server_default="", nullable=False),
        sa.Column("origin_trust", sa.String(), nullable=True),
        sa.Column("origin_site", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["patient_fk"], ["patient.id"], name=op.f("fk_study_patient_fk_patient")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_study")),
        sa.UniqueConstraint("study_instance_uid", name=op.f("uq_study_study_instance_uid")),
    )
    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_study_accession_number"), ["accession_number"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_study_patient_fk"), ["patient_fk"], unique=False)
        batch_op.create_index(batch_op.f("ix_study_study_date"), ["study_date"], unique=False)

    op.create_table(
        "series",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_fk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("modality", sa.String(), server_default="", nullable=False),
        sa.Column("series_number", sa.Integer(), nullable=True),
        sa.Column("series_description", sa.String(), server_default="", nullable=False),
        sa.Column("body_part_examined", sa.String(), server_default="", nullable=False),
        sa.Column("series_date", sa.String(), server_default="", nullable=False),
        sa.Column("series_time", sa.String(), server_default="", nullable=False),
        sa.Column("institution_name", sa.String(), server_default="", nullable=False),
        sa.Column("station_name", sa.String(), server_default="", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["study_fk"], ["study.id"], name=op.f("fk_series_study_fk_study")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_series")),
        sa.UniqueConstraint("series_instance_uid", name=op.f("uq_series_series_instance_uid")),
    )
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_series_modality"), ["modality"], unique=False)
        batch_op.create_index(batch_op.f("ix_series_study_fk"), ["study_fk"], unique=False)

    op.create_table(
        "instance",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column(
            "series_fk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("instance_number", sa.Integer(), nullable=True),
        sa.Column("transfer_syntax_uid", sa.String(length=64), nullable=False),
        sa.Column("content_date", sa.String(), server_default="", nullable=False),
        sa.Column("content_time", sa.String(), server_default="", nullable=False),
        sa.Column("image_rows", sa.Integer(), nullable=True),
        sa.Column("image_columns", sa.Integer(), nullable=True),
        sa.Column("number_of_frames", sa.Integer(), nullable=True),
        sa.Column("blob_key", sa.String(), nullable=False),
        sa.Column("blob_size", sa.BigInteger(), nullable=False),
        sa.Column("blob_crc32", sa.BigInteger(), nullable=False),
        sa.Column("dataset_offset", sa.Integer(), nullable=False),
        sa.Column("metadata_json", sa.Text(), nullable=False),
        sa.Column("origin_protocol", sa.String(), nullable=False),
        sa.Column("origin_ae", sa.String(), nullable=True),
        sa.Column("origin_trust", sa.String(), nullable=True),
        sa.Column("origin_user", sa.String(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["series_fk"], ["series.id"], name=op.f("fk_instance_series_fk_series")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instance")),
        sa.UniqueConstraint("blob_key", name=op.f("uq_instance_blob_key")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_instance_sop_instance_uid")),
    )
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_instance_series_fk"), ["series_fk"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_instance_series_fk"))

    op.drop_table("instance")
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_series_study_fk"))
        batch_op.drop_index(batch_op.f("ix_series_modality"))

    op.drop_table("series")
    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_study_study_date"))
        batch_op.drop_index(batch_op.f("ix_study_patient_fk"))
        batch_op.drop_index(batch_op.f("ix_study_accession_number"))

    op.drop_table("study")
    with op.batch_alter_table("patient", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_patient_patient_name"))

    op.drop_table("patient")
