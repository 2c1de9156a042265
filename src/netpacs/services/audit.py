"""Audit (IHE ATNA): every access, store, query, retrieve, export, delete, sign-in and
break-glass as a DICOM audit message (PS3.15 A.5), kept durably in the index.

:meth:`AuditService.record` builds the message and commits it (``audit_event``)
before it returns, so an answer never goes out for an access that is not on record
(ARCHITECTURE.md invariant 5). A request that asks several questions (a FHIR search:
the studies, their details, their series) records them inside :meth:`AuditService.held`:
its messages are then committed together when the block ends, still before the answer,
with one wait for the commit instead of one for each.

Sending the records to the region's audit record repository over syslog is the
forwarder's work (``audit_event.forwarded_at``), so a collector that is down delays
them and loses none.

Messages are written as text by :func:`build_message`: the schema is small and fixed,
no maintained Python library builds DICOM audit messages, and building an ElementTree
for each took a twentieth of a study search's CPU.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import enum
import functools
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from netpacs.index.db import run_in_transaction
from netpacs.index.schema import audit_event

log = logging.getLogger(__name__)

# The messages of an open :meth:`AuditService.held` block, and the service holding them.
_HELD: ContextVar[tuple[AuditService, list[dict[str, Any]]] | None] = ContextVar(
    "netpacs_audit_held", default=None
)


@dataclass(frozen=True, slots=True)
class Code:
    code: str
    system: str
    meaning: str


def _dcm(code: str, meaning: str) -> Code:
    return Code(code, "DCM", meaning)


class Event(enum.Enum):
    """Audit events: (EventID, EventTypeCode or None, EventActionCode)."""

    STORE = (_dcm("110104", "DICOM Instances Transferred"), None, "C")
    QUERY = (_dcm("110112", "Query"), None, "E")
    ACCESS = (_dcm("110103", "DICOM Instances Accessed"), None, "R")
    RETRIEVE = (_dcm("110104", "DICOM Instances Transferred"), None, "R")
    EXPORT = (_dcm("110106", "Export"), None, "R")
    DELETE = (_dcm("110105", "DICOM Study Deleted"), None, "D")
    # IHE IOCM: instances hidden by a rejection note, and put back by an undo.
    REJECT = (_dcm("110103", "DICOM Instances Accessed"), None, "D")
    RESTORE = (_dcm("110103", "DICOM Instances Accessed"), None, "U")
    PATIENT_RECORD = (_dcm("110110", "Patient Record"), None, "U")
    PATIENT_RECORD_READ = (_dcm("110110", "Patient Record"), None, "R")  # a report read
    LOGIN = (_dcm("110114", "User Authentication"), _dcm("110122", "Login"), "E")
    LOGOUT = (_dcm("110114", "User Authentication"), _dcm("110123", "Logout"), "E")
    BREAK_GLASS = (
        _dcm("110113", "Security Alert"),
        _dcm("110127", "Emergency Override Started"),
        "E",
    )
    SECURITY_ALERT = (
        _dcm("110113", "Security Alert"),
        _dcm("110132", "Use of a restricted function"),
        "E",
    )

    @property
    def event_id(self) -> Code:
        return self.value[0]  # type: ignore[no-any-return]

    @property
    def event_type(self) -> Code | None:
        return self.value[1]  # type: ignore[no-any-return]

    @property
    def action(self) -> str:
        return self.value[2]  # type: ignore[no-any-return]


class Outcome(enum.IntEnum):
    SUCCESS = 0
    MINOR_FAILURE = 4  # e.g. refused: wrong password, not allowed
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


class Purpose(enum.Enum):
    """Purpose of use (HL7 v3 PurposeOfUse, 2.16.840.1.113883.5.8)."""

    TREAT = "Treatment"
    ETREAT = "Emergency Treatment"  # break-glass
    HOPERAT = "Healthcare Operations"  # administration, reconciliation
    HSYSADMIN = "Health System Administration"  # audit review, configuration
    COC = "Coordination of Care"  # as a partner network may state it (issue 14)
    PATRQT = "Patient Requested"

    @property
    def code(self) -> Code:
        return Code(self.name, "2.16.840.1.113883.5.8", self.value)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asked: a signed-in user, or a DICOM AE / HL7 sender acting for its trust."""

    user_id: str  # user name, or AE title
    trust: str | None = None
    role: str | None = None
    address: str | None = None  # network address the request came from
    name: str | None = None  # for people: display name
    is_application: bool = False  # a DICOM AE or HL7 system, not a person
    # A partner network's client (issue 14): the network, and the user and purpose of
    # use it stated (recorded as stated: the purpose of every record of it).
    network: str | None = None
    remote_user: str | None = None
    remote_purpose: Purpose | None = None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    event: Event
    actor: Actor
    outcome: Outcome = Outcome.SUCCESS
    purpose: Purpose | None = None
    patients: Sequence[tuple[str, str]] = ()  # (patient ID, issuer)
    study_uids: Sequence[str] = ()
    query: str | None = None  # the query as asked (QIDO query string, C-FIND keys)
    detail: str = ""  # EventOutcomeDescription: what happened, for people
    when: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    # The trust whose auditors see the record in their trust's report (the index's
    # ``audit_event.trust``): the actor's trust, unless the record alerts another trust
    # (a store under its patient's identity, services.care). The message is the same.
    audience: str | None = None


_MAX_OBJECTS = 200  # participant objects per message; the rest are counted in the detail

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "data" / "dicom-audit-message.rng"
"""The PS3.15 A.5.1 audit message schema (RELAX NG) that :func:`build_message` follows."""

_SOURCE_ROLE = _dcm("110153", "Source Role ID")
_DESTINATION_ROLE = _dcm("110152", "Destination Role ID")
# Events in which the archive sends the data (PS3.15 A.5.3.7, A.5.3.8): the archive is the
# source and the requestor the destination; in every other event data flows to the archive.
_ARCHIVE_SENDS = frozenset({Event.RETRIEVE, Event.EXPORT})
# XML 1.0 forbids these characters (even escaped); user input (a user name tried at sign-in,
# a query string) may carry them.
_FORBIDDEN = "\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff"
_NOT_XML = re.compile(f"[{_FORBIDDEN}]")


def _xml(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


# What ElementTree's serializer escaped, a carriage return in text too (so that every
# value reads back as it was), and characters XML forbids: a value with none of them,
# nearly every one, is written as it is.
_SPECIAL = re.compile(f'[&<>"\r\n\t{_FORBIDDEN}]')
_TEXT = (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("\r", "&#13;"))  # "&" first
_ATTRIBUTE = (*_TEXT, ('"', "&quot;"), ("\n", "&#10;"), ("\t", "&#09;"))


def _escaped(value: str, entities: tuple[tuple[str, str], ...]) -> str:
    if _SPECIAL.search(value) is None:
        return value
    value = _xml(value)
    for char, entity in entities:
        value = value.replace(char, entity)
    return value


def _tag(tag: str, attrs: dict[str, str], end: str = ">") -> str:
    """``<tag a="v"...`` closed by ``end`` (``>`` to open, `` />`` for an empty element)."""
    parts = [f' {k}="{_escaped(v, _ATTRIBUTE)}"' for k, v in attrs.items()]
    return f"<{tag}{''.join(parts)}{end}"


def _element(tag: str, text: str) -> str:
    return f"<{tag}>{_escaped(text, _TEXT)}</{tag}>"


@functools.lru_cache(maxsize=256)  # the codes are nearly all constants
def _code(tag: str, code: Code) -> str:
    attrs = {"csd-code": code.code, "codeSystemName": code.system, "originalText": code.meaning}
    return _tag(tag, attrs, " />")


def build_message(record: AuditRecord, *, source_id: str, site_id: str = "") -> str:
    """The PS3.15 A.5 audit message of ``record`` as XML text.

    Valid against the A.5.1 schema (:data:`SCHEMA_FILE`): elements in the schema's order,
    and every participant object with the ParticipantObjectName or ParticipantObjectQuery
    that the schema requires of it. Written as text (every value escaped, characters
    XML forbids replaced), since a message is built for every request audited: it is a
    quarter of the time of building an ElementTree and serialising it.
    """
    patients = list(dict.fromkeys(record.patients))
    studies = list(dict.fromkeys(record.study_uids))
    out = ["<AuditMessage>"]
    _event_identification(out, record, left_out=_left_out(patients, studies))
    _active_participants(out, record, source_id=source_id)
    source = {"AuditSourceID": source_id, **({"AuditEnterpriseSiteID": site_id} if site_id else {})}
    out += (
        _tag("AuditSourceIdentification", source),
        _code("AuditSourceTypeCode", Code("4", "DCM", "Application Server Process")),
        "</AuditSourceIdentification>",
    )
    for patient_id, issuer in patients[:_MAX_OBJECTS]:
        _patient_object(out, patient_id, issuer)
    for uid in studies[:_MAX_OBJECTS]:
        _study_object(out, uid)
    if record.query is not None:
        _query_object(out, record.query)
    out.append("</AuditMessage>")
    return "".join(out)


def _left_out(patients: Sequence[object], studies: Sequence[object]) -> int:
    return max(0, len(patients) - _MAX_OBJECTS) + max(0, len(studies) - _MAX_OBJECTS)


def _event_identification(out: list[str], record: AuditRecord, *, left_out: int) -> None:
    """EventIdentification: EventID, EventTypeCode, EventOutcomeDescription, PurposeOfUse."""
    event = record.event
    ident = {
        "EventActionCode": event.action,
        "EventDateTime": record.when.astimezone(dt.UTC).isoformat(timespec="milliseconds"),
        "EventOutcomeIndicator": str(int(record.outcome)),
    }
    out += (_tag("EventIdentification", ident), _code("EventID", event.event_id))
    if event.event_type is not None:
        out.append(_code("EventTypeCode", event.event_type))
    detail = record.detail
    if left_out:
        detail = f"{detail} ({left_out} more patients and studies not listed)".strip()
    if detail:
        out.append(_element("EventOutcomeDescription", detail))
    if record.purpose is not None:
        out.append(_code("PurposeOfUse", record.purpose.code))
    out.append("</EventIdentification>")


def _active_participants(out: list[str], record: AuditRecord, *, source_id: str) -> None:
    """The requestor (person or application), then the archive itself."""
    actor, event = record.actor, record.event
    requestor = {"UserID": actor.user_id, "UserIsRequestor": "true"}
    if actor.name:
        requestor["UserName"] = actor.name
    if actor.trust:
        requestor["AlternativeUserID"] = f"{actor.user_id}@{actor.trust}"
    if actor.address:
        requestor["NetworkAccessPointID"] = actor.address
        requestor["NetworkAccessPointTypeCode"] = "2"  # IP address
    roles = []
    archive_sends = event in _ARCHIVE_SENDS
    if archive_sends:
        roles.append(_code("RoleIDCode", _DESTINATION_ROLE))
    elif actor.is_application or event is Event.STORE:
        roles.append(_code("RoleIDCode", _SOURCE_ROLE))
    if actor.role and not actor.is_application:
        roles.append(_code("RoleIDCode", Code(actor.role, "netpacs role", actor.role.capitalize())))
    if roles:
        out += (_tag("ActiveParticipant", requestor), *roles, "</ActiveParticipant>")
    else:
        out.append(_tag("ActiveParticipant", requestor, " />"))
    if actor.network and actor.remote_user:  # the partner network's user it acts for
        remote = {
            "UserID": actor.remote_user,
            "AlternativeUserID": f"{actor.remote_user}@{actor.network}",
            "UserIsRequestor": "true",
        }
        out.append(_tag("ActiveParticipant", remote, " />"))
    out += (
        _tag("ActiveParticipant", {"UserID": source_id, "UserIsRequestor": "false"}),
        _code("RoleIDCode", _SOURCE_ROLE if archive_sends else _DESTINATION_ROLE),
        "</ActiveParticipant>",
    )


def _object(out: list[str], ident: dict[str, str], id_type: Code, last: str) -> None:
    out += (
        _tag("ParticipantObjectIdentification", ident),
        _code("ParticipantObjectIDTypeCode", id_type),
        last,
        "</ParticipantObjectIdentification>",
    )


def _patient_object(out: list[str], patient_id: str, issuer: str | None) -> None:
    """A patient (PS3.15 A.5.3: type 1 person, role 1 patient, ID type 2 patient number).

    The ID is in HL7 CX form (``id^^^issuer``). The record carries no patient name, so
    the ParticipantObjectName the schema requires is a descriptor of the identifier.
    """
    ident = {
        "ParticipantObjectID": f"{patient_id}^^^{issuer}" if issuer else patient_id,
        "ParticipantObjectTypeCode": "1",  # person
        "ParticipantObjectTypeCodeRole": "1",  # patient
    }
    name = f"Patient ID {patient_id} of {issuer}" if issuer else f"Patient ID {patient_id}"
    _object(out, ident, _PATIENT_NUMBER, _element("ParticipantObjectName", name))


def _study_object(out: list[str], uid: str) -> None:
    """A study (PS3.15 A.5.3: type 2 system object, role 3 report, ID type 110180)."""
    ident = {
        "ParticipantObjectID": uid,
        "ParticipantObjectTypeCode": "2",  # system object
        "ParticipantObjectTypeCodeRole": "3",  # report (DICOM: a study)
    }
    _object(out, ident, _STUDY_UID, _element("ParticipantObjectName", f"Study {uid}"))


def _query_object(out: list[str], query: str) -> None:
    """The query as asked (PS3.15 A.5.3.12: role 24 query, the query base64-encoded)."""
    ident = {
        "ParticipantObjectID": "1.2.840.10008.5.1.4.1.2.2.1",  # Study Root FIND
        "ParticipantObjectTypeCode": "2",
        "ParticipantObjectTypeCodeRole": "24",  # query
    }
    _object(out, ident, _SOP_CLASS, _element("ParticipantObjectQuery", _base64(query)))


_PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
_STUDY_UID = _dcm("110180", "Study Instance UID")
_SOP_CLASS = _dcm("110181", "SOP Class UID")


def _base64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8", "replace")).decode("ascii")


def as_recorded(record: AuditRecord) -> AuditRecord:
    """A partner network's record (issue 14) names the network, and the user and
    purpose of use it stated, in its description; its purpose is the one stated (none
    when it stated none), never one we inferred."""
    actor = record.actor
    if actor.network is None:
        return record
    said = [f"partner network {actor.network}"]
    if actor.remote_user:
        said.append(f"its user {actor.remote_user}")
    if actor.remote_purpose:
        said.append(f"purpose {actor.remote_purpose.name}")
    detail = f"{record.detail} [{', '.join(said)}]".strip()
    return dataclasses.replace(record, detail=detail, purpose=actor.remote_purpose)


def _row(record: AuditRecord, xml: str) -> dict[str, Any]:
    first = record.patients[0] if record.patients else (None, None)
    return {
        "event_time": record.when,
        "event_id": record.event.event_id.code,
        "event_type": record.event.event_type.code if record.event.event_type else None,
        "action": record.event.action,
        "outcome": int(record.outcome),
        "user_id": record.actor.user_id,
        "trust": record.audience or record.actor.trust,
        "role": record.actor.role,
        "purpose_of_use": record.purpose.name if record.purpose else None,
        "source": record.actor.address,
        "patient_id": first[0],
        "issuer": first[1],
        "study_uids": " ".join(dict.fromkeys(record.study_uids)) or None,
        "detail": record.detail,
        "message_xml": xml,
    }


class AuditService:
    """Records audit messages; ``run`` executes a function in a committed transaction.

    ``run`` is the index writer's ``execute`` (group commit, one fsync for many
    records), or :meth:`in_own_transaction` where there is no writer. ``append``, when
    given, is the writer's ``append``: the message is built in the caller's thread and
    the messages of concurrent callers are inserted together, in one statement of the
    writer's next transaction (issue 16).
    """

    def __init__(
        self,
        run: Callable[[Callable[[sa.Connection], Any]], Any],
        *,
        source_id: str,
        site_id: str = "",
        append: Callable[[sa.Table, dict[str, Any]], None] | None = None,
    ) -> None:
        self._run = run
        self._append = append
        self._source_id = source_id
        self._site_id = site_id

    @staticmethod
    def in_own_transaction(engine: sa.Engine) -> Callable[[Callable[[sa.Connection], Any]], Any]:
        def run(fn: Callable[[sa.Connection], Any]) -> Any:
            return run_in_transaction(engine, fn)

        return run

    def record(self, record: AuditRecord) -> None:
        """Build and durably store the audit message; raises if it cannot be stored.
        Inside :meth:`held`, the message is stored when the block ends."""
        row = self._row(record)
        held = _HELD.get()
        if held is not None and held[0] is self:
            held[1].append(row)
        else:
            self._store([row])

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """The messages recorded inside the block are stored together when it ends (one
        statement, one commit to wait for), also when it ends with an error; a message
        that cannot be stored raises there, so the caller has not answered yet. Use it
        around all the work of one answer, and answer after it. Nested: the outermost
        block stores."""
        if _HELD.get() is not None:
            yield
            return
        rows: list[dict[str, Any]] = []
        token = _HELD.set((self, rows))
        try:
            yield
        finally:
            _HELD.reset(token)
            if rows:
                self._store(rows)

    def _store(self, rows: list[dict[str, Any]]) -> None:
        if self._append is not None and len(rows) == 1:
            self._append(audit_event, rows[0])
        else:
            self._run(lambda conn: conn.execute(sa.insert(audit_event), rows))

    def record_in(self, conn: sa.Connection, record: AuditRecord) -> None:
        """Store the audit message in ``conn``'s transaction (with what it records)."""
        conn.execute(sa.insert(audit_event), self._row(record))

    def _row(self, record: AuditRecord) -> dict[str, Any]:
        record = as_recorded(record)
        xml = build_message(record, source_id=self._source_id, site_id=self._site_id)
        # Nested patients/studies make a message long; the log line is the summary.
        log.debug(
            "audit %s %s by %s (%s): %s",
            record.event.name,
            int(record.outcome),
            record.actor.user_id,
            record.actor.trust,
            record.detail,
        )
        return _row(record, xml)
