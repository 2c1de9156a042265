"""The region file: pydantic models of the TOML file as written, checked entry by entry,
and :func:`parse_region_toml`, which turns a checked file into a
:class:`netpacs.domain.region.Region`. A check that needs the whole file (known trusts
and AE titles) is made in :func:`_region`; a message always says where the file is
wrong (table and key) and why.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from netpacs.domain.networks import Network, NetworkTable, network_from_table
from netpacs.domain.peer import CallerIdentity, fingerprint, network, subject
from netpacs.domain.region import (
    DEFAULT_TURNAROUND_HOURS,
    RESULTS_HEADER_KEYS,
    SUBSPECIALTIES,
    AdtFeed,
    AEKind,
    ApplicationEntity,
    EdgeNode,
    Endpoint,
    Permission,
    Region,
    RegionError,
    Reporting,
    ReportingAgreement,
    ResultsHeader,
    Site,
    Trust,
    modality_of_title,
)


def _ae_title(value: str) -> str:
    if not 0 < len(value) <= 16 or "\\" in value or not value.isprintable():
        raise ValueError(f"{value!r} is not an AE title of 1-16 printable characters")
    return value


def _namespace_id(value: str) -> str:
    """An MSH-4 namespace id of an ADT feed."""
    if not 0 < len(value.strip()) <= 20 or "^" in value:
        raise ValueError(f"{value!r} is not an MSH-4 namespace id (1-20 characters, no ^)")
    return value.strip()


def _subspecialty(value: str) -> str:
    if value not in SUBSPECIALTIES:
        raise ValueError(f"{value!r} is not one of {', '.join(SUBSPECIALTIES)}")
    return value


AeTitle = Annotated[str, AfterValidator(_ae_title)]
HostNetwork = Annotated[str, AfterValidator(lambda v: str(network(v)))]
TlsSubject = Annotated[str, AfterValidator(subject)]
TlsFingerprint = Annotated[str, AfterValidator(fingerprint)]
NamespaceId = Annotated[str, AfterValidator(_namespace_id)]
Subspecialty = Annotated[str, AfterValidator(_subspecialty)]
PermissionName = Literal["store", "find", "move", "get", "worklist"]


class _Table(BaseModel):
    """A table of the region file: values of the TOML types asked for, no conversions,
    and no key it does not know (a misspelt ``permissions`` must not leave an AE with
    every permission)."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")


class _Caller(_Table):
    """Keys that say how a caller is recognised: ``hosts`` it connects from (IP
    addresses or networks) and the TLS client certificate it presents."""

    hosts: list[HostNetwork] | None = None
    tls_subject: TlsSubject | None = None
    tls_fingerprint: TlsFingerprint | None = None

    def identity(self) -> CallerIdentity:
        return CallerIdentity(
            hosts=None if self.hosts is None else tuple(network(h) for h in self.hosts),
            tls_subject=self.tls_subject,
            tls_fingerprint=self.tls_fingerprint,
        )


class _Modality(_Caller):
    ae_title: AeTitle
    modality: Annotated[str, Field(pattern=r"^[A-Z]{2,4}$")] | None = None


class _Site(_Table):
    code: str
    name: str
    # AE titles, or tables {ae_title, hosts, tls_subject, tls_fingerprint}
    modality_aes: list[
        Annotated[
            Annotated[str, AfterValidator(_ae_title), Tag("<title>")]
            | Annotated[_Modality, Tag("<table>")],
            Discriminator(lambda v: "<title>" if isinstance(v, str) else "<table>"),
        ]
    ] = []


class _Workstation(_Caller):
    ae_title: AeTitle
    site: str | None = None
    host: str = "127.0.0.1"
    port: int
    permissions: list[PermissionName] | None = None
    move_destinations: list[AeTitle] | None = None


class _Archive(_Caller):
    ae_title: AeTitle
    trust: str
    host: str = "127.0.0.1"
    port: int | None = None
    permissions: list[PermissionName] | None = None
    move_destinations: list[AeTitle] | None = None


class _AdtFeed(_Caller):
    name: str
    facilities: Annotated[list[NamespaceId], Field(min_length=1)]

    @model_validator(mode="after")
    def _recognisable(self) -> _AdtFeed:
        if self.hosts is None and self.tls_subject is None and self.tls_fingerprint is None:
            raise PydanticCustomError(
                "region",
                "an ADT feed needs 'hosts' (plain MLLP from those addresses) or "
                "'tls_subject'/'tls_fingerprint' (MLLP over TLS with that client certificate)",
            )
        return self


class _ResultsMllp(_Table):
    host: str
    port: Annotated[int, Field(ge=1, le=65535)]
    tls: bool = False
    ca_file: str | None = None
    sending_application: str | None = None
    sending_facility: str | None = None
    receiving_application: str | None = None
    receiving_facility: str | None = None

    @field_validator(*RESULTS_HEADER_KEYS)
    @classmethod
    def _msh_name(cls, value: str | None, info: Any) -> str | None:
        """HL7 HD namespace ids: plain text without the message's separators."""
        if value is not None and (
            not 1 <= len(value.strip()) <= 20
            or any(c in value for c in "|^~\\&")
            or not value.isprintable()
        ):
            raise ValueError(
                f"({RESULTS_HEADER_KEYS[info.field_name]}) must be 1 to 20 printable "
                "characters without | ^ ~ \\ &"
            )
        return None if value is None else value.strip()

    @model_validator(mode="after")
    def _ca_file_needs_tls(self) -> _ResultsMllp:
        if self.ca_file is not None and not self.tls:
            raise PydanticCustomError("region", "'ca_file' is set but 'tls' is not true")
        return self


class _Trust(_Table):
    ods_code: str
    name: str
    sites: list[_Site] = []
    workstations: list[_Workstation] = []
    results_mllp: _ResultsMllp | None = None
    adt_facilities: list[NamespaceId] = []


class _Agreement(_Table):
    reporters: list[str]  # ODS codes, or ["*"]
    for_trusts: list[str]
    subspecialties: list[Subspecialty] | None = None


class _Reporter(_Table):
    username: str
    subspecialties: list[Subspecialty] = []


class _Reporting(_Table):
    agreements: list[_Agreement] = []
    turnaround_hours: dict[str, Annotated[int, Field(ge=1)]] = {}
    claim_minutes: Annotated[int, Field(ge=1, le=24 * 60)] = 30
    reporters: list[_Reporter] = []
    ready_at: Literal["first-series", "mpps"] = "first-series"

    @field_validator("turnaround_hours")
    @classmethod
    def _priorities(cls, value: dict[str, int]) -> dict[str, int]:
        for key in value:
            if key not in DEFAULT_TURNAROUND_HOURS:
                raise ValueError(f"{key!r} is not one of {', '.join(DEFAULT_TURNAROUND_HOURS)}")
        return value


class _Edge(_Table):
    name: str
    trust: str
    site: str
    client_id: Annotated[str, Field(min_length=1, max_length=100)]
    secret_file: str | None = None
    secret_hash: str | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> _Edge:
        if (self.secret_file is None) == (self.secret_hash is None):
            raise PydanticCustomError(
                "region",
                "an edge needs exactly one of 'secret_file' (a file holding its client "
                "secret) or 'secret_hash' (an argon2 hash of it)",
            )
        return self


class _RegionFile(_Table):
    name: str = "region"
    trusts: list[_Trust] = []
    archives: list[_Archive] = []
    reporting: _Reporting = _Reporting()
    regional_adt_facilities: list[NamespaceId] = []
    adt_feeds: list[_AdtFeed] = []
    edges: list[_Edge] = []
    networks: list[NetworkTable] = []
    rejection_retention_days: Annotated[float, Field(ge=0, le=36500)] = 30.0


# What is wrong, by pydantic error type, after "where: 'key'".
_SAYS = {
    "missing": "is missing",
    "extra_forbidden": "is not a key of this table (misspelt?)",
    "string_type": "must be text",
    "int_type": "must be a whole number",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "greater_than_equal": "must be at least {ge}",
    "less_than_equal": "must be at most {le}",
}


def _where(loc: tuple[int | str, ...]) -> str:
    """``trusts[0].results_mllp`` for the error location ('trusts', 0, 'results_mllp')."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text or "the region file"


def _message(error: ErrorDetails) -> str:
    """One error of the region file, saying where it is: a table and a key in it."""
    # Tags of a list of alternatives ("<title>", "<table>") are not keys of the file.
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("<")))
    if error["type"] == "region":  # a check of a table as a whole
        return f"{_where(loc)}: {error['msg']}"
    keys = [i for i, part in enumerate(loc) if isinstance(part, str)]
    if not keys:
        return f"the region file: {error['msg']}"
    at = keys[-1]
    key = f"'{loc[at]}'" + "".join(f"[{i}]" for i in loc[at + 1 :])
    ctx = error.get("ctx", {})
    if error["type"] == "value_error":
        says = str(ctx.get("error", error["msg"]))
    elif error["type"] in _SAYS:
        says = _SAYS[error["type"]].format(**ctx)
    else:
        says = error["msg"].replace("Input should be", "must be")
    return f"{_where(loc[:at])}: {key} {says}"


def parse_region(doc: Mapping[str, Any], base: Path | None = None) -> Region:
    """Check a region file's document (parsed TOML) and build its Region.

    ``base`` is the folder relative file names in the document (``ca_file``) are in.
    Raises :class:`RegionError` saying what is wrong where.
    """
    try:
        checked = _RegionFile.model_validate(doc)
    except ValidationError as exc:
        raise RegionError("; ".join(_message(e) for e in exc.errors())) from None
    return _region(checked, base)


def parse_region_toml(text: str, base: Path | None = None) -> Region:
    """:func:`parse_region` for the text of a region file."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegionError(f"not TOML: {exc}") from None
    return parse_region(doc, base)


def _aes(doc: _RegionFile) -> list[ApplicationEntity]:
    aes: list[ApplicationEntity] = []
    for t in doc.trusts:
        aes += (_modality(m, t.ods_code, s.code) for s in t.sites for m in s.modality_aes)
        aes += (_ae(w, t.ods_code, AEKind.WORKSTATION, site=w.site) for w in t.workstations)
    aes += (_ae(a, a.trust, AEKind.ARCHIVE) for a in doc.archives)
    known = {ae.ae_title for ae in aes}
    for ae in aes:
        unknown = sorted(set(ae.move_destinations or ()) - known)
        if unknown:
            raise RegionError(
                f"{ae.ae_title}: move_destinations {unknown} are not AEs of the region"
            )
    return aes


def _modality(doc: str | _Modality, trust: str, site: str) -> ApplicationEntity:
    if isinstance(doc, str):
        return ApplicationEntity(
            doc, trust, AEKind.MODALITY, site=site, modality=modality_of_title(doc)
        )
    return ApplicationEntity(
        doc.ae_title,
        trust,
        AEKind.MODALITY,
        site=site,
        caller=doc.identity(),
        modality=doc.modality or modality_of_title(doc.ae_title),
    )


def _ae(
    doc: _Workstation | _Archive, trust: str, kind: AEKind, *, site: str | None = None
) -> ApplicationEntity:
    return ApplicationEntity(
        ae_title=doc.ae_title,
        trust=trust,
        kind=kind,
        site=site,
        host=doc.host,
        port=doc.port,
        permissions=frozenset(Permission(p) for p in doc.permissions or ()),
        move_destinations=None if doc.move_destinations is None else tuple(doc.move_destinations),
        caller=doc.identity(),
    )


def _trust(doc: _Trust, base: Path | None) -> Trust:
    results = doc.results_mllp
    endpoint = header = None
    if results is not None:
        ca_file = None
        if results.ca_file is not None:
            ca_file = Path(results.ca_file) if base is None else base / results.ca_file
        endpoint = Endpoint(results.host, results.port, tls=results.tls, ca_file=ca_file)
        names = {k: getattr(results, k) for k in RESULTS_HEADER_KEYS}
        header = ResultsHeader(
            **{"receiving_facility": doc.ods_code}
            | {k: v for k, v in names.items() if v is not None}
        )
    return Trust(
        ods_code=doc.ods_code,
        name=doc.name,
        sites=tuple(Site(code=s.code, name=s.name, trust=doc.ods_code) for s in doc.sites),
        results_endpoint=endpoint,
        results_header=header or ResultsHeader(receiving_facility=doc.ods_code),
        adt_facilities=tuple(doc.adt_facilities),
    )


def _trust_list(value: list[str], where: str, known: set[str]) -> frozenset[str] | None:
    if "*" in value:
        return None
    unknown = sorted(set(value) - known)
    if unknown:
        raise RegionError(f"{where} names trusts not in the region: {unknown}")
    return frozenset(value)


def _reporting(doc: _Reporting, trusts: set[str]) -> Reporting:
    agreements = tuple(
        ReportingAgreement(
            reporters=_trust_list(a.reporters, f"reporting.agreements[{i}]: 'reporters'", trusts),
            for_trusts=_trust_list(
                a.for_trusts, f"reporting.agreements[{i}]: 'for_trusts'", trusts
            ),
            subspecialties=None if a.subspecialties is None else frozenset(a.subspecialties),
        )
        for i, a in enumerate(doc.agreements)
    )
    return Reporting(
        agreements=agreements,
        turnaround_hours=DEFAULT_TURNAROUND_HOURS | doc.turnaround_hours,
        claim_minutes=doc.claim_minutes,
        reporter_subspecialties={r.username: tuple(r.subspecialties) for r in doc.reporters},
        ready_at=doc.ready_at,
    )


def _adt_feeds(doc: _RegionFile, region: Region) -> tuple[AdtFeed, ...]:
    """Each feed's facilities must be ones the ADT rules know (a trust's ODS code, site
    code or ``adt_facilities``, or a ``regional_adt_facilities`` name)."""
    feeds = []
    for i, feed in enumerate(doc.adt_feeds):
        unknown = sorted(
            f
            for f in feed.facilities
            if region.trust_of_facility(f) is None and f not in region.regional_adt_facilities
        )
        if unknown:
            raise RegionError(
                f"adt_feeds[{i}]: 'facilities' {unknown} are neither a trust's ODS code, site "
                "code or adt_facilities nor regional_adt_facilities"
            )
        feeds.append(AdtFeed(feed.name, frozenset(feed.facilities), feed.identity()))
    return tuple(feeds)


def _region(doc: _RegionFile, base: Path | None) -> Region:
    if not doc.trusts:
        raise RegionError("the region file defines no trusts")
    trusts = tuple(_trust(t, base) for t in doc.trusts)
    region = Region(
        name=doc.name,
        trusts=trusts,
        aes=tuple(_aes(doc)),
        reporting=_reporting(doc.reporting, {t.ods_code for t in trusts}),
        regional_adt_facilities=tuple(doc.regional_adt_facilities),
        rejection_retention_days=doc.rejection_retention_days,
    )
    region = dataclasses.replace(
        region, adt_feeds=_adt_feeds(doc, region), edges=_edges(doc, region, base)
    )
    return dataclasses.replace(region, networks=_networks(doc, region, base))


def _edges(doc: _RegionFile, region: Region, base: Path | None) -> tuple[EdgeNode, ...]:
    """Each edge serves a site of a trust of the region; client ids are unique."""
    edges: list[EdgeNode] = []
    for i, e in enumerate(doc.edges):
        trust = region.trust(e.trust)
        if trust is None:
            raise RegionError(f"edges[{i}]: 'trust' {e.trust!r} is not a trust of the region")
        if not any(s.code == e.site for s in trust.sites):
            raise RegionError(f"edges[{i}]: 'site' {e.site!r} is not a site of {e.trust}")
        if any(other.client_id == e.client_id for other in edges):
            raise RegionError(f"edges[{i}]: 'client_id' {e.client_id!r} is used twice")
        secret_file = None
        if e.secret_file is not None:
            secret_file = Path(e.secret_file) if base is None else base / e.secret_file
        edges.append(EdgeNode(e.name, e.trust, e.site, e.client_id, secret_file, e.secret_hash))
    return tuple(edges)


def _networks(doc: _RegionFile, region: Region, base: Path | None) -> tuple[Network, ...]:
    """Names and inbound client ids are unique, and no client id is also an edge's."""
    trusts = {t.ods_code for t in region.trusts}
    networks: list[Network] = []
    for i, table in enumerate(doc.networks):
        try:
            n = network_from_table(table, trusts=trusts, base=base)
        except ValueError as exc:
            raise RegionError(f"networks[{i}]: {exc}") from None
        if any(other.name == n.name for other in networks):
            raise RegionError(f"networks[{i}]: 'name' {n.name!r} is used twice")
        if n.client_id is not None and (
            any(other.client_id == n.client_id for other in networks)
            or region.edge(n.client_id) is not None
        ):
            raise RegionError(f"networks[{i}]: 'client_id' {n.client_id!r} is used twice")
        networks.append(n)
    return tuple(networks)
