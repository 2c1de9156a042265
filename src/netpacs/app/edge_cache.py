"""The composition of an edge's cache jobs (issue 13): prefetch on admission, catch-up
of the core's changes, the cache keeper. Built by the job worker of an edge only."""

from __future__ import annotations

from netpacs.adapters.transports.core_archive import CoreArchiveClient
from netpacs.app.container import Archive, Edge
from netpacs.app.settings import Settings
from netpacs.index.edge_cache import unconfirmed_studies
from netpacs.services.edge.cache import CacheKeeper, CachePolicy
from netpacs.services.edge.catchup import CatchUp
from netpacs.services.edge.prefetch import Prefetcher
from netpacs.services.jobs.runner import Job

GIB = 1024**3


def cache_keeper(settings: Settings, archive: Archive) -> CacheKeeper:
    return CacheKeeper(
        CachePolicy(limit_bytes=int(settings.cache_gb * GIB), keep_days=settings.cache_days),
        run=archive.writer.execute,
        blobs=archive.blobs,
        unconfirmed=unconfirmed_studies,
        every=settings.cache_check_seconds,
    )


def cache_jobs(settings: Settings, archive: Archive, edge: Edge) -> list[Job]:
    core = CoreArchiveClient(edge.upstream)
    run = archive.writer.execute
    return [
        Prefetcher(core, run=run, stores=archive.stores, trust=edge.trust),
        CatchUp(
            core, run=run, blobs=archive.blobs, trust=edge.trust, unconfirmed=unconfirmed_studies
        ),
        cache_keeper(settings, archive),
    ]
