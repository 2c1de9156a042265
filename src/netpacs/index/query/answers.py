"""Rows of the index as DICOM JSON answers (PS3.4 C.4.1.1.3.2): columns where there are
columns, the stored header (``metadata_json``) for every other attribute, Other Patient
IDs from the regional record, and every unsupported return key present and empty."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from netpacs.domain import nhs_number
from netpacs.domain.dicom.header import JsonDataset
from netpacs.domain.query import QueryLevel
from netpacs.index.query.attributes import (
    ID_SEP,
    ISSUER,
    PATIENT_ID,
    QUERY_RETRIEVE_LEVEL,
    SPECIFIC_CHARACTER_SET,
    vr_of,
)


@dataclass(frozen=True, slots=True)
class Output:
    """How one return key is answered."""

    tag: str
    vr: str
    label: str | None = None  # a selected column
    is_set: bool = False  # the column is a comma-joined set of values
    constant: dict[str, Any] | None = None
    request: dict[str, Any] | None = None  # taken from metadata_json
    other_ids: bool = False  # label: NHS number; label + "_linked": linked identities


def fixed_elements(identifier: dict[str, Any], level: QueryLevel) -> JsonDataset:
    """What every answer carries: the level and, when asked, Specific Character Set."""
    fixed: JsonDataset = {QUERY_RETRIEVE_LEVEL: {"vr": "CS", "Value": [level.value]}}
    if SPECIFIC_CHARACTER_SET in identifier:
        # Echoed as given (an empty first value is the default repertoire, PS3.5
        # 6.1.2.5.3); asked for without a value, the answer is in UTF-8.
        element = identifier[SPECIFIC_CHARACTER_SET] or {}
        given = ["" if v is None else str(v) for v in element.get("Value") or []]
        fixed[SPECIFIC_CHARACTER_SET] = {
            "vr": "CS",
            "Value": given if any(given) else ["ISO_IR 192"],
        }
    return fixed


def answer(
    row: sa.Row[Any], outputs: list[Output], fixed: JsonDataset, meta: JsonDataset | None
) -> JsonDataset:
    """One matching entity as a DICOM JSON data set, its keys in tag order."""
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
                    tag: _project(item.get(tag), sub, vr_of(tag, sub))
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


def _other_patient_ids(
    stored: dict[str, Any], number: str | None, linked: str | None
) -> dict[str, Any]:
    """Other Patient IDs Sequence: the object's own items, then from the regional record
    the NHS number and the linked hospital numbers that are not among them."""
    if not number:
        return stored
    items: list[JsonDataset] = list(stored.get("Value") or [])
    seen = {(_first_text(i, PATIENT_ID), _first_text(i, ISSUER)) for i in items}
    if (number, "NHS") not in seen:
        items.append(_id_item(number, "NHS"))
    for one in sorted((linked or "").split(ID_SEP)):
        value, _, issuer = one.partition("\x1f")
        # Not the NHS number again (a Patient ID issued by NHS is linked to itself).
        if value and not nhs_number.is_nhs_issuer(issuer) and (value, issuer) not in seen:
            items.append(_id_item(value, issuer))
    return {"vr": "SQ", "Value": items}


def _id_item(value: str, issuer: str) -> JsonDataset:
    return {
        PATIENT_ID: {"vr": "LO", "Value": [value]},
        ISSUER: {"vr": "LO", "Value": [issuer]} if issuer else {"vr": "LO"},
        "00100022": {"vr": "CS", "Value": ["TEXT"]},  # Type of Patient ID
    }


def _first_text(item: Any, tag: str) -> str:
    element = item.get(tag) if isinstance(item, dict) else None
    values = (element or {}).get("Value") or []
    return str(values[0]) if values and values[0] is not None else ""
