"""The one access decision for every interface: may this principal do this, and who is
calling over DICOM.

DIMSE, HTTP (DICOMweb, FHIR, the API, the pages) and HL7 ask :class:`AccessPolicy`
whether a principal has a capability (:class:`~netpacs.services.access.Capability`):
for users from their role, for DICOM AEs from the region file's permissions. Every
refusal is audited here, once, alike for every interface (PS3.15 A.5.3.11 Security
Alert, "Use of a restricted function"), and answered with a reason the adapter passes on
(a DIMSE status comment, an HTTP 403 message). Which patients a principal may see is
decided by :class:`~netpacs.services.access.AccessRules` in the query service.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NoReturn

from netpacs.domain.peer import Peer, PeerCertificate
from netpacs.domain.region import ApplicationEntity, Region
from netpacs.services.access import Capability, Principal, principal_for_ae, roles_with
from netpacs.services.audit import AuditRecord, AuditService, Event, Outcome
from netpacs.services.partners import dimse_caller

log = logging.getLogger(__name__)

#: What a refusal says the principal tried, in words (audit detail and messages).
DOING: dict[Capability, str] = {
    Capability.SEE_IMAGING: "see imaging",
    Capability.QUERY: "query imaging",
    Capability.RETRIEVE: "retrieve imaging",
    Capability.SEND: "send imaging to another AE",
    Capability.STORE: "store imaging",
    Capability.BREAK_GLASS: "use break-glass",
    Capability.RECONCILE: "reconcile patient identities",
    Capability.READ_AUDIT: "read the audit trail",
    Capability.REPORT: "report studies",
    Capability.MANAGE_WORKLIST: "manage the reporting worklist",
    Capability.DELETE: "delete studies",
    Capability.ACT_FOR_USERS: "act for another user",
    Capability.CONFIRM_STORED: "ask what the archive holds for an edge node",
    Capability.SEE_EDGES: "see the edge nodes",
    Capability.WORKLIST: "use the modality worklist and report performed procedure steps",
}


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a principal may not do what it asked (for the caller, and audited)."""

    principal: Principal
    capability: Capability
    message: str


@dataclass(frozen=True, slots=True)
class Caller:
    """A calling DICOM AE admitted to associate: who it acts as, and its region entry
    (None: not in the region file, let in because unknown AEs are accepted)."""

    principal: Principal
    ae: ApplicationEntity | None


class AccessDenied(Exception):
    """Raised by :meth:`AccessPolicy.require`; the refusal is already audited."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal
        self.message = refusal.message


class AccessPolicy:
    def __init__(
        self,
        region: Region,
        audit: AuditService,
        *,
        reject_unknown_calling_ae: bool = True,
        require_ae_hosts: bool = False,
    ) -> None:
        self._region = region
        self._audit = audit
        self._reject_unknown = reject_unknown_calling_ae
        self._require_hosts = require_ae_hosts

    # -- DICOM callers ----------------------------------------------------------------
    def calling_ae(
        self, ae_title: str, address: str | None, certificate: PeerCertificate | None = None
    ) -> Caller | Refusal:
        """Who a calling DICOM AE acts as, or a refusal: an AE title not in the region
        file (when unknown AEs are refused), or one of the region called from an address
        not among its ``hosts`` or without the TLS client certificate the region file
        names for it (``certificate``: the one presented, verified by the handshake).
        An AE with neither ``hosts`` nor a certificate may call from anywhere, unless
        ``require_ae_hosts`` (as Orthanc's DicomCheckModalityHost checks only the hosts
        it knows). Decided without I/O (association negotiation runs on the event
        loop): the caller passes a refusal to :meth:`record`."""
        ae = self._region.ae(ae_title)
        if ae is None:  # a partner network's AE (issue 14)?
            partner = dimse_caller(self._region.networks, ae_title, address)
            if isinstance(partner, str):
                return Refusal(principal_for_ae(None, ae_title, address), Capability.QUERY, partner)
            if partner is not None:
                return Caller(partner, None)
        principal = principal_for_ae(ae, ae_title, address)
        if ae is None:
            if self._reject_unknown:
                return Refusal(
                    principal, Capability.STORE, "calling AE title is not in the region file"
                )
            return Caller(principal, None)
        problem = ae.caller.problem(Peer(address, certificate))
        if problem is None and self._require_hosts and not ae.caller.is_known:
            problem = (
                "has neither hosts nor a TLS certificate in the region file, and every AE "
                "must have (NETPACS_DIMSE_REQUIRE_AE_HOSTS)"
            )
        if problem is not None:
            return Refusal(principal, Capability.STORE, f"calling AE {ae.ae_title} {problem}")
        return Caller(principal, ae)

    def move_destination(self, principal: Principal, ae_title: str) -> ApplicationEntity | Refusal:
        """Where a C-MOVE may send: an AE of the region with a port, and one of the
        caller's ``move_destinations`` (region file). A refusal is audited."""
        dest = self._region.ae(ae_title)
        caller = self._region.ae(principal.user_id)
        if dest is None or dest.port is None:
            message = f"move destination {ae_title!r} is not a known AE with a port"
        elif caller is None or not caller.may_move_to(ae_title):
            message = f"{principal.user_id} may not send to {ae_title!r} (region file)"
        else:
            return dest
        refusal = Refusal(principal, Capability.SEND, message)
        self.record(refusal)
        return refusal

    # -- capabilities -----------------------------------------------------------------
    def decide(self, principal: Principal, capability: Capability) -> Refusal | None:
        """None when ``principal`` may; else the refusal, for the caller to :meth:`record`
        (no I/O: for an event loop, which records a refusal in a worker thread)."""
        if principal.may(capability):
            return None
        return Refusal(principal, capability, self._why(principal, capability))

    def check(self, principal: Principal, capability: Capability) -> Refusal | None:
        """None when ``principal`` may; else the refusal, audited."""
        refusal = self.decide(principal, capability)
        if refusal is not None:
            self.record(refusal)
        return refusal

    def require(self, principal: Principal, capability: Capability) -> None:
        """As :meth:`check`, raising :class:`AccessDenied` on a refusal."""
        refusal = self.check(principal, capability)
        if refusal is not None:
            raise AccessDenied(refusal)

    def deny(self, principal: Principal, capability: Capability, message: str) -> NoReturn:
        """Refuse a principal that has the capability but not for this (another trust's
        report, say): audited, then :class:`AccessDenied`."""
        refusal = Refusal(principal, capability, message)
        self.record(refusal)
        raise AccessDenied(refusal)

    @staticmethod
    def _why(principal: Principal, capability: Capability) -> str:
        if principal.capabilities is not None:  # a DICOM AE
            return f"{principal.user_id} may not {DOING[capability]} (region file permissions)"
        role = principal.role.value
        article = "an" if role[0] in "aeiou" else "a"
        who = [f"{r.value}s" for r in roles_with(capability)]
        may = " and ".join([", ".join(who[:-1]), who[-1]] if len(who) > 1 else who)
        return f"{article} {role} may not {DOING[capability]}" + (f"; {may} may" if may else "")

    def record(self, refusal: Refusal) -> None:
        """Audit a refusal: a security alert naming who was refused what, and why."""
        principal = refusal.principal
        log.warning(
            "refused %s (%s): %s", principal.user_id, principal.trust or "-", refusal.message
        )
        self._audit.record(
            AuditRecord(
                Event.SECURITY_ALERT,
                principal.actor(),
                outcome=Outcome.MINOR_FAILURE,
                detail=f"refused: {refusal.message}",
            )
        )
