"""The index as the query service asks it: compiled statements run, rows read into
answers, stored instances and audit look-ups. Every method that reads patients' data
takes the caller's conditions on the patients it may see (``visible``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import orjson
import sqlalchemy as sa

from netpacs.domain.dicom.header import JsonDataset
from netpacs.domain.query import (
    QueryLevel,
    QueryModel,
    RetrieveItem,
    StoredInstance,
)
from netpacs.index.query import scopes
from netpacs.index.query.answers import answer
from netpacs.index.query.budget import QueryBudget
from netpacs.index.query.compile import (
    Conditions,
    FindPlan,
    Reached,
    compile_find,
    compile_retrieve,
)
from netpacs.index.query.matching import stored_match
from netpacs.index.query.sql import Sql

PatientKeys = dict[tuple[str, str], str | None]  # (patient ID, issuer) -> NHS number


class QueryIndex:
    """Compiles C-FIND-style identifiers (PS3.4 C.2.2.2, C.6) and answers them."""

    def __init__(self, engine: sa.Engine, *, time_limit: float | None = None) -> None:
        """``time_limit``: the seconds of work one query's answers may take (None: no
        limit); beyond it :meth:`answers` raises
        :class:`~netpacs.domain.query.QueryTimeout`."""
        self._engine = engine
        self._sql = Sql(engine.dialect.name)
        self._time_limit = time_limit

    def compile_find(
        self,
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
        """The plan of a query; raises :class:`~netpacs.domain.query.QueryError`.

        ``linked``: a hospital number also matches the identities linked to it by NHS
        number. ``retrieve_ae_title``: answered as every match's Retrieve AE Title.
        ``newest_first``: studies newest first (see :func:`compile_find`).
        ``emergency``: see :func:`compile_find`.
        """
        return compile_find(
            self._sql,
            identifier,
            level=level,
            model=model,
            limit=limit,
            offset=offset,
            linked=linked,
            visible=visible,
            retrieve_ae_title=retrieve_ae_title,
            newest_first=newest_first,
            emergency=emergency,
        )

    def answers(self, plan: FindPlan, reached: Reached) -> Iterator[JsonDataset]:
        """One DICOM JSON data set per match, streamed; ``reached`` notes each one's
        patient and study. The connection is released when the iterator is closed."""
        if plan.limit == 0:
            return
        skipped = emitted = 0
        budget = QueryBudget(self._time_limit)
        budget.resume()
        with self._engine.connect() as conn, budget.guard(conn, sqlite=self._sql.sqlite):
            if not plan.streamed:
                result = conn.execute(plan.stmt)  # few, small rows (compile.MAX_READ_AT_ONCE)
            else:
                if not self._sql.sqlite:
                    # A server-side cursor is otherwise planned for its first 10 % of rows
                    # (fast-start plans that can be 15x slower in total); a C-FIND wants
                    # them all, and paged callers are planned by their LIMIT.
                    conn.exec_driver_sql("SET LOCAL cursor_tuple_fraction = 1.0")
                result = conn.execution_options(yield_per=256).execute(plan.stmt)
            for row in result:
                budget.check()
                meta: JsonDataset | None = None
                if "meta" in row._fields:
                    meta = orjson.loads(row.meta) if row.meta else {}
                if plan.stored_filters and not stored_match(meta or {}, plan.stored_filters):
                    continue
                if skipped < plan.offset:
                    skipped += 1
                    continue
                found = answer(row, plan.outputs, plan.fixed, meta)
                reached.add(row)
                budget.pause()
                yield found
                budget.resume()
                emitted += 1
                if plan.limit is not None and emitted >= plan.limit:
                    return

    def retrieve_items(
        self,
        identifier: dict[str, Any],
        *,
        level: QueryLevel,
        model: QueryModel,
        visible: Conditions,
        reached: Reached,
    ) -> list[RetrieveItem]:
        """The stored instances a C-MOVE / C-GET identifier selects (see
        :func:`~netpacs.index.query.compile.compile_retrieve`)."""
        stmt, stored_filters = compile_retrieve(
            self._sql, identifier, level=level, model=model, visible=visible
        )
        items: list[RetrieveItem] = []
        with self._engine.connect() as conn:
            for row in conn.execute(stmt):
                if stored_filters and not stored_match(orjson.loads(row.meta), stored_filters):
                    continue
                items.append(RetrieveItem(*row[:6]))
                reached.add(row)
        return items

    def metadata_texts(
        self,
        study_uid: str,
        series_uid: str | None,
        sop_instance_uid: str | None,
        *,
        visible: Conditions,
    ) -> list[tuple[str, str, str]]:
        """(Series UID, SOP Instance UID, stored DICOM JSON text) of each instance in scope."""
        stmt = scopes.metadata_statement(study_uid, series_uid, sop_instance_uid, visible)
        with self._engine.connect() as conn:
            return [(r[0], r[1], r[2]) for r in conn.execute(stmt)]

    def stored_instances(
        self,
        study_uid: str,
        series_uid: str | None,
        sop_instance_uid: str | None,
        *,
        with_metadata: bool,
        visible: Conditions,
    ) -> list[StoredInstance]:
        stmt = scopes.stored_statement(
            study_uid, series_uid, sop_instance_uid, with_metadata=with_metadata, visible=visible
        )
        with self._engine.connect() as conn:
            return [StoredInstance(*row) for row in conn.execute(stmt)]

    def scope_exists(
        self, study_uid: str, series_uid: str | None, *, visible: Conditions
    ) -> tuple[bool, bool]:
        """Whether the study is stored, and whether the series (if given) is one of its."""
        with self._engine.connect() as conn:
            study_pk = conn.execute(scopes.study_pk_statement(study_uid, visible)).scalar()
            if study_pk is None:
                return False, False
            if series_uid is None:
                return True, True
            series_pk = conn.execute(scopes.series_pk_statement(study_pk, series_uid)).scalar()
            return True, series_pk is not None

    def study_patient(self, study_uid: str) -> PatientKeys:
        """The patient of a stored study (none for a study not stored)."""
        with self._engine.connect() as conn:
            found = conn.execute(scopes.study_patient_statement(study_uid)).first()
        return {} if found is None else {(found[0], found[1]): found[2]}

    def break_glass_grants(
        self, user_id: str, now: dt.datetime
    ) -> list[tuple[str, str, str | None]]:
        """(Patient ID, issuer, NHS number) of each break-glass grant open to a user."""
        with self._engine.connect() as conn:
            rows = conn.execute(scopes.break_glass_statement(user_id, now)).all()
        return [(r[0], r[1], r[2]) for r in rows]
