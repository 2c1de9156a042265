"""Settings: read once by the composition root from a TOML file and NETPACS_* variables.

Precedence (highest first): NETPACS_* environment variables, the TOML file named by
NETPACS_CONFIG (keys as the field names below, e.g. ``dimse_port = 11112``), defaults.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from netpacs.domain.outcomes import DuplicatePolicy

BUNDLED_DEMO_REGION = Path(__file__).parents[1] / "data" / "demo_region.toml"


def split_list(value: str) -> list[str]:
    """The items of a comma-separated setting, without blanks."""
    return [item.strip() for item in value.split(",") if item.strip()]


class ConfigFileError(ValueError):
    """The configuration file NETPACS_CONFIG names cannot be used."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NETPACS_", extra="forbid")

    data_dir: Path = Field(default=Path("data"), description="index (SQLite) and objects")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file in the data dir"
    )
    ae_title: str = "NETPACS"
    dimse_host: str | None = Field(
        default=None, description="listening address; default 127.0.0.1 in demo mode, else 0.0.0.0"
    )
    dimse_port: int = Field(default=11112, ge=0, le=65535)
    mllp_host: str | None = Field(
        default=None, description="listening address; default 127.0.0.1 in demo mode, else 0.0.0.0"
    )
    mllp_port: int = Field(default=2575, ge=0, le=65535, description="HL7 v2 ADT over MLLP")
    http_host: str | None = Field(
        default=None, description="listening address; default 127.0.0.1 in demo mode, else 0.0.0.0"
    )
    http_port: int = Field(default=8080, ge=0, le=65535)
    http_processes: int = Field(default=2, ge=1, le=64, description="HTTP worker processes")
    public_url: str | None = Field(
        default=None,
        description="base URL clients reach us at (BulkDataURIs, FHIR endpoints); "
        "default: taken from each request's Host",
    )
    viewer_dir: Path | None = Field(
        default=None, description="the prepared OHIF dist/; default: <venv>/share/netpacs/viewer"
    )
    region_file: Path | None = Field(default=None, description="default: the bundled demo region")
    demo: bool = False
    reject_unknown_calling_ae: bool = True
    duplicate_policy: DuplicatePolicy = DuplicatePolicy.REJECT
    dimse_processes: int = Field(default=4, ge=1, le=64, description="DIMSE worker processes")
    # DICOM TLS (PS3.15 Annex B): a second DIMSE port, TLS 1.2 or later.
    dimse_tls_port: int | None = Field(
        default=None, ge=0, le=65535, description="DIMSE over TLS (e.g. 2762); unset: none"
    )
    dimse_tls_cert_file: Path | None = Field(default=None, description="our certificate (PEM)")
    dimse_tls_key_file: Path | None = Field(default=None, description="its private key (PEM)")
    dimse_tls_ca_file: Path | None = Field(
        default=None,
        description="CAs of the peers' certificates: when set, peers must present one",
    )
    max_pdu_length: int = Field(default=262_144, ge=0)
    dimse_timeout: float = Field(default=60.0, gt=0, description="seconds of silence allowed")
    log_level: str = "INFO"
    # -- access (issue 5) ------------------------------------------------------------------
    demo_password: str = Field(
        default="demo", description="password of the demo users (demo mode only)"
    )
    auth_secret_file: Path | None = Field(
        default=None,
        description="key that signs access tokens and sessions; default <data_dir>/auth-secret "
        "(made, readable by the owner only, on first start)",
    )
    token_minutes: int = Field(default=60, ge=1, le=24 * 60, description="access token lifetime")
    break_glass_minutes: int = Field(default=60, ge=5, le=24 * 60)
    signin_attempts: int = Field(
        default=5, ge=1, description="failed sign-ins allowed per user and address per window"
    )
    signin_window_minutes: int = Field(default=15, ge=1)
    account_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        le=60,
        description="how long an HTTP worker believes a token's account state (enabled, "
        "not revoked) before reading it again: a disabled account or a token revoked "
        "through another worker is refused within this many seconds (0: every request)",
    )
    # -- OpenID Connect sign-in (issue 5): unset oidc_issuer means none ---------------------
    oidc_issuer: str | None = Field(
        default=None,
        description="identity provider (https URL); its <issuer>/.well-known/openid-configuration "
        "is read at run time",
    )
    oidc_client_id: str | None = Field(default=None, description="netpacs's client id there")
    oidc_client_secret_file: Path | None = Field(
        default=None, description="file holding the client secret (token endpoint)"
    )
    oidc_display_name: str = Field(
        default="single sign-on", description='sign-in button label, e.g. "NHS Identity"'
    )
    oidc_scopes: str = Field(default="openid profile", description="scopes asked for")
    oidc_username_claim: str = Field(
        default="preferred_username", description="ID token claim that names the netpacs user"
    )
    oidc_trust_claim: str | None = Field(
        default=None,
        description="claim with the user's trust (ODS code); with oidc_role_claim, claims decide "
        "trust and role; unset: a pre-provisioned external account (user add --external) does",
    )
    oidc_role_claim: str | None = Field(default=None, description="claim with the user's role")
    # -- audit (IHE ATNA) -------------------------------------------------------------------
    audit_syslog: str | None = Field(
        default=None,
        description="audit record repository: tls://host:port (RFC 5425) or tcp://host:port",
    )
    audit_syslog_ca_file: Path | None = Field(
        default=None, description="CA certificates that sign the collector's certificate"
    )
    audit_syslog_cert_file: Path | None = Field(
        default=None, description="our client certificate for the collector (PEM), if it asks"
    )
    audit_syslog_key_file: Path | None = None
    # -- results: HL7 ORU^R01 to the requesting trusts' MLLP listeners (issue 6) -------------
    results_poll_seconds: float = Field(
        default=0.5, gt=0, le=60, description="how often the results sender looks for new rows"
    )
    results_retry_first_seconds: float = Field(
        default=1.0, gt=0, description="wait after a trust's first failed delivery"
    )
    results_retry_max_seconds: float = Field(
        default=60.0, gt=0, description="the longest wait between deliveries to a failing trust"
    )
    results_ack_timeout_seconds: float = Field(
        default=30.0, gt=0, description="how long to wait for a trust's ACK to one ORU"
    )
    results_tls_cert_file: Path | None = Field(
        default=None,
        description="our client certificate (PEM) for trusts whose results listener is "
        "MLLP over TLS (tls = true in [trusts.results_mllp]) and asks for one",
    )
    results_tls_key_file: Path | None = Field(default=None, description="its private key (PEM)")
    # -- web: who the HTTP server believes and what it reads (issue 17) ---------------------
    trusted_proxies: str = Field(
        default="",
        description="comma-separated addresses or networks (CIDR) of reverse proxies whose "
        "X-Forwarded-For and X-Forwarded-Proto are believed; unset: nobody's",
    )
    allowed_hosts: str = Field(
        default="",
        description="comma-separated host names the HTTP server answers to (the Host header); "
        "the public_url's host and localhost always are",
    )
    http_max_body_bytes: int = Field(
        default=1 << 20,
        ge=1024,
        description="largest request body other than STOW-RS (JSON, forms): larger is 413",
    )
    # -- caller identity (issue 17): MLLP over TLS, plain ports, AE hosts -----------------
    mllp_tls_port: int | None = Field(
        default=None, ge=0, le=65535, description="MLLP over TLS 1.2+ (client certificates)"
    )
    mllp_tls_cert_file: Path | None = Field(default=None, description="our certificate (PEM)")
    mllp_tls_key_file: Path | None = Field(default=None, description="its private key (PEM)")
    mllp_tls_ca_file: Path | None = Field(
        default=None, description="CAs of the ADT feeds' client certificates (required)"
    )
    mllp_plain_port: bool = Field(
        default=True, description="open the plain MLLP port; false: MLLP over TLS only"
    )
    dimse_plain_port: bool = Field(
        default=True, description="open the plain DIMSE port; false: DICOM TLS only"
    )
    dimse_require_ae_hosts: bool = Field(
        default=False,
        description="refuse a region AE with neither hosts nor a TLS certificate in the "
        "region file (default: such an AE may call from anywhere)",
    )
    # -- queries (issue 17: hostile input) --
    query_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="seconds of work one query (C-FIND, QIDO-RS, FHIR search, study list) "
        "may take; a longer one is stopped: QIDO-RS 503, C-FIND Out of Resources (A700)",
    )
    # -- federation with the neighbouring networks (issue 14) ---------------------------------
    federation_max_answer_mb: float = Field(
        default=4.0,
        gt=0,
        le=256,
        description="MiB of one network's QIDO-RS answer read at most; a larger one is "
        "given up with a warning naming the network",
    )
    federation_max_studies: int = Field(
        default=500,
        ge=1,
        le=10_000,
        description="studies of one patient kept from one network's answer",
    )
    federation_find_aes: str = Field(
        default="",
        description="comma-separated AE titles of the region's workstations whose "
        "Study Root C-FIND by NHS number (PatientID with IssuerOfPatientID NHS) also asks "
        "the other networks; empty: none",
    )
    federation_cache_hours: float = Field(
        default=24.0,
        gt=0,
        description="hours a study retrieved from a DIMSE network stays in the federation "
        "cache (<data dir>/federation-cache), apart from the archive",
    )
    federation_max_retrieve_mb: int = Field(
        default=2048,
        ge=1,
        description="MiB of one WADO-RS answer passed through from another network",
    )
    # -- DIMSE limits and shutdown (issue 17) -------------------------------------------------
    dimse_associate_timeout: float = Field(
        default=30.0,
        gt=0,
        description="seconds a caller has to send its whole A-ASSOCIATE-RQ (PS3.8 ARTIM)",
    )
    dimse_max_associations: int = Field(
        default=100,
        ge=1,
        description="associations per DIMSE worker at once; more are rejected (transient), "
        "and at most as many more connections may be negotiating",
    )
    shutdown_timeout: float = Field(
        default=25.0,
        ge=5,
        le=600,
        description="seconds the workers get on SIGTERM to finish in-flight work; "
        "a worker still running then is killed",
    )

    # -- resource bounds: object size, deflate, uploads (issue 17, items 6, 9, 10) --
    max_object_mb: int = Field(
        default=4096,
        ge=1,
        description="the largest object accepted (C-STORE, STOW-RS part, import), in MiB; "
        "also the most a deflated data set may inflate to",
    )
    upload_idle_seconds: float = Field(
        default=30.0, gt=0, description="a STOW-RS body that sends nothing this long is closed"
    )
    # -- object storage: S3 (issue 12) -------------------------------------------------------
    blob_url: str | None = Field(
        default=None,
        description="where the objects live: s3://bucket/prefix?endpoint=http://host:port "
        "(&region=name); unset: files under <data_dir>/objects",
    )
    s3_credentials_file: Path | None = Field(
        default=None,
        description="AWS shared credentials file ([default] aws_access_key_id, "
        "aws_secret_access_key) for blob_url; unset: the usual AWS_* variables and files",
    )

    # -- several nodes: health checks and a shared object directory (issue 12) --------------
    blob_dir: Path | None = Field(
        default=None,
        description="the object directory; default <data_dir>/objects. Nodes sharing one "
        "archive name the same (shared) directory here and keep their own data dir",
    )
    readiness_timeout_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="GET /readyz answers 503 when the index or the object store has not "
        "answered its check within this many seconds",
    )
    # -- metrics (issue 12: GET /metrics in the Prometheus text format) --
    metrics_allow: str = Field(
        default="127.0.0.0/8, ::1",
        description="addresses and networks that may read GET /metrics (without sign-in); "
        "the counts per trust are not for everyone who reaches the port; empty: nobody",
    )
    metrics_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="seconds a reading of the job backlogs (from the index) is reused",
    )

    # -- PostgreSQL failover (issue 12) --
    database_retry_seconds: float = Field(
        default=30.0,
        ge=0,
        le=600,
        description="seconds a write whose database primary went away (failover) is "
        "retried on the new primary before the sender is told to retry (C-STORE A700, "
        "HTTP 503)",
    )

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, v: str) -> str:
        if not 0 < len(v.strip()) <= 16:
            raise ValueError("AE title must be 1-16 characters")
        return v.strip()

    @field_validator("trusted_proxies", "metrics_allow")
    @classmethod
    def _check_proxies(cls, v: str) -> str:
        for item in split_list(v):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address or network (e.g. 10.0.0.5, 10.0.0.0/24)"
                ) from None
        return v

    @field_validator("allowed_hosts")
    @classmethod
    def _check_hosts(cls, v: str) -> str:
        for item in split_list(v):
            if item != "*" and not re.fullmatch(r"[A-Za-z0-9.\-:\[\]]+", item):
                raise ValueError(f"{item!r} is not a host name (no scheme, port or path)")
        return v

    @field_validator("blob_url")
    @classmethod
    def _check_blob_url(cls, v: str | None) -> str | None:
        if not v:
            return None
        from netpacs.storage.s3 import S3Location  # boto3 only where S3 is used

        S3Location.parse(v)  # raises S3UrlError (a ValueError) saying what is wrong
        return v

    @model_validator(mode="after")
    def _check_oidc(self) -> Settings:
        if self.oidc_issuer and not (self.oidc_client_id and self.oidc_client_secret_file):
            raise ValueError("oidc_issuer needs oidc_client_id and oidc_client_secret_file")
        issuer = urlsplit(self.oidc_issuer or "https://unset")
        if issuer.scheme != "https" and issuer.hostname not in ("localhost", "127.0.0.1"):
            raise ValueError("oidc_issuer must be an https:// URL (http only for localhost)")
        if (self.oidc_trust_claim is None) != (self.oidc_role_claim is None):
            raise ValueError("set both oidc_trust_claim and oidc_role_claim, or neither")
        return self

    @model_validator(mode="after")
    def _check_plain_ports(self) -> Settings:
        if not self.dimse_plain_port and self.dimse_tls_port is None:
            raise ValueError("dimse_plain_port = false needs dimse_tls_port (DICOM TLS)")
        if not self.mllp_plain_port and self.mllp_tls_port is None:
            raise ValueError("mllp_plain_port = false needs mllp_tls_port (MLLP over TLS)")
        return self

    def _listen_host(self, host: str | None) -> str:
        """An address set, else loopback in demo mode (demo users, demo passwords), else
        every interface."""
        if host is not None:
            return host
        return "127.0.0.1" if self.demo else "0.0.0.0"

    @property
    def effective_dimse_host(self) -> str:
        return self._listen_host(self.dimse_host)

    @property
    def effective_mllp_host(self) -> str:
        return self._listen_host(self.mllp_host)

    @property
    def effective_http_host(self) -> str:
        return self._listen_host(self.http_host)

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite').resolve()}"

    @property
    def effective_region_file(self) -> Path:
        return self.region_file or BUNDLED_DEMO_REGION

    @property
    def effective_viewer_dir(self) -> Path:
        return self.viewer_dir or Path(sys.prefix) / "share" / "netpacs" / "viewer"

    @property
    def effective_auth_secret_file(self) -> Path:
        return self.auth_secret_file or self.data_dir / "auth-secret"

    @property
    def effective_blob_dir(self) -> Path:
        return self.blob_dir or self.data_dir / "objects"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("NETPACS_CONFIG")
        if config_file:
            if not Path(config_file).is_file():
                raise ConfigFileError(f"NETPACS_CONFIG names {config_file}, which is not a file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    # -- edge: edge-fwd -- (issue 13: the edge node of a site, and its link to the core)
    role: Literal["core", "edge"] = Field(
        default="core",
        description="core: the regional archive; edge: a site's node that stores locally, "
        "forwards to the core at NETPACS_UPSTREAM_URL and reads through it",
    )
    upstream_url: str | None = Field(
        default=None,
        description="edge: the core's base URL (DICOMweb at <url>/dicomweb, sign-in at "
        "<url>/auth/token)",
    )
    edge_trust: str | None = Field(default=None, description="edge: the ODS code it serves")
    edge_site: str | None = Field(default=None, description="edge: the site code it serves")
    upstream_client_id: str | None = Field(
        default=None,
        description="edge: its OAuth2 client id at the core; demo mode: edge.<ods lower>",
    )
    upstream_client_secret_file: Path | None = Field(
        default=None,
        description="edge: file holding its client secret; demo mode: the demo password",
    )
    upstream_ca_file: Path | None = Field(
        default=None, description="edge: CAs of the core's https certificate; unset: the system's"
    )
    upstream_tls_cert_file: Path | None = Field(
        default=None, description="edge: client certificate (PEM) for mutual TLS to the core"
    )
    upstream_tls_key_file: Path | None = Field(default=None, description="its private key (PEM)")
    upstream_timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="edge: how long a call to the core may take before the edge answers "
        "from its own cache",
    )
    cache_gb: float = Field(
        default=100.0, gt=0, description="edge: size limit of the local object cache (GiB)"
    )
    cache_days: int = Field(
        default=30, ge=0, description="edge: days everything captured at this site is kept"
    )
    cache_check_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="edge: how often reads are taken from the audit trail and the cache's "
        "limit enforced",
    )
    forward_batch: int = Field(
        default=50, ge=1, le=1000, description="edge: instances per STOW-RS request to the core"
    )
    forward_lanes: int = Field(
        default=2, ge=1, le=16, description="edge: studies forwarded to the core at once"
    )
    forward_retry_max_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="edge: longest wait between forwarding attempts"
    )
    heartbeat_seconds: float = Field(
        default=10.0, gt=0, le=3600, description="edge: how often it reports to the core"
    )
    edge_orders_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="edge: how often it copies its site's open orders from the core (for "
        "its Modality Worklist)",
    )
    change_feed_days: float = Field(
        default=7.0,
        gt=0,
        le=3650,
        description="core: change feed entries kept at most this long, even for an edge "
        "that has not read them (it must then resync fully)",
    )
    change_feed_trim_seconds: float = Field(
        default=3600.0, gt=0, le=86400, description="core: how often the change feed is trimmed"
    )

    @model_validator(mode="after")
    def _check_edge(self) -> Settings:
        if self.role != "edge":
            return self
        missing = [
            f"NETPACS_{name.upper()}"
            for name in ("upstream_url", "edge_trust", "edge_site")
            if not getattr(self, name)
        ]
        if missing:
            raise ValueError(f"NETPACS_ROLE=edge needs {', '.join(missing)}")
        url = urlsplit(self.upstream_url or "")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(
                f"NETPACS_UPSTREAM_URL={self.upstream_url!r} must be an http(s):// URL "
                "(e.g. https://pacs.region.nhs.uk)"
            )
        if not self.demo and not (self.upstream_client_id and self.upstream_client_secret_file):
            raise ValueError(
                "NETPACS_ROLE=edge needs NETPACS_UPSTREAM_CLIENT_ID and "
                "NETPACS_UPSTREAM_CLIENT_SECRET_FILE (its client credentials at the core), "
                "or demo mode"
            )
        if (self.upstream_tls_cert_file is None) != (self.upstream_tls_key_file is None):
            raise ValueError(
                "set both NETPACS_UPSTREAM_TLS_CERT_FILE and NETPACS_UPSTREAM_TLS_KEY_FILE, "
                "or neither"
            )
        return self

    @property
    def effective_upstream_client_id(self) -> str:
        """The edge's client id at the core (demo mode: its trust's demo edge account)."""
        return self.upstream_client_id or f"edge.{(self.edge_trust or '').lower()}"


def load_settings(**overrides: Any) -> Settings:
    """Read settings (called only by the composition root and the CLI)."""
    return Settings(**overrides)
