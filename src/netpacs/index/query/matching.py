"""Identifiers parsed into keys and terms, and terms matched on stored DICOM JSON.

Attribute matching follows PS3.4 C.2.2.2:

- single value matching (C.2.2.2.1), exact and case-sensitive except for PN, which
  is matched case-insensitively on the Alphabetic group; a value of two quotation
  marks (``""``) matches entities whose value is empty (empty value matching);
- list of UID matching (C.2.2.2.2);
- universal matching (C.2.2.2.3): no value, or a value of ``*``;
- wild card matching (C.2.2.2.4) with ``*`` and ``?`` for AE, CS, LO, LT, PN, SH,
  ST, UC, UR and UT, in time linear in the value for each piece of the pattern
  (:class:`WildMatcher`; SQL ``LIKE`` / ``GLOB`` on indexed columns); a value may be
  at most :data:`MAX_MATCH_LENGTH` characters with :data:`MAX_WILD_CARDS` wild cards;
- range matching (C.2.2.2.5) for DA, TM and DT; a partial time or date-time stands
  for the whole period it names, so ``-1000`` includes 10:00:59.5;
- sequence matching (C.2.2.2.6) is treated as universal matching;
- multiple values (``CT\\MR``) outside UIDs are matched as alternatives (OR): without
  Extended Negotiation their meaning is undefined (C.2.2.2.8, note 4).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from netpacs.domain.dicom.header import JsonDataset
from netpacs.domain.query import QueryError, QueryLevel, QueryModel
from netpacs.index.query.attributes import (
    ADAPTER_KEYS,
    ATTRS,
    FLOAT_VRS,
    INT_VRS,
    QUERY_RETRIEVE_LEVEL,
    SPECIFIC_CHARACTER_SET,
    TEXT_VRS,
    TIMEZONE_OFFSET,
    UNMATCHABLE_VRS,
    WILDCARD_VRS,
    Attr,
    name,
    vr_of,
)

# -- terms: one parsed value of a matching key ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Exact:
    value: str | int | float


@dataclass(frozen=True, slots=True)
class Wild:
    pattern: str  # DICOM wild card syntax: * and ?


@dataclass(frozen=True, slots=True)
class Range:
    low: str | None  # normalised (see norm_tm / norm_dt); DA as YYYYMMDD
    high: str | None


@dataclass(frozen=True, slots=True)
class Empty:
    pass


Term = Exact | Wild | Range | Empty

_TM = r"\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?"
_DT = r"\d{4}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?)?)?(?:[+-]\d{4})?"
PATTERNS = {
    "DA": (re.compile(r"\d{8}"), "a date (YYYYMMDD)"),
    "TM": (re.compile(_TM), "a time (HH, HHMM, HHMMSS or HHMMSS.FFFFFF)"),
    "DT": (re.compile(_DT), "a date-time (YYYY[MM[DD[HH[MM[SS[.FFFFFF]]]]]][&ZZXX])"),
}


def norm_tm(value: str, *, upper: bool = False) -> str:
    """A time as HHMMSS.FFFFFF; missing parts are the start (or the end) of the period."""
    hh, mm, ss = value[0:2], value[2:4], value[4:6]
    frac = value[7:13] if value[6:7] == "." else ""
    fill = "9" if upper else "0"
    mm = mm or ("59" if upper else "00")
    ss = ss or ("59" if upper else "00")
    return f"{hh}{mm}{ss}.{frac.ljust(6, fill)}"


def norm_dt(value: str, *, upper: bool = False) -> str:
    """A date-time as YYYYMMDDHHMMSS.FFFFFF (the UTC offset is not taken into account)."""
    value = re.sub(r"[+-]\d{4}$", "", value)
    head, _, frac = value.partition(".")
    pad = "1231235959" if upper else "0101000000"
    head = head + pad[len(head) - 4 :] if len(head) < 14 else head[:14]
    return f"{head}.{frac[:6].ljust(6, '9' if upper else '0')}"


def _parse_temporal(tag: str, vr: str, value: str) -> Term:
    pattern, what = PATTERNS[vr]
    cleaned = value.replace(":", "") if vr == "TM" else value
    if vr == "DA" and re.fullmatch(r"\d{4}\.\d{2}\.\d{2}", cleaned):
        cleaned = cleaned.replace(".", "")  # ACR-NEMA style, still sent by old SCUs
    if pattern.fullmatch(cleaned):
        if vr == "DA":
            return Exact(cleaned)
        norm = norm_tm if vr == "TM" else norm_dt
        return Range(norm(cleaned), norm(cleaned, upper=True))
    low, dash, high = cleaned.partition("-") if vr != "DT" else _split_dt_range(cleaned)
    if dash and (low or high):
        if vr == "DA":
            low, high = low.replace(".", ""), high.replace(".", "")
        if all(not part or pattern.fullmatch(part) for part in (low, high)):
            if vr == "DA":
                return Range(low or None, high or None)
            norm = norm_tm if vr == "TM" else norm_dt
            return Range(norm(low) if low else None, norm(high, upper=True) if high else None)
    raise QueryError(f"{name(tag)}: {value!r} is not {what} or a range of them (a-b, -b or a-)")


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


def _parse_number(tag: str, vr: str, value: str | int | float) -> Term:
    try:
        number = int(value) if vr in INT_VRS else float(value)
    except (TypeError, ValueError, OverflowError):
        raise QueryError(f"{name(tag)}: {value!r} is not a number") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise QueryError(f"{name(tag)}: {value!r} is not a finite number")
    low, high = _INT_BOUNDS.get(vr, (-(2**63), 2**63 - 1))
    if isinstance(number, int) and not low <= number <= high:
        raise QueryError(f"{name(tag)}: {value!r} is outside the range of {vr}")
    return Exact(number)


#: The longest matching value, and the most wild cards in one (issue 17): longer
#: values and more wild cards than any real search needs are refused, not matched.
MAX_MATCH_LENGTH = 1024
MAX_WILD_CARDS = 64


def _check_size(tag: str, value: str) -> None:
    # The essential words first: a C-FIND Error Comment keeps 64 characters.
    if len(value) > MAX_MATCH_LENGTH:
        raise QueryError(
            f"{name(tag)}: over {MAX_MATCH_LENGTH} characters ({len(value)}); "
            f"a matching value may have at most {MAX_MATCH_LENGTH}"
        )
    wild = value.count("*") + value.count("?")
    if wild > MAX_WILD_CARDS:
        raise QueryError(
            f"{name(tag)}: over {MAX_WILD_CARDS} wild cards ({wild}); a matching value "
            f"may have at most {MAX_WILD_CARDS} (* and ?)"
        )


def _parse_term(tag: str, vr: str, value: str | int | float) -> Term | None:
    """One value of a matching key as a term; None means universal matching."""
    if isinstance(value, str):
        if value == "*":
            return None
        if value == '""':
            return Empty()
        if "\x00" in value:
            raise QueryError(f"{name(tag)}: the value contains a NUL character")
        _check_size(tag, value)
    if vr in INT_VRS or vr in FLOAT_VRS:
        return _parse_number(tag, vr, value)
    text = str(value)
    if vr in PATTERNS:
        return _parse_temporal(tag, vr, text)
    if vr == "UI" and ("*" in text or "?" in text):
        raise QueryError(f"{name(tag)}: wild cards are not allowed in UIDs (PS3.4 C.2.2.2.4)")
    if vr in WILDCARD_VRS and ("*" in text or "?" in text):
        return Wild(text)
    return Exact(text)


def _values(tag: str, vr: str, element: dict[str, Any]) -> list[str | int | float]:
    values: list[str | int | float] = []
    for raw in element.get("Value") or []:
        value = raw
        if isinstance(value, dict):
            value = value.get("Alphabetic") or ""
        if value is None:
            continue
        if isinstance(value, str):
            parts = [value] if vr in TEXT_VRS else value.split("\\")
            if vr == "PN":  # a plain string may carry all groups: match the Alphabetic one
                parts = [part.split("=", 1)[0] for part in parts]
            values.extend(part.strip(" ") for part in parts)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            values.append(value)
        else:
            raise QueryError(f"{name(tag)}: value {raw!r} cannot be used for matching")
    return [v for v in values if v != ""]


def _terms(tag: str, vr: str, element: dict[str, Any]) -> list[Term] | None:
    """The terms of a matching key (any one may match); None for universal matching."""
    if vr in UNMATCHABLE_VRS:
        return None
    values = _values(tag, vr, element)
    if not values:
        return None
    terms: list[Term] = []
    for value in values:
        term = _parse_term(tag, vr, value)
        if term is None:
            return None
        terms.append(term)
    return terms


# -- parsed identifier -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Key:
    tag: str
    vr: str
    element: dict[str, Any]
    attr: Attr | None
    terms: list[Term] | None  # None: universal (a return key only)


def parse_identifier(identifier: dict[str, Any], level: QueryLevel) -> list[Key]:
    """The keys of a DICOM JSON identifier, in tag order; raises :class:`QueryError`."""
    if not isinstance(identifier, dict):
        raise QueryError("the identifier is not a DICOM JSON data set")
    keys: list[Key] = []
    for raw_tag, raw_element in sorted(identifier.items()):
        tag = str(raw_tag).upper()
        if not re.fullmatch(r"[0-9A-F]{8}", tag):
            raise QueryError(f"identifier key {raw_tag!r} is not a tag (GGGGEEEE)")
        element = raw_element if raw_element is not None else {}
        if not isinstance(element, dict):
            raise QueryError(f"{name(tag)}: element is not a DICOM JSON object")
        if tag.startswith("0000") or tag.endswith("0000"):
            continue  # command elements and group lengths are not keys
        vr = vr_of(tag, element)
        if tag == QUERY_RETRIEVE_LEVEL:
            _check_level(element, level)
            continue
        if tag == SPECIFIC_CHARACTER_SET:
            continue
        matched = tag not in ADAPTER_KEYS and tag != TIMEZONE_OFFSET
        terms = _terms(tag, vr, element) if matched else None
        keys.append(Key(tag, vr, element, ATTRS.get(tag), terms))
    return keys


def _check_level(element: dict[str, Any], level: QueryLevel) -> None:
    values = element.get("Value") or []
    given = str(values[0]).strip().upper() if values and values[0] is not None else ""
    if given and given != level.value:
        if given not in {lv.value for lv in QueryLevel}:
            raise QueryError(f"Query/Retrieve Level {given!r} is not valid")
        raise QueryError(f"Query/Retrieve Level {given!r} differs from the level {level.value}")


def check_model(level: QueryLevel, model: QueryModel) -> None:
    if model is QueryModel.STUDY_ROOT and level is QueryLevel.PATIENT:
        raise QueryError("PATIENT level is not valid in the Study Root model (PS3.4 C.6.2)")


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


class WildMatcher:
    """A DICOM wild card pattern (``*`` any run of characters, ``?`` one character)
    matched against a whole value in at most O(len(pattern) * len(value)) steps.

    Not a regular expression with ``.*`` for each ``*``: Python's ``re`` backtracks, and
    such a pattern took time exponential in the number of stars (issue 17: 13 stars,
    5.8 s for one value, holding the interpreter lock). Between two stars a piece has a
    fixed length (``?`` is one character), so matching each piece at its leftmost place
    after the previous one is right, and never needs to be undone (the classic greedy
    wild card algorithm). Each piece is a regular expression without repetition: a
    literal search in C, with the same case folding (``re.IGNORECASE``) as before.
    """

    __slots__ = ("_first", "_last", "_last_len", "_middle", "_single")

    def __init__(self, pattern: str, *, fold: bool) -> None:
        flags = re.DOTALL | (re.IGNORECASE if fold else 0)
        pieces = [
            re.compile("".join("." if ch == "?" else re.escape(ch) for ch in piece), flags)
            for piece in pattern.split("*")
        ]
        self._single = len(pieces) == 1
        self._first = pieces[0]
        self._middle = [p for p in pieces[1:-1] if p.pattern]
        self._last = pieces[-1]
        self._last_len = len(pattern.rsplit("*", 1)[-1])

    def fullmatch(self, value: str) -> bool:
        if self._single:
            return self._first.fullmatch(value) is not None
        found = self._first.match(value)
        if found is None:
            return False
        pos = found.end()
        for piece in self._middle:
            found = piece.search(value, pos)
            if found is None:
                return False
            pos = found.end()
        tail = len(value) - self._last_len
        return tail >= pos and self._last.fullmatch(value, tail) is not None


@functools.lru_cache(maxsize=256)
def wild_matcher(pattern: str, *, fold: bool) -> WildMatcher:
    return WildMatcher(pattern, fold=fold)


def _value_matches(value: Any, vr: str, term: Term) -> bool:
    if isinstance(term, Exact):
        if isinstance(term.value, int | float):
            try:
                return float(value) == float(term.value)
            except (TypeError, ValueError):
                return False
        if vr == "PN":
            return str(value).casefold() == term.value.casefold()
        return str(value) == term.value
    if isinstance(term, Wild):
        return wild_matcher(term.pattern, fold=vr == "PN").fullmatch(str(value))
    if isinstance(term, Range):
        text = str(value).replace(":", "") if vr == "TM" else str(value)
        pattern, _ = PATTERNS[vr]
        if not pattern.fullmatch(text):
            return False
        point = text if vr == "DA" else norm_tm(text) if vr == "TM" else norm_dt(text)
        return (term.low is None or point >= term.low) and (term.high is None or point <= term.high)
    return False


def _element_matches(element: dict[str, Any] | None, vr: str, terms: Sequence[Term]) -> bool:
    values = _stored_values(element)
    for term in terms:
        if isinstance(term, Empty):
            if not values:
                return True
        elif any(_value_matches(v, vr, term) for v in values):
            return True
    return False


def stored_match(meta: JsonDataset, keys: list[Key]) -> bool:
    """Whether a stored DICOM JSON data set matches every key (those without a column)."""
    return all(_element_matches(meta.get(k.tag), k.vr, k.terms or []) for k in keys)
