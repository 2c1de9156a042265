"""The federation gateway (issue 14): the neighbouring networks' studies of our
patients, asked for by NHS number (outbound)."""

from netpacs.services.federation.arrivals import MoveArrivals
from netpacs.services.federation.cache import RemoteCache
from netpacs.services.federation.remote import RemoteStudies
from netpacs.services.federation.search import Asker, FederatedSearch, FederationRefused

__all__ = [
    "Asker",
    "FederatedSearch",
    "FederationRefused",
    "MoveArrivals",
    "RemoteCache",
    "RemoteStudies",
]
