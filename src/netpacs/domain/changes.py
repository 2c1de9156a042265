"""What changed at an archive that a cache of its studies must follow (issue 13).

The core appends a :class:`Change` in the transaction of each change; an edge reads
them in order (``GET /edge/changes``) and brings its cache up to date: the studies a
merge moved, the identity whose demographics changed, the study deleted, the patient
admitted (whose earlier studies it prefetches).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class ChangeKind(enum.Enum):
    ADMIT = "admit"  # ADT A01 / A04 / A05: the patient is at the trust now
    PATIENT = "patient"  # demographics or NHS number of an identity changed
    MERGE = "merge"  # studies moved from one identity to another (A40, A47, a person)
    UNMERGE = "unmerge"  # a merge undone: the studies moved back
    DELETE = "delete"  # a study deleted


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the feed. ``patient_id``/``issuer``: the identity it is about (a
    merge's survivor); ``prior_patient_id``: a merge's MRG-1; ``study_uids``: the studies
    moved or deleted."""

    id: int
    kind: ChangeKind
    patient_id: str = ""
    issuer: str = ""
    nhs_number: str | None = None
    prior_patient_id: str | None = None
    study_uids: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "patient_id": self.patient_id,
            "issuer": self.issuer,
            "nhs_number": self.nhs_number,
            "prior_patient_id": self.prior_patient_id,
            "study_uids": list(self.study_uids),
        }

    @classmethod
    def from_json(cls, value: Any) -> Change:
        """A change as the core sent it; ValueError when it is not one."""
        if not isinstance(value, dict):
            raise ValueError("a change is a JSON object")
        uids = value.get("study_uids") or []
        if not isinstance(uids, list) or not all(isinstance(u, str) for u in uids):
            raise ValueError("study_uids is a list of UIDs")
        try:
            return cls(
                id=int(value["id"]),
                kind=ChangeKind(value["kind"]),
                patient_id=str(value.get("patient_id") or ""),
                issuer=str(value.get("issuer") or ""),
                nhs_number=value.get("nhs_number") or None,
                prior_patient_id=value.get("prior_patient_id") or None,
                study_uids=tuple(uids),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"a change lacks {exc}") from None


@dataclass(frozen=True, slots=True)
class ChangePage:
    """What one read of the feed gave: the changes, the cursor to read from next, and
    whether more wait (read again at once)."""

    changes: tuple[Change, ...]
    cursor: int
    more: bool = False
    #: Entries after the cursor asked from were trimmed (index.changes): the reader
    #: missed them, and must compare all it holds with the core instead.
    resync: bool = False


@dataclass(frozen=True, slots=True)
class SeriesFound:
    series_instance_uid: str
    modality: str = ""
    body_part_examined: str = ""


@dataclass(frozen=True, slots=True)
class StudyFound:
    """A study of the patient the core holds, as QIDO-RS answers it."""

    study_instance_uid: str
    study_date: str = ""  # DA, YYYYMMDD ('' unknown)
    patient_id: str = ""
    issuer: str = ""
    series: tuple[SeriesFound, ...] = ()

    @property
    def body_parts(self) -> frozenset[str]:
        return frozenset(s.body_part_examined.upper() for s in self.series if s.body_part_examined)


@dataclass(frozen=True, slots=True)
class PatientOfStudy:
    """A study's patient as the core answers it now (after merges, ADT updates)."""

    study_instance_uid: str
    patient_id: str
    issuer: str
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    nhs_number: str | None = None
