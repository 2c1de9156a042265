"""What waits in the outboxes: results queued for the trusts and audit records to forward.

A service decides what a message says and queues it as a value (:class:`QueuedResult`);
a transport renders it on the wire. The same queued value always renders to the same
message, control id included, so that a receiver recognises a resend.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from netpacs.domain.region import ResultsHeader
from netpacs.domain.report import SignedReport


@dataclass(frozen=True, slots=True)
class QueuedResult:
    """The result of a signed report for its requesting trust, as decided when queued."""

    control_id: str  # names this message to the receiver; resends carry it unchanged
    created_at: dt.datetime
    names: ResultsHeader  # sender and receiver as the trust's feed names them, resolved
    report: SignedReport
    study_date: str  # DICOM DA of the examination, "" when unknown
    study_time: str  # DICOM TM, "" when unknown
    # The study's HL7 order (issue 15), "" when it has none: ORC/OBR-2, ORC/OBR-3, OBR-18.
    placer_order_number: str = ""
    filler_order_number: str = ""
    order_accession_number: str = ""


@dataclass(frozen=True, slots=True)
class PendingResult:
    """One queued result not yet accepted by its trust."""

    id: int  # queue order: a trust's results go in this order
    trust: str  # ODS code of the requesting trust
    control_id: str
    attempts: int
    next_attempt_at: dt.datetime
    # A str is message text queued by a netpacs before results were kept as values;
    # it goes out as it was queued.
    content: QueuedResult | str


class Acceptance(enum.Enum):
    """What a receiver said about a message."""

    ACCEPTED = "accepted"
    ERROR = "error"  # it could not take the message now
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Receipt:
    acceptance: Acceptance
    code: str  # the receiver's own word for it, for people reading last_error
    text: str  # its reason, "" when it gave none


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """An audit record waiting to be forwarded to the audit record repository."""

    id: int  # forwarding order
    event_time: dt.datetime
    event_id: str  # DCM code of the event, e.g. 110112 Query
    outcome: int  # 0 success, 4, 8, 12 failures
    message_xml: str  # the PS3.15 A.5 audit message
