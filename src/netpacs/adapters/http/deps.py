"""What the HTTP routes reach: the services of this worker process, and request helpers."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from netpacs.adapters.http.errors import HttpError
from netpacs.app import Archive
from netpacs.domain.uids import is_valid_uid
from netpacs.services.ingest import IngestService
from netpacs.services.query import QueryService
from netpacs.services.retrieve import RetrieveService

DICOMWEB_ROOT = "/dicomweb"


@dataclass
class HttpServices:
    archive: Archive
    query: QueryService
    retrieve: RetrieveService

    @property
    def ingest(self) -> IngestService:
        return self.archive.ingest

    @classmethod
    def of(cls, archive: Archive) -> HttpServices:
        query = QueryService(archive.read_engine)
        return cls(
            archive=archive, query=query, retrieve=RetrieveService(query=query, blobs=archive.blobs)
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
    """FastAPI dependency: the services of the worker answering this request."""
    svc: HttpServices = request.app.state.services
    return svc


def base_url(request: Request) -> str:
    """The URL clients reach us at, without a trailing slash (for BulkDataURIs, links)."""
    svc: HttpServices = request.app.state.services
    configured = svc.archive.settings.public_url
    if configured:
        return configured.rstrip("/")
    return str(request.base_url).rstrip("/")
