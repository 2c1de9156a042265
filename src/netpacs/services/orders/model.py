"""What an order message asks (HL7 ORM^O01 / OMI^O23), and the values of an order."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from netpacs.services.adt import Demographics, TypedIdentifier


class OrderControl(enum.Enum):
    """ORC-1 order control codes netpacs applies (HL7 table 0119)."""

    NW = "NW"  # new order
    XO = "XO"  # change order
    CA = "CA"  # cancel order (before it started)
    DC = "DC"  # discontinue order (it may have started)
    SC = "SC"  # status changed (ORC-5 says to what)


class OrderStatus(enum.Enum):
    SCHEDULED = "scheduled"
    IN_PROGRESS = "in progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    DISCONTINUED = "discontinued"

    @property
    def open(self) -> bool:
        return self in (OrderStatus.SCHEDULED, OrderStatus.IN_PROGRESS)


#: ORC-5 order status (HL7 table 0038) -> the status an SC message sets.
SC_STATUS = {
    "SC": OrderStatus.SCHEDULED,
    "IP": OrderStatus.IN_PROGRESS,
    "CM": OrderStatus.COMPLETED,
}


class Priority(enum.Enum):
    """The order's priority (TQ1-9 / ORC-7.6 / OBR-27.6, HL7 table 0485)."""

    STAT = "stat"
    ASAP = "asap"
    ROUTINE = "routine"

    @classmethod
    def from_hl7(cls, code: str) -> Priority | None:
        """S: stat, A (and T, timing critical): ASAP, R (and P, C): routine; None when
        the code is not one of table 0485's."""
        return _HL7_PRIORITY.get(code.strip().upper())

    @property
    def dicom(self) -> str:
        """Requested Procedure Priority (0040,1003): STAT, HIGH, ROUTINE, MEDIUM, LOW."""
        return {"stat": "STAT", "asap": "HIGH", "routine": "ROUTINE"}[self.value]

    @property
    def rank(self) -> int:
        return {"stat": 0, "asap": 1, "routine": 2}[self.value]


_HL7_PRIORITY = {
    "S": Priority.STAT,
    "A": Priority.ASAP,
    "T": Priority.ASAP,
    "R": Priority.ROUTINE,
    "P": Priority.ROUTINE,
    "C": Priority.ROUTINE,
}


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """One order message's content; '' is a field not sent (a change keeps the value)."""

    control: OrderControl
    control_id: str
    identifiers: tuple[TypedIdentifier, ...]
    demographics: Demographics
    accession_number: str = ""
    placer_order_number: str = ""
    filler_order_number: str = ""
    requested_procedure_id: str = ""
    scheduled_step_id: str = ""
    study_instance_uid: str = ""
    procedure_code: str = ""
    procedure_scheme: str = ""
    procedure_text: str = ""
    modality: str = ""
    priority: str = ""  # HL7 table 0485 code as sent
    requesting_clinician: str = ""  # DICOM PN
    requesting_location: str = ""  # PV1-3 point of care (and room, bed)
    location_facility: str = ""  # PV1-3.4
    patient_class: str = ""  # PV1-2: E emergency, I inpatient, O outpatient, ...
    reason: str = ""
    site: str = ""  # IPC-8 scheduled procedure step location
    scheduled_at: str = ""  # HL7 DTM as sent
    scheduled_station_ae: str = ""
    order_status: str = ""  # ORC-5, for SC


#: PV1-2 patient class (HL7 table 0004) -> what the requesting location is, in words.
PATIENT_CLASS = {
    "E": "emergency department",
    "I": "ward",
    "O": "outpatient",
    "P": "pre-admit",
    "R": "recurring",
    "B": "obstetrics",
    "C": "commercial",
    "N": "not applicable",
    "U": "unknown",
}

_MODALITY_WORDS = (
    ("CT", ("CT", "COMPUTED TOMOGRAPHY")),
    ("MR", ("MR", "MRI", "MAGNETIC RESONANCE")),
    ("US", ("US", "ULTRASOUND", "SONOGRAPHY", "DOPPLER")),
    ("NM", ("NM", "NUCLEAR MEDICINE")),
    ("MG", ("MG", "MAMMOGRAPHY", "MAMMOGRAM")),
    ("XA", ("XA", "ANGIOGRAPHY", "ANGIOGRAM")),
    ("RF", ("RF", "FLUOROSCOPY")),
    ("DX", ("DX",)),
    ("CR", ("CR", "XR", "X RAY", "XRAY", "RADIOGRAPH")),
)
_CODE_PREFIX = {names[0]: modality for modality, names in _MODALITY_WORDS} | {"XR": "CR"}


def modality_of_procedure(code: str, text: str) -> str:
    """The modality a requested procedure names: its code's first two letters (``CT``,
    ``MR``, ``US``, ``XR``...) or a word of its text ("MRI head", "Ultrasound abdomen"),
    '' when neither does."""
    prefix = code.strip().upper()[:2]
    if prefix in _CODE_PREFIX:
        return _CODE_PREFIX[prefix]
    words = " " + re.sub(r"[^A-Z]+", " ", text.upper()) + " "
    for modality, names in _MODALITY_WORDS:
        if any(f" {name} " in words for name in names):
            return modality
    return ""
