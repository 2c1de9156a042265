"""The region netpacs serves: trusts (by ODS code), their sites and application entities.

Loaded from a TOML region file (see ``netpacs/data/demo_region.toml`` for the format).
"""

from __future__ import annotations

import enum
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class AEKind(enum.Enum):
    MODALITY = "modality"
    WORKSTATION = "workstation"
    ARCHIVE = "archive"


class Permission(enum.Enum):
    """DIMSE services an AE may ask of netpacs (C-ECHO is always allowed)."""

    STORE = "store"
    FIND = "find"
    MOVE = "move"
    GET = "get"


#: What each kind of AE may do unless the region file says otherwise (``permissions``).
DEFAULT_PERMISSIONS: dict[AEKind, frozenset[Permission]] = {
    AEKind.MODALITY: frozenset({Permission.STORE}),
    AEKind.WORKSTATION: frozenset(Permission),
    AEKind.ARCHIVE: frozenset(Permission),
}


class RegionError(ValueError):
    """The region file is malformed; the message says where."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    tls: bool = False  # MLLP over TLS 1.2+: the listener's certificate and name are verified
    ca_file: Path | None = None  # CAs that sign the listener's certificate; None: the system's


@dataclass(frozen=True, slots=True)
class ApplicationEntity:
    ae_title: str
    trust: str  # ODS code
    kind: AEKind
    site: str | None = None
    host: str = "127.0.0.1"
    port: int | None = None  # None: the AE only sends (cannot be a C-MOVE destination)
    permissions: frozenset[Permission] = frozenset()  # empty: DEFAULT_PERMISSIONS[kind]
    # AE titles this AE may send C-MOVE results to; None: any AE of the region with a port.
    move_destinations: tuple[str, ...] | None = None

    def may(self, permission: Permission) -> bool:
        return permission in (self.permissions or DEFAULT_PERMISSIONS[self.kind])

    def may_move_to(self, ae_title: str) -> bool:
        return self.move_destinations is None or ae_title in self.move_destinations


@dataclass(frozen=True, slots=True)
class Site:
    code: str
    name: str
    trust: str


@dataclass(frozen=True, slots=True)
class ResultsHeader:
    """MSH-3 to MSH-6 of the HL7 results (ORU) sent to one trust.

    A trust's interface engine routes and accepts messages by these names, so each
    trust's feed names its own (``[trusts.results_mllp]`` in the region file).
    """

    sending_application: str = ""  # MSH-3; "": netpacs's AE title
    sending_facility: str = "REGION"  # MSH-4
    receiving_application: str = "RIS"  # MSH-5
    receiving_facility: str = ""  # MSH-6; "": the trust's ODS code


#: The results MSH names the region file may set, and what each is in HL7.
RESULTS_HEADER_KEYS = {
    "sending_application": "MSH-3",
    "sending_facility": "MSH-4",
    "receiving_application": "MSH-5",
    "receiving_facility": "MSH-6",
}


@dataclass(frozen=True, slots=True)
class Trust:
    ods_code: str
    name: str
    sites: tuple[Site, ...]
    results_endpoint: Endpoint | None = None
    results_header: ResultsHeader = ResultsHeader()
    # MSH-4 sending facilities of the trust's ADT feeds besides its ODS code.
    adt_facilities: tuple[str, ...] = ()


#: Report turnaround targets (hours from arrival) unless the region file sets its own.
DEFAULT_TURNAROUND_HOURS: dict[str, int] = {
    "emergency": 1,
    "inpatient": 24,
    "cancer-2ww": 72,
    "outpatient": 168,
    "gp": 168,
}
SUBSPECIALTIES = ("neuro", "chest", "body", "msk", "breast", "cardiac", "paediatric", "general")


@dataclass(frozen=True, slots=True)
class ReportingAgreement:
    """Radiologists of ``reporters`` (ODS codes) report studies requested by ``for_trusts``
    (in ``subspecialties``); None means every trust (every subspecialty)."""

    reporters: frozenset[str] | None
    for_trusts: frozenset[str] | None
    subspecialties: frozenset[str] | None = None

    def covers(self, requesting_trust: str, subspecialty: str) -> bool:
        """Whether this agreement assigns a study of this trust and subspecialty."""
        return (self.for_trusts is None or requesting_trust in self.for_trusts) and (
            self.subspecialties is None or subspecialty in self.subspecialties
        )


@dataclass(frozen=True, slots=True)
class Reporting:
    """The region's reporting rules (``[reporting]`` in the region file)."""

    agreements: tuple[ReportingAgreement, ...] = ()
    turnaround_hours: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_TURNAROUND_HOURS))
    claim_minutes: int = 30  # a claim not renewed (by saving) for this long lapses
    reporter_subspecialties: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def applying(self, reporter_trust: str | None) -> tuple[ReportingAgreement, ...]:
        """The agreements that assign work to radiologists of ``reporter_trust``: each
        with its own trusts and subspecialties (one agreement's subspecialty limit does
        not narrow another's)."""
        if reporter_trust is None:
            return ()
        return tuple(
            a for a in self.agreements if a.reporters is None or reporter_trust in a.reporters
        )


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    trusts: tuple[Trust, ...]
    aes: tuple[ApplicationEntity, ...]
    reporting: Reporting = field(default_factory=Reporting)
    # MSH-4 names of regional feeds (a master patient index, an integration engine that
    # rewrites MSH-4) whose ADT may change the hospital numbers of every trust.
    regional_adt_facilities: tuple[str, ...] = ()
    _by_title: dict[str, ApplicationEntity] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_title", {})  # rebuilt, also by dataclasses.replace
        for ae in self.aes:
            if ae.ae_title in self._by_title:
                raise RegionError(f"AE title {ae.ae_title!r} is defined twice")
            self._by_title[ae.ae_title] = ae

    def ae(self, ae_title: str) -> ApplicationEntity | None:
        return self._by_title.get(ae_title.strip())

    def trust_of_facility(self, facility: str) -> str | None:
        """The ODS code of the trust whose ADT feed ``facility`` (MSH-4) is, if any: the
        trust's ODS code, one of its site codes, or one of its ``adt_facilities``."""
        for t in self.trusts:
            if (
                facility == t.ods_code
                or facility in t.adt_facilities
                or any(facility == site.code for site in t.sites)
            ):
                return t.ods_code
        return None

    def trust(self, ods_code: str) -> Trust | None:
        return next((t for t in self.trusts if t.ods_code == ods_code), None)

    @property
    def issuers(self) -> frozenset[str]:
        return frozenset(t.ods_code for t in self.trusts)


def _req(table: dict[str, Any], key: str, where: str, kind: type) -> Any:
    value = table.get(key)
    if not isinstance(value, kind):
        raise RegionError(f"{where}: '{key}' must be a {kind.__name__}")
    return value


def _ae_title(value: str, where: str) -> str:
    if not 0 < len(value) <= 16 or "\\" in value or not value.isprintable():
        raise RegionError(f"{where}: AE title {value!r} is not 1-16 printable characters")
    return value


def _permissions(table: dict[str, Any], where: str) -> frozenset[Permission]:
    given = table.get("permissions")
    if given is None:
        return frozenset()
    if not isinstance(given, list):
        raise RegionError(f"{where}: 'permissions' must be a list of store, find, move, get")
    try:
        return frozenset(Permission(str(p)) for p in given)
    except ValueError:
        raise RegionError(
            f"{where}: 'permissions' {given!r}: each one of store, find, move, get"
        ) from None


def _destinations(table: dict[str, Any], where: str) -> tuple[str, ...] | None:
    given = table.get("move_destinations")
    if given is None:
        return None
    if not isinstance(given, list) or not all(isinstance(d, str) for d in given):
        raise RegionError(f"{where}: 'move_destinations' must be a list of AE titles")
    return tuple(_ae_title(d, where) for d in given)


def parse_region(doc: dict[str, Any], base: Path | None = None) -> Region:
    """Build a Region from a parsed TOML document, checking every entry.

    ``base`` is the folder relative file names in the document (``ca_file``) are in.
    """
    trusts: list[Trust] = []
    aes: list[ApplicationEntity] = []
    for i, t in enumerate(doc.get("trusts", [])):
        where = f"trusts[{i}]"
        ods = _req(t, "ods_code", where, str)
        sites = []
        for j, s in enumerate(t.get("sites", [])):
            swhere = f"{where}.sites[{j}]"
            code = _req(s, "code", swhere, str)
            sites.append(Site(code=code, name=_req(s, "name", swhere, str), trust=ods))
            for m in s.get("modality_aes", []):
                aes.append(
                    ApplicationEntity(
                        ae_title=_ae_title(m, swhere), trust=ods, kind=AEKind.MODALITY, site=code
                    )
                )
        for j, w in enumerate(t.get("workstations", [])):
            wwhere = f"{where}.workstations[{j}]"
            aes.append(
                ApplicationEntity(
                    ae_title=_ae_title(_req(w, "ae_title", wwhere, str), wwhere),
                    trust=ods,
                    kind=AEKind.WORKSTATION,
                    site=w.get("site"),
                    host=w.get("host", "127.0.0.1"),
                    port=_req(w, "port", wwhere, int),
                    permissions=_permissions(w, wwhere),
                    move_destinations=_destinations(w, wwhere),
                )
            )
        results = t.get("results_mllp")
        endpoint = (
            _results_endpoint(results, f"{where}.results_mllp", base)
            if isinstance(results, dict)
            else None
        )
        trusts.append(
            Trust(
                ods_code=ods,
                name=_req(t, "name", where, str),
                sites=tuple(sites),
                results_endpoint=endpoint,
                results_header=_results_header(
                    results if isinstance(results, dict) else {}, f"{where}.results_mllp", ods
                ),
                adt_facilities=_adt_facilities(t.get("adt_facilities", []), where),
            )
        )
    for j, a in enumerate(doc.get("archives", [])):
        awhere = f"archives[{j}]"
        aes.append(
            ApplicationEntity(
                ae_title=_ae_title(_req(a, "ae_title", awhere, str), awhere),
                trust=_req(a, "trust", awhere, str),
                kind=AEKind.ARCHIVE,
                host=a.get("host", "127.0.0.1"),
                port=a.get("port"),
                permissions=_permissions(a, awhere),
                move_destinations=_destinations(a, awhere),
            )
        )
    if not trusts:
        raise RegionError("the region file defines no trusts")
    known = {ae.ae_title for ae in aes}
    for ae in aes:
        unknown = sorted(set(ae.move_destinations or ()) - known)
        if unknown:
            raise RegionError(
                f"{ae.ae_title}: move_destinations {unknown} are not AEs of the region"
            )
    reporting = _reporting(doc.get("reporting", {}), {t.ods_code for t in trusts})
    return Region(
        name=str(doc.get("name", "region")),
        trusts=tuple(trusts),
        aes=tuple(aes),
        reporting=reporting,
        regional_adt_facilities=_adt_facilities(
            doc.get("regional_adt_facilities", []), "the region file", "regional_adt_facilities"
        ),
    )


def _results_endpoint(table: dict[str, Any], where: str, base: Path | None) -> Endpoint:
    tls = table.get("tls", False)
    if not isinstance(tls, bool):
        raise RegionError(f"{where}: 'tls' must be true or false")
    ca_file: Path | None = None
    if "ca_file" in table:
        if not tls:
            raise RegionError(f"{where}: 'ca_file' is set but 'tls' is not true")
        name = _req(table, "ca_file", where, str)
        ca_file = Path(name) if base is None else base / name
        if not ca_file.is_file():
            raise RegionError(f"{where}: 'ca_file' {str(ca_file)!r} is not a file")
    port = _req(table, "port", where, int)
    if not 0 < port < 65536:
        raise RegionError(f"{where}: 'port' must be 1-65535")
    return Endpoint(host=_req(table, "host", where, str), port=port, tls=tls, ca_file=ca_file)


def _adt_facilities(value: Any, where: str, key: str = "adt_facilities") -> tuple[str, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, str) and 0 < len(v.strip()) <= 20 and "^" not in v for v in value
    ):
        raise RegionError(
            f"{where}: '{key}' must be a list of MSH-4 namespace ids (1-20 characters)"
        )
    return tuple(v.strip() for v in value)


def _results_header(table: dict[str, Any], where: str, ods: str) -> ResultsHeader:
    """The MSH names of a trust's results feed: HL7 HD namespace ids, so plain text
    without the message's separators (| ^ ~ \\ &), 1 to 20 characters."""
    names: dict[str, str] = {"receiving_facility": ods}
    for key, field_name in RESULTS_HEADER_KEYS.items():
        if key not in table:
            continue
        value = table[key]
        if (
            not isinstance(value, str)
            or not 1 <= len(value.strip()) <= 20
            or any(c in value for c in "|^~\\&")
            or not value.isprintable()
        ):
            raise RegionError(
                f"{where}: '{key}' ({field_name}) must be 1 to 20 printable characters "
                "without | ^ ~ \\ &"
            )
        names[key] = value.strip()
    return ResultsHeader(**names)


def _trust_list(value: Any, where: str, key: str, known: set[str]) -> frozenset[str] | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RegionError(f"{where}: '{key}' must be a list of ODS codes (or [\"*\"])")
    if "*" in value:
        return None
    unknown = sorted(set(value) - known)
    if unknown:
        raise RegionError(f"{where}: '{key}' names trusts not in the region: {unknown}")
    return frozenset(value)


def _subspecialty_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(v in SUBSPECIALTIES for v in value):
        raise RegionError(f"{where}: subspecialties must be a list of {', '.join(SUBSPECIALTIES)}")
    return tuple(value)


def _reporting(table: Any, trusts: set[str]) -> Reporting:
    if not isinstance(table, dict):
        raise RegionError("'reporting' must be a table")
    agreements = []
    for i, a in enumerate(table.get("agreements", [])):
        where = f"reporting.agreements[{i}]"
        subs = a.get("subspecialties")
        agreements.append(
            ReportingAgreement(
                reporters=_trust_list(a.get("reporters"), where, "reporters", trusts),
                for_trusts=_trust_list(a.get("for_trusts"), where, "for_trusts", trusts),
                subspecialties=None if subs is None else frozenset(_subspecialty_list(subs, where)),
            )
        )
    hours = dict(DEFAULT_TURNAROUND_HOURS)
    given = table.get("turnaround_hours", {})
    if not isinstance(given, dict):
        raise RegionError("reporting.turnaround_hours must be a table of priority = hours")
    for key, value in given.items():
        if key not in DEFAULT_TURNAROUND_HOURS:
            raise RegionError(
                f"reporting.turnaround_hours: {key!r} is not one of "
                f"{', '.join(DEFAULT_TURNAROUND_HOURS)}"
            )
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise RegionError(f"reporting.turnaround_hours.{key} must be a whole number of hours")
        hours[key] = value
    claim = table.get("claim_minutes", 30)
    if not isinstance(claim, int) or not 1 <= claim <= 24 * 60:
        raise RegionError("reporting.claim_minutes must be a whole number of minutes, 1-1440")
    reporters: dict[str, tuple[str, ...]] = {}
    for j, r in enumerate(table.get("reporters", [])):
        where = f"reporting.reporters[{j}]"
        reporters[_req(r, "username", where, str)] = _subspecialty_list(
            r.get("subspecialties", []), where
        )
    return Reporting(
        agreements=tuple(agreements),
        turnaround_hours=hours,
        claim_minutes=claim,
        reporter_subspecialties=reporters,
    )


def load_region(path: Path) -> Region:
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RegionError(f"cannot read region file {path}: {exc}") from exc
    return parse_region(doc, path.parent)
