"""A radiology report as the outputs see it once signed (SR, HL7 ORU, FHIR).

The reporting service (services.reporting) keeps reports in the index; when one is
signed final or gets an addendum it hands a :class:`SignedReport` to the outputs
(services.report_outputs), which turn it into a DICOM Basic Text SR and an HL7 v2
ORU^R01 for the requesting trust.

Report text is free text with optional sections: a line that is only a heading
followed by a colon (``FINDINGS:``, ``Conclusion:``) starts a section.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Literal

_HEADING = re.compile(r"^\s*([A-Za-z][A-Za-z /&()-]{1,40}):\s*$")


@dataclass(frozen=True, slots=True)
class Reporter:
    username: str
    name: str  # display name, e.g. "Dr Ruth Younger"; may be ""
    trust: str  # ODS code


@dataclass(frozen=True, slots=True)
class Addendum:
    text: str
    author: Reporter
    at: dt.datetime


@dataclass(frozen=True, slots=True)
class SignedReport:
    """A final report (and its addenda) of one study, at the moment of an output."""

    study_instance_uid: str
    accession_number: str
    patient_id: str
    issuer: str
    patient_name: str  # DICOM PN, e.g. "SMITH^JOHN"
    birth_date: str  # YYYYMMDD or ""
    sex: str  # M F O or ""
    nhs_number: str | None
    requesting_trust: str  # ODS code: where the ORU goes
    requesting_site: str | None
    modality: str
    study_description: str
    text: str  # the signed body, never changed afterwards
    author: Reporter
    signed_at: dt.datetime
    addenda: tuple[Addendum, ...]
    event: Literal["final", "addendum"]  # what has just happened
    event_at: dt.datetime

    @property
    def sequence(self) -> int:
        """1 for the final report, 2.. with each addendum (SR and ORU versions)."""
        return 1 + len(self.addenda)


def sections(text: str) -> list[tuple[str, str]]:
    """The report's sections in order as (heading, body); text before the first heading
    is a section with heading "Report". Empty sections are left out."""
    out: list[tuple[str, list[str]]] = [("Report", [])]
    for line in text.splitlines():
        m = _HEADING.match(line)
        if m:
            out.append((m.group(1).strip().capitalize(), []))
        else:
            out[-1][1].append(line.rstrip())
    return [(h, "\n".join(body).strip()) for h, body in out if "\n".join(body).strip()]
