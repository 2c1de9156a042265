"""Statements of a WADO-RS scope (a study, a series of it, one instance of that series),
and the look-ups the query service audits with."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from netpacs.index.query.compile import Conditions, nulls_last
from netpacs.index.schema import break_glass, instance, patient, series, study

_WADO_FROM = (
    study.join(series, series.c.study_fk == study.c.id)
    .join(instance, instance.c.series_fk == series.c.id)
    .join(patient, study.c.patient_fk == patient.c.id)  # for the access condition
)
_WADO_ORDER = [
    *nulls_last(series.c.series_number),
    series.c.id,
    *nulls_last(instance.c.instance_number),
    instance.c.id,
]


def _wado_scope(
    study_uid: str, series_uid: str | None, sop_instance_uid: str | None
) -> list[sa.ColumnElement[bool]]:
    conds = [study.c.study_instance_uid == study_uid]
    if series_uid is not None:
        conds.append(series.c.series_instance_uid == series_uid)
    if sop_instance_uid is not None:
        conds.append(instance.c.sop_instance_uid == sop_instance_uid)
    return conds


def metadata_statement(
    study_uid: str, series_uid: str | None, sop_instance_uid: str | None, visible: Conditions
) -> sa.Select[Any]:
    """(Series UID, SOP Instance UID, metadata_json) of each instance in scope, in series
    and instance number order."""
    return (
        sa.select(
            series.c.series_instance_uid,
            instance.c.sop_instance_uid,
            instance.c.metadata_json,
        )
        .select_from(_WADO_FROM)
        .where(*_wado_scope(study_uid, series_uid, sop_instance_uid), *visible)
        .order_by(*_WADO_ORDER)
    )


def stored_statement(
    study_uid: str,
    series_uid: str | None,
    sop_instance_uid: str | None,
    *,
    with_metadata: bool,
    visible: Conditions,
) -> sa.Select[Any]:
    """The columns of a StoredInstance for each instance in scope, in the same order."""
    inst = instance
    meta = inst.c.metadata_json if with_metadata else sa.literal("", type_=sa.String)
    return (
        sa.select(
            study.c.study_instance_uid,
            series.c.series_instance_uid,
            inst.c.sop_instance_uid,
            inst.c.sop_class_uid,
            inst.c.transfer_syntax_uid,
            inst.c.blob_key,
            inst.c.dataset_offset,
            inst.c.blob_size,
            meta,
        )
        .select_from(_WADO_FROM)
        .where(*_wado_scope(study_uid, series_uid, sop_instance_uid), *visible)
        .order_by(*_WADO_ORDER)
    )


def study_pk_statement(study_uid: str, visible: Conditions) -> sa.Select[Any]:
    return (
        sa.select(study.c.id)
        .select_from(study.join(patient, study.c.patient_fk == patient.c.id))
        .where(study.c.study_instance_uid == study_uid, *visible)
    )


def series_pk_statement(study_pk: int, series_uid: str) -> sa.Select[Any]:
    return sa.select(series.c.id).where(
        series.c.study_fk == study_pk, series.c.series_instance_uid == series_uid
    )


def study_patient_statement(study_uid: str) -> sa.Select[Any]:
    """The patient ID, issuer and NHS number of a study's patient."""
    return (
        sa.select(patient.c.patient_id, patient.c.issuer, patient.c.nhs_number)
        .select_from(study.join(patient, study.c.patient_fk == patient.c.id))
        .where(study.c.study_instance_uid == study_uid)
    )


def break_glass_statement(user_id: str, now: dt.datetime) -> sa.Select[Any]:
    """The patient ID, issuer and NHS number of each break-glass grant open to a user."""
    return sa.select(
        break_glass.c.patient_id, break_glass.c.issuer, break_glass.c.nhs_number
    ).where(
        break_glass.c.username == user_id,
        break_glass.c.expires_at > now,
    )
