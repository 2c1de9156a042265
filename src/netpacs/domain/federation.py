"""What a federated search finds (issue 14): another network's studies of a patient, and
why a network gave nothing. Pure values; the gateway is services.federation.

A remote study is kept as the study-level DICOM JSON the network answered, reduced to
the attributes of :data:`STUDY_ATTRIBUTES` with short string values (:func:`clean_study`):
what a peer sends is bounded and checked before anyone sees it, and nothing of it is
stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from netpacs.domain.dicom.header import JsonDataset, first_str
from netpacs.domain.uids import is_valid_uid

STUDY_UID = "0020000D"
PATIENT_ID = "00100020"
ISSUER_OF_PATIENT_ID = "00100021"
OTHER_PATIENT_IDS_SEQUENCE = "00101002"
RETRIEVE_AE_TITLE = "00080054"
RETRIEVE_URL = "00081190"

#: The study-level attributes kept of a remote answer (PS3.18 Table 10.6.3-3 and the
#: study description), with the VR each must have.
STUDY_ATTRIBUTES: Mapping[str, str] = {
    "00080020": "DA",  # StudyDate
    "00080030": "TM",  # StudyTime
    "00080050": "SH",  # AccessionNumber
    "00080061": "CS",  # ModalitiesInStudy
    "00080090": "PN",  # ReferringPhysicianName
    "00081030": "LO",  # StudyDescription
    "00100010": "PN",  # PatientName
    "00100020": "LO",  # PatientID
    "00100021": "LO",  # IssuerOfPatientID
    "00100030": "DA",  # PatientBirthDate
    "00100040": "CS",  # PatientSex
    "0020000D": "UI",  # StudyInstanceUID
    "00200010": "SH",  # StudyID
    "00201206": "IS",  # NumberOfStudyRelatedSeries
    "00201208": "IS",  # NumberOfStudyRelatedInstances
}
_MAX_VALUES = 16  # values of one attribute (ModalitiesInStudy is the only long one)
_MAX_TEXT = 200  # characters of one value


class PeerAnswerError(Exception):
    """A network's answer that cannot be used: the message says why, for a warning."""


@dataclass(frozen=True, slots=True)
class RemoteStudy:
    """A study another network holds: its name, and the study as it described it."""

    network: str
    dataset: JsonDataset

    @property
    def study_instance_uid(self) -> str:
        return first_str(self.dataset, STUDY_UID)


@dataclass(frozen=True, slots=True)
class NetworkOutcome:
    """What one network answered: its studies, and a warning when it answered badly,
    partly (studies dropped), or not at all."""

    network: str
    studies: tuple[RemoteStudy, ...] = ()
    warning: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class FederatedAnswer:
    """Every network's outcome of one search by NHS number."""

    nhs_number: str
    outcomes: tuple[NetworkOutcome, ...] = ()
    refused: str | None = None  # why no network was asked (then outcomes is empty)
    studies: tuple[RemoteStudy, ...] = field(init=False)

    def __post_init__(self) -> None:
        studies = tuple(s for o in self.outcomes for s in o.studies)
        object.__setattr__(self, "studies", studies)

    @property
    def warnings(self) -> list[tuple[str, str]]:
        """(network, what went wrong) of each network that did not answer fully."""
        return [(o.network, o.warning) for o in self.outcomes if o.warning]


def _value(vr: str, raw: Any) -> Any | None:
    """One value of a peer's DICOM JSON as we keep it, or None to drop it."""
    if vr == "PN":
        if isinstance(raw, dict) and isinstance(raw.get("Alphabetic"), str):
            return {"Alphabetic": raw["Alphabetic"][:_MAX_TEXT]}
        return None
    if vr == "IS":
        if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < 10**9:
            return raw
        if isinstance(raw, str) and raw.strip().isdigit() and len(raw.strip()) < 10:
            return int(raw.strip())
        return None
    if isinstance(raw, str) and raw.isprintable():
        return raw[:_MAX_TEXT]
    return None


def clean_study(raw: Any) -> JsonDataset:
    """The study a peer described (one item of a QIDO-RS answer, or a C-FIND
    identifier as DICOM JSON), reduced to :data:`STUDY_ATTRIBUTES`; raises
    :class:`PeerAnswerError` for an item that is no data set or has no valid Study
    Instance UID (be tolerant when reading, within bounds)."""
    if not isinstance(raw, dict):
        raise PeerAnswerError("an answer item is not a DICOM JSON object")
    out: JsonDataset = {}
    for tag, vr in STUDY_ATTRIBUTES.items():
        element = raw.get(tag)
        if not isinstance(element, dict):
            continue
        values = element.get("Value")
        if not isinstance(values, list):
            continue
        kept = [v for v in (_value(vr, x) for x in values[:_MAX_VALUES]) if v is not None]
        if kept:
            out[tag] = {"vr": vr, "Value": kept}
    uid = first_str(out, STUDY_UID)
    if not uid or not is_valid_uid(uid):
        raise PeerAnswerError("an answer item has no valid Study Instance UID")
    return out


def holds_nhs_number(dataset: Any, nhs_number: str, *, in_other_ids: bool) -> bool:
    """Whether a peer's answer item is of the patient with ``nhs_number``: its Patient
    ID, or (``in_other_ids``) an Other Patient IDs item with issuer NHS. A peer that
    ignores our matching key must not show us other patients."""
    if text_of(dataset, PATIENT_ID) == nhs_number:
        return True
    if not in_other_ids or not isinstance(dataset, dict):
        return False
    element = dataset.get(OTHER_PATIENT_IDS_SEQUENCE)
    items = element.get("Value") if isinstance(element, dict) else None
    return isinstance(items, list) and any(
        text_of(item, PATIENT_ID) == nhs_number and text_of(item, ISSUER_OF_PATIENT_ID) == "NHS"
        for item in items[:_MAX_VALUES]
    )


def text_of(dataset: Any, tag: str) -> str:
    """The first value of ``tag`` in untrusted DICOM JSON when it is a string, else ''."""
    element = dataset.get(tag) if isinstance(dataset, dict) else None
    values = element.get("Value") if isinstance(element, dict) else None
    if isinstance(values, list) and values and isinstance(values[0], str):
        return values[0].strip()
    return ""


def nhs_number_of(dataset: Any, *, in_other_ids: bool) -> str:
    """The NHS number a peer's answer item carries where the network keeps it ('' when
    none): its Patient ID, or the Other Patient IDs item with issuer NHS (else its
    Patient ID; callers check it is a valid NHS number)."""
    if not in_other_ids:
        return text_of(dataset, PATIENT_ID)
    element = dataset.get(OTHER_PATIENT_IDS_SEQUENCE) if isinstance(dataset, dict) else None
    items = element.get("Value") if isinstance(element, dict) else None
    for item in items[:_MAX_VALUES] if isinstance(items, list) else []:
        if text_of(item, ISSUER_OF_PATIENT_ID) == "NHS":
            return text_of(item, PATIENT_ID)
    return text_of(dataset, PATIENT_ID)  # the NHS number as Patient ID (holds_nhs_number)
