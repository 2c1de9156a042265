"""The neighbouring imaging networks netpacs federates with (``[[networks]]`` of the
region file, issue 14): how to ask each (DICOMweb or DIMSE), where it keeps the NHS
number, how long to wait for it, and what of ours it may see when it asks us.

A network is both a place we look (outbound) and a client that asks us (inbound,
OAuth2 client credentials with ``client_id``). Agreements are one-sided and explicit:
``shares`` lists the trusts of ours whose studies the network may find and retrieve;
empty (the default) shares nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

DEFAULT_TIMEOUT_SECONDS = 2.0


class Protocol(enum.Enum):
    DICOMWEB = "dicomweb"
    DIMSE = "dimse"


class Auth(enum.Enum):
    """How we authenticate to a DICOMweb network."""

    NONE = "none"
    CLIENT_CREDENTIALS = "client_credentials"  # OAuth2, token_url + client id + secret
    MUTUAL_TLS = "mutual_tls"  # our client certificate


class Retrieve(enum.Enum):
    """How we retrieve from a DIMSE network."""

    MOVE = "move"  # C-MOVE to our own AE title (the network must know our AE)
    GET = "get"  # C-GET on the query's association


class NhsNumberIn(enum.Enum):
    """Where a network keeps the NHS number."""

    PATIENT_ID = "patient_id"  # Patient ID (0010,0020), any issuer
    OTHER_PATIENT_IDS = "other_patient_ids"  # Other Patient IDs Sequence, issuer "NHS"
    # Asked as Patient ID with Issuer of Patient ID "NHS" (as another netpacs requires);
    # answered in the Patient ID or an Other Patient IDs item with issuer "NHS".
    ISSUER_NHS = "issuer_nhs"

    @property
    def answered_in_other_ids(self) -> bool:
        """Whether an answer may carry the NHS number in Other Patient IDs."""
        return self is not NhsNumberIn.PATIENT_ID


@dataclass(frozen=True, slots=True)
class DicomwebAccess:
    url: str  # the DICOMweb base URL (QIDO at url + "/studies")
    auth: Auth = Auth.NONE
    token_url: str | None = None  # OAuth2 token endpoint (client_credentials)
    client_id: str | None = None  # our client id at the network
    secret_file: Path | None = None  # our client secret there
    ca_file: Path | None = None  # CAs that sign its certificate; None: the system's
    cert_file: Path | None = None  # our client certificate (mutual_tls)
    key_file: Path | None = None


@dataclass(frozen=True, slots=True)
class DimseAccess:
    ae_title: str
    host: str
    port: int
    tls: bool = False
    ca_file: Path | None = None
    retrieve: Retrieve = Retrieve.MOVE


@dataclass(frozen=True, slots=True)
class Network:
    """A neighbouring network (module doc)."""

    name: str  # shown to users ("London")
    protocol: Protocol
    dicomweb: DicomwebAccess | None = None
    dimse: DimseAccess | None = None
    nhs_number_in: NhsNumberIn = NhsNumberIn.PATIENT_ID
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    shares: frozenset[str] = frozenset()  # ODS codes of our trusts it may see
    # Inbound: the network's client at our /auth/token (None: it may not ask us). With
    # neither secret it signs in only in demo mode, with the demo password.
    client_id: str | None = None
    client_secret_file: Path | None = None
    client_secret_hash: str | None = None  # argon2


class _Table(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")


class NetworkTable(_Table):
    """``[[networks]]`` as written (checked by pydantic; see the demo region file)."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    protocol: Literal["dicomweb", "dimse"]
    # DICOMweb
    url: str | None = None
    auth: Literal["none", "client_credentials", "mutual_tls"] = "none"
    token_url: str | None = None
    client_id_there: str | None = None
    secret_file_there: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    # DIMSE
    ae_title: Annotated[str, Field(min_length=1, max_length=16)] | None = None
    host: str | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    tls: bool = False
    retrieve: Literal["move", "get"] = "move"
    # Both
    nhs_number_in: Literal["patient_id", "other_patient_ids", "issuer_nhs"] = "patient_id"
    timeout_seconds: Annotated[float, Field(gt=0, le=60)] = DEFAULT_TIMEOUT_SECONDS
    shares: list[str] = []
    client_id: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    client_secret_file: str | None = None
    client_secret_hash: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> NetworkTable:
        if self.protocol == "dicomweb":
            if not self.url or not self.url.startswith(("http://", "https://")):
                raise _error("a DICOMweb network needs 'url' (http:// or https://)")
            if self.auth == "client_credentials" and not (
                self.token_url and self.client_id_there and self.secret_file_there
            ):
                raise _error(
                    "auth 'client_credentials' needs 'token_url', 'client_id_there' and "
                    "'secret_file_there'"
                )
            if self.auth == "mutual_tls" and not (self.cert_file and self.key_file):
                raise _error("auth 'mutual_tls' needs 'cert_file' and 'key_file'")
        elif not (self.ae_title and self.host and self.port):
            raise _error("a DIMSE network needs 'ae_title', 'host' and 'port'")
        if self.client_secret_file is not None and self.client_secret_hash is not None:
            raise _error("give one of 'client_secret_file' or 'client_secret_hash', not both")
        if self.client_id is None and (self.client_secret_file or self.client_secret_hash):
            raise _error("a client secret needs the 'client_id' it is for")
        return self


def _error(message: str) -> PydanticCustomError:
    return PydanticCustomError("region", message)


def _path(value: str | None, base: Path | None) -> Path | None:
    if value is None:
        return None
    return Path(value) if base is None else base / value


def network_from_table(t: NetworkTable, *, trusts: set[str], base: Path | None) -> Network:
    """The :class:`Network` of a checked table; raises ``ValueError`` for a ``shares``
    entry that is not a trust of the region ("*" shares every trust)."""
    if "*" in t.shares:
        shares = frozenset(trusts)
    else:
        unknown = sorted(set(t.shares) - trusts)
        if unknown:
            raise ValueError(f"'shares' names trusts not in the region: {unknown}")
        shares = frozenset(t.shares)
    dicomweb = dimse = None
    if t.protocol == "dicomweb":
        assert t.url is not None
        dicomweb = DicomwebAccess(
            url=t.url.rstrip("/"),
            auth=Auth(t.auth),
            token_url=t.token_url,
            client_id=t.client_id_there,
            secret_file=_path(t.secret_file_there, base),
            ca_file=_path(t.ca_file, base),
            cert_file=_path(t.cert_file, base),
            key_file=_path(t.key_file, base),
        )
    else:
        assert t.ae_title is not None and t.host is not None and t.port is not None
        dimse = DimseAccess(
            ae_title=t.ae_title.strip(),
            host=t.host,
            port=t.port,
            tls=t.tls,
            ca_file=_path(t.ca_file, base),
            retrieve=Retrieve(t.retrieve),
        )
    return Network(
        name=t.name,
        protocol=Protocol(t.protocol),
        dicomweb=dicomweb,
        dimse=dimse,
        nhs_number_in=NhsNumberIn(t.nhs_number_in),
        timeout_seconds=t.timeout_seconds,
        shares=shares,
        client_id=t.client_id,
        client_secret_file=_path(t.client_secret_file, base),
        client_secret_hash=t.client_secret_hash,
    )
