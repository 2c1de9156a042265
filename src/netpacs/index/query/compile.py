"""C-FIND and C-MOVE / C-GET identifiers compiled into SELECT statements.

Keys of levels below the query level are matched relationally (an entity matches if
one of its descendants matches them all) and returned empty. Keys without a column are
matched on ``metadata_json`` after the SQL filter, at STUDY, SERIES and PATIENT level
on one representative instance (the lowest pk).

Patients (services.identity): a Patient ID with Issuer of Patient ID ``NHS`` is an NHS
number and matches every local identity linked to it. A hospital number with its
issuer matches that identity only, unless the caller asks for linked identities: then
every identity sharing its verified NHS number too.

Every statement selects who and what it reached (:data:`AUDIT_COLUMNS`), for the audit
trail, and carries the caller's conditions on the patients it may see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from netpacs.domain import nhs_number
from netpacs.domain.dicom.header import JsonDataset
from netpacs.domain.query import QueryError, QueryLevel, QueryModel
from netpacs.index.query.answers import Output, fixed_elements
from netpacs.index.query.attributes import (
    ADAPTER_KEYS,
    ATTRS,
    DEPTH,
    IM,
    INSTANCE_AVAILABILITY,
    ISSUER,
    NHS_ISSUERS,
    OTHER_PATIENT_IDS,
    PATIENT_ID,
    PATIENT_NAME,
    RETRIEVE_AE_TITLE,
    SE,
    UNIQUE_KEYS,
    Kind,
    P,
    name,
)
from netpacs.index.query.matching import Exact, Key, check_model, parse_identifier
from netpacs.index.query.sql import BASE, Made, Sql, chain, child_of, link, related
from netpacs.index.schema import instance, patient, series, study

Conditions = Sequence[sa.ColumnElement[bool]]

# Who and what a statement reached, for the audit trail (never part of an answer).
AUDIT_COLUMNS: list[sa.ColumnElement[Any]] = [
    patient.c.patient_id.label("_audit_pid"),
    patient.c.issuer.label("_audit_issuer"),
    patient.c.nhs_number.label("_audit_nhs"),
    study.c.study_instance_uid.label("_audit_study"),
]


#: At most this many rows of a statement with a LIMIT and without stored headers are
#: read at once (about 5 MB at 500 bytes a row; QIDO-RS asks for 10,001 at most):
#: one round trip to PostgreSQL instead of a server-side cursor's five (DECLARE, three
#: FETCHes, CLOSE), which were most of an identifier search's time with four clients.
MAX_READ_AT_ONCE = 10_001
#: And with stored headers (a few kB each: a study list's page, a FHIR page of studies
#: with their patients' Other Patient IDs), at most this many.
MAX_HEADERS_AT_ONCE = 501

#: The label of the column that says a row's patient was reached through a break-glass
#: grant (when the caller passes ``emergency``): the audit's purpose of use, decided by
#: the same statement, at the same moment, as the access itself.
EMERGENCY = "_audit_emergency"


class Reached:
    """The patients (patient ID, issuer -> NHS number) and studies rows reached."""

    def __init__(self) -> None:
        self.patients: dict[tuple[str, str], str | None] = {}
        self._studies: dict[str, None] = {}
        self.emergency = False  # some patient reached through a break-glass grant

    def add(self, row: sa.Row[Any]) -> None:
        mapping = row._mapping
        self.patients[(mapping["_audit_pid"], mapping["_audit_issuer"])] = mapping["_audit_nhs"]
        if "_audit_study" in mapping:
            self._studies[mapping["_audit_study"]] = None
        if not self.emergency and mapping.get(EMERGENCY):
            self.emergency = True

    @property
    def studies(self) -> list[str]:
        return list(self._studies)


@dataclass(frozen=True, slots=True)
class FindPlan:
    """A compiled query: its statement and how each of its rows becomes an answer."""

    stmt: sa.Select[Any]
    outputs: list[Output]
    fixed: JsonDataset  # in every answer
    stored_filters: list[Key]  # matched on metadata_json after the SQL filter
    limit: int | None  # applied while reading when there are stored filters, else in SQL
    offset: int
    emergency: bool = False  # rows say whether they came through break-glass access
    streamed: bool = True  # read through a server-side cursor (else all at once)


@dataclass(frozen=True, slots=True)
class _FindRequest:
    keys: list[Key]
    level: QueryLevel
    linked: bool
    visible: Conditions
    retrieve_ae_title: str
    newest_first: bool = False
    emergency: sa.ColumnElement[bool] | None = None


def compile_find(
    sql: Sql,
    identifier: dict[str, Any],
    *,
    level: QueryLevel,
    model: QueryModel,
    limit: int | None,
    offset: int,
    linked: bool,
    visible: Conditions,
    retrieve_ae_title: str,
    newest_first: bool = False,
    emergency: sa.ColumnElement[bool] | None = None,
) -> FindPlan:
    """The plan of a C-FIND-style query; raises :class:`QueryError` for a bad one.

    ``newest_first``: studies by date and time, newest first (then the same order of
    series and instances within each study), so that a first page is a LIMIT on the
    index of study dates instead of a sort of every match; not at PATIENT level.
    ``emergency``: a condition on ``patient`` selected as :data:`EMERGENCY` (see
    :class:`Reached`).
    """
    check_model(level, model)
    if (limit is not None and limit < 0) or offset < 0:
        raise QueryError("limit and offset must not be negative")
    if newest_first and level is P:
        raise QueryError("newest first orders studies: not a PATIENT level query")
    keys = parse_identifier(identifier, level)
    request = _FindRequest(keys, level, linked, visible, retrieve_ae_title, newest_first, emergency)
    stmt, outputs, stored_filters, with_meta = _find_statement(sql, request)
    fixed = fixed_elements(identifier, level)
    asks = emergency is not None
    if stored_filters:
        return FindPlan(stmt, outputs, fixed, stored_filters, limit, offset, asks)
    if limit is not None:
        stmt = stmt.limit(limit)
    if offset:
        stmt = stmt.offset(offset)
    small = limit is not None and limit <= (MAX_HEADERS_AT_ONCE if with_meta else MAX_READ_AT_ONCE)
    return FindPlan(stmt, outputs, fixed, [], None, 0, asks, streamed=not small)


def _find_statement(
    sql: Sql, req: _FindRequest
) -> tuple[sa.Select[Any], list[Output], list[Key], bool]:
    """The statement, how its rows become answers, the keys left to match on
    metadata_json, and whether it selects the stored header (``meta``)."""
    conds, stored_filters = _find_conditions(sql, req)
    returned, outputs, needs_meta = _returns(req)
    level = req.level
    with_meta = needs_meta or bool(stored_filters)
    # What a statement selects, from and in which order: made once per such shape.
    shape = (level, req.newest_first, with_meta, *returned)
    base = sql.shaped(shape, lambda: _select(sql, level, returned, req.newest_first, with_meta))
    if req.emergency is not None:
        base = base.add_columns(req.emergency.label(EMERGENCY))
    return base.where(*conds), outputs, stored_filters, with_meta


def _select(
    sql: Sql,
    level: QueryLevel,
    returned: list[str],
    newest_first: bool,
    with_meta: bool,
) -> sa.Select[Any]:
    """The SELECT of a query without its conditions (no values in it); ``returned``:
    the tags of the return keys answered from a column or computed attribute."""
    columns: list[sa.ColumnElement[Any]] = [BASE.at(level).c.id.label("pk")]
    for tag in returned:
        columns += _returned(sql, tag)
    columns += AUDIT_COLUMNS if level is not P else AUDIT_COLUMNS[:3]
    if with_meta:
        meta = (
            BASE.instance.c.metadata_json
            if level is IM
            else Made(sql.representative_metadata(BASE, level))
        )
        columns.append(meta.label("meta"))
    joined = chain(BASE, P, level)
    return (
        sa.select(*columns).select_from(joined).order_by(*_order(level, newest_first=newest_first))
    )


def _find_conditions(sql: Sql, req: _FindRequest) -> tuple[list[sa.ColumnElement[bool]], list[Key]]:
    """The WHERE of a query, and the keys left to match on metadata_json."""
    depth = DEPTH[req.level]
    matched, conds = identity_match(req.keys, linked=req.linked)
    lower: list[Key] = []
    stored_filters: list[Key] = []
    for key in matched:
        if not key.terms:
            continue
        if key.attr is None:
            stored_filters.append(key)
        elif DEPTH[key.attr.level] > depth:
            lower.append(key)
        elif key.tag == PATIENT_NAME and req.level is not P:
            # The study row's copy of its patient's name (migration 0018; the database
            # keeps them equal): a name with a date range is one index range there.
            conds.append(sql.match(BASE.study.c.patient_name, "PN", key.terms))
        else:
            conds.append(sql.match_key(key, BASE))
    if lower:
        conds.append(_lower_exists(sql, lower, req.level))
    conds += req.visible
    return conds, stored_filters


def _lower_exists(sql: Sql, keys: list[Key], level: QueryLevel) -> sa.ColumnElement[bool]:
    """Relational matching: some descendant of the entity matches all these keys."""
    deepest = max((k.attr.level for k in keys if k.attr), key=DEPTH.__getitem__)
    sub, joined = related(BASE, level, deepest)
    conds = [sql.match_key(k, sub) for k in keys]
    return sa.select(1).select_from(joined).where(link(sub, child_of(level)), *conds).exists()


def _returns(req: _FindRequest) -> tuple[list[str], list[Output], bool]:
    """The tags of the return keys answered from the index's columns (see
    :func:`_returned`), how each return key is answered, and whether any is answered
    from metadata_json."""
    depth = DEPTH[req.level]
    returned: list[str] = []
    outputs: list[Output] = []
    needs_meta = False
    for key in req.keys:
        attr = key.attr
        label = f"k{key.tag}"
        if key.tag == INSTANCE_AVAILABILITY:
            outputs.append(Output(key.tag, "CS", constant={"vr": "CS", "Value": ["ONLINE"]}))
        elif key.tag == OTHER_PATIENT_IDS:
            returned.append(key.tag)
            outputs.append(Output(key.tag, "SQ", label=label, request=key.element, other_ids=True))
            needs_meta = True
        elif key.tag == RETRIEVE_AE_TITLE and req.retrieve_ae_title:
            answer = {"vr": "AE", "Value": [req.retrieve_ae_title]}
            outputs.append(Output(key.tag, "AE", constant=answer))
        elif key.tag in ADAPTER_KEYS or (attr and DEPTH[attr.level] > depth):
            outputs.append(Output(key.tag, key.vr, constant={"vr": key.vr}))
        elif attr is None:
            outputs.append(Output(key.tag, key.vr, request=key.element))
            needs_meta = True
        else:
            returned.append(key.tag)
            outputs.append(Output(key.tag, attr.vr, label=label, is_set=attr.kind is Kind.SET))
    return returned, outputs, needs_meta


def _returned(sql: Sql, tag: str) -> list[sa.Label[Any]]:
    """The labelled columns answering the return key ``tag`` (no values in them): its
    attribute's column or computed attribute; for Other Patient IDs, the NHS number and
    the identities linked to it."""
    label = f"k{tag}"
    if tag == OTHER_PATIENT_IDS:
        linked = Made(sql.linked_identities()).label(label + "_linked")
        return [patient.c.nhs_number.label(label), linked]
    attr = ATTRS[tag]
    if attr.kind is Kind.COLUMN:
        return [BASE.at(attr.level).c[attr.column].label(label)]
    if attr.kind is Kind.COUNT:
        return [Made(sql.count(attr, BASE)).label(label)]
    return [Made(sql.value_set(attr, BASE)).label(label)]


def compile_retrieve(
    sql: Sql,
    identifier: dict[str, Any],
    *,
    level: QueryLevel,
    model: QueryModel,
    visible: Conditions,
) -> tuple[sa.Select[Any], list[Key]]:
    """The stored instances a C-MOVE / C-GET identifier selects (PS3.4 C.4.2, C.4.3),
    and the keys left to match on their metadata_json.

    The unique key of the level is required (list of UID matching allowed); other
    keys with a column in the index are matched too, relationally, on each instance.
    Keys answered from ``metadata_json`` are matched only at IMAGE level.
    """
    check_model(level, model)
    keys = parse_identifier(identifier, level)
    _check_retrieve_keys(keys, level)
    inst = BASE.instance
    keys, conds = identity_match(keys, linked=False)
    conds += [sql.match_key(k, BASE) for k in keys if k.attr and k.terms]
    conds += visible
    stored_filters = [k for k in keys if k.attr is None and k.terms and level is IM]
    stmt = (
        sa.select(
            inst.c.sop_class_uid,
            inst.c.sop_instance_uid,
            inst.c.transfer_syntax_uid,
            inst.c.blob_key,
            inst.c.dataset_offset,
            inst.c.blob_size,
            (inst.c.metadata_json if stored_filters else sa.null()).label("meta"),
            *AUDIT_COLUMNS,
        )
        .select_from(chain(BASE, P, IM))
        .where(*conds)
        .order_by(*_order(IM))
    )
    return stmt, stored_filters


def _check_retrieve_keys(keys: list[Key], level: QueryLevel) -> None:
    unique = UNIQUE_KEYS[level]
    if not any(k.tag == unique and k.terms for k in keys):
        raise QueryError(f"a {level.value} level retrieve needs {name(unique)}")
    for key in keys:
        if (
            key.tag in UNIQUE_KEYS.values()
            and key.terms
            and any(not isinstance(t, Exact) for t in key.terms)
        ):
            raise QueryError(f"{name(key.tag)}: a retrieve needs exact values")


def identity_match(
    keys: list[Key], *, linked: bool
) -> tuple[list[Key], list[sa.ColumnElement[bool]]]:
    """Patient ID and Issuer keys as regional record conditions (see the module doc).

    Returns the keys still to match one by one, and the conditions replacing the rest.
    """
    pid = next((k for k in keys if k.tag == PATIENT_ID and k.terms), None)
    issuer = next((k for k in keys if k.tag == ISSUER and k.terms), None)
    if pid is None or issuer is None:
        return keys, []
    if not all(isinstance(t, Exact) for t in (*(pid.terms or ()), *(issuer.terms or ()))):
        return keys, []
    values = [str(t.value) for t in pid.terms or () if isinstance(t, Exact)]
    issuers = [str(t.value) for t in issuer.terms or () if isinstance(t, Exact)]
    rest = [k for k in keys if k is not pid and k is not issuer]
    if all(nhs_number.is_nhs_issuer(i) for i in issuers):
        digits = [p.digits for p in map(nhs_number.parse, values) if p.valid]
        as_id = sa.and_(patient.c.patient_id.in_(values), patient.c.issuer.in_(NHS_ISSUERS))
        if not digits:
            return rest, [as_id]
        return rest, [sa.or_(as_id, patient.c.nhs_number.in_(digits))]
    if not linked:
        return keys, []
    given = sa.and_(patient.c.patient_id.in_(values), patient.c.issuer.in_(issuers))
    holder = patient.alias()
    numbers = sa.select(holder.c.nhs_number).where(
        holder.c.patient_id.in_(values),
        holder.c.issuer.in_(issuers),
        holder.c.nhs_number.is_not(None),
    )
    return rest, [sa.or_(given, patient.c.nhs_number.in_(numbers))]


def nulls_last(col: sa.ColumnElement[Any]) -> list[sa.ColumnElement[Any]]:
    return [sa.case((col.is_(None), 1), else_=0), col]


def _order(level: QueryLevel, *, newest_first: bool = False) -> list[sa.ColumnElement[Any]]:
    """A deterministic order: patients by pk; studies by date, time, pk (``newest_first``:
    all three descending, which an index on them walks backwards); then numbers."""
    if level is P:
        return [patient.c.id]
    by_date: list[sa.ColumnElement[Any]] = [study.c.study_date, study.c.study_time, study.c.id]
    order: list[sa.ColumnElement[Any]] = [c.desc() for c in by_date] if newest_first else by_date
    if DEPTH[level] >= DEPTH[SE]:
        order += [*nulls_last(series.c.series_number), series.c.id]
    if level is IM:
        order += [*nulls_last(instance.c.instance_number), instance.c.id]
    return order
