"""Outcomes of service calls: expected results are values, not exceptions."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Protocol(enum.Enum):
    """How an object or request reached netpacs."""

    DIMSE = "dimse"
    DICOMWEB = "dicomweb"
    IMPORT = "import"
    REINDEX = "reindex"
    REPORT = "report"  # a report's SR, made by netpacs when a report is signed
    UPSTREAM = "upstream"  # an edge node's copy of what the regional core holds (issue 13)


@dataclass(frozen=True, slots=True)
class Origin:
    """Who sent an object: the calling AE or user, its trust (ODS code), the protocol."""

    protocol: Protocol
    ae_title: str | None = None
    trust: str | None = None
    user: str | None = None
    site: str | None = None

    def describe(self) -> str:
        """For people: e.g. ``DICOM C-STORE from EDGH_CT1 (RXC)``."""
        how = {"dimse": "C-STORE", "dicomweb": "STOW-RS", "report": "report signed"}.get(
            self.protocol.value
        )
        who = self.ae_title or self.user or "an unknown sender"
        trust = f" ({self.trust})" if self.trust else ""
        return f"{how or self.protocol.value} from {who}{trust}"


class StoreStatus(enum.Enum):
    """What became of one object offered to the ingest service."""

    STORED = "stored"
    ALREADY_STORED = "already-stored"
    CONFLICT = "conflict"  # same SOP Instance UID, different content, refused
    REPLACED = "replaced"  # same SOP Instance UID, different content, policy replace
    INVALID = "invalid"  # not parsable or required attributes missing / malformed
    FAILED = "failed"  # storage or index failure: nothing was kept

    @property
    def ok(self) -> bool:
        return self in (StoreStatus.STORED, StoreStatus.ALREADY_STORED, StoreStatus.REPLACED)


class InvalidReason(enum.Enum):
    """Why an object was refused as invalid (mapped to specific protocol statuses)."""

    UNPARSABLE = "the object could not be parsed as DICOM"
    MISSING_UID = "a required UID (Study, Series or SOP Instance) is missing"
    MALFORMED_UID = "a UID is malformed (PS3.5 9.1)"
    SOP_MISMATCH = "the SOP Class or Instance UID in the data set differs from the command"
    STUDY_MISMATCH = "the Study Instance UID in the data set differs from the one the request names"
    # The object names a study (or series) the index holds, but its patient is not that
    # study's patient (or the series is another study's): refused, and a reconciliation
    # item raised, so that no image is slipped into another patient's study.
    PATIENT_MISMATCH = "the patient of the object contradicts the patient of the study it names"
    SERIES_MISMATCH = "the Series Instance UID belongs to another study"
    TOO_LARGE = "the object (inflated, if deflated) is larger than the largest accepted"
    TOO_DEEP = "the data set nests sequences deeper than netpacs accepts"


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    status: StoreStatus
    sop_instance_uid: str | None = None
    message: str = ""
    reason: InvalidReason | None = None
    # What the object says of itself, when it could be parsed (for links in responses).
    sop_class_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    patient_id: str | None = None
    issuer: str | None = None  # of the patient ID: the object's, else its sender's trust


class DuplicatePolicy(enum.Enum):
    """What to do with a SOP Instance UID already stored with different content. The
    same instance in other bytes (another transfer syntax, a lossless recompression) is
    not different content: it is a success that keeps the stored copy under every
    policy (services/same_instance.py)."""

    REJECT = "reject"
    KEEP_FIRST = "keep-first"
    REPLACE = "replace"


class Problem(enum.Enum):
    """Why a service refuses a request. Services say which; each adapter maps it to its
    protocol's status through one table (HTTP: ``adapters/http/errors.py``)."""

    NOT_FOUND = "not found"  # no such thing, or not the principal's to see (the same)
    FORBIDDEN = "forbidden"  # the principal may not do this
    CONFLICT = "conflict"  # the state does not allow it now
    INVALID = "invalid"  # understood, but a value of the request is refused
    MALFORMED = "malformed"  # the request itself is wrong (a list, a range, an action)
    NOT_ACCEPTABLE = "not acceptable"  # it cannot be given in the form asked for


class Refused(Exception):
    """A request a service refuses: the problem, and the words to show the user."""

    def __init__(self, problem: Problem, message: str) -> None:
        super().__init__(message)
        self.problem = problem
        self.message = message
