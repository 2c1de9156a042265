"""The values of a query: levels and models (PS3.4 C.6), the error of a bad identifier,
and the stored objects a query selects. Adapters, services and the index share them."""

from __future__ import annotations

import enum
from dataclasses import dataclass


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


class QueryTimeout(QueryError):
    """The query took more than its time limit to answer, and was stopped; the message
    says so (QIDO-RS answers 503, C-FIND Out of Resources)."""


class QueryUnavailable(QueryTimeout):
    """The index database went away while answering (a failover): the same answers as
    a timeout (QIDO-RS 503, C-FIND Out of Resources), the client asks again."""


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
