"""The ADT feed's rules (HL7 v2 ADT over MLLP): local identities, their demographics and
NHS numbers, identifier changes and merges, each message applied once and audited."""

from netpacs.services.adt.events import (
    AdtCaller,
    AdtEvent,
    AdtResult,
    Demographics,
    Identity,
    MergeRefused,
    MessageKey,
    Outcome,
    Refused,
    StoredAck,
    Trigger,
    TypedIdentifier,
)
from netpacs.services.adt.feed import AdtService
from netpacs.services.adt.merges import MergeService

__all__ = [
    "AdtCaller",
    "AdtEvent",
    "AdtResult",
    "AdtService",
    "Demographics",
    "Identity",
    "MergeRefused",
    "MergeService",
    "MessageKey",
    "Outcome",
    "Refused",
    "StoredAck",
    "Trigger",
    "TypedIdentifier",
]
