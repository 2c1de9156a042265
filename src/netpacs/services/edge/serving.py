"""The core's side of reading through an edge node: queries and selections in the
form of C-FIND identifiers (issue 13).

An edge asks with the identifier a C-FIND, C-MOVE or C-GET (or its QIDO-RS search)
gave it, so the core matches exactly as for a client of its own: the same query
service, for the person the edge acts for (or the edge itself), under the same rules,
audited the same way.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from netpacs.domain.dicom.header import JsonDataset
from netpacs.domain.query import QueryLevel, QueryModel
from netpacs.index.schema import instance, series, study
from netpacs.services.edge.audit_outbox import AuditIntake
from netpacs.services.query import QueryService

#: At most this many matches go back for one question (an edge asks again, by offset).
MAX_MATCHES = 10_000


class EdgeServing:
    """Answers an edge's questions with the core's query service."""

    def __init__(self, read_engine: sa.Engine, *, audit_intake: AuditIntake) -> None:
        self._engine = read_engine
        self.audit_intake = audit_intake

    def find(
        self,
        query: QueryService,
        identifier: dict[str, Any],
        *,
        level: QueryLevel,
        model: QueryModel,
        limit: int | None,
        offset: int,
        linked: bool,
    ) -> list[JsonDataset]:
        """The matches, as C-FIND would give them (QueryError for a bad identifier)."""
        wanted = MAX_MATCHES if limit is None else min(limit, MAX_MATCHES)
        found = query.find(
            identifier,
            level=level,
            model=model,
            limit=wanted,
            offset=offset,
            linked=linked,
            interface="edge",
        )
        return list(found)

    def select(
        self,
        query: QueryService,
        identifier: dict[str, Any],
        *,
        level: QueryLevel,
        model: QueryModel,
    ) -> list[tuple[str, str, str]]:
        """(Study, Series, SOP Instance UID) of each instance a C-MOVE / C-GET
        identifier selects (PS3.4 C.4.2), audited as a selection for retrieve."""
        items = query.instances_for_retrieve(identifier, level=level, model=model)
        uids = [i.sop_instance_uid for i in items]
        located: list[tuple[str, str, str]] = []
        with self._engine.connect() as conn:
            for start in range(0, len(uids), 500):
                rows = conn.execute(
                    sa.select(
                        study.c.study_instance_uid,
                        series.c.series_instance_uid,
                        instance.c.sop_instance_uid,
                    )
                    .select_from(instance.join(series).join(study))
                    .where(instance.c.sop_instance_uid.in_(uids[start : start + 500]))
                )
                located.extend((a, b, c) for a, b, c in rows)
        return located
