"""What the HTTP routes reach: the services of this worker process, and request helpers."""

from __future__ import annotations

from dataclasses import dataclass, replace

from fastapi import Request

from netpacs.adapters.http.errors import HttpError
from netpacs.app import Archive
from netpacs.domain.uids import is_valid_uid
from netpacs.services.access import NOBODY, Principal
from netpacs.services.accounts import AccountService, load_secret
from netpacs.services.audit import AuditService
from netpacs.services.ingest import IngestService
from netpacs.services.query import QueryService
from netpacs.services.reporting import ReportingService
from netpacs.services.retrieve import RetrieveService

DICOMWEB_ROOT = "/dicomweb"


@dataclass(frozen=True)
class HttpServices:
    """The services of one worker, scoped to the principal of one request.

    The worker's own instance answers for :data:`NOBODY` (it sees no patient);
    the authentication dependency gives each request a copy scoped to its user.
    """

    archive: Archive
    query: QueryService
    retrieve: RetrieveService
    audit: AuditService
    accounts: AccountService
    reporting: ReportingService

    @property
    def ingest(self) -> IngestService:
        return self.archive.ingest

    @property
    def principal(self) -> Principal:
        return self.query.principal

    def for_principal(self, principal: Principal) -> HttpServices:
        principal = self.reporting.with_agreements(principal)
        query = self.query.for_principal(principal)
        return replace(
            self,
            query=query,
            retrieve=RetrieveService(query=query, blobs=self.archive.blobs),
            reporting=self.reporting.for_principal(principal),
        )

    @classmethod
    def of(cls, archive: Archive) -> HttpServices:
        settings = archive.settings
        audit = AuditService(archive.writer.execute, source_id=settings.ae_title)
        query = QueryService(archive.read_engine, principal=NOBODY, audit=audit)
        accounts = AccountService(
            archive.read_engine,
            secret=load_secret(settings.effective_auth_secret_file),
            audit=audit,
            token_minutes=settings.token_minutes,
            signin_attempts=settings.signin_attempts,
            signin_window_minutes=settings.signin_window_minutes,
        )
        return cls(
            archive=archive,
            query=query,
            retrieve=RetrieveService(query=query, blobs=archive.blobs),
            audit=audit,
            accounts=accounts,
            reporting=ReportingService(
                archive.read_engine,
                archive.write_engine,
                archive.region,
                principal=NOBODY,
                audit=audit,
                outputs=archive.report_outputs,
            ),
        )


def check_url_uids(**uids: str | None) -> None:
    """400 for a UID in the URL that is not one (PS3.5 9.1); keywords name the level
    (``Study``, ``Series``, ``SOP``). Checked before any query: a ``*`` there would
    otherwise be universal matching."""
    for name, uid in uids.items():
        if uid is not None and not is_valid_uid(uid):
            raise HttpError(
                400, f"{uid[:80]!r} in the URL is not a valid {name} Instance UID (PS3.5 9.1)"
            )


def services(request: Request) -> HttpServices:
    """FastAPI dependency: the services answering this request, for its principal."""
    scoped: HttpServices | None = getattr(request.state, "services", None)
    if scoped is not None:
        return scoped
    svc: HttpServices = request.app.state.services
    return svc


def base_url(request: Request) -> str:
    """The URL clients reach us at, without a trailing slash (for BulkDataURIs, links)."""
    svc: HttpServices = request.app.state.services
    configured = svc.archive.settings.public_url
    if configured:
        return configured.rstrip("/")
    return str(request.base_url).rstrip("/")
