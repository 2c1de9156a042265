"""WADO-RS metadata (PS3.18 10.4.1.1.2): DICOM JSON of stored instances, from the index only.

Each instance's header is kept in the index as DICOM JSON text (``instance.metadata_json``)
with bulk data as internal references ``bulk:<offset>:<length>`` (offsets into the
stored data set; see :mod:`netpacs.domain.dicom.header`). An answer is made with string
operations on those texts: one query, one regular expression substitution per instance
turning each reference into a BulkDataURI we serve, and a join into one JSON array.
Parsing and re-serialising 600 headers would cost several times more, and the texts
are already valid DICOM JSON (ARCHITECTURE.md invariant 7: never read the files).

Instances whose patient changed since they were stored (ADT demographics, merges:
:mod:`netpacs.services.coercion`) have their patient elements replaced in the text;
the check costs one small query per request and every other text is left as it is.

A BulkDataURI is ``{instance URL}/bulk/{tag}?offset={offset}``: the tag says what it
is, the offset says which occurrence (an attribute may appear in several sequence
items). Objects indexed through the pydicom fallback have ``bulk:pydicom`` references
without offsets; their URI has no offset and names a top-level attribute.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

from netpacs.services.access import Principal
from netpacs.services.coercion import CoercionService, coerce_json
from netpacs.services.query import QueryService

# A reference as the header walker and ingest's fallback write it (orjson, no spaces):
# the tag and VR before the URI have a fixed width, so the match can start 22 characters
# before each occurrence of _KEY, which str.find locates much faster than a regex scan.
_KEY = '"BulkDataURI":"bulk:'
_BULK = re.compile(
    r'"([0-9A-F]{8})":\{"vr":"([A-Z]{2})","BulkDataURI":"bulk:(?:(\d+):-?\d+|pydicom)"\}'
)
_BEFORE_KEY = len('"GGGGEEEE":{"vr":"VR",')
_BULK_REF = re.compile(r"bulk:(\d+):(-?\d+)")


@dataclass(frozen=True, slots=True)
class BulkRef:
    """Where an attribute's bulk data is in the stored data set.

    ``offset`` and ``length`` are None for objects indexed through pydicom (the value has
    to be found by reading the object); ``length`` is -1 for encapsulated pixel data.
    """

    tag: str
    vr: str
    offset: int | None
    length: int | None


def _json_text(value: str) -> str:
    """``value`` escaped for use inside a JSON string."""
    return orjson.dumps(value).decode()[1:-1]


def with_bulk_uris(text: str, url: str) -> str:
    """A stored DICOM JSON text with its ``bulk:`` references turned into BulkDataURIs."""
    at = text.find(_KEY)
    if at < 0:
        return text
    prefix = _json_text(f"{url}/bulk/")
    out: list[str] = []
    done = 0
    while at >= 0:
        ref = _BULK.match(text, at - _BEFORE_KEY)
        if ref is not None:
            tag, vr, offset = ref.groups()
            query = f"?offset={offset}" if offset is not None else ""
            out.append(text[done : ref.start()])
            out.append(f'"{tag}":{{"vr":"{vr}","BulkDataURI":"{prefix}{tag}{query}"}}')
            done = ref.end()
        at = text.find(_KEY, at + len(_KEY))
    out.append(text[done:])
    return "".join(out)


class MetadataService:
    """Answers WADO-RS /metadata requests and resolves the BulkDataURIs it hands out."""

    def __init__(self, query: QueryService, coercion: CoercionService) -> None:
        self._query = query
        self._coercion = coercion

    def for_principal(self, principal: Principal) -> MetadataService:
        return MetadataService(self._query.for_principal(principal), self._coercion)

    def metadata(
        self,
        dicomweb_url: str,
        study_uid: str,
        series_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> bytes | None:
        """The DICOM JSON array (UTF-8) of the instances in scope; None when there are none."""
        rows = self._query.metadata_texts(study_uid, series_uid, sop_instance_uid)
        if not rows:
            return None
        coercions = self._coercion.for_scope(study_uid, series_uid, sop_instance_uid)
        if coercions:
            rows = [
                (series, sop, coerce_json(text, coercions[sop]) if sop in coercions else text)
                for series, sop, text in rows
            ]
        study_url = f"{dicomweb_url}/studies/{study_uid}/series/"
        parts = [
            with_bulk_uris(text, f"{study_url}{series}/instances/{sop}")
            for series, sop, text in rows
        ]
        return ("[" + ",".join(parts) + "]").encode()


def locate_bulk(metadata_json: str, tag: str, offset: int | None) -> BulkRef | None:
    """The bulk data reference of ``tag`` in a stored header; None when there is none.

    With ``offset`` (from a BulkDataURI we made) the reference is found wherever it is,
    in a sequence item too; without, only a top-level attribute is found.
    """
    tag = tag.upper()
    if offset is not None:
        pattern = re.compile(
            rf'"{re.escape(tag)}":\{{"vr":"([A-Z]{{2}})","BulkDataURI":"bulk:{offset}:(-?\d+)"\}}'
        )
        found = pattern.search(metadata_json)
        if found is None:
            return None
        return BulkRef(tag, found.group(1), offset, int(found.group(2)))
    element = orjson.loads(metadata_json).get(tag)
    if not isinstance(element, dict) or "BulkDataURI" not in element:
        return None
    vr = str(element.get("vr", "UN"))
    ref = _BULK_REF.fullmatch(str(element["BulkDataURI"]))
    if ref is None:
        return BulkRef(tag, vr, None, None)
    return BulkRef(tag, vr, int(ref.group(1)), int(ref.group(2)))
