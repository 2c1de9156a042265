"""What the HTTP routes reach: the services of this worker process, and request helpers."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from netpacs.app import Archive
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
