"""The federation gateway's outbound search (issue 14): a patient's studies at the
neighbouring networks, by NHS number, for one signed-in principal.

Who may ask (decided here, once): a principal that may query and may see, here, a
patient with that NHS number (the care relationship of services.access, a reporting
assignment or a break-glass grant; a PACS administrator sees everyone). Asking another
network about a patient discloses that the patient is ours: it is allowed for the
patients one may already see, and the search is audited (a Query event naming the NHS
number, every network asked and what each answered) before any answer is shown.
A refused search is audited too.

Every network is asked at once, each in a thread with its own timeout
(``[[networks]] timeout_seconds``, 2 s by default); a network that has not answered by
then, or that answered something unusable, is named in a warning and the search goes
on without it. Nothing a network answers is stored.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import dataclasses
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Protocol as TypingProtocol

import sqlalchemy as sa

from netpacs.domain.dicom.header import JsonDataset
from netpacs.domain.federation import (
    FederatedAnswer,
    NetworkOutcome,
    PeerAnswerError,
    RemoteStudy,
    clean_study,
    holds_nhs_number,
)
from netpacs.domain.networks import Network, Protocol
from netpacs.domain.nhs_number import parse
from netpacs.index.schema import patient, study
from netpacs.services.access import NOBODY, AccessRules, Capability, Principal, Role
from netpacs.services.audit import AuditRecord, AuditService, Event, Outcome, Purpose

log = logging.getLogger(__name__)

_GRACE = 0.15  # seconds past a network's timeout before it is named as not answering


class Asker(TypingProtocol):
    """How one protocol asks a network for a patient's studies (adapters.transports):
    the raw study items, or :class:`PeerAnswerError`."""

    def find_studies(self, network: Network, nhs_number: str) -> list[JsonDataset]: ...

    def find_study(self, network: Network, study_instance_uid: str) -> list[JsonDataset]:
        """The network's answers for one Study Instance UID (whose patient it is)."""
        ...


class FoundStudies:
    """Remote studies a user found, for a while (bounded; thread-safe)."""

    TTL = 900.0  # seconds
    MAX = 20_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], tuple[str, str, float]] = {}
        self._opened: set[tuple[str, str]] = set()

    def add(self, user: str, study_uid: str, network: str, nhs_number: str) -> None:
        with self._lock:
            if len(self._entries) >= self.MAX:
                self._entries.clear()
                self._opened.clear()
            self._entries[(user, study_uid)] = (network, nhs_number, time.monotonic() + self.TTL)
            self._opened.discard((user, study_uid))

    def get(self, user: str, study_uid: str) -> tuple[str, str] | None:
        """(network, NHS number) of a study ``user`` found lately, or None."""
        with self._lock:
            entry = self._entries.get((user, study_uid))
        if entry is None or entry[2] < time.monotonic():
            return None
        return entry[0], entry[1]

    def first_open(self, user: str, study_uid: str) -> bool:
        """True the first time ``user`` opens the study since it was found (to audit)."""
        with self._lock:
            if (user, study_uid) in self._opened:
                return False
            self._opened.add((user, study_uid))
            return True


class FederationRefused(Exception):
    """The principal may not ask other networks about this patient (message says why)."""


class FederatedSearch:
    """Asks every network of the region file about one NHS number (module doc)."""

    def __init__(
        self,
        networks: Sequence[Network],
        *,
        askers: Mapping[Protocol, Asker],
        engine: sa.Engine,
        audit: AuditService,
        rules: AccessRules,
        max_studies: int,
        find_aes: frozenset[str] = frozenset(),
        principal: Principal = NOBODY,
    ) -> None:
        """``find_aes``: the workstations (AE titles) whose C-FIND by NHS number also
        asks the networks (a setting: an AE is a trust's application, not a person)."""
        self.networks = tuple(networks)
        self._askers = dict(askers)
        self._engine = engine
        self._audit = audit
        self._rules = rules
        self._max_studies = max_studies
        self._principal = principal
        self._find_aes = find_aes
        # Threads are shared by every copy: a network that hangs holds one until its
        # own client's timeout ends the call.
        self._pool = cf.ThreadPoolExecutor(
            max_workers=max(4, 4 * len(self.networks)), thread_name_prefix="federation"
        )
        # The remote studies each user found or opened lately (user, Study UID) ->
        # (network, NHS number, until): a cache of what a search established, so the
        # viewer's many requests for one study need not ask the networks again.
        self.found = FoundStudies()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def principal(self) -> Principal:
        return self._principal

    @property
    def pool(self) -> cf.ThreadPoolExecutor:
        return self._pool

    def asker(self, network: Network) -> Asker | None:
        return self._askers.get(network.protocol)

    def record(
        self, event: Event, nhs_number: str, studies: list[str], outcome: Outcome, detail: str
    ) -> None:
        """An audit record of the principal about the patient with ``nhs_number``."""
        p = self._principal
        self._audit.record(
            AuditRecord(
                event=event,
                actor=p.actor(),
                outcome=outcome,
                purpose=Purpose.HOPERAT if p.role is Role.ADMIN else Purpose.TREAT,
                patients=[(nhs_number, "NHS")],
                study_uids=studies,
                detail=detail,
            )
        )

    def for_principal(self, principal: Principal) -> FederatedSearch:
        scoped = copy.copy(self)
        scoped._principal = principal
        return scoped

    # -- access ----------------------------------------------------------------------------
    def asks_for_find(self) -> bool:
        """Whether the principal's C-FIND by NHS number includes the other networks: a
        workstation named in ``find_aes``."""
        p = self._principal
        return p.role is Role.APPLICATION and p.user_id in self._find_aes

    def role_refusal(self) -> str | None:
        """Why the principal may not ask other networks about anyone, or None."""
        p = self._principal
        if not p.may(Capability.QUERY) or not p.may(Capability.SEE_IMAGING):
            return "you may not search for studies"
        people = (Role.RADIOLOGIST, Role.RADIOGRAPHER, Role.CLINICIAN, Role.ADMIN)
        if p.role not in people and not self.asks_for_find():
            return "only a signed-in clinical user or administrator may ask other networks"
        return None

    def refusal(self, nhs_number: str) -> str | None:
        """Why the principal may not ask other networks about ``nhs_number``, or None."""
        p = self._principal
        refused = self.role_refusal()
        if refused is not None:
            return refused
        if p.sees_everything:
            return None
        visible = self._rules.visible_patients(p)
        conditions = [patient.c.nhs_number == nhs_number]
        if visible is not None:
            conditions.append(visible)
        with self._engine.connect() as conn:
            found = conn.execute(sa.select(patient.c.id).where(*conditions).limit(1)).first()
        if found is None:
            return (
                "other networks are asked only about a patient you care for here "
                "(or have break-glass access to)"
            )
        return None

    # -- the search ------------------------------------------------------------------------
    def search(self, nhs_number: str) -> FederatedAnswer:
        """Every network's studies of the patient (module doc); :class:`ValueError` for
        a value that is not a valid NHS number, :class:`FederationRefused`."""
        parsed = parse(nhs_number)
        if parsed.problem is not None:
            raise ValueError(
                f"{nhs_number[:20]!r} is not a valid NHS number: it {parsed.problem.value}"
            )
        number = parsed.digits
        refusal = self.refusal(number)
        if refusal is not None:
            self._record(number, [], Outcome.MINOR_FAILURE, f"federated search refused: {refusal}")
            raise FederationRefused(refusal)
        if not self.networks:
            return FederatedAnswer(number)
        started = time.monotonic()
        futures = [(n, self._pool.submit(self._ask, n, number)) for n in self.networks]
        outcomes: list[NetworkOutcome] = []
        for network, future in futures:
            left = started + network.timeout_seconds + _GRACE - time.monotonic()
            try:
                outcomes.append(future.result(timeout=max(0.0, left)))
            except cf.TimeoutError:
                future.cancel()
                waited = time.monotonic() - started
                outcomes.append(
                    NetworkOutcome(
                        network.name,
                        warning=f"no answer within {network.timeout_seconds:g} s",
                        seconds=waited,
                    )
                )
        answer = FederatedAnswer(number, tuple(self._not_ours(outcomes)))
        for remote in answer.studies:
            self.found.add(
                self._principal.user_id, remote.study_instance_uid, remote.network, number
            )
        detail = "federated study search: " + "; ".join(_summary(o) for o in outcomes)
        self._record(
            number, [s.study_instance_uid for s in answer.studies], Outcome.SUCCESS, detail
        )
        return answer

    def held_here(self, study_uid: str) -> bool:
        """Whether our archive holds a study with this UID (whoever may see it)."""
        with self._engine.connect() as conn:
            found = conn.execute(
                sa.select(study.c.id).where(study.c.study_instance_uid == study_uid)
            ).first()
        return found is not None

    def _not_ours(self, outcomes: list[NetworkOutcome]) -> list[NetworkOutcome]:
        """The outcomes without the studies we hold too (the same Study Instance UID, as
        after an image exchange): ours is the one listed and opened."""
        uids = [s.study_instance_uid for o in outcomes for s in o.studies]
        if not uids:
            return outcomes
        with self._engine.connect() as conn:
            held = set(
                conn.execute(
                    sa.select(study.c.study_instance_uid).where(
                        study.c.study_instance_uid.in_(uids[:1000])
                    )
                ).scalars()
            )
        if not held:
            return outcomes
        return [
            dataclasses.replace(
                o, studies=tuple(s for s in o.studies if s.study_instance_uid not in held)
            )
            for o in outcomes
        ]

    def _ask(self, network: Network, nhs_number: str) -> NetworkOutcome:
        started = time.monotonic()
        asker = self._askers.get(network.protocol)
        try:
            if asker is None:
                raise PeerAnswerError(f"{network.protocol.value} is not supported")
            items = asker.find_studies(network, nhs_number)
            studies, warning = self._checked(network, nhs_number, items)
        except PeerAnswerError as exc:
            studies, warning = [], str(exc)
        except Exception as exc:  # a defect in a client must not fail the whole search
            log.exception("asking %s failed", network.name)
            studies, warning = [], f"failed ({type(exc).__name__})"
        if warning:
            log.warning("federated search at %s: %s", network.name, warning)
        return NetworkOutcome(network.name, tuple(studies), warning, time.monotonic() - started)

    def _checked(
        self, network: Network, nhs_number: str, items: list[JsonDataset]
    ) -> tuple[list[RemoteStudy], str | None]:
        in_other = network.nhs_number_in.answered_in_other_ids
        studies: list[RemoteStudy] = []
        seen: set[str] = set()
        bad = other = 0
        for item in items[: self._max_studies + 1]:
            if not isinstance(item, dict):
                bad += 1
                continue
            if not holds_nhs_number(item, nhs_number, in_other_ids=in_other):
                other += 1
                continue
            try:
                dataset = clean_study(item)
            except PeerAnswerError:
                bad += 1
                continue
            uid = str(dataset["0020000D"]["Value"][0])
            if uid not in seen:
                seen.add(uid)
                studies.append(RemoteStudy(network.name, dataset))
        problems = []
        if len(studies) > self._max_studies:
            del studies[self._max_studies :]
            problems.append(f"more than {self._max_studies} studies: the first shown")
        if bad:
            problems.append(f"{bad} answers that could not be read were left out")
        if other:
            problems.append(f"{other} answers of another patient were left out")
        return studies, "; ".join(problems) or None

    def _record(self, nhs_number: str, studies: list[str], outcome: Outcome, detail: str) -> None:
        p = self._principal
        names = ", ".join(n.name for n in self.networks) or "none"
        self._audit.record(
            AuditRecord(
                event=Event.QUERY,
                actor=p.actor(),
                outcome=outcome,
                purpose=Purpose.HOPERAT if p.role is Role.ADMIN else Purpose.TREAT,
                patients=[(nhs_number, "NHS")],
                study_uids=studies,
                query=f"PatientID={nhs_number}&IssuerOfPatientID=NHS at networks: {names}",
                detail=detail,
            )
        )


def _summary(outcome: NetworkOutcome) -> str:
    text = f"{outcome.network} {len(outcome.studies)} studies"
    return f"{text} ({outcome.warning})" if outcome.warning else text
