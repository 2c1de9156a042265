"""The archive's own tables: patients, studies, series, instances, and the index's
epoch (a rebuilt index tells the writers)."""

from __future__ import annotations

import sqlalchemy as sa

from netpacs.index.schema.base import BY_DATABASE, TS, UID, metadata

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
