"""The HL7 v2.4 ORU^R01 of a queued result, its acknowledgement, and the results transport.

:func:`render_oru` turns a queued result (domain.outbox, what the reporting service
decided when it queued it) into the ORU^R01 text (HL7 v2.4 7.3.1): the report line by
line, one OBX of type TX per line, then each addendum; result status F for the final
report, C (corrected) once an addendum amends it. The text depends on the queued value
alone, so a resend is the same message with the same MSH-10.

:class:`OruSender` is the results job's transport: it sends that text over MLLP and
reads the original-mode acknowledgement, whose MSA-1 it maps through :data:`ACK_CODES`.
"""

from __future__ import annotations

import datetime as dt
import re

from netpacs.adapters.transports.mllp import MllpClient, MllpError
from netpacs.domain.outbox import Acceptance, PendingResult, QueuedResult, Receipt
from netpacs.domain.report import SignedReport
from netpacs.services.jobs.results import DeliveryFailed
from netpacs.services.report_outputs import ADDENDUM, NARRATIVE, Code, PersonName, heading_code

#: MSA-1 acknowledgement codes (HL7 table 0008), original and enhanced mode.
ACK_CODES = {
    "AA": Acceptance.ACCEPTED,
    "CA": Acceptance.ACCEPTED,
    "AE": Acceptance.ERROR,
    "CE": Acceptance.ERROR,
    "AR": Acceptance.REJECTED,
    "CR": Acceptance.REJECTED,
}
_HEADING_LINE = re.compile(r"^\s*([A-Za-z][A-Za-z /&()-]{1,40}):\s*$")


# -- the message -------------------------------------------------------------------------


def _utc(when: dt.datetime) -> dt.datetime:
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)


def _ts(when: dt.datetime) -> str:
    """HL7 v2.4 TS to the second with its offset (UTC), e.g. 20261129143005+0000."""
    return _utc(when).strftime("%Y%m%d%H%M%S") + "+0000"


def _date_time(date: str, time: str) -> str:
    """HL7 TS of a DICOM DA and TM (local time, as the modality wrote it); '' unknown."""
    digits = re.sub(r"[^0-9]", "", time.split(".")[0])[:6]
    return (date + digits) if re.fullmatch(r"\d{8}", date or "") else ""


def _escape(text: str) -> str:
    """HL7 escape sequences (v2.4 2.7) for text in one field with standard separators."""
    out = text.replace("\\", "\\E\\")
    for char, code in (("|", "F"), ("^", "S"), ("&", "T"), ("~", "R")):
        out = out.replace(char, f"\\{code}\\")
    return out.replace("\r", " ").replace("\n", " ")


def _xpn(name: str) -> str:
    """DICOM PN (family^given^middle^prefix^suffix) as HL7 XPN (family^given^middle^
    suffix^prefix)."""
    parts = (name.split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (_escape(p) for p in parts)
    return "^".join([family, given, middle, suffix, prefix]).rstrip("^")


def _cnn(username: str, display_name: str, trust: str) -> str:
    """HL7 v2.4 CNN in a field of type NDL: id&family&given&&&prefix&&&authority."""
    name = PersonName.of(display_name, username)
    parts = [username, name.family, name.given, "", "", name.prefix, "", "", trust]
    return "&".join(_escape(p) for p in parts).rstrip("&")


def _ce(concept: Code) -> str:
    return f"{concept.value}^{_escape(concept.meaning)}^{concept.scheme_designator}"


def _report_lines(signed: SignedReport) -> list[tuple[Code, str, dt.datetime]]:
    """(OBX-3 concept, line, observed at) for every line of the report and its addenda."""
    out: list[tuple[Code, str, dt.datetime]] = []
    concept = NARRATIVE
    lines = signed.text.replace("\r\n", "\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    for line in lines:
        title = _HEADING_LINE.match(line)
        if title:
            known = heading_code(title.group(1))
            concept = known.code if known is not None else NARRATIVE
        out.append((concept, line.rstrip(), signed.signed_at))
    for addendum in signed.addenda:
        who = addendum.author.name or addendum.author.username
        stamp = _utc(addendum.at).strftime("%d/%m/%Y %H:%M UTC")
        out.append((ADDENDUM, "", addendum.at))
        out.append((ADDENDUM, f"ADDENDUM ({who}, {addendum.author.trust}, {stamp}):", addendum.at))
        out.extend((ADDENDUM, line.rstrip(), addendum.at) for line in addendum.text.split("\n"))
    return out


def _msh(result: QueuedResult) -> str:
    names = result.names
    fields = [
        "MSH",
        "^~\\&",
        _escape(names.sending_application),
        _escape(names.sending_facility),
        _escape(names.receiving_application),
        _escape(names.receiving_facility),
        _ts(result.created_at),
        "",
        "ORU^R01^ORU_R01",
        result.control_id,
        "P",
        "2.4",
        *[""] * 5,
        "UNICODE UTF-8",  # MSH-18
    ]
    return "|".join(fields)


def _pid(signed: SignedReport) -> str:
    ids = [f"{_escape(signed.patient_id)}^^^{_escape(signed.issuer)}^MR"]
    if signed.nhs_number:
        ids.append(f"{_escape(signed.nhs_number)}^^^NHS^NH")
    return "|".join(
        [
            "PID",
            "1",
            "",
            "~".join(ids),
            "",
            _xpn(signed.patient_name),
            "",
            _escape(signed.birth_date),
            _escape(signed.sex),
        ]
    )


def render_oru(result: QueuedResult) -> str:
    """The ORU^R01 of ``result`` (module docstring), segments ended by CR.

    OBR-7 is the examination's date/time; the whole text is sent each time, so the
    receiver replaces the result. A study with an HL7 order carries its placer and
    filler order numbers (ORC-2/OBR-2, ORC-3/OBR-3) and accession number (OBR-18);
    one without carries its accession number as both order numbers.
    """
    signed = result.report
    status = "F" if signed.event == "final" else "C"
    accession = _escape(result.order_accession_number or signed.accession_number)
    placer = _escape(result.placer_order_number) or accession
    filler = _escape(result.filler_order_number) or accession
    obr18 = accession if result.order_accession_number else ""
    author = signed.author
    interpreter = _cnn(author.username, author.name, author.trust)
    procedure = (
        f"{_escape(signed.modality)}^{_escape(signed.study_description or signed.modality)}^L"
    )
    observed_at = _date_time(result.study_date, result.study_time)
    segments = [
        _msh(result),
        _pid(signed),
        "PV1|1|U",
        "|".join(["ORC", "RE", placer, filler, "", "CM", "", "", "", _ts(signed.event_at)]),
        "|".join(
            ["OBR", "1", placer, filler, procedure, "", "", observed_at]  # OBR-7
            + [""] * 10
            + [obr18]  # OBR-18
            + [""] * 3
            + [_ts(signed.event_at), "", "RAD", status]  # OBR-22, OBR-24, OBR-25
            + [""] * 6
            + [interpreter]  # OBR-32
        ),
    ]
    for n, (concept, line, at) in enumerate(_report_lines(signed), start=1):
        value = ["OBX", str(n), "TX", _ce(concept), "1", _escape(line)]  # OBX-1 .. OBX-5
        segments.append("|".join([*value, "", "", "", "", "", status, "", "", _ts(at)]))
    return "\r".join(segments) + "\r"


# -- the acknowledgement -----------------------------------------------------------------


def read_ack(payload: bytes, control_id: str) -> Receipt:
    """The receipt an acknowledgement gives message ``control_id``; DeliveryFailed if it
    is not one (no MSA, or the acknowledgement of another message)."""
    text = payload.decode("utf-8", "replace").replace("\r\n", "\r").replace("\n", "\r")
    if not text.startswith("MSH") or len(text) < 8:
        raise DeliveryFailed(f"the answer is not an HL7 message: {text[:80]!r}")
    fs = text[3]
    msa: list[str] | None = None
    err = ""
    for segment in text.split("\r"):
        fields = segment.split(fs)
        if fields[0] == "MSA" and msa is None:
            msa = fields
        elif fields[0] == "ERR" and not err:
            err = " ".join(f for f in fields[1:] if f).replace(text[4], " ").strip()
    if msa is None or len(msa) < 2 or not msa[1].strip():
        raise DeliveryFailed("the answer has no MSA segment (not an acknowledgement)")
    acknowledged = msa[2].strip() if len(msa) > 2 else ""
    if acknowledged != control_id:
        raise DeliveryFailed(
            f"the answer acknowledges message {acknowledged!r}, not {control_id!r} (MSA-2)"
        )
    code = msa[1].strip()
    reason = msa[3].strip() if len(msa) > 3 else ""
    text = "; ".join(t for t in (reason, err) if t)
    return Receipt(ACK_CODES.get(code, Acceptance.ERROR), code, text)


# -- the transport -----------------------------------------------------------------------


class OruSender:
    """Sends a trust's queued results over MLLP and reads each acknowledgement."""

    def __init__(self, client: MllpClient) -> None:
        self._client = client

    @property
    def peer(self) -> str:
        return self._client.peer

    def send(self, result: PendingResult) -> Receipt:
        content = result.content
        text = content if isinstance(content, str) else render_oru(content)
        try:
            answer = self._client.exchange(text.encode("utf-8"))
            return read_ack(answer, result.control_id)
        except MllpError as exc:
            raise DeliveryFailed(str(exc)) from None
        except DeliveryFailed:
            self._client.close()
            raise

    def interrupt(self) -> None:
        """From another thread: stop waiting for the listener (the process is stopping)."""
        self._client.interrupt()

    def close(self) -> None:
        self._client.close()
