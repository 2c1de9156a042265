"""Studies retrieved from a DIMSE network, kept apart from our archive (issue 14).

A DIMSE network's study cannot be passed through as a DICOMweb one is: it is retrieved
whole (C-GET, or C-MOVE to our AE title: services.federation.arrivals) into a
directory of its own under the cache directory, never through
ingest, never into the index: it is not ours to report, export or delete, and no
query of our archive finds it. Each directory has an opaque name and a
``provenance.json`` (the network, the study, the patient's NHS number, who asked,
when, until when it is kept); a study past its expiry is removed by the next retrieval.

Who may retrieve: whoever may ask the networks about its patient
(:meth:`FederatedSearch.refusal`); the NHS number comes from the search that found the
study, or from the network's C-FIND answer for its Study Instance UID. Each retrieval
and each use is audited with the network's name.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from netpacs.domain.federation import STUDY_UID, PeerAnswerError, nhs_number_of, text_of
from netpacs.domain.networks import Network, Protocol, Retrieve
from netpacs.domain.nhs_number import is_valid
from netpacs.services.access import Principal
from netpacs.services.audit import Event, Outcome
from netpacs.services.federation.arrivals import MoveArrivals
from netpacs.services.federation.cached_study import CachedStudy, read_instances
from netpacs.services.federation.search import FederatedSearch, FederationRefused

log = logging.getLogger(__name__)

#: Retrieves a whole study of a network into a directory; the number of objects.
Getter = Callable[[Network, str, Path], int]
PROVENANCE = "provenance.json"
_MAX_STUDIES_READ = 16  # cached studies whose headers are kept in memory


class RemoteCache:
    """The cache directory of DIMSE networks' studies (module doc)."""

    def __init__(
        self,
        directory: Path,
        search: FederatedSearch,
        get: Getter,
        *,
        ttl_hours: float,
        arrivals: MoveArrivals,
    ) -> None:
        self.directory = directory
        self._search = search
        self._get = get
        self.arrivals = arrivals  # where a network's C-STOREs of a C-MOVE go
        self._ttl = dt.timedelta(hours=ttl_hours)
        self._lock = threading.Lock()
        self._studies: dict[str, CachedStudy] = {}  # folder -> its headers, read once

    def for_principal(self, principal: Principal) -> RemoteCache:
        scoped = copy.copy(self)
        scoped._search = self._search.for_principal(principal)
        return scoped

    def _nhs_number(self, network: Network, study_uid: str) -> str | None:
        hit = self._search.found.get(self._search.principal.user_id, study_uid)
        if hit is not None and hit[0] == network.name:
            return hit[1]
        asker = self._search.asker(network)
        if asker is None:
            return None
        try:
            items = asker.find_study(network, study_uid)
        except PeerAnswerError:
            return None
        in_other = network.nhs_number_in.answered_in_other_ids
        for item in items[:10]:
            number = nhs_number_of(item, in_other_ids=in_other)
            if text_of(item, STUDY_UID) == study_uid and is_valid(number):
                return number
        return None

    def serves_caller(self) -> bool:
        """Whether the principal is a workstation that works with the other networks
        (``find_aes``): only their C-MOVEs look beyond our archive."""
        return self._search.asks_for_find()

    def holder(self, study_uid: str) -> Network | None:
        """The DIMSE network holding ``study_uid``: where the principal found it lately
        (in this process), else the first DIMSE network whose C-FIND knows it."""
        hit = self._search.found.get(self._search.principal.user_id, study_uid)
        network = next((n for n in self._search.networks if hit and n.name == hit[0]), None)
        if network is not None:
            return network if network.protocol is Protocol.DIMSE else None
        for network in self._search.networks:
            if network.protocol is Protocol.DIMSE:
                number = self._nhs_number(network, study_uid)
                if number is not None:
                    self._search.found.add(
                        self._search.principal.user_id, study_uid, network.name, number
                    )
                    return network
        return None

    def files(
        self, network: Network, study_uid: str, purpose: str, *, record_use: bool = True
    ) -> list[Path]:
        """The study's Part 10 files, retrieved now or still cached; raises
        :class:`FederationRefused` or :class:`PeerAnswerError`. A retrieval is always
        audited; a use of the cached study only with ``record_use`` (the viewer's many
        requests are audited once, as the study's opening: services.federation.remote)."""
        if network.dimse is None:
            raise PeerAnswerError(f"{network.name} is no DIMSE network")
        with self._lock:
            folder = self._cached(network, study_uid)
        nhs_number = self._provenance(folder).get("nhs_number") if folder else None
        if not nhs_number:
            nhs_number = self._nhs_number(network, study_uid)
        if nhs_number is None:
            raise PeerAnswerError(f"{network.name} does not answer for study {study_uid}")
        refusal = self._search.refusal(nhs_number)
        if refusal is not None:
            self._search.record(
                Event.RETRIEVE,
                nhs_number,
                [study_uid],
                Outcome.MINOR_FAILURE,
                f"retrieval of a study held by {network.name} refused: {refusal}",
            )
            raise FederationRefused(refusal)
        with self._lock:
            self._sweep()
            folder = self._cached(network, study_uid)
            fetched = folder is None
            if folder is None:
                folder = self._retrieve(network, study_uid, nhs_number)
        files = sorted(folder.glob("*.dcm"))
        how = "retrieved into the federation cache" if fetched else "from the federation cache"
        if fetched or record_use:
            self._search.record(
                Event.RETRIEVE,
                nhs_number,
                [study_uid],
                Outcome.SUCCESS,
                f"study held by {network.name} ({len(files)} objects, {how}): {purpose}",
            )
        return files

    def study(self, network: Network, study_uid: str) -> CachedStudy:
        """The cached study as DICOMweb answers (retrieved first when not cached), for
        the viewer; as :meth:`files`."""
        files = self.files(network, study_uid, "opened in the viewer", record_use=False)
        key = str(files[0].parent) if files else ""
        with self._lock:
            known = self._studies.get(key)
        if known is not None and len(known.instances) == len(files):
            return known
        study = CachedStudy(read_instances(files))
        if not study.instances:
            raise PeerAnswerError(f"{network.name} sent nothing readable for study {study_uid}")
        with self._lock:
            if len(self._studies) >= _MAX_STUDIES_READ:
                self._studies.clear()
            self._studies[key] = study
        return study

    @staticmethod
    def _provenance(folder: Path) -> dict[str, str]:
        try:
            out: dict[str, str] = json.loads((folder / PROVENANCE).read_text())
            return out
        except (OSError, ValueError):
            return {}

    def _retrieve(self, network: Network, study_uid: str, nhs_number: str) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        folder = self.directory / uuid.uuid4().hex
        folder.mkdir()
        try:
            assert network.dimse is not None
            if network.dimse.retrieve is Retrieve.MOVE:
                with self.arrivals.expecting(network.name, study_uid, folder):
                    # Another process may have retrieved it while this one waited.
                    done = self._cached(network, study_uid)
                    if done is not None:
                        folder.rmdir()
                        return done
                    self._get(network, study_uid, folder)
            else:
                self._get(network, study_uid, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        now = dt.datetime.now(dt.UTC)
        provenance = {
            "network": network.name,
            "study_instance_uid": study_uid,
            "nhs_number": nhs_number,
            "retrieved_by": self._search.principal.user_id,
            "retrieved_at": now.isoformat(timespec="seconds"),
            "expires_at": (now + self._ttl).isoformat(timespec="seconds"),
        }
        (folder / PROVENANCE).write_text(json.dumps(provenance, indent=1))
        return folder

    def _entries(self) -> list[tuple[Path, dict[str, str]]]:
        out = []
        for path in self.directory.glob(f"*/{PROVENANCE}") if self.directory.is_dir() else []:
            try:
                out.append((path.parent, json.loads(path.read_text())))
            except (OSError, ValueError):
                continue
        return out

    def _cached(self, network: Network, study_uid: str) -> Path | None:
        for folder, p in self._entries():
            if p.get("network") == network.name and p.get("study_instance_uid") == study_uid:
                return folder
        return None

    def _sweep(self) -> None:
        """Remove the studies past their expiry."""
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        for folder, p in self._entries():
            if str(p.get("expires_at", "")) < now:
                log.info("federation cache: %s of %s expired", folder.name, p.get("network"))
                shutil.rmtree(folder, ignore_errors=True)
