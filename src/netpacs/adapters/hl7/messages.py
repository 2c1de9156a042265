"""HL7 v2 messages: read an ADT one into an :class:`AdtEvent`, and build any ACK or NAK.

Order messages (ORM^O01, OMI^O23) share the header checks here and are read into
orders by :mod:`netpacs.adapters.hl7.orders`.

Parsing uses python-hl7. Acknowledgements are original mode (HL7 v2.5 chapter 2,
2.9.2): MSH with sender and receiver swapped, MSA-1 ``AA`` / ``AE`` / ``AR``, MSA-2 the
control id of the message acknowledged, MSA-3 and an ERR segment saying why for a
NAK. Which outcome gets which acknowledgement code is the table :data:`ACK_CODES`.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import itertools
import os
from dataclasses import dataclass
from typing import Any

import hl7

from netpacs.services.adt import (
    AdtEvent,
    AdtResult,
    Demographics,
    Outcome,
    Trigger,
    TypedIdentifier,
)

#: Message types and triggers netpacs applies (HL7 v2.5 chapter 3).
SUPPORTED = frozenset({"A01", "A04", "A05", "A08", "A40", "A47"})
#: Every message type read, with its triggers: ADT, and orders (HL7 v2.5 chapter 4).
SUPPORTED_TYPES: dict[str, frozenset[str]] = {
    "ADT": SUPPORTED,
    "ORM": frozenset({"O01"}),
    "OMI": frozenset({"O23"}),
}
#: Versions read (MSH-12): the segments we use are the same from 2.3 on.
OLDEST_VERSION = (2, 3)

_STANDARD_SEPARATORS = "|^~\\&"
_CONTROL_IDS = itertools.count()


class AckCode(enum.Enum):
    """Acknowledgment Code, HL7 table 0008 (original mode)."""

    AA = "AA"  # application accept
    AE = "AE"  # application error: understood, but not applied
    AR = "AR"  # application reject: not understood (type, trigger, version, MSH)


#: The adapter's one mapping: service outcome -> (MSA-1, ERR-3 HL7 error code, table 0357).
ACK_CODES: dict[Outcome, tuple[AckCode, str]] = {
    Outcome.APPLIED: (AckCode.AA, "0"),
    Outcome.INVALID_CONTENT: (AckCode.AE, "102"),  # data type error
    Outcome.MISSING_FIELD: (AckCode.AE, "101"),  # required field missing
    Outcome.UNKNOWN_TRUST: (AckCode.AE, "103"),  # table value not found
    Outcome.UNKNOWN_IDENTITY: (AckCode.AE, "204"),  # unknown key identifier
    Outcome.IDENTIFIER_IN_USE: (AckCode.AE, "205"),  # duplicate key identifier
    Outcome.CROSS_TRUST: (AckCode.AE, "207"),  # application internal error (refused rule)
    Outcome.WRONG_SENDER: (AckCode.AE, "207"),
    Outcome.CONTROL_ID_REUSED: (AckCode.AE, "205"),
    Outcome.CONFLICT: (AckCode.AE, "206"),  # application record locked
    Outcome.UNIDENTIFIED_CALLER: (AckCode.AR, "207"),  # rejected: not sent again
    Outcome.UNKNOWN_ORDER: (AckCode.AE, "204"),  # unknown key identifier
    Outcome.ORDER_EXISTS: (AckCode.AE, "205"),  # duplicate key identifier
    Outcome.ORDER_CLOSED: (AckCode.AE, "207"),  # application internal error (refused rule)
}
# Rejections before the service is asked (table 0357).
UNSUPPORTED_TYPE = "200"
UNSUPPORTED_TRIGGER = "201"
UNSUPPORTED_VERSION = "203"
SEGMENT_ERROR = "100"
REQUIRED_FIELD = "101"
INTERNAL_ERROR = "207"


@dataclass(frozen=True, slots=True)
class Header:
    """The MSH fields an acknowledgement needs (raw, already escaped as received)."""

    separators: str  # MSH-1 and MSH-2
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_type: str  # MSH-9.1
    trigger: str  # MSH-9.2
    control_id: str  # MSH-10
    processing_id: str  # MSH-11
    version: str  # MSH-12


@dataclass(frozen=True, slots=True)
class Ack:
    """An acknowledgement: its code, the reason given, and the whole message as text."""

    code: str
    text: str
    message: str


class Rejected(Exception):
    """The message cannot be read as a supported ADT message; ``header`` when MSH was read."""

    def __init__(
        self, reason: str, *, code: AckCode, error: str, header: Header | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.error = error
        self.header = header


@dataclass(frozen=True, slots=True)
class Request:
    """A readable ADT message: its MSH, the event it carries, and its content digest."""

    header: Header
    event: AdtEvent
    digest: str  # SHA-256 of the message without MSH-7 and MSH-10: a resend keeps it
    message: Any  # hl7.Message


# -- reading ---------------------------------------------------------------------------


def decode(payload: bytes) -> str:
    """Text of one MLLP payload: UTF-8 (ASCII is a subset), or ISO 8859-1 when MSH-18 says."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        first = payload.split(b"\r", 1)[0]
        if b"8859/1" not in first:
            raise Rejected(
                "the message is not UTF-8 text and MSH-18 does not name 8859/1",
                code=AckCode.AR,
                error=INTERNAL_ERROR,
                header=_lenient_header(payload.decode("utf-8", "replace")),
            ) from None
        text = payload.decode("latin-1")
    # Segments end with CR (HL7 v2.5 2.5.1); LF and CRLF are tolerated.
    return text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")


def read(payload: bytes) -> Request:
    """Read one payload as an ADT message; raises :class:`Rejected` saying why not."""
    header, message, digest = parse(payload)
    event = _event(message, header)
    return Request(header=header, event=event, digest=digest, message=message)


def parse(payload: bytes) -> tuple[Header, Any, str]:
    """One payload's checked MSH, its python-hl7 message and its digest (any supported
    type); raises :class:`Rejected` saying why not."""
    text = decode(payload)
    header = read_header(text)
    try:
        message = hl7.parse(text)
    except Exception as exc:  # python-hl7 raises bare ParseException/IndexError/...
        raise Rejected(
            f"the message cannot be parsed: {exc}",
            code=AckCode.AR,
            error=SEGMENT_ERROR,
            header=header,
        ) from None
    return header, message, _digest(text)


def read_header(text: str) -> Header:
    """The MSH of ``text``, checked for what an ADT message needs (AR when wrong)."""
    header = _lenient_header(text)
    if header is None:
        raise Rejected(
            "the message does not start with an MSH segment", code=AckCode.AR, error=SEGMENT_ERROR
        )

    def reject(reason: str, error: str) -> Rejected:
        return Rejected(reason, code=AckCode.AR, error=error, header=header)

    if not header.control_id:
        raise reject("MSH-10 message control id is missing", REQUIRED_FIELD)
    if not _version_supported(header.version):
        raise reject(
            f"MSH-12 version {header.version!r} is not supported (2.3 and later 2.x)",
            UNSUPPORTED_VERSION,
        )
    triggers = SUPPORTED_TYPES.get(header.message_type)
    if triggers is None:
        raise reject(
            f"message type {header.message_type!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_TYPES)})",
            UNSUPPORTED_TYPE,
        )
    if header.trigger not in triggers:
        raise reject(
            f"trigger event {header.trigger!r} is not supported for {header.message_type} "
            f"(supported: {', '.join(sorted(triggers))})",
            UNSUPPORTED_TRIGGER,
        )
    return header


def _lenient_header(text: str) -> Header | None:
    """MSH fields read by position only, so that even a broken message gets an answer."""
    if not text.startswith("MSH") or len(text) < 8:
        return None
    fs = text[3]
    separators = text[3:8]
    if fs.isalnum() or len(set(separators)) != 5 or "\r" in separators:
        return None
    component = separators[1]
    fields = text.split("\r", 1)[0].split(fs)
    # fields[0] = "MSH", fields[1] = encoding characters: MSH-n is fields[n - 1].

    def msh(n: int) -> str:
        return fields[n - 1] if n - 1 < len(fields) else ""

    msg_type = msh(9).split(component)
    return Header(
        separators=separators,
        sending_application=msh(3),
        sending_facility=msh(4),
        receiving_application=msh(5),
        receiving_facility=msh(6),
        message_type=msg_type[0].strip(),
        trigger=msg_type[1].strip() if len(msg_type) > 1 else "",
        control_id=msh(10).strip(),
        processing_id=msh(11),
        version=msh(12).split(component)[0].strip(),
    )


def _version_supported(version: str) -> bool:
    parts = version.split(".")
    try:
        numbers = tuple(int(p) for p in parts[:2])
    except ValueError:
        return False
    return len(numbers) == 2 and numbers[0] == 2 and numbers >= OLDEST_VERSION


def _digest(text: str) -> str:
    first, _, rest = text.partition("\r")
    msh = first.split(first[3])
    for n in (7, 10):  # MSH-7 date/time, MSH-10 control id (the key itself)
        if n - 1 < len(msh):
            msh[n - 1] = ""
    return hashlib.sha256((first[3].join(msh) + "\r" + rest).encode("utf-8")).hexdigest()


def _value(
    message: Any, segment: str, field: int, rep: int = 1, comp: int = 1, sub: int = 1
) -> str:
    """One unescaped value; '' when absent (python-hl7 raises for paths past a leaf)."""
    try:
        raw = message.extract_field(segment, 1, field, rep, comp, sub)
    except (IndexError, KeyError):
        return ""
    return str(message.unescape(str(raw)))


def _repetitions(message: Any, segment: str, field: int) -> int:
    try:
        value = message.segment(segment)(field)
    except (IndexError, KeyError):
        return 0
    if not str(value):
        return 0
    return len(value) if value and isinstance(value[0], hl7.Repetition) else 1


def _field_text(message: Any, segment: str, field: int) -> str | None:
    """A field's first value: None when not sent (keep), '' for HL7 ``""`` (delete)."""
    raw = _value(message, segment, field)
    if raw == "":
        return None
    return "" if raw == '""' else raw


def _identifiers(message: Any, segment: str, field: int) -> tuple[TypedIdentifier, ...]:
    """The CX repetitions of a field: ID (.1), assigning authority (.4), type code (.5)."""
    found = []
    for rep in range(1, _repetitions(message, segment, field) + 1):
        value = _value(message, segment, field, rep, 1)
        authority = _value(message, segment, field, rep, 4) or _value(
            message, segment, field, rep, 4, 2
        )
        type_code = _value(message, segment, field, rep, 5)
        if value:
            found.append(TypedIdentifier(value.strip(), authority.strip(), type_code.strip()))
    return tuple(found)


def _name(message: Any) -> str | None:
    """PID-5 (XPN) as a DICOM PN: FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX, empty tail dropped."""
    reps = _repetitions(message, "PID", 5)
    if reps == 0:
        return None
    chosen = 1
    for rep in range(1, reps + 1):  # the legal name (XPN.7 = L) when there are several
        if _value(message, "PID", 5, rep, 7) == "L":
            chosen = rep
            break
    parts = [_value(message, "PID", 5, chosen, c) for c in (1, 2, 3, 5, 4)]
    if parts[0] == '""':
        return ""
    return "^".join(p.strip() for p in parts).rstrip("^")


def _event(message: Any, header: Header) -> AdtEvent:
    try:
        message.segment("PID")
    except KeyError:
        raise Rejected(
            "the message has no PID segment", code=AckCode.AR, error=SEGMENT_ERROR, header=header
        ) from None
    prior: tuple[TypedIdentifier, ...] = ()
    if header.trigger in ("A40", "A47"):
        try:
            message.segment("MRG")
        except KeyError:
            raise Rejected(
                f"{header.trigger} needs an MRG segment",
                code=AckCode.AR,
                error=SEGMENT_ERROR,
                header=header,
            ) from None
        prior = _identifiers(message, "MRG", 1)
    return AdtEvent(
        trigger=Trigger(header.trigger),
        identifiers=_identifiers(message, "PID", 3),
        demographics=Demographics(
            name=_name(message),
            birth_date=_field_text(message, "PID", 7),
            sex=_field_text(message, "PID", 8),
        ),
        prior_identifiers=prior,
        control_id=header.control_id,
    )


# -- acknowledging ------------------------------------------------------------------------


def ack_for(request: Request, result: AdtResult) -> Ack:
    return ack_for_header(request.header, result)


def ack_for_header(header: Header, result: AdtResult) -> Ack:
    code, error = ACK_CODES[result.outcome]
    return build_ack(header, code, result.detail, error=error)


def build_ack(header: Header | None, code: AckCode, text: str, *, error: str = "0") -> Ack:
    """An original-mode ACK for ``header`` (a bare one when the MSH could not be read)."""
    seps = header.separators if header else _STANDARD_SEPARATORS
    fs = seps[0]
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    version = header.version if header and header.version else "2.5"
    trigger = header.trigger if header else ""
    msh = [
        "MSH",
        seps[1:],
        header.receiving_application if header else "",
        header.receiving_facility if header else "",
        header.sending_application if header else "",
        header.sending_facility if header else "",
        now,
        "",
        seps[1].join(["ACK", trigger, "ACK"]) if trigger else "ACK",
        _control_id(),
        header.processing_id if header else "P",
        version,
    ]
    escaped = _escape(text, seps)
    segments = [fs.join(msh), fs.join(["MSA", code.value, header.control_id if header else ""])]
    if escaped:
        segments[1] += fs + escaped
    if code is not AckCode.AA:
        segments.append(_err(escaped, error, seps, version))
    return Ack(code=code.value, text=text, message="\r".join(segments) + "\r")


def _err(text: str, error: str, seps: str, version: str) -> str:
    """ERR: ERR-3 code, ERR-4 severity, ERR-8 user message from 2.5; ERR-1 (ELD) before."""
    fs, cs, ss = seps[0], seps[1], seps[4]
    if _version_supported(version) and tuple(int(p) for p in version.split(".")[:2]) >= (2, 5):
        return fs.join(["ERR", "", "", cs.join([error, text, "HL70357"]), "E", "", "", "", text])
    return fs.join(["ERR", cs.join(["", "", "", ss.join([error, text])])])


def _escape(text: str, seps: str) -> str:
    """HL7 escape sequences (v2.5 2.7) for text placed in one field."""
    fs, cs, rs, esc, ss = seps[0], seps[1], seps[2], seps[3], seps[4]
    out = []
    for ch in text:
        if ch == esc:
            out.append(f"{esc}E{esc}")
        elif ch == fs:
            out.append(f"{esc}F{esc}")
        elif ch == cs:
            out.append(f"{esc}S{esc}")
        elif ch == rs:
            out.append(f"{esc}R{esc}")
        elif ch == ss:
            out.append(f"{esc}T{esc}")
        elif ch in "\r\n":
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def _control_id() -> str:
    """A control id for our ACK, unique across processes and restarts (at most 20 chars)."""
    now = dt.datetime.now(dt.UTC).strftime("%y%m%d%H%M%S")
    return f"NP{now}{os.getpid() % 1000:03d}{next(_CONTROL_IDS) % 1000:03d}"


# -- shared with the order messages (adapters.hl7.orders) ---------------------------------

value = _value
field_text = _field_text
identifiers = _identifiers
patient_name = _name
