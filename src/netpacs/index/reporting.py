"""The reporting tables' statements that are more than a line: the worklist row (an
item with its study, patient and report), adding an item once, the first image of a
study, and the studies of one person."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from netpacs.index.schema import instance, patient, report, series, study, worklist_item


def worklist_rows() -> sa.Select[Any]:
    """Worklist items with what is shown beside them: the patient, the study's date and
    accession number, and whether a second opinion was asked for."""
    return sa.select(
        worklist_item,
        patient.c.patient_id,
        patient.c.issuer,
        patient.c.patient_name,
        patient.c.nhs_number,
        study.c.study_date,
        study.c.accession_number,
        report.c.second_opinion_requested_by,
    ).select_from(
        worklist_item.join(study, study.c.study_instance_uid == worklist_item.c.study_instance_uid)
        .join(patient, patient.c.id == study.c.patient_fk)
        .outerjoin(report, report.c.study_instance_uid == worklist_item.c.study_instance_uid)
    )


def insert_worklist_item(conn: sa.Connection, values: dict[str, Any]) -> bool:
    """Insert a worklist item unless its study has one; whether it was inserted (one
    statement, so that two writers adding the same study never both succeed)."""
    insert = (
        postgresql.insert(worklist_item)
        if conn.dialect.name == "postgresql"
        else sqlite.insert(worklist_item)
    )
    done = conn.execute(
        insert.values(values).on_conflict_do_nothing().returning(worklist_item.c.id)
    ).first()
    return done is not None


def first_image(conn: sa.Connection, study_pk: int, *, skip: Collection[str]) -> sa.Row[Any] | None:
    """The modality, body part and header of a study's first instance whose series'
    modality is not in ``skip``; None when it has none."""
    query: sa.Select[Any] = (
        sa.select(series.c.modality, series.c.body_part_examined, instance.c.metadata_json)
        .select_from(series.join(instance, instance.c.series_fk == series.c.id))
        .where(series.c.study_fk == study_pk, series.c.modality.not_in(sorted(skip)))
        .order_by(series.c.id, instance.c.id)
        .limit(1)
    )
    return conn.execute(query).first()


def other_studies_of_person(study_uid: str, nhs_number: str | None) -> sa.Select[Any]:
    """The other studies of the study's patient and of every identity that shares its
    NHS number, newest first, with their main modality and report status."""
    same_person = sa.or_(
        patient.c.id
        == sa.select(study.c.patient_fk)
        .where(study.c.study_instance_uid == study_uid)
        .scalar_subquery(),
        sa.and_(patient.c.nhs_number.is_not(None), patient.c.nhs_number == nhs_number),
    )
    modality = (
        sa.select(sa.func.min(series.c.modality))
        .where(series.c.study_fk == study.c.id, series.c.modality.not_in(["SR", "PR", "KO"]))
        .scalar_subquery()
    )
    return (
        sa.select(
            study.c.study_instance_uid,
            study.c.study_date,
            study.c.study_time,
            study.c.study_description,
            study.c.origin_trust,
            patient.c.patient_id,
            patient.c.issuer,
            modality.label("modality"),
            worklist_item.c.status,
        )
        .select_from(
            study.join(patient, patient.c.id == study.c.patient_fk).outerjoin(
                worklist_item, worklist_item.c.study_instance_uid == study.c.study_instance_uid
            )
        )
        .where(same_person, study.c.study_instance_uid != study_uid)
        .order_by(study.c.study_date.desc(), study.c.study_time.desc())
    )
