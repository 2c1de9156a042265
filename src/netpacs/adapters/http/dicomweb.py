"""What the DICOMweb routes share (PS3.18): media types, Accept negotiation, lookups."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from fastapi import Response

from netpacs.adapters.http.deps import DICOMWEB_ROOT, HttpServices, check_url_uids
from netpacs.adapters.http.errors import HttpError
from netpacs.domain.query import StoredInstance
from netpacs.services.frames import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from netpacs.services.retrieve import Served
from netpacs.services.transcode import TranscodeError, check_transcodable

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"
MULTIPART = "multipart/related"
ZIP = "application/zip"
AS_STORED_LE = frozenset({EXPLICIT_VR_LE, IMPLICIT_VR_LE})
STUDY = f"{DICOMWEB_ROOT}/studies/{{study}}"
SERIES = f"{STUDY}/series/{{series}}"
INSTANCE = f"{SERIES}/instances/{{instance}}"


# -- Accept --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Acceptable:
    """One media range of an Accept header (RFC 9110 12.5.1), with PS3.18 parameters."""

    mime: str
    type: str | None  # the ``type`` parameter of multipart/related
    transfer_syntax: str | None
    q: float


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes."""
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def parse_accept(header: str | None) -> list[Acceptable]:
    """The media ranges of an Accept header, most preferred first; ``*/*`` when absent."""
    if not header or not header.strip():
        return [Acceptable("*/*", None, None, 1.0)]
    ranges: list[Acceptable] = []
    for item in _split(header, ","):
        mime, *raw = (p.strip() for p in _split(item, ";"))
        params: dict[str, str] = {}
        for p in raw:
            name, eq, value = p.partition("=")
            if eq:
                params[name.strip().lower()] = value.strip().strip('"').strip()
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 1.0
        if q <= 0 or not mime:
            continue
        media = params.get("type")
        ranges.append(
            Acceptable(
                mime.lower(),
                media.lower() if media else None,
                params.get("transfer-syntax"),
                q,
            )
        )
    ranges.sort(key=lambda a: -a.q)  # stable: equal q keeps the client's order
    return ranges


def not_acceptable(header: str | None, offer: str) -> HttpError:
    return HttpError(406, f"cannot answer Accept: {header!r}; this resource is {offer}")


# -- lookups -------------------------------------------------------------------------------


def served(
    svc: HttpServices, study: str, series: str | None = None, instance: str | None = None
) -> list[Served]:
    """The objects in scope as the retrieve service serves them; 404 saying which UID is
    unknown."""
    check_url_uids(Study=study, Series=series, SOP=instance)
    found = svc.retrieve.stored(study, series, instance)
    if found:
        return found
    raise missing(svc, study, series, instance)


def stored_instances(
    svc: HttpServices, study: str, series: str | None = None, instance: str | None = None
) -> list[StoredInstance]:
    """The stored instances in scope with their stored headers (frames, bulk data,
    rendering: no patient details served); 404 saying which UID is unknown."""
    check_url_uids(Study=study, Series=series, SOP=instance)
    found = svc.query.stored_instances(study, series, instance, with_metadata=True)
    if found:
        return found
    raise missing(svc, study, series, instance)


def missing(svc: HttpServices, study: str, series: str | None, instance: str | None) -> HttpError:
    has_study, has_series = svc.query.scope_exists(study, series)
    if not has_study:
        return HttpError(404, f"study {study} is not stored here")
    if not has_series:
        return HttpError(404, f"series {series} is not a series of study {study}")
    return HttpError(404, f"instance {instance} is not an instance of series {series}")


def multipart(parts: list[bytes], part_type: str) -> Response:
    """A ``multipart/related`` answer of small parts, each of ``part_type``."""
    boundary = secrets.token_hex(16)
    head = f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode()
    body = b"".join(head + p + b"\r\n" for p in parts) + f"--{boundary}--\r\n".encode()
    mime = part_type.split(";")[0]
    return Response(body, media_type=f'{MULTIPART}; type="{mime}"; boundary={boundary}')


# -- Part 10 objects in a transfer syntax (PS3.18 8.7.3.5.2) ---------------------------------

DEFAULT = "default"  # no transfer-syntax parameter
STORED = "*"


@dataclass(frozen=True, slots=True)
class DicomChoice:
    multipart: bool
    transfer_syntax: str  # a UID, STORED or DEFAULT

    def target(self, stored: str) -> str:
        if self.transfer_syntax == STORED:
            return stored
        if self.transfer_syntax == DEFAULT:
            return stored if stored in AS_STORED_LE else EXPLICIT_VR_LE
        return self.transfer_syntax


def _dicom_choices(header: str | None, *, single_ok: bool) -> list[DicomChoice]:
    choices = []
    for a in parse_accept(header):
        ts = a.transfer_syntax or DEFAULT
        multipart = a.mime == MULTIPART and a.type in (None, DICOM, "*/*", "application/*")
        if multipart or a.mime in ("*/*", "multipart/*"):
            choices.append(DicomChoice(True, ts))
        elif a.mime == DICOM and single_ok:
            choices.append(DicomChoice(False, ts))
    return choices


def negotiate_dicom(header: str | None, stored: Iterable[str], *, single_ok: bool) -> DicomChoice:
    choices = _dicom_choices(header, single_ok=single_ok)
    problem = ""
    for choice in choices:
        try:
            for ts in set(stored):
                check_transcodable(ts, choice.target(ts))
        except TranscodeError as exc:
            problem = f": {exc}"
            continue
        return choice
    offer = f'multipart/related; type="{DICOM}"' + (", application/dicom" if single_ok else "")
    offer += f" or {ZIP}"
    raise HttpError(406, f"cannot answer Accept: {header!r}; this resource is {offer}{problem}")
