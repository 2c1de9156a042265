"""SQL expressions of query keys: the tables one SELECT sees, joins between levels,
computed attributes, and each matching term as a condition (SQLite and PostgreSQL
answer identically)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from netpacs.domain.query import QueryLevel
from netpacs.index.query.attributes import (
    DEPTH,
    FLOAT_VRS,
    ID_SEP,
    IM,
    INT_VRS,
    LEVELS,
    SE,
    ST,
    Attr,
    Kind,
)
from netpacs.index.query.matching import Empty, Exact, Key, Range, Term, Wild
from netpacs.index.schema import instance, patient, series, study

_ESCAPE = "!"
#: Query shapes whose SELECT :meth:`Sql.shaped` keeps made.
MAX_SHAPES = 256
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Tables:
    """The four tables (or aliases of them) one SELECT or sub-SELECT sees."""

    patient: sa.FromClause
    study: sa.FromClause
    series: sa.FromClause
    instance: sa.FromClause

    def at(self, level: QueryLevel) -> sa.FromClause:
        return (self.patient, self.study, self.series, self.instance)[DEPTH[level]]

    def below(self, level: QueryLevel) -> Tables:
        """These tables down to ``level``, fresh aliases beneath it (for sub-queries)."""
        if self is BASE:
            return _BASE_BELOW[level]
        return self._aliased_below(level)

    def _aliased_below(self, level: QueryLevel) -> Tables:
        depth = DEPTH[level]
        tables = [
            t if d <= depth else t.alias()
            for d, t in enumerate((self.patient, self.study, self.series, self.instance))
        ]
        return Tables(*tables)


BASE = Tables(patient, study, series, instance)
# The aliases beneath each level of the base tables, made once: building an alias's
# column collection was a tenth of a QIDO request's time. Sub-queries that share them
# are siblings (each its own FROM scope), never nested in one another.
_BASE_BELOW = {level: BASE._aliased_below(level) for level in DEPTH}
for _tables in _BASE_BELOW.values():
    for _table in (_tables.patient, _tables.study, _tables.series, _tables.instance):
        _ = _table.c  # populated here, not concurrently by request threads
_PARENT_FK = {ST: "patient_fk", SE: "study_fk", IM: "series_fk"}
_REPRESENTATIVE = instance.alias("representative")


def link(t: Tables, level: QueryLevel) -> sa.ColumnElement[bool]:
    """The join condition between ``level`` and its parent level."""
    parent = LEVELS[DEPTH[level] - 1]
    return t.at(level).c[_PARENT_FK[level]] == t.at(parent).c.id


def chain(t: Tables, top: QueryLevel, bottom: QueryLevel) -> sa.FromClause:
    """``top`` joined with every level down to ``bottom``."""
    joined: sa.FromClause = t.at(top)
    for depth in range(DEPTH[top] + 1, DEPTH[bottom] + 1):
        joined = joined.join(t.at(LEVELS[depth]), link(t, LEVELS[depth]))
    return joined


def related(t: Tables, owner: QueryLevel, bottom: QueryLevel) -> tuple[Tables, sa.FromClause]:
    """Aliases for the entities below ``owner`` down to ``bottom``, correlated to ``t``."""
    sub = t.below(owner)
    return sub, chain(sub, child_of(owner), bottom)


def child_of(level: QueryLevel) -> QueryLevel:
    return LEVELS[DEPTH[level] + 1]


class Made(sa.ColumnElement[Any]):
    """An expression made once (:meth:`Sql.memo`) whose place in a statement's cache key
    is a number of its own, instead of its whole tree walked again for every statement.

    SQLAlchemy finds a statement's compiled SQL by its cache key, which it makes by
    walking every element of the statement: for a QIDO-RS study search, the computed
    attributes' sub-queries were most of that walk (and about a tenth of the search's
    CPU). What is made once never changes, so its number stands for all of it: two
    statements holding the same ``Made`` compile alike there. It may hold constants
    (``!= ''``) but never a request's value, which would then be compiled into the
    cached SQL once and reused: the values a request gives stay in the conditions,
    outside it, and are walked as before. It compiles as its expression, in place
    (correlation and aliases as if it were not there).
    """

    inherit_cache = False
    _numbers = itertools.count()

    def __init__(self, expression: sa.ColumnElement[Any]) -> None:
        self.made = expression
        self.type = expression.type
        self._key = (Made, next(Made._numbers))

    def _gen_cache_key(self, anon_map: Any, bindparams: list[Any]) -> tuple[Any, ...]:
        return self._key

    @property
    def _from_objects(self) -> list[sa.FromClause]:
        return self.made._from_objects


@compiles(Made)
def _compile_made(element: Made, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.made, **kw)


class Sql:
    """Builds dialect-specific expressions (SQLite and PostgreSQL answer identically)."""

    def __init__(self, dialect: str) -> None:
        self.sqlite = dialect == "sqlite"
        # Expressions without values over the base tables (computed attributes, their
        # labels, the join chain), made once and shared read-only by the request
        # threads: building them anew for each search was about a tenth of a QIDO-RS
        # study search's CPU. (Those with sub-queries go into statements as :class:`Made`,
        # so that SQLAlchemy does not walk them again for each statement's cache key.)
        self._made: dict[Hashable, Any] = {}
        self._shaped: dict[Hashable, sa.Select[Any]] = {}

    def memo(self, key: Hashable, build: Callable[[], T]) -> T:
        """``build()``, made once per ``key`` (which must name everything it depends on);
        two threads may both build it the first time, and either copy serves."""
        found = self._made.get(key)
        if found is None:
            found = self._made[key] = build()
        return cast(T, found)

    def shaped(self, shape: Hashable, build: Callable[[], sa.Select[Any]]) -> sa.Select[Any]:
        """The SELECT (without conditions) of a query of this ``shape``, made once.

        Unlike :meth:`memo`'s keys, shapes are chosen by the caller (which return keys,
        ``includefield``), so at most :data:`MAX_SHAPES` are kept: when full, all are
        forgotten and made again as asked (a study list and a viewer use a handful).
        """
        found = self._shaped.get(shape)
        if found is None:
            if len(self._shaped) >= MAX_SHAPES:
                self._shaped.clear()
            found = self._shaped[shape] = build()
        return found

    # -- computed attributes --------------------------------------------------------------
    def count(self, attr: Attr, t: Tables) -> sa.ScalarSelect[Any]:
        if t is BASE:
            return self.memo(("count", attr), lambda: self._count(attr, BASE))
        return self._count(attr, t)

    def value_set(self, attr: Attr, t: Tables) -> sa.ScalarSelect[Any]:
        if t is BASE:
            return self.memo(("value_set", attr), lambda: self._value_set(attr, BASE))
        return self._value_set(attr, t)

    def _count(self, attr: Attr, t: Tables) -> sa.ScalarSelect[Any]:
        assert attr.below is not None
        sub, joined = related(t, attr.level, attr.below)
        stmt = sa.select(sa.func.count()).select_from(joined)
        return stmt.where(link(sub, child_of(attr.level))).scalar_subquery()

    def _value_set(self, attr: Attr, t: Tables) -> sa.ScalarSelect[Any]:
        assert attr.below is not None
        sub, joined = related(t, attr.level, attr.below)
        col = sub.at(attr.below).c[attr.column]
        agg = (
            sa.func.group_concat(sa.distinct(col), type_=sa.String)
            if self.sqlite
            else sa.func.string_agg(sa.distinct(col), sa.literal_column("','"), type_=sa.String)
        )
        stmt = sa.select(agg).select_from(joined)
        return stmt.where(link(sub, child_of(attr.level)), col != "").scalar_subquery()

    def linked_identities(self) -> sa.ScalarSelect[Any]:
        """The other local identities linked to the patient's NHS number, joined as text."""
        return self.memo("linked_identities", self._linked_identities)

    def _linked_identities(self) -> sa.ScalarSelect[Any]:
        other = patient.alias()
        one = other.c.patient_id + "\x1f" + other.c.issuer
        sep = sa.literal(ID_SEP)
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

    def representative_metadata(self, t: Tables, level: QueryLevel) -> sa.ScalarSelect[Any]:
        """metadata_json of the lowest-pk instance of the entity (PS3.4 C.4.1.1.3.2).

        The lowest pk first, from the index on (series_fk, id) alone, then that one row:
        sorting the entity's instances by pk read every one's header (a CT study's
        hundreds) for each answer."""
        if t is BASE:
            return self.memo(("representative", level), lambda: self._representative(BASE, level))
        return self._representative(t, level)

    def _representative(self, t: Tables, level: QueryLevel) -> sa.ScalarSelect[Any]:
        sub, joined = related(t, level, IM)
        lowest = (
            sa.select(sa.func.min(sub.instance.c.id))
            .select_from(joined)
            .where(link(sub, child_of(level)))
            .correlate(t.at(level))  # two levels out: not found by auto-correlation
            .scalar_subquery()
        )
        rep = _REPRESENTATIVE
        return sa.select(rep.c.metadata_json).where(rep.c.id == lowest).scalar_subquery()

    # -- matching -------------------------------------------------------------------------
    def match_key(self, key: Key, t: Tables) -> sa.ColumnElement[bool]:
        attr, terms = key.attr, key.terms
        assert attr is not None and terms is not None
        if attr.kind is Kind.COLUMN:
            return self.match(t.at(attr.level).c[attr.column], attr.vr, terms)
        if attr.kind is Kind.COUNT:
            return self.match(self.count(attr, t), attr.vr, terms)
        return self._match_set(attr, terms, t)

    def _match_set(self, attr: Attr, terms: list[Term], t: Tables) -> sa.ColumnElement[bool]:
        """A value of some related entity matches (``""``: none of them has a value)."""
        assert attr.below is not None
        sub, joined = related(t, attr.level, attr.below)
        linked = link(sub, child_of(attr.level))
        col = sub.at(attr.below).c[attr.column]
        present = [term for term in terms if not isinstance(term, Empty)]
        conds: list[sa.ColumnElement[bool]] = []
        if present:
            any_match = self.match(col, attr.vr, present)
            conds.append(sa.select(1).select_from(joined).where(linked, any_match).exists())
        if len(present) < len(terms):
            conds.append(~sa.select(1).select_from(joined).where(linked, col != "").exists())
        return sa.or_(*conds)

    def match(
        self, col: sa.ColumnElement[Any], vr: str, terms: Sequence[Term]
    ) -> sa.ColumnElement[bool]:
        numeric = vr in INT_VRS or vr in FLOAT_VRS
        exact = [t.value for t in terms if isinstance(t, Exact)]
        conds: list[sa.ColumnElement[bool]] = []
        if exact and vr == "PN":
            conds.extend(self._pn_equal(col, str(v)) for v in exact)
        elif exact:
            conds.append(col == exact[0] if len(exact) == 1 else col.in_(exact))
        for term in terms:
            if isinstance(term, Wild):
                conds.append(self._wild(col, vr, term.pattern))
            elif isinstance(term, Range):
                conds.append(self._range(col, vr, term))
            elif isinstance(term, Empty):
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

    def _range(self, col: sa.ColumnElement[Any], vr: str, term: Range) -> sa.ColumnElement[bool]:
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
    """SQL for matching.norm_tm of a stored time (lower end: a stored time is a point)."""
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
