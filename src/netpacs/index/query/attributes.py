"""The attributes the index answers from its columns, by level (PS3.4 C.6.1.1), and the
tags and value representations the compiler treats specially."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag

from netpacs.domain import nhs_number
from netpacs.domain.query import QueryLevel

LEVELS = (QueryLevel.PATIENT, QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.IMAGE)
DEPTH = {level: depth for depth, level in enumerate(LEVELS)}
P, ST, SE, IM = LEVELS


class Kind(enum.Enum):
    COLUMN = "column"  # a column of the level's table
    COUNT = "count"  # number of related entities of level ``below``
    SET = "set"  # distinct values of column ``column`` of related entities of ``below``


@dataclass(frozen=True, slots=True)
class Attr:
    vr: str
    level: QueryLevel
    column: str
    kind: Kind = Kind.COLUMN
    below: QueryLevel | None = None


ATTRS: dict[str, Attr] = {
    # PATIENT (PS3.4 C.6.1.1.2)
    "00100010": Attr("PN", P, "patient_name"),
    "00100020": Attr("LO", P, "patient_id"),
    "00100021": Attr("LO", P, "issuer"),
    "00100030": Attr("DA", P, "patient_birth_date"),
    "00100040": Attr("CS", P, "patient_sex"),
    "00201200": Attr("IS", P, "", Kind.COUNT, ST),
    "00201202": Attr("IS", P, "", Kind.COUNT, SE),
    "00201204": Attr("IS", P, "", Kind.COUNT, IM),
    # STUDY (C.6.1.1.3)
    "0020000D": Attr("UI", ST, "study_instance_uid"),
    "00080020": Attr("DA", ST, "study_date"),
    "00080030": Attr("TM", ST, "study_time"),
    "00080050": Attr("SH", ST, "accession_number"),
    "00200010": Attr("SH", ST, "study_id"),
    "00081030": Attr("LO", ST, "study_description"),
    "00080090": Attr("PN", ST, "referring_physician_name"),
    "00080061": Attr("CS", ST, "modality", Kind.SET, SE),
    "00080062": Attr("UI", ST, "sop_class_uid", Kind.SET, IM),
    "00201206": Attr("IS", ST, "", Kind.COUNT, SE),
    "00201208": Attr("IS", ST, "", Kind.COUNT, IM),
    # SERIES (C.6.1.1.4)
    "0020000E": Attr("UI", SE, "series_instance_uid"),
    "00080060": Attr("CS", SE, "modality"),
    "00200011": Attr("IS", SE, "series_number"),
    "0008103E": Attr("LO", SE, "series_description"),
    "00180015": Attr("CS", SE, "body_part_examined"),
    "00080021": Attr("DA", SE, "series_date"),
    "00080031": Attr("TM", SE, "series_time"),
    "00080080": Attr("LO", SE, "institution_name"),
    "00081010": Attr("SH", SE, "station_name"),
    "00201209": Attr("IS", SE, "", Kind.COUNT, IM),
    # IMAGE (C.6.1.1.5)
    "00080018": Attr("UI", IM, "sop_instance_uid"),
    "00080016": Attr("UI", IM, "sop_class_uid"),
    "00200013": Attr("IS", IM, "instance_number"),
    "00080023": Attr("DA", IM, "content_date"),
    "00080033": Attr("TM", IM, "content_time"),
    "00280010": Attr("US", IM, "image_rows"),
    "00280011": Attr("US", IM, "image_columns"),
    "00280008": Attr("IS", IM, "number_of_frames"),
    "00083002": Attr("UI", IM, "transfer_syntax_uid"),  # Available Transfer Syntax UID
}
UNIQUE_KEYS = {P: "00100020", ST: "0020000D", SE: "0020000E", IM: "00080018"}
PATIENT_ID = "00100020"
PATIENT_NAME = "00100010"
ISSUER = "00100021"
OTHER_PATIENT_IDS = "00101002"
NHS_ISSUERS = sorted(nhs_number.NHS_ISSUERS)
ID_SEP = "\x1e"  # between linked identities in an aggregate; \x1f within one

QUERY_RETRIEVE_LEVEL = "00080052"
SPECIFIC_CHARACTER_SET = "00080005"
INSTANCE_AVAILABILITY = "00080056"
# Qualifies the times of the query (PS3.4 C.2.2.2.5), it is not matched itself.
TIMEZONE_OFFSET = "00080201"
# Filled in by the adapter that knows them (QIDO-RS: the URLs), else empty.
ADAPTER_KEYS = frozenset({"00080054", "00081190", "0040E010", "00880130", "00880140"})
# Retrieve AE Title: where the entity can be retrieved with C-MOVE (PS3.4 C.4.1.1.3.2).
RETRIEVE_AE_TITLE = "00080054"

WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})  # a backslash is text, not a delimiter
INT_VRS = frozenset({"IS", "US", "UL", "SS", "SL", "SV", "UV"})
FLOAT_VRS = frozenset({"DS", "FL", "FD"})
UNMATCHABLE_VRS = frozenset({"SQ", "OB", "OD", "OF", "OL", "OV", "OW", "UN"})


def name(tag: str) -> str:
    """The tag as people read it in an error: ``PatientName (0010,0010)``."""
    keyword = keyword_for_tag(int(tag, 16)) or "attribute"
    return f"{keyword} ({tag[:4]},{tag[4:]})"


def vr_of(tag: str, element: dict[str, Any]) -> str:
    """The VR the index holds the attribute in, else the element's, else the dictionary's."""
    attr = ATTRS.get(tag)
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
