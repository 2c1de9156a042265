"""The one mapping from service outcomes to DIMSE statuses (PS3.4 B.2.3, C.4, PS3.7 C)."""

from __future__ import annotations

from netpacs.domain.outcomes import InvalidReason, StoreOutcome, StoreStatus

SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
WARNING_SUBOPS = 0xB000  # C-MOVE/C-GET: one or more sub-operations failed
# C-FIND at an edge node: the core did not answer; the matches are the edge's cache's
# (a Warning class status with an Error Comment saying so; issue 13).
FIND_FROM_CACHE = 0xB000
# C-FIND across the other networks (issue 14): some did not answer; the Error Comment
# names them.
FIND_WITHOUT_SOME_NETWORKS = 0xB000
SOP_CLASS_NOT_SUPPORTED = 0x0122
NOT_AUTHORIZED = 0x0124  # PS3.7 C.5: Refused: Not Authorized (an access refusal)
UNRECOGNIZED_OPERATION = 0x0211
OUT_OF_RESOURCES = 0xA700
OUT_OF_RESOURCES_MATCHES = 0xA701
OUT_OF_RESOURCES_SUBOPS = 0xA702
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
# netpacs-specific codes within the "Cannot understand" range (PS3.4 B.2.3: C000-CFFF)
MISSING_UID = 0xC001
MALFORMED_UID = 0xC002
# The object's patient contradicts the study it names (or its series is another study's).
# A "Cannot understand" code, not A7xx "Out of resources": senders retry A7xx as a passing
# condition, and this refusal is final until a person reconciles the identities.
PATIENT_CONTRADICTS_STUDY = 0xC003
# A SOP Instance UID already stored with other content (policy ``reject``). Not 0111
# "Duplicate SOP Instance": PS3.7 C.5 gives that to N-CREATE only, and DCMTK names it
# "Unknown Status" in a C-STORE-RSP; a Cxxx code it names "Error: Cannot understand",
# final (not an A7xx a sender retries), with the difference in the Error Comment.
STORED_WITH_OTHER_CONTENT = 0xC004

_INVALID: dict[InvalidReason, int] = {
    InvalidReason.UNPARSABLE: CANNOT_UNDERSTAND,
    InvalidReason.MISSING_UID: MISSING_UID,
    InvalidReason.MALFORMED_UID: MALFORMED_UID,
    InvalidReason.SOP_MISMATCH: IDENTIFIER_DOES_NOT_MATCH,
    InvalidReason.PATIENT_MISMATCH: PATIENT_CONTRADICTS_STUDY,
    InvalidReason.SERIES_MISMATCH: PATIENT_CONTRADICTS_STUDY,
    InvalidReason.TOO_LARGE: OUT_OF_RESOURCES,  # A700 "Refused: Out of Resources"
    InvalidReason.TOO_DEEP: CANNOT_UNDERSTAND,
}

_STORE: dict[StoreStatus, int] = {
    StoreStatus.STORED: SUCCESS,
    StoreStatus.ALREADY_STORED: SUCCESS,
    StoreStatus.REPLACED: SUCCESS,
    StoreStatus.CONFLICT: STORED_WITH_OTHER_CONTENT,
    StoreStatus.FAILED: OUT_OF_RESOURCES,
}


def store_status(outcome: StoreOutcome) -> int:
    """The C-STORE-RSP status for an ingest outcome."""
    if outcome.status is StoreStatus.INVALID:
        return _INVALID.get(outcome.reason or InvalidReason.UNPARSABLE, CANNOT_UNDERSTAND)
    return _STORE[outcome.status]
