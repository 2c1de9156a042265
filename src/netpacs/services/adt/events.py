"""What an ADT message asks, and what became of it: the values the ADT rules work on."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from netpacs.domain import nhs_number
from netpacs.domain.peer import Peer
from netpacs.domain.region import AdtFeed


class Trigger(enum.Enum):
    """ADT trigger events (HL7 v2.5 chapter 3) netpacs applies."""

    A01 = "A01"  # admit / visit notification
    A04 = "A04"  # register a patient
    A05 = "A05"  # pre-admit a patient
    A08 = "A08"  # update patient information
    A40 = "A40"  # merge patient - patient identifier list
    A47 = "A47"  # change patient identifier list


#: The events that bring a patient to a trust now: an edge prefetches their priors.
ADMISSIONS = frozenset({Trigger.A01, Trigger.A04, Trigger.A05})


class Outcome(enum.Enum):
    APPLIED = "applied"
    INVALID_CONTENT = "invalid content"
    MISSING_FIELD = "missing field"
    UNKNOWN_TRUST = "unknown trust"
    UNKNOWN_IDENTITY = "unknown identity"
    IDENTIFIER_IN_USE = "identifier in use"
    CROSS_TRUST = "cross-trust merge"
    WRONG_SENDER = "sender not of the identity's trust"
    CONTROL_ID_REUSED = "control id reused"
    CONFLICT = "conflict"
    UNIDENTIFIED_CALLER = "caller is not the feed it claims to be"
    # Orders (ORM/OMI, services.orders): the same feed rules, their own refusals.
    UNKNOWN_ORDER = "unknown order"
    ORDER_EXISTS = "order exists"
    ORDER_CLOSED = "order no longer open"


@dataclass(frozen=True, slots=True)
class AdtResult:
    outcome: Outcome
    detail: str = ""


@dataclass(frozen=True, slots=True)
class TypedIdentifier:
    """One CX of PID-3 or MRG-1: ID, assigning authority, identifier type code."""

    value: str
    authority: str
    type_code: str = ""

    @property
    def is_nhs_number(self) -> bool:
        authority = self.authority
        return nhs_number.is_nhs_issuer(authority) or (not authority and self.type_code == "NH")


@dataclass(frozen=True, slots=True)
class Demographics:
    """Values as sent: None when the field was empty (keep), '' for HL7 ``""`` (delete)."""

    name: str | None = None
    birth_date: str | None = None
    sex: str | None = None


@dataclass(frozen=True, slots=True)
class AdtEvent:
    trigger: Trigger
    identifiers: tuple[TypedIdentifier, ...]
    demographics: Demographics
    prior_identifiers: tuple[TypedIdentifier, ...] = ()
    control_id: str = ""


@dataclass(frozen=True, slots=True)
class AdtCaller:
    """Who sends a connection's messages: the region's ADT feeds its peer may be (by its
    address and TLS client certificate). ``console``: netpacs's own command line (the
    demo data), which speaks for every facility."""

    peer: Peer
    feeds: tuple[AdtFeed, ...]
    console: bool = False

    @property
    def identified(self) -> bool:
        return self.console or bool(self.feeds)

    def speaks_for(self, facility: str) -> bool:
        return self.console or any(facility in feed.facilities for feed in self.feeds)

    def __str__(self) -> str:
        if self.console:
            return "the netpacs command line"
        names = ", ".join(repr(f.name) for f in self.feeds)
        return f"{self.peer}" + (f" (ADT feed {names})" if names else "")


@dataclass(frozen=True, slots=True)
class MessageKey:
    """What makes a message the same message: sender, facility, control id; its digest."""

    sending_application: str
    sending_facility: str
    control_id: str
    message_type: str
    digest: str


class StoredAck(Protocol):
    @property
    def code(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def message(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Replayed:
    code: str
    text: str
    message: str


class MergeRefused(Exception):
    """A merge a person asked for cannot be made; the message says why."""


class Refused(Exception):
    def __init__(self, outcome: Outcome, detail: str) -> None:
        super().__init__(detail)
        self.result = AdtResult(outcome, detail)


@dataclass(frozen=True, slots=True)
class Identity:
    patient_id: str
    issuer: str

    def __str__(self) -> str:
        return f"{self.patient_id} at {self.issuer}"


@dataclass(frozen=True, slots=True)
class Values:
    """What an event says about one identity, checked and in index form."""

    name: str | None
    birth_date: str | None
    sex: str | None  # as sent (HL7 table 0001)
    nhs_number: str | None  # None: not sent; '' delete
    nhs_number_problem: str | None
    notes: tuple[str, ...]
