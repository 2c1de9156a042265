"""Opening another network's study through netpacs (issue 14): which network holds a
study, and whether the principal may open it. The study's objects are passed through
on demand (adapters.http.remote); nothing is stored in our archive, so a remote study
is never reported, exported or deleted as ours.

A study may be opened by a principal who may ask the networks about its patient
(:meth:`FederatedSearch.refusal`): the NHS number comes from the search that found it,
or, when this process has not seen that search (another worker, or a link followed
later), from the network's own answer for the Study Instance UID. The first opening
after each search is audited (Instances Accessed, naming the network).
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import threading
import time

from netpacs.domain.federation import STUDY_UID, PeerAnswerError, nhs_number_of, text_of
from netpacs.domain.networks import Network, Protocol
from netpacs.domain.nhs_number import is_valid
from netpacs.services.access import Principal
from netpacs.services.audit import Event, Outcome
from netpacs.services.federation.search import FederatedSearch, FederationRefused

_VERDICT_SECONDS = 60.0  # how long "ours" or "no network holds it" is believed
_MAX_VERDICTS = 50_000


class RemoteStudies:
    """Where a remote study is, for one principal (module doc)."""

    def __init__(self, search: FederatedSearch, *, opens_dimse: bool = False) -> None:
        self._search = search
        # Whether DIMSE networks' studies open too (retrieved into the federation cache).
        self._opens_dimse = opens_dimse
        # Study UID (and user, for "no network") -> until: the viewer's many requests
        # for a study of ours, or one nobody holds, do not each ask again.
        self._verdicts: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def for_principal(self, principal: Principal) -> RemoteStudies:
        scoped = copy.copy(self)
        scoped._search = self._search.for_principal(principal)
        return scoped

    def _believed(self, key: tuple[str, str]) -> bool:
        with self._lock:
            until = self._verdicts.get(key)
        return until is not None and until > time.monotonic()

    def _believe(self, key: tuple[str, str]) -> None:
        with self._lock:
            if len(self._verdicts) >= _MAX_VERDICTS:
                self._verdicts.clear()
            self._verdicts[key] = time.monotonic() + _VERDICT_SECONDS

    def route(self, study_uid: str) -> str | None:
        """The network whose path a viewer request for ``study_uid`` goes to: a study
        the principal found lately, else (a request another process's search led to)
        a study we do not hold that a network holds (:meth:`openable`) and the principal
        may open; None: answer it from our archive."""
        name = self.known(study_uid)
        if name is not None:
            return name
        if self._search.role_refusal() is not None:
            return None
        ours, nowhere = ("", study_uid), (self._search.principal.user_id, study_uid)
        if self._believed(ours) or self._believed(nowhere):
            return None
        if self._search.held_here(study_uid):
            self._believe(ours)
            return None
        try:
            found = self.locate(study_uid)
        except FederationRefused:
            found = None
        if found is None:
            self._believe(nowhere)
            return None
        return found.name

    def passable(self, name: str) -> Network | None:
        """The network ``name`` if its studies can be passed through (DICOMweb)."""
        network = next((n for n in self._search.networks if n.name == name), None)
        return network if network and network.protocol is Protocol.DICOMWEB else None

    def openable(self, name: str) -> Network | None:
        """The network ``name`` if its studies open through us: passed through (DICOMweb)
        or from the federation cache (DIMSE, when this process has the cache)."""
        network = next((n for n in self._search.networks if n.name == name), None)
        if network is None or (network.protocol is Protocol.DIMSE and not self._opens_dimse):
            return None
        return network

    def known(self, study_uid: str) -> str | None:
        """The network of a study the principal found lately in this process, or None
        (no network is asked)."""
        hit = self._search.found.get(self._search.principal.user_id, study_uid)
        return hit[0] if hit and self.openable(hit[0]) else None

    def nhs_number(self, study_uid: str) -> str | None:
        """The NHS number of a study the principal found lately in this process."""
        hit = self._search.found.get(self._search.principal.user_id, study_uid)
        return hit[1] if hit else None

    def locate(self, study_uid: str, network: str | None = None) -> Network | None:
        """The network holding ``study_uid`` (only ``network`` when given; DICOMweb, or
        DIMSE: :meth:`openable`) that the principal may open it from; None when none
        holds it. Raises
        :class:`FederationRefused` when the principal may not see its patient."""
        user = self._search.principal.user_id
        hit = self._search.found.get(user, study_uid)
        if hit is not None and (network is None or hit[0] == network):
            found = self.openable(hit[0])
            if found is not None:
                self._opened(found, study_uid, hit[1])
                return found
        candidates = [
            n
            for n in self._search.networks
            if self.openable(n.name) and (network is None or n.name == network)
        ]
        holder = self._ask(candidates, study_uid)
        if holder is None:
            return None
        found, nhs_number = holder
        refusal = self._search.refusal(nhs_number)
        if refusal is not None:
            self._search.record(
                Event.ACCESS,
                nhs_number,
                [study_uid],
                Outcome.MINOR_FAILURE,
                f"opening a study held by {found.name} refused: {refusal}",
            )
            raise FederationRefused(refusal)
        self._search.found.add(user, study_uid, found.name, nhs_number)
        self._opened(found, study_uid, nhs_number)
        return found

    def _opened(self, network: Network, study_uid: str, nhs_number: str) -> None:
        how = "passed through, not stored"
        if network.protocol is Protocol.DIMSE:
            how = "from the federation cache, apart from our archive"
        if self._search.found.first_open(self._search.principal.user_id, study_uid):
            self._search.record(
                Event.ACCESS,
                nhs_number,
                [study_uid],
                Outcome.SUCCESS,
                f"study held by {network.name} opened ({how})",
            )

    def _ask(self, networks: list[Network], study_uid: str) -> tuple[Network, str] | None:
        """The first network that answers for the study with a valid NHS number."""
        futures = {}
        for n in networks:
            asker = self._search.asker(n)
            if asker is not None:
                futures[self._search.pool.submit(asker.find_study, n, study_uid)] = n
        timeout = max((n.timeout_seconds for n in networks), default=0.0) + 0.15
        try:
            for future in cf.as_completed(futures, timeout=max(0.0, timeout)):
                n = futures[future]
                try:
                    items = future.result()
                except PeerAnswerError:
                    continue
                in_other = n.nhs_number_in.answered_in_other_ids
                for item in items[:10]:
                    number = nhs_number_of(item, in_other_ids=in_other)
                    if text_of(item, STUDY_UID) == study_uid and is_valid(number):
                        return n, number
        except cf.TimeoutError:
            pass
        return None
