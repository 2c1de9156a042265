"""Association negotiation: who may associate, which contexts and roles are accepted.

PS3.8 9.3.2-9.3.4 and PS3.7 D.3.3.4 (SCP/SCU role selection, needed for C-GET).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AllStoragePresentationContexts

from netpacs.adapters.dimse import pdu as p
from netpacs.domain.outcomes import Origin, Protocol
from netpacs.domain.peer import PeerCertificate
from netpacs.services.access import Principal
from netpacs.services.access_policy import AccessPolicy, Refusal

VERIFICATION = "1.2.840.10008.1.1"
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"  # Push Model SOP Class (PS3.4 J.3)
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
QUERY_RETRIEVE = frozenset(
    {
        PATIENT_ROOT_FIND,
        PATIENT_ROOT_MOVE,
        PATIENT_ROOT_GET,
        STUDY_ROOT_FIND,
        STUDY_ROOT_MOVE,
        STUDY_ROOT_GET,
    }
)
# Modality workflow (issue 15): Modality Worklist FIND (PS3.4 K) and MPPS (PS3.4 F.7).
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
MPPS = "1.2.840.10008.3.1.2.3.3"
WORKFLOW = frozenset({MODALITY_WORKLIST_FIND, MPPS})
# The SOP classes of the Storage Service Class (PS3.4 B.5) that pynetdicom knows.
STORAGE_SOP_CLASSES = frozenset(cx.abstract_syntax for cx in AllStoragePresentationContexts)

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
UNCOMPRESSED = (EXPLICIT_VR_LE, IMPLICIT_VR_LE, DEFLATED, EXPLICIT_VR_BE)
# What a compressed object is decompressed to for a retrieve peer that takes no other.
DECOMPRESS_TO = (EXPLICIT_VR_LE, IMPLICIT_VR_LE)
# Every transfer syntax pydicom knows (including HTJ2K, JPEG-LS, JPEG 2000, RLE, video):
# objects are stored as received, so any encoding a sender offers is acceptable.
STORAGE_TRANSFER_SYNTAXES = frozenset(str(ts) for ts in AllTransferSyntaxes)


@dataclass(slots=True)
class Decision:
    reject: tuple[int, int, int, str] | None = None  # result, source, reason, why
    refusal: Refusal | None = None  # a calling AE refused by the access policy
    origin: Origin | None = None
    principal: Principal | None = None  # who the calling AE acts as
    contexts: list[p.AcceptedContext] = field(default_factory=list)
    roles: list[p.RoleSelection] = field(default_factory=list)


class Negotiator:
    """One association's negotiation. ``certificate``: the TLS client certificate the
    caller presented (set when the connection is made; None on the plain port)."""

    def __init__(
        self, *, access: AccessPolicy, ae_title: str, certificate: PeerCertificate | None = None
    ) -> None:
        self._access = access
        self._ae_title = ae_title
        self.certificate = certificate

    def record_later(self, refusal: Refusal) -> None:
        """Audit a refused caller in a worker thread (negotiation runs on the loop)."""
        asyncio.get_running_loop().run_in_executor(None, self._access.record, refusal)

    def negotiate(self, rq: p.AssociateRequest, address: str | None) -> Decision:
        if rq.application_context != p.APPLICATION_CONTEXT:
            return Decision(
                reject=(
                    p.RJ_PERMANENT,
                    p.RJ_SOURCE_USER,
                    p.RJ_REASON_APP_CONTEXT,
                    f"application context {rq.application_context!r}",
                )
            )
        if rq.called_ae_title != self._ae_title:
            return Decision(
                reject=(
                    p.RJ_PERMANENT,
                    p.RJ_SOURCE_USER,
                    p.RJ_REASON_CALLED_AE,
                    f"called AE title is not {self._ae_title!r}",
                )
            )
        caller = self._access.calling_ae(rq.calling_ae_title, address, self.certificate)
        if isinstance(caller, Refusal):
            reason = (p.RJ_PERMANENT, p.RJ_SOURCE_USER, p.RJ_REASON_CALLING_AE, caller.message)
            return Decision(reject=reason, refusal=caller)
        ae = caller.ae
        origin = Origin(
            Protocol.DIMSE,
            ae_title=rq.calling_ae_title,
            trust=ae.trust if ae else None,
            site=ae.site if ae else None,
        )
        decision = Decision(origin=origin, principal=caller.principal)
        for ctx in rq.contexts:
            decision.contexts.append(self._context(ctx))
        storage_requested = {
            ctx.abstract_syntax
            for ctx, acc in zip(rq.contexts, decision.contexts, strict=True)
            if acc.result == p.PC_ACCEPTANCE
        }
        for role in rq.roles:
            if role.sop_class_uid in storage_requested:
                is_storage = role.sop_class_uid in STORAGE_SOP_CLASSES
                decision.roles.append(
                    p.RoleSelection(role.sop_class_uid, role.scu_role, role.scp_role and is_storage)
                )
        return decision

    def _context(self, ctx: p.ProposedContext) -> p.AcceptedContext:
        abstract = ctx.abstract_syntax
        if abstract in STORAGE_SOP_CLASSES:
            allowed: frozenset[str] | tuple[str, ...] = STORAGE_TRANSFER_SYNTAXES
        elif (
            abstract in (VERIFICATION, STORAGE_COMMITMENT)
            or abstract in QUERY_RETRIEVE
            or abstract in WORKFLOW
        ):
            allowed = UNCOMPRESSED
        else:
            return p.AcceptedContext(
                ctx.context_id, p.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED, IMPLICIT_VR_LE, abstract
            )
        offered = [ts for ts in ctx.transfer_syntaxes if ts in allowed]
        # Big endian is retired (PS3.5 A.3): take it only when nothing else is offered.
        offered.sort(key=lambda ts: ts == EXPLICIT_VR_BE)
        if not offered:
            return p.AcceptedContext(
                ctx.context_id, p.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED, IMPLICIT_VR_LE, abstract
            )
        return p.AcceptedContext(ctx.context_id, p.PC_ACCEPTANCE, offered[0], abstract)
