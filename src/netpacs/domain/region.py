"""The region netpacs serves: trusts (by ODS code), their sites and application entities.

Described by a TOML region file (see ``netpacs/data/demo_region.toml`` for the format),
which :func:`netpacs.domain.region_file.parse_region_toml` checks entry by entry and
turns into these values. Reading the file is the composition root's
(``netpacs.app.region_file``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from netpacs.domain.networks import Network
from netpacs.domain.peer import CallerIdentity, Peer


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
    WORKLIST = "worklist"  # Modality Worklist C-FIND and MPPS (issue 15)


#: What each kind of AE may do unless the region file says otherwise (``permissions``).
DEFAULT_PERMISSIONS: dict[AEKind, frozenset[Permission]] = {
    AEKind.MODALITY: frozenset({Permission.STORE, Permission.WORKLIST}),
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
    # Where it calls from and the TLS client certificate it presents (``hosts``,
    # ``tls_subject``, ``tls_fingerprint``); unset: anywhere, any or no certificate.
    caller: CallerIdentity = field(default_factory=CallerIdentity)
    # A modality AE's modality (CT, MR...): its worklist is that modality's orders.
    modality: str | None = None

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
class AdtFeed:
    """A system that sends ADT over MLLP (``[[adt_feeds]]``): the MSH-4 sending
    facilities it speaks for, and how its connection is recognised (``hosts`` for the
    plain port, a TLS client certificate for the TLS port)."""

    name: str
    facilities: frozenset[str]
    caller: CallerIdentity


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
    # When a study with an order becomes ready to report (issue 15): at its first image
    # series ("first-series", as every study without an order) or when its modality
    # reports the procedure step COMPLETED ("mpps").
    ready_at: Literal["first-series", "mpps"] = "first-series"

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
class EdgeNode:
    """An edge node of a site (``[[edges]]``): it signs in to the core with OAuth2 client
    credentials (``client_id`` and a secret checked against ``secret_file`` or the argon2
    ``secret_hash``) and acts for its trust and site (services.access)."""

    name: str
    trust: str  # ODS code
    site: str  # site code
    client_id: str
    secret_file: Path | None = None
    secret_hash: str | None = None
    demo_secret: str | None = None  # demo mode only: the demo password


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    trusts: tuple[Trust, ...]
    aes: tuple[ApplicationEntity, ...]
    reporting: Reporting = field(default_factory=Reporting)
    # MSH-4 names of regional feeds (a master patient index, an integration engine that
    # rewrites MSH-4) whose ADT may change the hospital numbers of every trust.
    regional_adt_facilities: tuple[str, ...] = ()
    # The systems that may send ADT, each recognised by address or certificate.
    adt_feeds: tuple[AdtFeed, ...] = ()
    # The edge nodes of the sites (issue 13).
    edges: tuple[EdgeNode, ...] = ()
    # The neighbouring networks (issue 14).
    networks: tuple[Network, ...] = ()
    # Days the instances an IOCM rejection note hid are kept (an undo can bring them
    # back) before the retention job deletes them (issue 15, services/rejection.py).
    rejection_retention_days: float = 30.0
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

    def adt_feeds_of(self, peer: Peer) -> tuple[AdtFeed, ...]:
        """The ADT feeds ``peer`` may be (by its address and certificate)."""
        return tuple(f for f in self.adt_feeds if f.caller.problem(peer) is None)

    def trust(self, ods_code: str) -> Trust | None:
        return next((t for t in self.trusts if t.ods_code == ods_code), None)

    def edge(self, client_id: str) -> EdgeNode | None:
        return next((e for e in self.edges if e.client_id == client_id), None)

    def network(self, name: str) -> Network | None:
        return next((n for n in self.networks if n.name == name), None)

    def network_client(self, client_id: str) -> Network | None:
        """The network whose inbound client is ``client_id``, if any."""
        return next((n for n in self.networks if n.client_id == client_id), None)

    @property
    def issuers(self) -> frozenset[str]:
        return frozenset(t.ods_code for t in self.trusts)


def modality_of_title(ae_title: str) -> str | None:
    """The modality a modality AE title names by the region's convention
    ``<SITE>_<MODALITY><n>`` (``EDGH_CT1``: CT); None when it does not follow it (the
    region file then says ``modality`` in the AE's table)."""
    _, sep, tail = ae_title.rpartition("_")
    code = tail.rstrip("0123456789")
    return code if sep and 2 <= len(code) <= 4 and code.isalpha() and code.isupper() else None
