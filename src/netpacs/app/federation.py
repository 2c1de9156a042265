"""The federation gateway's part of the composition root (issue 14): the outbound
search wired to its DICOMweb and DIMSE clients, with the settings' bounds."""

from __future__ import annotations

import functools
from pathlib import Path

from netpacs.adapters.transports.dicomweb_peer import DicomwebPeer
from netpacs.adapters.transports.dimse_peer import DimsePeer, get_study, move_study
from netpacs.app.container import Archive
from netpacs.app.settings import Settings, split_list
from netpacs.domain.networks import Network, Protocol, Retrieve
from netpacs.services.access import AccessRules
from netpacs.services.federation import FederatedSearch, MoveArrivals, RemoteCache

_MIB = 1 << 20


def dicomweb_peer(settings: Settings) -> DicomwebPeer:
    return DicomwebPeer(
        max_bytes=int(settings.federation_max_answer_mb * _MIB),
        max_studies=settings.federation_max_studies,
        max_retrieve_bytes=settings.federation_max_retrieve_mb * _MIB,
    )


def federated_search(
    archive: Archive, settings: Settings, dicomweb: DicomwebPeer
) -> FederatedSearch | None:
    """The outbound search of a core with ``[[networks]]`` in its region file (None for
    an edge node, or a region without networks)."""
    if settings.role != "core" or not archive.region.networks:
        return None
    dimse = DimsePeer(our_ae_title=settings.ae_title, max_studies=settings.federation_max_studies)
    return FederatedSearch(
        archive.region.networks,
        askers={Protocol.DICOMWEB: dicomweb, Protocol.DIMSE: dimse},
        engine=archive.read_engine,
        audit=archive.audit,
        rules=AccessRules(),
        max_studies=settings.federation_max_studies,
        find_aes=frozenset(split_list(settings.federation_find_aes)),
    )


def remote_cache(search: FederatedSearch, settings: Settings) -> RemoteCache:
    """The cache of DIMSE networks' studies, retrieved with C-GET from our AE title or
    C-MOVEd to it (the network's C-STOREs reach our DIMSE listener: ``arrivals``)."""
    max_bytes = settings.federation_max_retrieve_mb * _MIB
    getter = functools.partial(get_study, our_ae_title=settings.ae_title, max_bytes=max_bytes)
    mover = functools.partial(move_study, our_ae_title=settings.ae_title)

    def retrieve(network: Network, study: str, into: Path) -> int:
        assert network.dimse is not None
        if network.dimse.retrieve is Retrieve.MOVE:
            return mover(network, study, into)
        return getter(network, study, into)

    return RemoteCache(
        settings.data_dir / "federation-cache",
        search,
        retrieve,
        ttl_hours=settings.federation_cache_hours,
        arrivals=move_arrivals(settings),
    )


def move_arrivals(settings: Settings) -> MoveArrivals:
    """Where a DIMSE network's C-STOREs of a C-MOVE to our AE title are written."""
    return MoveArrivals(
        settings.data_dir / "federation-cache",
        max_bytes=settings.federation_max_retrieve_mb * _MIB,
    )
