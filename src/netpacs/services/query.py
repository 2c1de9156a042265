"""The query service: the one place C-FIND, QIDO-RS, FHIR search and the UI ask the index.

Query/Retrieve information models and levels follow PS3.4 C.6 (Patient Root, Study
Root; PATIENT, STUDY, SERIES, IMAGE). Attribute matching follows PS3.4 C.2.2.2:

- single value matching (C.2.2.2.1), exact and case-sensitive except for PN, which
  is matched case-insensitively on the Alphabetic group; a value of two quotation
  marks (``""``) matches entities whose value is empty (empty value matching);
- list of UID matching (C.2.2.2.2);
- universal matching (C.2.2.2.3): no value, or a value of ``*``;
- wild card matching (C.2.2.2.4) with ``*`` and ``?`` for AE, CS, LO, LT, PN, SH,
  ST, UC, UR and UT;
- range matching (C.2.2.2.5) for DA, TM and DT; a partial time or date-time stands
  for the whole period it names, so ``-1000`` includes 10:00:59.5;
- sequence matching (C.2.2.2.6) is treated as universal matching;
- multiple values (``CT\\MR``) outside UIDs are matched as alternatives (OR): without
  Extended Negotiation their meaning is undefined (C.2.2.2.8, note 4).

Patients (issue 4, services.identity): a Patient ID with Issuer of Patient ID ``NHS``
is an NHS number and matches every local identity linked to it, each answered with
its own hospital number and issuer. A hospital number with its issuer matches that
identity only, unless the caller asks for linked identities (``linked=True``): then
every identity sharing its verified NHS number too. Other Patient IDs Sequence
(0010,1002) is answered from the regional record: the NHS number and the linked
hospital numbers at other trusts.

Access (services.access): a query service serves one principal; every statement it
runs carries the condition on patients that principal may see, so an unseen patient
is answered as one that does not exist. Every query and every selection of objects
is audited (services.audit) with the patients and studies it reached.

Keys of levels below the query level are matched relationally (an entity matches
if one of its descendants matches them all) and returned empty. Answers come from
the index only (ARCHITECTURE.md invariant 7): columns where there are columns,
``instance.metadata_json`` for every other attribute, taken at STUDY, SERIES and
PATIENT level from one representative instance (the lowest pk). Unsupported return
keys come back present and empty (PS3.4 C.4.1.1.3.2).
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from pydicom.datadict import dictionary_VR, keyword_for_tag

from netpacs.domain import nhs_number
from netpacs.index.schema import break_glass, instance, patient, series, study
from netpacs.services.access import CLINICAL, AccessRules, Principal, Role
from netpacs.services.audit import AuditRecord, AuditService, Event, Purpose

JsonDataset = dict[str, Any]


class QueryLevel(enum.Enum):
    """Query/Retrieve Level (0008,0052), PS3.4 C.6."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


class QueryModel(enum.Enum):
    """Query/Retrieve information model (PS3.4 C.6.1 Patient Root, C.6.2 Study Root)."""

    PATIENT_ROOT = "patient-root"
    STUDY_ROOT = "study-root"


class QueryError(ValueError):
    """The identifier cannot be answered as given; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class RetrieveItem:
    """One stored object a C-MOVE / C-GET identifier selects, and where its bytes are."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    blob_key: str
    dataset_offset: int
    blob_size: int


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """One stored instance as WADO-RS needs it: its UIDs, its blob, its stored header."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_key: str
    dataset_offset: int
    blob_size: int
    metadata_json: str  # '' when not asked for

    @property
    def item(self) -> RetrieveItem:
        return RetrieveItem(
            self.sop_class_uid,
            self.sop_instance_uid,
            self.transfer_syntax_uid,
            self.blob_key,
            self.dataset_offset,
            self.blob_size,
        )


# -- attributes the index answers ---------------------------------------------------------

_LEVELS = (QueryLevel.PATIENT, QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.IMAGE)
_DEPTH = {level: depth for depth, level in enumerate(_LEVELS)}


class _Kind(enum.Enum):
    COLUMN = "column"  # a column of the level's table
    COUNT = "count"  # number of related entities of level ``below``
    SET = "set"  # distinct values of column ``column`` of related entities of ``below``


@dataclass(frozen=True, slots=True)
class _Attr:
    vr: str
    level: QueryLevel
    column: str
    kind: _Kind = _Kind.COLUMN
    below: QueryLevel | None = None


_P, _ST, _SE, _IM = _LEVELS
_ATTRS: dict[str, _Attr] = {
    # PATIENT (PS3.4 C.6.1.1.2)
    "00100010": _Attr("PN", _P, "patient_name"),
    "00100020": _Attr("LO", _P, "patient_id"),
    "00100021": _Attr("LO", _P, "issuer"),
    "00100030": _Attr("DA", _P, "patient_birth_date"),
    "00100040": _Attr("CS", _P, "patient_sex"),
    "00201200": _Attr("IS", _P, "", _Kind.COUNT, _ST),
    "00201202": _Attr("IS", _P, "", _Kind.COUNT, _SE),
    "00201204": _Attr("IS", _P, "", _Kind.COUNT, _IM),
    # STUDY (C.6.1.1.3)
    "0020000D": _Attr("UI", _ST, "study_instance_uid"),
    "00080020": _Attr("DA", _ST, "study_date"),
    "00080030": _Attr("TM", _ST, "study_time"),
    "00080050": _Attr("SH", _ST, "accession_number"),
    "00200010": _Attr("SH", _ST, "study_id"),
    "00081030": _Attr("LO", _ST, "study_description"),
    "00080090": _Attr("PN", _ST, "referring_physician_name"),
    "00080061": _Attr("CS", _ST, "modality", _Kind.SET, _SE),
    "00080062": _Attr("UI", _ST, "sop_class_uid", _Kind.SET, _IM),
    "00201206": _Attr("IS", _ST, "", _Kind.COUNT, _SE),
    "00201208": _Attr("IS", _ST, "", _Kind.COUNT, _IM),
    # SERIES (C.6.1.1.4)
    "0020000E": _Attr("UI", _SE, "series_instance_uid"),
    "00080060": _Attr("CS", _SE, "modality"),
    "00200011": _Attr("IS", _SE, "series_number"),
    "0008103E": _Attr("LO", _SE, "series_description"),
    "00180015": _Attr("CS", _SE, "body_part_examined"),
    "00080021": _Attr("DA", _SE, "series_date"),
    "00080031": _Attr("TM", _SE, "series_time"),
    "00080080": _Attr("LO", _SE, "institution_name"),
    "00081010": _Attr("SH", _SE, "station_name"),
    "00201209": _Attr("IS", _SE, "", _Kind.COUNT, _IM),
    # IMAGE (C.6.1.1.5)
    "00080018": _Attr("UI", _IM, "sop_instance_uid"),
    "00080016": _Attr("UI", _IM, "sop_class_uid"),
    "00200013": _Attr("IS", _IM, "instance_number"),
    "00080023": _Attr("DA", _IM, "content_date"),
    "00080033": _Attr("TM", _IM, "content_time"),
    "00280010": _Attr("US", _IM, "image_rows"),
    "00280011": _Attr("US", _IM, "image_columns"),
    "00280008": _Attr("IS", _IM, "number_of_frames"),
    "00083002": _Attr("UI", _IM, "transfer_syntax_uid"),  # Available Transfer Syntax UID
}
_UNIQUE_KEYS = {_P: "00100020", _ST: "0020000D", _SE: "0020000E", _IM: "00080018"}
_PATIENT_ID = "00100020"
_ISSUER = "00100021"
_OTHER_PATIENT_IDS = "00101002"
_NHS_ISSUERS = sorted(nhs_number.NHS_ISSUERS)
_ID_SEP = "\x1e"  # between linked identities in an aggregate; \x1f within one

_QUERY_RETRIEVE_LEVEL = "00080052"
_SPECIFIC_CHARACTER_SET = "00080005"
_INSTANCE_AVAILABILITY = "00080056"
# Qualifies the times of the query (PS3.4 C.2.2.2.5), it is not matched itself.
_TIMEZONE_OFFSET = "00080201"
# Filled in by the adapter that knows them (QIDO-RS: the URLs), else empty.
_ADAPTER_KEYS = frozenset({"00080054", "00081190", "0040E010", "00880130", "00880140"})
# Retrieve AE Title: where the entity can be retrieved with C-MOVE (PS3.4 C.4.1.1.3.2).
_RETRIEVE_AE_TITLE = "00080054"

_WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})  # a backslash is text, not a delimiter
_INT_VRS = frozenset({"IS", "US", "UL", "SS", "SL", "SV", "UV"})
_FLOAT_VRS = frozenset({"DS", "FL", "FD"})
_UNMATCHABLE_VRS = frozenset({"SQ", "OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_ESCAPE = "!"


def _name(tag: str) -> str:
    keyword = keyword_for_tag(int(tag, 16)) or "attribute"
    return f"{keyword} ({tag[:4]},{tag[4:]})"


# -- terms: one parsed value of a matching key ---------------------------------------------


@dataclass(frozen=True, slots=True)
class _Exact:
    value: str | int | float


@dataclass(frozen=True, slots=True)
class _Wild:
    pattern: str  # DICOM wild card syntax: * and ?


@dataclass(frozen=True, slots=True)
class _Range:
    low: str | None  # normalised (see _norm_tm / _norm_dt); DA as YYYYMMDD
    high: str | None


@dataclass(frozen=True, slots=True)
class _Empty:
    pass


_Term = _Exact | _Wild | _Range | _Empty

_TM = r"\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?"
_DT = r"\d{4}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?)?)?(?:[+-]\d{4})?"
_PATTERNS = {
    "DA": (re.compile(r"\d{8}"), "a date (YYYYMMDD)"),
    "TM": (re.compile(_TM), "a time (HH, HHMM, HHMMSS or HHMMSS.FFFFFF)"),
    "DT": (re.compile(_DT), "a date-time (YYYY[MM[DD[HH[MM[SS[.FFFFFF]]]]]][&ZZXX])"),
}


def _norm_tm(value: str, *, upper: bool = False) -> str:
    """A time as HHMMSS.FFFFFF; missing parts are the start (or the end) of the period."""
    hh, mm, ss = value[0:2], value[2:4], value[4:6]
    frac = value[7:13] if value[6:7] == "." else ""
    fill = "9" if upper else "0"
    mm = mm or ("59" if upper else "00")
    ss = ss or ("59" if upper else "00")
    return f"{hh}{mm}{ss}.{frac.ljust(6, fill)}"


def _norm_dt(value: str, *, upper: bool = False) -> str:
    """A date-time as YYYYMMDDHHMMSS.FFFFFF (the UTC offset is not taken into account)."""
    value = re.sub(r"[+-]\d{4}$", "", value)
    head, _, frac = value.partition(".")
    pad = "1231235959" if upper else "0101000000"
    head = head + pad[len(head) - 4 :] if len(head) < 14 else head[:14]
    return f"{head}.{frac[:6].ljust(6, '9' if upper else '0')}"


def _parse_temporal(tag: str, vr: str, value: str) -> _Term:
    pattern, what = _PATTERNS[vr]
    cleaned = value.replace(":", "") if vr == "TM" else value
    if vr == "DA" and re.fullmatch(r"\d{4}\.\d{2}\.\d{2}", cleaned):
        cleaned = cleaned.replace(".", "")  # ACR-NEMA style, still sent by old SCUs
    if pattern.fullmatch(cleaned):
        if vr == "DA":
            return _Exact(cleaned)
        norm = _norm_tm if vr == "TM" else _norm_dt
        return _Range(norm(cleaned), norm(cleaned, upper=True))
    low, dash, high = cleaned.partition("-") if vr != "DT" else _split_dt_range(cleaned)
    if dash and (low or high):
        if vr == "DA":
            low, high = low.replace(".", ""), high.replace(".", "")
        if all(not part or pattern.fullmatch(part) for part in (low, high)):
            if vr == "DA":
                return _Range(low or None, high or None)
            norm = _norm_tm if vr == "TM" else _norm_dt
            return _Range(norm(low) if low else None, norm(high, upper=True) if high else None)
    raise QueryError(f"{_name(tag)}: {value!r} is not {what} or a range of them (a-b, -b or a-)")


_DT_RANGE = re.compile(f"({_DT})?-({_DT})?")


def _split_dt_range(value: str) -> tuple[str, str, str]:
    m = _DT_RANGE.fullmatch(value)
    if not m:
        return value, "", ""
    return m.group(1) or "", "-", m.group(2) or ""


# What an integer matching key may hold (the index keeps them in 32-bit or 64-bit columns).
_INT_BOUNDS = {
    "IS": (-(2**31), 2**31 - 1),
    "SL": (-(2**31), 2**31 - 1),
    "SS": (-(2**15), 2**15 - 1),
    "UL": (0, 2**32 - 1),
    "US": (0, 2**16 - 1),
    "SV": (-(2**63), 2**63 - 1),
    "UV": (0, 2**64 - 1),
}


def _parse_term(tag: str, vr: str, value: str | int | float) -> _Term | None:
    """One value of a matching key as a term; None means universal matching."""
    if isinstance(value, str):
        if value == "*":
            return None
        if value == '""':
            return _Empty()
        if "\x00" in value:
            raise QueryError(f"{_name(tag)}: the value contains a NUL character")
    if vr in _INT_VRS or vr in _FLOAT_VRS:
        try:
            number = int(value) if vr in _INT_VRS else float(value)
        except (TypeError, ValueError, OverflowError):
            raise QueryError(f"{_name(tag)}: {value!r} is not a number") from None
        if isinstance(number, float) and not math.isfinite(number):
            raise QueryError(f"{_name(tag)}: {value!r} is not a finite number")
        low, high = _INT_BOUNDS.get(vr, (-(2**63), 2**63 - 1))
        if isinstance(number, int) and not low <= number <= high:
            raise QueryError(f"{_name(tag)}: {value!r} is outside the range of {vr}")
        return _Exact(number)
    text = str(value)
    if vr in _PATTERNS:
        return _parse_temporal(tag, vr, text)
    if vr == "UI" and ("*" in text or "?" in text):
        raise QueryError(f"{_name(tag)}: wild cards are not allowed in UIDs (PS3.4 C.2.2.2.4)")
    if vr in _WILDCARD_VRS and ("*" in text or "?" in text):
        return _Wild(text)
    return _Exact(text)


def _values(tag: str, vr: str, element: dict[str, Any]) -> list[str | int | float]:
    values: list[str | int | float] = []
    for raw in element.get("Value") or []:
        value = raw
        if isinstance(value, dict):
            value = value.get("Alphabetic") or ""
        if value is None:
            continue
        if isinstance(value, str):
            parts = [value] if vr in _TEXT_VRS else value.split("\\")
            if vr == "PN":  # a plain string may carry all groups: match the Alphabetic one
                parts = [part.split("=", 1)[0] for part in parts]
            values.extend(part.strip(" ") for part in parts)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            values.append(value)
        else:
            raise QueryError(f"{_name(tag)}: value {raw!r} cannot be used for matching")
    return [v for v in values if v != ""]


def _terms(tag: str, vr: str, element: dict[str, Any]) -> list[_Term] | None:
    """The terms of a matching key (any one may match); None for universal matching."""
    if vr in _UNMATCHABLE_VRS:
        return None
    values = _values(tag, vr, element)
    if not values:
        return None
    terms: list[_Term] = []
    for value in values:
        term = _parse_term(tag, vr, value)
        if term is None:
            return None
        terms.append(term)
    return terms


# -- parsed identifier -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Key:
    tag: str
    vr: str
    element: dict[str, Any]
    attr: _Attr | None
    terms: list[_Term] | None  # None: universal (a return key only)


def _vr_of(tag: str, element: dict[str, Any]) -> str:
    attr = _ATTRS.get(tag)
    if attr is not None:
        return attr.vr
    vr = element.get("vr")
    if isinstance(vr, str) and len(vr) == 2:
        return vr
    try:
        vr = dictionary_VR(int(tag, 16))
    except KeyError:
        return "UN"
    return vr.split(" or ")[0]


def _parse_identifier(identifier: dict[str, Any], level: QueryLevel) -> list[_Key]:
    if not isinstance(identifier, dict):
        raise QueryError("the identifier is not a DICOM JSON data set")
    keys: list[_Key] = []
    for raw_tag, raw_element in sorted(identifier.items()):
        tag = str(raw_tag).upper()
        if not re.fullmatch(r"[0-9A-F]{8}", tag):
            raise QueryError(f"identifier key {raw_tag!r} is not a tag (GGGGEEEE)")
        element = raw_element if raw_element is not None else {}
        if not isinstance(element, dict):
            raise QueryError(f"{_name(tag)}: element is not a DICOM JSON object")
        if tag.startswith("0000") or tag.endswith("0000"):
            continue  # command elements and group lengths are not keys
        vr = _vr_of(tag, element)
        if tag == _QUERY_RETRIEVE_LEVEL:
            _check_level(element, level)
            continue
        if tag == _SPECIFIC_CHARACTER_SET:
            continue
        matched = tag not in _ADAPTER_KEYS and tag != _TIMEZONE_OFFSET
        terms = _terms(tag, vr, element) if matched else None
        keys.append(_Key(tag, vr, element, _ATTRS.get(tag), terms))
    return keys


def _check_level(element: dict[str, Any], level: QueryLevel) -> None:
    values = element.get("Value") or []
    given = str(values[0]).strip().upper() if values and values[0] is not None else ""
    if given and given != level.value:
        if given not in {lv.value for lv in QueryLevel}:
            raise QueryError(f"Query/Retrieve Level {given!r} is not valid")
        raise QueryError(f"Query/Retrieve Level {given!r} differs from the level {level.value}")


def _check_model(level: QueryLevel, model: QueryModel) -> None:
    if model is QueryModel.STUDY_ROOT and level is QueryLevel.PATIENT:
        raise QueryError("PATIENT level is not valid in the Study Root model (PS3.4 C.6.2)")


# -- SQL ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Tables:
    """The four tables (or aliases of them) one SELECT or sub-SELECT sees."""

    patient: sa.FromClause
    study: sa.FromClause
    series: sa.FromClause
    instance: sa.FromClause

    def at(self, level: QueryLevel) -> sa.FromClause:
        return (self.patient, self.study, self.series, self.instance)[_DEPTH[level]]

    def below(self, level: QueryLevel) -> _Tables:
        """These tables down to ``level``, fresh aliases beneath it (for sub-queries)."""
        if self is _BASE:
            return _BASE_BELOW[level]
        return self._aliased_below(level)

    def _aliased_below(self, level: QueryLevel) -> _Tables:
        depth = _DEPTH[level]
        tables = [
            t if d <= depth else t.alias()
            for d, t in enumerate((self.patient, self.study, self.series, self.instance))
        ]
        return _Tables(*tables)


_BASE = _Tables(patient, study, series, instance)
# The aliases beneath each level of the base tables, made once: building an alias's
# column collection was a tenth of a QIDO request's time. Sub-queries that share them
# are siblings (each its own FROM scope), never nested in one another.
_BASE_BELOW = {level: _BASE._aliased_below(level) for level in _DEPTH}
for _tables in _BASE_BELOW.values():
    for _table in (_tables.patient, _tables.study, _tables.series, _tables.instance):
        _ = _table.c  # populated here, not concurrently by request threads
_PARENT_FK = {_ST: "patient_fk", _SE: "study_fk", _IM: "series_fk"}


def _link(t: _Tables, level: QueryLevel) -> sa.ColumnElement[bool]:
    """The join condition between ``level`` and its parent level."""
    parent = _LEVELS[_DEPTH[level] - 1]
    return t.at(level).c[_PARENT_FK[level]] == t.at(parent).c.id


def _chain(t: _Tables, top: QueryLevel, bottom: QueryLevel) -> sa.FromClause:
    """``top`` joined with every level down to ``bottom``."""
    joined: sa.FromClause = t.at(top)
    for depth in range(_DEPTH[top] + 1, _DEPTH[bottom] + 1):
        joined = joined.join(t.at(_LEVELS[depth]), _link(t, _LEVELS[depth]))
    return joined


def _related(t: _Tables, owner: QueryLevel, bottom: QueryLevel) -> tuple[_Tables, sa.FromClause]:
    """Aliases for the entities below ``owner`` down to ``bottom``, correlated to ``t``."""
    sub = t.below(owner)
    child = _LEVELS[_DEPTH[owner] + 1]
    return sub, _chain(sub, child, bottom)


class _Sql:
    """Builds dialect-specific expressions (SQLite and PostgreSQL answer identically)."""

    def __init__(self, dialect: str) -> None:
        self.sqlite = dialect == "sqlite"

    # -- computed attributes --------------------------------------------------------------
    def count(self, attr: _Attr, t: _Tables) -> sa.ScalarSelect[Any]:
        assert attr.below is not None
        sub, joined = _related(t, attr.level, attr.below)
        child = _LEVELS[_DEPTH[attr.level] + 1]
        stmt = sa.select(sa.func.count()).select_from(joined).where(_link(sub, child))
        return stmt.scalar_subquery()

    def value_set(self, attr: _Attr, t: _Tables) -> sa.ScalarSelect[Any]:
        assert attr.below is not None
        sub, joined = _related(t, attr.level, attr.below)
        col = sub.at(attr.below).c[attr.column]
        agg = (
            sa.func.group_concat(sa.distinct(col), type_=sa.String)
            if self.sqlite
            else sa.func.string_agg(sa.distinct(col), sa.literal_column("','"), type_=sa.String)
        )
        child = _LEVELS[_DEPTH[attr.level] + 1]
        stmt = sa.select(agg).select_from(joined).where(_link(sub, child), col != "")
        return stmt.scalar_subquery()

    def linked_identities(self) -> sa.ScalarSelect[Any]:
        """The other local identities linked to the patient's NHS number, joined as text."""
        other = patient.alias()
        one = other.c.patient_id + "\x1f" + other.c.issuer
        sep = sa.literal(_ID_SEP)
        agg = (
            sa.func.group_concat(one, sep, type_=sa.String)
            if self.sqlite
            else sa.func.string_agg(one, sep, type_=sa.String)
        )
        return (
            sa.select(agg)
            .where(other.c.nhs_number == patient.c.nhs_number, other.c.id != patient.c.id)
            .scalar_subquery()
        )

    def representative_metadata(self, t: _Tables, level: QueryLevel) -> sa.ScalarSelect[Any]:
        """metadata_json of the lowest-pk instance of the entity (PS3.4 C.4.1.1.3.2)."""
        sub, joined = _related(t, level, _IM)
        child = _LEVELS[_DEPTH[level] + 1]
        inst = sub.instance
        stmt = (
            sa.select(inst.c.metadata_json)
            .select_from(joined)
            .where(_link(sub, child))
            .order_by(inst.c.id)
            .limit(1)
        )
        return stmt.scalar_subquery()

    # -- matching -------------------------------------------------------------------------
    def match_key(self, key: _Key, t: _Tables) -> sa.ColumnElement[bool]:
        attr, terms = key.attr, key.terms
        assert attr is not None and terms is not None
        if attr.kind is _Kind.COLUMN:
            return self.match(t.at(attr.level).c[attr.column], attr.vr, terms)
        if attr.kind is _Kind.COUNT:
            return self.match(self.count(attr, t), attr.vr, terms)
        assert attr.below is not None
        sub, joined = _related(t, attr.level, attr.below)
        child = _LEVELS[_DEPTH[attr.level] + 1]
        col = sub.at(attr.below).c[attr.column]
        present = [term for term in terms if not isinstance(term, _Empty)]
        conds: list[sa.ColumnElement[bool]] = []
        if present:
            any_match = self.match(col, attr.vr, present)
            conds.append(
                sa.select(1).select_from(joined).where(_link(sub, child), any_match).exists()
            )
        if len(present) < len(terms):  # "" : no related entity has a value
            conds.append(
                ~sa.select(1).select_from(joined).where(_link(sub, child), col != "").exists()
            )
        return sa.or_(*conds)

    def match(
        self, col: sa.ColumnElement[Any], vr: str, terms: Sequence[_Term]
    ) -> sa.ColumnElement[bool]:
        numeric = vr in _INT_VRS or vr in _FLOAT_VRS
        exact = [t.value for t in terms if isinstance(t, _Exact)]
        conds: list[sa.ColumnElement[bool]] = []
        if exact and vr == "PN":
            conds.extend(self._pn_equal(col, str(v)) for v in exact)
        elif exact:
            conds.append(col == exact[0] if len(exact) == 1 else col.in_(exact))
        for term in terms:
            if isinstance(term, _Wild):
                conds.append(self._wild(col, vr, term.pattern))
            elif isinstance(term, _Range):
                conds.append(self._range(col, vr, term))
            elif isinstance(term, _Empty):
                conds.append(col.is_(None) if numeric else col == "")
        return conds[0] if len(conds) == 1 else sa.or_(*conds)

    def _pn_equal(self, col: sa.ColumnElement[Any], value: str) -> sa.ColumnElement[bool]:
        if self.sqlite:
            return col.collate("NOCASE") == value
        return sa.func.lower(col) == sa.func.lower(value)

    def _wild(self, col: sa.ColumnElement[Any], vr: str, pattern: str) -> sa.ColumnElement[bool]:
        like, needs_escape = _like_pattern(pattern)
        escape = _ESCAPE if needs_escape else None
        if vr == "PN":
            if self.sqlite:  # SQLite's LIKE is case-insensitive (ASCII)
                return col.like(like, escape=escape)
            return sa.func.lower(col).like(sa.func.lower(like), escape=escape)
        if self.sqlite:  # GLOB is SQLite's case-sensitive LIKE
            return col.op("GLOB", is_comparison=True)(_glob_pattern(pattern))
        return col.like(like, escape=escape)

    def _range(self, col: sa.ColumnElement[Any], vr: str, term: _Range) -> sa.ColumnElement[bool]:
        value = col if vr == "DA" else _sql_norm_tm(col)
        conds: list[sa.ColumnElement[bool]] = [col != ""]
        if term.low is not None:
            conds.append(value >= term.low)
        if term.high is not None:
            conds.append(value <= term.high)
        return sa.and_(*conds)


def _like_pattern(pattern: str) -> tuple[str, bool]:
    out: list[str] = []
    escaped = False
    for ch in pattern:
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in ("%", "_", _ESCAPE):
            out.append(_ESCAPE + ch)
            escaped = True
        else:
            out.append(ch)
    return "".join(out), escaped


def _glob_pattern(pattern: str) -> str:
    return "".join("[[]" if ch == "[" else ch for ch in pattern)


def _sql_norm_tm(col: sa.ColumnElement[Any]) -> sa.ColumnElement[str]:
    """SQL for _norm_tm of a stored time (lower end: a stored time is a point)."""
    text = sa.func.replace(col, ":", "", type_=sa.String)
    hms = sa.func.substr(text.concat("000000"), 1, 6, type_=sa.String)
    frac = sa.case(
        (
            sa.func.substr(text, 7, 1) == ".",
            sa.func.substr(sa.func.substr(text, 8, type_=sa.String).concat("000000"), 1, 6),
        ),
        else_="000000",
    )
    return hms.concat(".").concat(frac)


# -- matching on metadata_json (Python) ----------------------------------------------------


def _stored_values(element: dict[str, Any] | None) -> list[Any]:
    if not element:
        return []
    out: list[Any] = []
    for value in element.get("Value") or []:
        if isinstance(value, dict):
            value = value.get("Alphabetic")
        if value is not None and value != "":
            out.append(value)
    return out


def _wild_regex(pattern: str, *, fold: bool) -> re.Pattern[str]:
    body = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.compile(body, re.DOTALL | (re.IGNORECASE if fold else 0))


def _value_matches(value: Any, vr: str, term: _Term) -> bool:
    if isinstance(term, _Exact):
        if isinstance(term.value, int | float):
            try:
                return float(value) == float(term.value)
            except (TypeError, ValueError):
                return False
        if vr == "PN":
            return str(value).casefold() == term.value.casefold()
        return str(value) == term.value
    if isinstance(term, _Wild):
        return _wild_regex(term.pattern, fold=vr == "PN").fullmatch(str(value)) is not None
    if isinstance(term, _Range):
        text = str(value).replace(":", "") if vr == "TM" else str(value)
        pattern, _ = _PATTERNS[vr]
        if not pattern.fullmatch(text):
            return False
        point = text if vr == "DA" else _norm_tm(text) if vr == "TM" else _norm_dt(text)
        return (term.low is None or point >= term.low) and (term.high is None or point <= term.high)
    return False


def _element_matches(element: dict[str, Any] | None, vr: str, terms: Sequence[_Term]) -> bool:
    values = _stored_values(element)
    for term in terms:
        if isinstance(term, _Empty):
            if not values:
                return True
        elif any(_value_matches(v, vr, term) for v in values):
            return True
    return False


# -- building answers ----------------------------------------------------------------------


def _strip_bulk(element: dict[str, Any]) -> dict[str, Any]:
    """An element fit to return: bulk data references (internal offsets) left out."""
    vr = element.get("vr", "UN")
    if "BulkDataURI" in element:
        return {"vr": vr}
    if vr == "SQ" and element.get("Value"):
        items = [{k: _strip_bulk(v) for k, v in item.items()} for item in element["Value"]]
        return {"vr": "SQ", "Value": items}
    return element


def _project(stored: dict[str, Any] | None, request: dict[str, Any], vr: str) -> dict[str, Any]:
    """The stored element as a response value; sequence items keep the requested keys."""
    if not stored:
        return {"vr": vr}
    requested_items = request.get("Value") or []
    template = requested_items[0] if requested_items else None
    if vr == "SQ" and isinstance(template, dict) and template and stored.get("Value"):
        items = []
        for item in stored["Value"]:
            items.append(
                {
                    tag: _project(item.get(tag), sub, _vr_of(tag, sub))
                    for tag, sub in sorted(template.items())
                }
            )
        return {"vr": "SQ", "Value": items}
    return _strip_bulk(stored)


def _column_element(vr: str, value: Any) -> dict[str, Any]:
    if value is None or value == "":
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": value}]}
    return {"vr": vr, "Value": [value]}


@dataclass(frozen=True, slots=True)
class _Output:
    tag: str
    vr: str
    label: str | None = None  # a selected column
    is_set: bool = False  # the column is a comma-joined set of values
    constant: dict[str, Any] | None = None
    request: dict[str, Any] | None = None  # taken from metadata_json
    other_ids: bool = False  # label: NHS number; label + "_linked": linked identities


@dataclass(frozen=True, slots=True)
class _Plan:
    stmt: sa.Select[Any]
    outputs: list[_Output]
    py_filters: list[_Key]  # matched on metadata_json after the SQL filter


class QueryService:
    """Answers C-FIND-style identifiers from the index (PS3.4 C.2.2.2, C.6), for one
    principal, within what it may see, auditing what it reached."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        principal: Principal,
        audit: AuditService | None = None,
        rules: AccessRules | None = None,
        retrieve_ae_title: str = "",
    ) -> None:
        """``retrieve_ae_title``: this archive's AE title, answered as the Retrieve AE
        Title of every match; empty: left empty."""
        self._engine = engine
        self._sql = _Sql(engine.dialect.name)
        self._principal = principal
        self._audit = audit
        self._rules = rules or AccessRules()
        self._retrieve_ae_title = retrieve_ae_title

    @property
    def principal(self) -> Principal:
        return self._principal

    def for_principal(self, principal: Principal) -> QueryService:
        """The same index and audit trail, answering for ``principal``."""
        return QueryService(
            self._engine,
            principal=principal,
            audit=self._audit,
            rules=self._rules,
            retrieve_ae_title=self._retrieve_ae_title,
        )

    def _visible(self) -> list[sa.ColumnElement[bool]]:
        cond = self._rules.visible_patients(self._principal)
        return [] if cond is None else [cond]

    def _record(
        self,
        event: Event,
        *,
        patients: dict[tuple[str, str], str | None],
        studies: list[str],
        query: str | None = None,
        detail: str = "",
    ) -> None:
        if self._audit is None:
            return
        self._audit.record(
            AuditRecord(
                event=event,
                actor=self._principal.actor(),
                purpose=self.purpose_of_use(patients),
                patients=list(patients),
                study_uids=studies,
                query=query,
                detail=detail,
            )
        )

    def purpose_of_use(self, patients: dict[tuple[str, str], str | None]) -> Purpose:
        """Why the principal reaches these patients (patient ID, issuer -> NHS number):
        emergency treatment when through their break-glass access, for the audit."""
        role = self._principal.role
        if role is Role.ADMIN:
            return Purpose.HOPERAT
        if role not in CLINICAL or not patients:
            return Purpose.TREAT
        now = dt.datetime.now(dt.UTC)
        with self._engine.connect() as conn:
            grants = conn.execute(
                sa.select(
                    break_glass.c.patient_id, break_glass.c.issuer, break_glass.c.nhs_number
                ).where(
                    break_glass.c.username == self._principal.user_id,
                    break_glass.c.expires_at > now,
                )
            ).all()
        ids = {(g.patient_id, g.issuer) for g in grants}
        numbers = {g.nhs_number for g in grants if g.nhs_number}
        emergency = any(k in ids or v in numbers for k, v in patients.items())
        return Purpose.ETREAT if emergency else Purpose.TREAT

    # -- public API -----------------------------------------------------------------------
    def find(
        self,
        identifier: dict[str, Any],
        *,
        level: QueryLevel,
        model: QueryModel,
        limit: int | None = None,
        offset: int = 0,
        linked: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """One DICOM JSON data set per matching entity, streamed in a stable order.

        ``linked``: a hospital number also matches the identities linked to it by
        NHS number. The identifier is checked before this returns: a bad one raises
        :class:`QueryError` here, not while iterating.
        """
        _check_model(level, model)
        if (limit is not None and limit < 0) or offset < 0:
            raise QueryError("limit and offset must not be negative")
        keys = _parse_identifier(identifier, level)
        plan = self._find_plan(keys, level, linked=linked)
        if plan.py_filters:
            return self._stream(plan, identifier, level, limit=limit, offset=offset)
        stmt = plan.stmt
        if limit is not None:
            stmt = stmt.limit(limit)
        if offset:
            stmt = stmt.offset(offset)
        return self._stream(_Plan(stmt, plan.outputs, []), identifier, level, limit=None, offset=0)

    def instances_for_retrieve(
        self, identifier: dict[str, Any], *, level: QueryLevel, model: QueryModel
    ) -> list[RetrieveItem]:
        """The stored instances a C-MOVE / C-GET identifier selects (PS3.4 C.4.2, C.4.3).

        The unique key of the level is required (list of UID matching allowed); other
        keys with a column in the index are matched too, relationally, on each instance.
        Keys answered from ``metadata_json`` are matched only at IMAGE level.
        """
        _check_model(level, model)
        keys = _parse_identifier(identifier, level)
        unique = _UNIQUE_KEYS[level]
        if not any(k.tag == unique and k.terms for k in keys):
            raise QueryError(f"a {level.value} level retrieve needs {_name(unique)}")
        for key in keys:
            if (
                key.tag in _UNIQUE_KEYS.values()
                and key.terms
                and any(not isinstance(t, _Exact) for t in key.terms)
            ):
                raise QueryError(f"{_name(key.tag)}: a retrieve needs exact values")
        inst = _BASE.instance
        keys, conds = _identity_match(keys, linked=False)
        conds += [self._sql.match_key(k, _BASE) for k in keys if k.attr and k.terms]
        conds += self._visible()
        py_filters = [k for k in keys if k.attr is None and k.terms and level is _IM]
        stmt = (
            sa.select(
                inst.c.sop_class_uid,
                inst.c.sop_instance_uid,
                inst.c.transfer_syntax_uid,
                inst.c.blob_key,
                inst.c.dataset_offset,
                inst.c.blob_size,
                (inst.c.metadata_json if py_filters else sa.null()).label("meta"),
                *_AUDIT_COLUMNS,
            )
            .select_from(_chain(_BASE, _P, _IM))
            .where(*conds)
            .order_by(*_order(_IM))
        )
        items: list[RetrieveItem] = []
        seen = _Seen()
        with self._engine.connect() as conn:
            for row in conn.execute(stmt):
                if py_filters and not _py_match(orjson.loads(row.meta), py_filters):
                    continue
                items.append(RetrieveItem(*row[:6]))
                seen.add(row)
        self._record(
            Event.RETRIEVE,
            patients=seen.patients,
            studies=seen.studies,
            detail=f"{len(items)} instances selected for {level.value} level retrieve",
        )
        return items

    def metadata_texts(
        self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> list[tuple[str, str, str]]:
        """(Series UID, SOP Instance UID, stored DICOM JSON text) of each instance in scope.

        One query, in series and instance number order. The JSON is as stored (bulk data
        as ``bulk:`` references), so WADO-RS /metadata is answered without parsing it
        and without reading a file (ARCHITECTURE.md invariant 7).
        """
        stmt = (
            sa.select(
                series.c.series_instance_uid,
                instance.c.sop_instance_uid,
                instance.c.metadata_json,
            )
            .select_from(_WADO_FROM)
            .where(*_wado_scope(study_uid, series_uid, sop_instance_uid), *self._visible())
            .order_by(*_WADO_ORDER)
        )
        with self._engine.connect() as conn:
            rows = [(r[0], r[1], r[2]) for r in conn.execute(stmt)]
        if rows:
            self._accessed(study_uid, f"metadata of {len(rows)} instances")
        return rows

    def _accessed(self, study_uid: str, detail: str, event: Event = Event.ACCESS) -> None:
        if self._audit is None:
            return
        with self._engine.connect() as conn:
            found = conn.execute(
                sa.select(patient.c.patient_id, patient.c.issuer, patient.c.nhs_number)
                .select_from(study.join(patient, study.c.patient_fk == patient.c.id))
                .where(study.c.study_instance_uid == study_uid)
            ).first()
        patients = {} if found is None else {(found[0], found[1]): found[2]}
        self._record(event, patients=patients, studies=[study_uid], detail=detail)

    def stored_instances(
        self,
        study_uid: str,
        series_uid: str | None = None,
        sop_instance_uid: str | None = None,
        *,
        with_metadata: bool = False,
    ) -> list[StoredInstance]:
        """The stored instances of a study, a series of it, or one instance of that series."""
        found = self._stored(study_uid, series_uid, sop_instance_uid, with_metadata)
        if found:
            self._accessed(study_uid, f"{len(found)} instances")
        return found

    def exported_instances(
        self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> list[StoredInstance]:
        """As :meth:`stored_instances`, audited as an export (PS3.15 A.5.3.7)."""
        found = self._stored(study_uid, series_uid, sop_instance_uid, False)
        if found:
            where = f" (series {series_uid})" if series_uid else ""
            detail = f"{len(found)} instances exported as a ZIP of Part 10 files{where}"
            self._accessed(study_uid, detail, Event.EXPORT)
        return found

    def _stored(
        self,
        study_uid: str,
        series_uid: str | None,
        sop_instance_uid: str | None,
        with_metadata: bool,
    ) -> list[StoredInstance]:
        inst = instance
        meta = inst.c.metadata_json if with_metadata else sa.literal("", type_=sa.String)
        stmt = (
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
            .where(*_wado_scope(study_uid, series_uid, sop_instance_uid), *self._visible())
            .order_by(*_WADO_ORDER)
        )
        with self._engine.connect() as conn:
            return [StoredInstance(*row) for row in conn.execute(stmt)]

    def scope_exists(self, study_uid: str, series_uid: str | None = None) -> tuple[bool, bool]:
        """Whether the study is stored, and whether the series (if given) is one of its."""
        with self._engine.connect() as conn:
            study_pk = conn.execute(
                sa.select(study.c.id)
                .select_from(study.join(patient, study.c.patient_fk == patient.c.id))
                .where(study.c.study_instance_uid == study_uid, *self._visible())
            ).scalar()
            if study_pk is None:
                return False, False
            if series_uid is None:
                return True, True
            series_pk = conn.execute(
                sa.select(series.c.id).where(
                    series.c.study_fk == study_pk, series.c.series_instance_uid == series_uid
                )
            ).scalar()
            return True, series_pk is not None

    # -- planning -------------------------------------------------------------------------
    def _find_plan(self, keys: list[_Key], level: QueryLevel, *, linked: bool) -> _Plan:
        depth = _DEPTH[level]
        matched, outer = _identity_match(keys, linked=linked)
        lower: list[_Key] = []
        py_filters: list[_Key] = []
        for key in matched:
            if not key.terms:
                continue
            if key.attr is None:
                py_filters.append(key)
            elif _DEPTH[key.attr.level] > depth:
                lower.append(key)
            else:
                outer.append(self._sql.match_key(key, _BASE))
        if lower:
            outer.append(self._lower_exists(lower, level))
        outer += self._visible()
        columns, outputs, needs_meta = self._returns(keys, level)
        columns.insert(0, _BASE.at(level).c.id.label("pk"))
        columns += _AUDIT_COLUMNS if level is not _P else _AUDIT_COLUMNS[:3]
        if needs_meta or py_filters:
            meta = (
                _BASE.instance.c.metadata_json
                if level is _IM
                else self._sql.representative_metadata(_BASE, level)
            )
            columns.append(meta.label("meta"))
        stmt = (
            sa.select(*columns)
            .select_from(_chain(_BASE, _P, level))
            .where(*outer)
            .order_by(*_order(level))
        )
        return _Plan(stmt, outputs, py_filters)

    def _lower_exists(self, keys: list[_Key], level: QueryLevel) -> sa.ColumnElement[bool]:
        """Relational matching: some descendant of the entity matches all these keys."""
        deepest = max((k.attr.level for k in keys if k.attr), key=_DEPTH.__getitem__)
        sub, joined = _related(_BASE, level, deepest)
        child = _LEVELS[_DEPTH[level] + 1]
        conds = [self._sql.match_key(k, sub) for k in keys]
        return sa.select(1).select_from(joined).where(_link(sub, child), *conds).exists()

    def _returns(
        self, keys: list[_Key], level: QueryLevel
    ) -> tuple[list[sa.ColumnElement[Any]], list[_Output], bool]:
        depth = _DEPTH[level]
        columns: list[sa.ColumnElement[Any]] = []
        outputs: list[_Output] = []
        needs_meta = False
        for key in keys:
            attr = key.attr
            label = f"k{key.tag}"
            if key.tag == _INSTANCE_AVAILABILITY:
                outputs.append(_Output(key.tag, "CS", constant={"vr": "CS", "Value": ["ONLINE"]}))
            elif key.tag == _OTHER_PATIENT_IDS:
                columns.append(patient.c.nhs_number.label(label))
                columns.append(self._sql.linked_identities().label(label + "_linked"))
                outputs.append(
                    _Output(key.tag, "SQ", label=label, request=key.element, other_ids=True)
                )
                needs_meta = True
            elif key.tag == _RETRIEVE_AE_TITLE and self._retrieve_ae_title:
                answer = {"vr": "AE", "Value": [self._retrieve_ae_title]}
                outputs.append(_Output(key.tag, "AE", constant=answer))
            elif key.tag in _ADAPTER_KEYS or (attr and _DEPTH[attr.level] > depth):
                outputs.append(_Output(key.tag, key.vr, constant={"vr": key.vr}))
            elif attr is None:
                outputs.append(_Output(key.tag, key.vr, request=key.element))
                needs_meta = True
            elif attr.kind is _Kind.COLUMN:
                columns.append(_BASE.at(attr.level).c[attr.column].label(label))
                outputs.append(_Output(key.tag, attr.vr, label=label))
            elif attr.kind is _Kind.COUNT:
                columns.append(self._sql.count(attr, _BASE).label(label))
                outputs.append(_Output(key.tag, attr.vr, label=label))
            else:
                columns.append(self._sql.value_set(attr, _BASE).label(label))
                outputs.append(_Output(key.tag, attr.vr, label=label, is_set=True))
        return columns, outputs, needs_meta

    # -- execution ------------------------------------------------------------------------
    def _stream(
        self,
        plan: _Plan,
        identifier: dict[str, Any],
        level: QueryLevel,
        *,
        limit: int | None,
        offset: int,
    ) -> Iterator[dict[str, Any]]:
        fixed: JsonDataset = {_QUERY_RETRIEVE_LEVEL: {"vr": "CS", "Value": [level.value]}}
        if _SPECIFIC_CHARACTER_SET in identifier:
            # Echoed as given (an empty first value is the default repertoire, PS3.5
            # 6.1.2.5.3); asked for without a value, the answer is in UTF-8.
            element = identifier[_SPECIFIC_CHARACTER_SET] or {}
            given = ["" if v is None else str(v) for v in element.get("Value") or []]
            fixed[_SPECIFIC_CHARACTER_SET] = {
                "vr": "CS",
                "Value": given if any(given) else ["ISO_IR 192"],
            }
        query = orjson.dumps(identifier, default=str).decode()
        return self._audited(self._rows(plan, fixed, limit=limit, offset=offset), query, level)

    def _audited(
        self, rows: Iterator[tuple[dict[str, Any], sa.Row[Any]]], query: str, level: QueryLevel
    ) -> Iterator[dict[str, Any]]:
        seen = _Seen()
        count = 0
        try:
            for answer, row in rows:
                seen.add(row)
                count += 1
                yield answer
        finally:
            self._record(
                Event.QUERY,
                patients=seen.patients,
                studies=seen.studies,
                query=query,
                detail=f"{level.value} level query: {count} answers",
            )

    def _rows(
        self, plan: _Plan, fixed: JsonDataset, *, limit: int | None, offset: int
    ) -> Iterator[tuple[dict[str, Any], sa.Row[Any]]]:
        if limit == 0:
            return
        skipped = emitted = 0
        with self._engine.connect() as conn:
            if not self._sql.sqlite:
                # A server-side cursor is otherwise planned for its first 10 % of rows
                # (fast-start plans that can be 15x slower in total); a C-FIND wants them
                # all, and paged callers are planned by their LIMIT.
                conn.exec_driver_sql("SET LOCAL cursor_tuple_fraction = 1.0")
            result = conn.execution_options(yield_per=256).execute(plan.stmt)
            for row in result:
                meta: JsonDataset | None = None
                if "meta" in row._fields:
                    meta = orjson.loads(row.meta) if row.meta else {}
                if plan.py_filters and not _py_match(meta or {}, plan.py_filters):
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                yield _answer(row, plan.outputs, fixed, meta), row
                emitted += 1
                if limit is not None and emitted >= limit:
                    return


# Who and what a statement reached, for the audit trail (never part of an answer).
_AUDIT_COLUMNS: list[sa.ColumnElement[Any]] = [
    patient.c.patient_id.label("_audit_pid"),
    patient.c.issuer.label("_audit_issuer"),
    patient.c.nhs_number.label("_audit_nhs"),
    study.c.study_instance_uid.label("_audit_study"),
]


class _Seen:
    def __init__(self) -> None:
        self.patients: dict[tuple[str, str], str | None] = {}
        self._studies: dict[str, None] = {}

    def add(self, row: sa.Row[Any]) -> None:
        mapping = row._mapping
        self.patients[(mapping["_audit_pid"], mapping["_audit_issuer"])] = mapping["_audit_nhs"]
        if "_audit_study" in mapping:
            self._studies[mapping["_audit_study"]] = None

    @property
    def studies(self) -> list[str]:
        return list(self._studies)


def _py_match(meta: JsonDataset, keys: list[_Key]) -> bool:
    return all(_element_matches(meta.get(k.tag), k.vr, k.terms or []) for k in keys)


def _answer(
    row: sa.Row[Any], outputs: list[_Output], fixed: JsonDataset, meta: JsonDataset | None
) -> JsonDataset:
    out: JsonDataset = dict(fixed)
    mapping = row._mapping
    for o in outputs:
        if o.constant is not None:
            out[o.tag] = o.constant
        elif o.other_ids:
            assert o.label is not None and o.request is not None
            stored = _project((meta or {}).get(o.tag), o.request, o.vr)
            out[o.tag] = _other_patient_ids(stored, mapping[o.label], mapping[o.label + "_linked"])
        elif o.request is not None:
            out[o.tag] = _project((meta or {}).get(o.tag), o.request, o.vr)
        elif o.label is None:
            out[o.tag] = {"vr": o.vr}
        elif o.is_set:
            text = mapping[o.label]
            values = sorted(set(text.split(","))) if text else []
            out[o.tag] = {"vr": o.vr, "Value": values} if values else {"vr": o.vr}
        else:
            out[o.tag] = _column_element(o.vr, mapping[o.label])
    return dict(sorted(out.items()))


def _identity_match(
    keys: list[_Key], *, linked: bool
) -> tuple[list[_Key], list[sa.ColumnElement[bool]]]:
    """Patient ID and Issuer keys as regional record conditions (see the module doc).

    Returns the keys still to match one by one, and the conditions replacing the rest.
    """
    pid = next((k for k in keys if k.tag == _PATIENT_ID and k.terms), None)
    issuer = next((k for k in keys if k.tag == _ISSUER and k.terms), None)
    if pid is None or issuer is None:
        return keys, []
    if not all(isinstance(t, _Exact) for t in (*(pid.terms or ()), *(issuer.terms or ()))):
        return keys, []
    values = [str(t.value) for t in pid.terms or () if isinstance(t, _Exact)]
    issuers = [str(t.value) for t in issuer.terms or () if isinstance(t, _Exact)]
    rest = [k for k in keys if k is not pid and k is not issuer]
    if all(nhs_number.is_nhs_issuer(i) for i in issuers):
        digits = [p.digits for p in map(nhs_number.parse, values) if p.valid]
        as_id = sa.and_(patient.c.patient_id.in_(values), patient.c.issuer.in_(_NHS_ISSUERS))
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


def _other_patient_ids(
    stored: dict[str, Any], number: str | None, linked: str | None
) -> dict[str, Any]:
    """Other Patient IDs Sequence: the object's own items, then from the regional record
    the NHS number and the linked hospital numbers that are not among them."""
    if not number:
        return stored
    items: list[JsonDataset] = list(stored.get("Value") or [])
    seen = {(_first_text(i, _PATIENT_ID), _first_text(i, _ISSUER)) for i in items}

    def item(value: str, issuer: str) -> JsonDataset:
        return {
            _PATIENT_ID: {"vr": "LO", "Value": [value]},
            _ISSUER: {"vr": "LO", "Value": [issuer]} if issuer else {"vr": "LO"},
            "00100022": {"vr": "CS", "Value": ["TEXT"]},  # Type of Patient ID
        }

    if (number, "NHS") not in seen:
        items.append(item(number, "NHS"))
    for one in sorted((linked or "").split(_ID_SEP)):
        value, _, issuer = one.partition("\x1f")
        # Not the NHS number again (a Patient ID issued by NHS is linked to itself).
        if value and not nhs_number.is_nhs_issuer(issuer) and (value, issuer) not in seen:
            items.append(item(value, issuer))
    return {"vr": "SQ", "Value": items}


def _first_text(item: Any, tag: str) -> str:
    element = item.get(tag) if isinstance(item, dict) else None
    values = (element or {}).get("Value") or []
    return str(values[0]) if values and values[0] is not None else ""


def _nulls_last(col: sa.ColumnElement[Any]) -> list[sa.ColumnElement[Any]]:
    return [sa.case((col.is_(None), 1), else_=0), col]


def _order(level: QueryLevel) -> list[sa.ColumnElement[Any]]:
    """A deterministic order: patients by pk; studies by date, time, pk; then numbers."""
    if level is _P:
        return [patient.c.id]
    order: list[sa.ColumnElement[Any]] = [study.c.study_date, study.c.study_time, study.c.id]
    if _DEPTH[level] >= _DEPTH[_SE]:
        order += [*_nulls_last(series.c.series_number), series.c.id]
    if level is _IM:
        order += [*_nulls_last(instance.c.instance_number), instance.c.id]
    return order


# -- WADO-RS scopes ------------------------------------------------------------------------

_WADO_FROM = (
    study.join(series, series.c.study_fk == study.c.id)
    .join(instance, instance.c.series_fk == series.c.id)
    .join(patient, study.c.patient_fk == patient.c.id)  # for the access condition
)
_WADO_ORDER = [
    *_nulls_last(series.c.series_number),
    series.c.id,
    *_nulls_last(instance.c.instance_number),
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
