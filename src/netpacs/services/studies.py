"""The study list: a page of studies, newest first, for people choosing what to view.

Matching goes through the query service (the same C-FIND matching as DIMSE and
QIDO-RS, PS3.4 C.2.2.2), so the list shows exactly what a query would answer. The
index adds what a C-FIND answer does not carry: the trust where each study was
captured (``study.origin_trust``, ``origin_site``).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from netpacs.domain import nhs_number
from netpacs.domain.dicom.header import first_int, first_str
from netpacs.domain.query import QueryLevel, QueryModel
from netpacs.domain.region import Region
from netpacs.index.schema import study
from netpacs.services.access import Principal
from netpacs.services.query import QueryService

if TYPE_CHECKING:  # an edge node's read-through (issue 13)
    from netpacs.services.edge.readthrough import ReadThrough

PAGES = "pages"  # the interface named in the query latency histogram (services.metrics)
_PATIENT_NAME = "00100010"
_PATIENT_ID = "00100020"
_ISSUER = "00100021"
_OTHER_PATIENT_IDS = "00101002"
_STUDY_UID = "0020000D"
_STUDY_DATE = "00080020"
_STUDY_TIME = "00080030"
_MODALITIES = "00080061"
_DESCRIPTION = "00081030"
_ACCESSION = "00080050"
_N_SERIES = "00201206"
_N_INSTANCES = "00201208"


@dataclass(frozen=True, slots=True)
class StudyFilter:
    """What to list: C-FIND matching values (empty means any)."""

    patient_name: str = ""
    patient_id: str = ""
    issuer: str = ""  # of the Patient ID ("NHS": every identity linked to the number)
    study_date: str = ""  # DA or a DA range (YYYYMMDD-YYYYMMDD)
    modality: str = ""

    def identifier(self) -> dict[str, Any]:
        keys: dict[str, Any] = {}
        if self.patient_name:
            keys[_PATIENT_NAME] = {"vr": "PN", "Value": [{"Alphabetic": self.patient_name}]}
        for tag, vr, value in (
            (_PATIENT_ID, "LO", self.patient_id),
            ("00100021", "LO", self.issuer),
            (_STUDY_DATE, "DA", self.study_date),
            (_MODALITIES, "CS", self.modality),
        ):
            if value:
                keys[tag] = {"vr": vr, "Value": [value]}
        return keys


@dataclass(frozen=True, slots=True)
class StudySummary:
    """One row of the study list."""

    study_instance_uid: str
    patient_name: str
    patient_id: str
    issuer_of_patient_id: str
    nhs_number: str | None  # 10 digits, valid
    study_date: str
    study_time: str
    modalities: tuple[str, ...]
    study_description: str
    accession_number: str
    number_of_series: int | None
    number_of_instances: int | None
    origin_trust: str | None  # ODS code
    origin_trust_name: str | None
    origin_site_name: str | None


@dataclass(frozen=True, slots=True)
class StudyPage:
    studies: list[StudySummary]
    offset: int
    limit: int
    has_more: bool


def study_summary_identifier(uids: Sequence[str]) -> dict[str, Any]:
    """A STUDY-level identifier selecting ``uids`` and returning what a study list shows:
    patient name, ID, issuer and Other Patient IDs (for the NHS number), date, time,
    modalities, description, accession number and the counts."""
    return {**_summary_keys(), _STUDY_UID: {"vr": "UI", "Value": list(uids)}}


def _summary_keys() -> dict[str, Any]:
    return {
        _STUDY_UID: {"vr": "UI"},
        _PATIENT_NAME: {"vr": "PN"},
        _PATIENT_ID: {"vr": "LO"},
        _ISSUER: {"vr": "LO"},
        _OTHER_PATIENT_IDS: {
            "vr": "SQ",
            "Value": [{_PATIENT_ID: {"vr": "LO"}, _ISSUER: {"vr": "LO"}}],
        },
        _STUDY_DATE: {"vr": "DA"},
        _STUDY_TIME: {"vr": "TM"},
        _MODALITIES: {"vr": "CS"},
        _DESCRIPTION: {"vr": "LO"},
        _ACCESSION: {"vr": "SH"},
        _N_SERIES: {"vr": "IS"},
        _N_INSTANCES: {"vr": "IS"},
    }


def nhs_number_of(answer: dict[str, Any]) -> str | None:
    """The NHS number of a patient: a valid Patient ID, or Other Patient ID, issued by NHS."""
    candidates = [(first_str(answer, _PATIENT_ID), first_str(answer, _ISSUER))]
    for item in (answer.get(_OTHER_PATIENT_IDS) or {}).get("Value") or []:
        if isinstance(item, dict):
            candidates.append((first_str(item, _PATIENT_ID), first_str(item, _ISSUER)))
    for value, issuer in candidates:
        parsed = nhs_number.parse(value)
        if nhs_number.is_nhs_issuer(issuer) and parsed.valid:
            return parsed.digits
    return None


class StudyListService:
    """Pages of studies, newest first, matched by the query service."""

    def __init__(
        self,
        query: QueryService,
        engine: sa.Engine,
        region: Region,
        *,
        read_through: ReadThrough | None = None,
    ) -> None:
        """``read_through``: at an edge node, the core answers (services.edge.readthrough;
        the cache when the core does not)."""
        self._query = query
        self._engine = engine
        self._region = region
        self._read_through = read_through

    def for_principal(self, principal: Principal) -> StudyListService:
        """The same index, listing what ``principal`` may see."""
        return StudyListService(
            self._query.for_principal(principal),
            self._engine,
            self._region,
            read_through=self._read_through,
        )

    def page(self, where: StudyFilter, *, limit: int, offset: int = 0) -> StudyPage:
        """Studies matching ``where``, newest (study date and time) first.

        One query, newest first in the index, reading the page and one study more (to
        tell whether there is a next page), whatever the number of matches.
        Raises :class:`~netpacs.domain.query.QueryError` for a filter that is not
        a valid matching key (e.g. a malformed date).
        """
        if limit < 1 or offset < 0:
            raise ValueError("limit must be positive and offset not negative")
        if self._read_through is not None:
            return self._page_through_core(where, limit=limit, offset=offset)
        keys = _summary_keys()
        keys.update(where.identifier())  # the filter's matching values
        answers = list(
            self._query.find(
                keys,
                level=QueryLevel.STUDY,
                model=QueryModel.STUDY_ROOT,
                limit=limit + 1,
                offset=offset,
                newest_first=True,
                interface=PAGES,
            )
        )
        page = answers[:limit]
        origins = self._origins(first_str(a, _STUDY_UID) for a in page)
        return StudyPage(
            [self._summary(a, origins) for a in page], offset, limit, len(answers) > limit
        )

    def _page_through_core(self, where: StudyFilter, *, limit: int, offset: int) -> StudyPage:
        """At an edge node: the core's answers (or the cache's), which come in ascending
        date order. The newest offset + limit + 1 studies are picked from a date-only
        answer, then the page's full rows asked for."""
        keys = where.identifier()
        keys.update({_STUDY_UID: {"vr": "UI"}, _STUDY_DATE: keys.get(_STUDY_DATE, {"vr": "DA"})})
        keys[_STUDY_TIME] = {"vr": "TM"}
        newest = heapq.nlargest(
            offset + limit + 1,
            (
                (first_str(a, _STUDY_DATE), first_str(a, _STUDY_TIME), first_str(a, _STUDY_UID))
                for a in self._find_through_core(keys)
            ),
        )
        uids = [uid for _, _, uid in newest[offset : offset + limit]]
        rows: dict[str, dict[str, Any]] = {}
        if uids:
            for a in self._find_through_core(study_summary_identifier(uids)):
                rows[first_str(a, _STUDY_UID) or ""] = a
        origins = self._origins(uids)
        page = [self._summary(rows[u], origins) for u in uids if u in rows]
        return StudyPage(page, offset, limit, len(newest) > offset + limit)

    def _find_through_core(self, identifier: dict[str, Any]) -> Iterable[dict[str, Any]]:
        assert self._read_through is not None
        return self._read_through.find(
            self._query,
            identifier,
            level=QueryLevel.STUDY,
            model=QueryModel.STUDY_ROOT,
            interface=PAGES,
        ).matches

    def _summary(
        self, a: dict[str, Any], origins: dict[str, tuple[str | None, str | None]]
    ) -> StudySummary:
        uid = first_str(a, _STUDY_UID)
        trust_code, site_code = origins.get(uid, (None, None))
        trust = self._region.trust(trust_code) if trust_code else None
        site = next((s for s in trust.sites if s.code == site_code), None) if trust else None
        return StudySummary(
            study_instance_uid=uid,
            patient_name=first_str(a, _PATIENT_NAME),
            patient_id=first_str(a, _PATIENT_ID),
            issuer_of_patient_id=first_str(a, _ISSUER),
            nhs_number=nhs_number_of(a),
            study_date=first_str(a, _STUDY_DATE),
            study_time=first_str(a, _STUDY_TIME),
            modalities=tuple(str(v) for v in (a.get(_MODALITIES) or {}).get("Value") or []),
            study_description=first_str(a, _DESCRIPTION),
            accession_number=first_str(a, _ACCESSION),
            number_of_series=first_int(a, _N_SERIES),
            number_of_instances=first_int(a, _N_INSTANCES),
            origin_trust=trust_code,
            origin_trust_name=trust.name if trust else None,
            origin_site_name=site.name if site else None,
        )

    def _origins(self, uids: Iterable[str]) -> dict[str, tuple[str | None, str | None]]:
        stmt = sa.select(
            study.c.study_instance_uid, study.c.origin_trust, study.c.origin_site
        ).where(study.c.study_instance_uid.in_(list(uids)))
        with self._engine.connect() as conn:
            return {row[0]: (row[1], row[2]) for row in conn.execute(stmt)}
