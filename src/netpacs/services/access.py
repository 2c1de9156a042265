"""Who may see what: roles, the care relationship, break-glass. Decided here, once.

Every question about patients goes through the query service, which asks
:meth:`AccessRules.visible_patients` for the condition a patient row must meet for
the principal asking; everything answers from that (C-FIND, C-MOVE, C-GET, QIDO-RS,
WADO-RS, FHIR, pages). A patient the principal may not see is answered exactly like
one that does not exist.

The rules (issue 5):

- A clinical user (radiologist, radiographer, clinician) or a DICOM AE of a trust sees
  the patients their trust has a care relationship with: a local identity issued by
  the trust (its hospital number, which is also how its ADT registrations are kept),
  or an identity a PACS administrator granted it (a resolved ``foreign-identity``
  reconciliation item). For such a patient they see every trust's studies: the
  identities linked by NHS number are one person (services.identity), when the trust's
  own identity has that NHS number from its ADT registration or a person's ``link``
  decision. Storing objects makes no care relationship: a study a trust captured under
  another trust's hospital number or a bare NHS number, or an NHS number only an
  object's header gave its own hospital number, is seen through a grant or break-glass
  (services.care).
- Any other patient only through break-glass: a reason, a time limit, an audit record
  and an alert to the trust's auditors.
- A reporter (radiologist) also sees the patients whose studies the region's reporting
  agreements assign to them (on the worklist, requested by a trust they report for),
  with that person's priors from every trust.
- PACS administrators see and manage everything; auditors see the audit trail only.
- An edge node of a site (issue 13), signed in with its client credentials, stores for
  its trust, queries and retrieves within its trust's care relationships (verification
  of what it forwarded, prefetch), and acts for a user of its own trust (the header
  ``X-Netpacs-On-Behalf-Of``, :func:`on_behalf_refusal`): the request is then that
  user's, under the user's rules and in the user's name in the audit trail.
- A partner network (issue 14), signed in with its client credentials, asks by NHS
  number only and sees only the studies of the trusts its agreement names, and
  retrieves only what it found (services.partners; the query service applies it). It
  never breaks glass, and its user and purpose of use are audited as it states them.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa

from netpacs.domain.region import AEKind, ApplicationEntity, Permission, ReportingAgreement
from netpacs.index.schema import (
    adt_identity,
    break_glass,
    patient,
    reconciliation,
    study,
    worklist_item,
)
from netpacs.services.audit import Actor, AuditRecord, AuditService, Event, Purpose
from netpacs.services.identity import RESOLVED, Action, Kind

if TYPE_CHECKING:  # the policy builds on this module's roles and principals
    from netpacs.services.access_policy import AccessPolicy

log = logging.getLogger(__name__)


class Role(enum.Enum):
    RADIOLOGIST = "radiologist"
    RADIOGRAPHER = "radiographer"
    CLINICIAN = "clinician"
    ADMIN = "admin"
    AUDITOR = "auditor"
    APPLICATION = "application"  # a DICOM AE or HL7 system of a trust
    ARCHIVE = "archive"  # a peer archive of the region (replication): sees everything
    SYSTEM = "system"  # netpacs itself (maintenance, demo loading)
    EDGE = "edge"  # a site's edge node signed in to the core (issue 13)
    PARTNER = "partner"  # a neighbouring network's client (issue 14)


CLINICAL = frozenset({Role.RADIOLOGIST, Role.RADIOGRAPHER, Role.CLINICIAN})


class Capability(enum.Enum):
    SEE_IMAGING = "see imaging"  # the care relationship applies: query, retrieve, view
    QUERY = "query"  # C-FIND, QIDO-RS, FHIR searches, the study list
    RETRIEVE = "retrieve"  # C-GET, WADO-RS, the viewer, a ZIP export
    SEND = "send to another AE"  # C-MOVE
    STORE = "store"
    BREAK_GLASS = "break glass"
    RECONCILE = "reconcile patient identities"
    READ_AUDIT = "read the audit trail"
    REPORT = "report studies"
    MANAGE_WORKLIST = "manage the reporting worklist"  # assign, queue, release any claim
    DELETE = "delete studies"
    ACT_FOR_USERS = "act for a user of its trust"  # an edge node's pass-through
    CONFIRM_STORED = "confirm what the archive holds"  # an edge node checking its forwards
    SEE_EDGES = "see the edge nodes"  # the core's list of edge nodes
    WORKLIST = "modality worklist"  # MWL C-FIND and MPPS: a modality's scheduled work


_IMAGING = frozenset({Capability.SEE_IMAGING, Capability.QUERY, Capability.RETRIEVE})
_CAPABILITIES: dict[Role, frozenset[Capability]] = {
    Role.RADIOLOGIST: _IMAGING | {Capability.STORE, Capability.BREAK_GLASS, Capability.REPORT},
    Role.RADIOGRAPHER: _IMAGING | {Capability.STORE, Capability.BREAK_GLASS},
    Role.CLINICIAN: _IMAGING | {Capability.BREAK_GLASS},
    Role.ADMIN: _IMAGING
    | {
        Capability.STORE,
        Capability.RECONCILE,
        Capability.READ_AUDIT,
        Capability.REPORT,
        Capability.MANAGE_WORKLIST,
        Capability.DELETE,
        Capability.SEE_EDGES,
    },
    Role.AUDITOR: frozenset({Capability.READ_AUDIT}),
    Role.APPLICATION: _IMAGING | {Capability.STORE, Capability.SEND},
    Role.ARCHIVE: _IMAGING | {Capability.STORE, Capability.SEND},
    Role.SYSTEM: frozenset(Capability),
    Role.EDGE: _IMAGING | {Capability.STORE, Capability.ACT_FOR_USERS, Capability.CONFIRM_STORED},
    Role.PARTNER: _IMAGING,  # within its agreement (services.partners); no break-glass
}
# What each DICOM permission of the region file lets an AE do.
_PERMITS: dict[Permission, Capability] = {
    Permission.STORE: Capability.STORE,
    Permission.FIND: Capability.QUERY,
    Permission.MOVE: Capability.SEND,
    Permission.GET: Capability.RETRIEVE,
    Permission.WORKLIST: Capability.WORKLIST,
}


@dataclass(frozen=True, slots=True)
class Partner:
    """A partner network's side of a principal (issue 14): the network, the trusts of
    ours its agreement shares, the access token (its session: what it found with it),
    and the user and purpose of use it stated for this request."""

    network: str  # its name in the region file ("London")
    shares: frozenset[str]  # ODS codes
    session: str  # the token id
    user: str | None = None
    purpose: Purpose | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: a signed-in user or an application, with its trust and role."""

    user_id: str
    role: Role
    trust: str | None = None  # ODS code; None only for SYSTEM
    address: str | None = None
    name: str | None = None
    # The region's reporting agreements that assign this radiologist work: the patients
    # of the worklist items they cover are visible (issue 6).
    reports_for: tuple[ReportingAgreement, ...] = ()
    # None: what the role allows; a DICOM AE: what the region file permits it.
    capabilities: frozenset[Capability] | None = None
    site: str | None = None  # an edge node's site code
    via: str | None = None  # the edge node a user's request came through
    partner: Partner | None = None  # a partner network's client (role PARTNER)

    def may(self, capability: Capability) -> bool:
        allowed = _CAPABILITIES[self.role] if self.capabilities is None else self.capabilities
        return capability in allowed

    @property
    def sees_everything(self) -> bool:
        return self.role in (Role.ADMIN, Role.SYSTEM, Role.ARCHIVE)

    def actor(self) -> Actor:
        if self.partner is not None:
            return Actor(
                user_id=self.user_id,
                role=self.role.value,
                address=self.address,
                name=f"{self.partner.network} (partner network)",
                is_application=True,
                network=self.partner.network,
                remote_user=self.partner.user,
                remote_purpose=self.partner.purpose,
            )
        return Actor(
            user_id=self.user_id,
            trust=self.trust,
            role=self.role.value,
            address=self.address,
            name=f"{self.name or self.user_id} via edge {self.via}" if self.via else self.name,
            is_application=self.role in (Role.APPLICATION, Role.SYSTEM, Role.ARCHIVE, Role.EDGE),
        )


SYSTEM = Principal("netpacs", Role.SYSTEM)
#: The roles people sign in with (the others are applications and netpacs itself).
PEOPLE = (Role.RADIOLOGIST, Role.RADIOGRAPHER, Role.CLINICIAN, Role.ADMIN, Role.AUDITOR)


def roles_with(capability: Capability) -> list[Role]:
    """The roles of people that have ``capability`` (to tell a refused user who may)."""
    return [role for role in PEOPLE if capability in _CAPABILITIES[role]]


def principal_for_ae(ae: ApplicationEntity | None, ae_title: str, address: str | None) -> Principal:
    """A calling DICOM AE as a principal: its trust's care relationships (an archive
    of the region: everything) and what the region file permits it; an AE not in the
    region file (let in only when unknown AEs are accepted): it may store, and sees no
    patient."""
    if ae is None:
        unknown = frozenset({Capability.STORE})
        return Principal(ae_title or "?", Role.APPLICATION, None, address, capabilities=unknown)
    role = Role.ARCHIVE if ae.kind is AEKind.ARCHIVE else Role.APPLICATION
    permitted = frozenset(_PERMITS[p] for p in Permission if ae.may(p))
    if permitted & {Capability.QUERY, Capability.RETRIEVE, Capability.SEND}:
        permitted |= {Capability.SEE_IMAGING}
    return Principal(ae.ae_title, role, ae.trust, address, capabilities=permitted)


ON_BEHALF_HEADER = "X-Netpacs-On-Behalf-Of"


def on_behalf_refusal(edge: Principal, user: Principal | None, username: str) -> str | None:
    """Why ``edge`` may not act for ``username`` (``user``: that active account, None
    when there is none), or None when it may: an edge node acts for a person of its
    own trust only."""
    if edge.role is not Role.EDGE or not edge.may(Capability.ACT_FOR_USERS):
        return f"only an edge node may send {ON_BEHALF_HEADER}"
    if user is None:
        return f"{username[:64]!r} is not an active user here"
    if user.role not in PEOPLE:
        return f"{username[:64]!r} is not a person's account"
    if user.trust != edge.trust:
        return (
            f"{username[:64]!r} is not a user of {edge.trust}: the edge node "
            f"{edge.user_id} acts only for its own trust's users"
        )
    return None


#: Before sign-in: may see imaging in principle, but of no trust, so of no patient.
NOBODY = Principal("unauthenticated", Role.APPLICATION)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


#: The time a break-glass grant must outlast, taken when the statement runs: the
#: condition of a principal is then built once and reused (issue 16).
_NOW = sa.bindparam("access_now", callable_=_utcnow, type_=break_glass.c.expires_at.type)
_MAX_CACHED = 1_000  # principals whose condition is kept (then all forgotten at once)


class AccessRules:
    """SQL conditions for what a principal may see (one place for every interface)."""

    def __init__(self) -> None:
        self._conditions: dict[tuple[object, ...], sa.ColumnElement[bool] | None] = {}

    def visible_patients(
        self, principal: Principal, now: dt.datetime | None = None
    ) -> sa.ColumnElement[bool] | None:
        """The condition on ``patient`` rows the principal may see; None: every row.
        Break-glass grants count until ``now`` (default: when the statement runs)."""
        if now is not None:
            return self._visible(principal, now)
        key: tuple[object, ...] = (
            principal.user_id,
            principal.role,
            principal.trust,
            principal.reports_for,
            principal.capabilities,
        )
        try:
            return self._conditions[key]
        except KeyError:
            pass
        cond = self._visible(principal, _NOW)
        if len(self._conditions) >= _MAX_CACHED:
            self._conditions.clear()
        self._conditions[key] = cond
        return cond

    def _visible(
        self, principal: Principal, now: dt.datetime | sa.BindParameter[dt.datetime]
    ) -> sa.ColumnElement[bool] | None:
        if principal.sees_everything:
            return None
        if not principal.may(Capability.SEE_IMAGING) or not principal.trust:
            return sa.false()
        trust = principal.trust
        # Identities of other issuers a person granted to the trust (one uncorrelated
        # subquery: the table is small and has no index on the identity).
        granted_to_trust = sa.select(reconciliation.c.patient_id, reconciliation.c.issuer).where(
            reconciliation.c.kind == Kind.FOREIGN_IDENTITY.value,
            reconciliation.c.status == RESOLVED,
            reconciliation.c.resolution == Action.GRANT.value,
            reconciliation.c.other_issuer == trust,
        )

        direct = sa.or_(
            patient.c.issuer == trust,
            sa.tuple_(patient.c.patient_id, patient.c.issuer).in_(granted_to_trust),
        )
        # The same person's identity at another trust, through an identity cared for
        # here whose NHS number the trust's PAS registered (ADT) or a person linked: a
        # number a store brought (a header anyone can type) links for finding, not for
        # access. An alias: the outer statement has ``patient`` too, and must not be
        # correlated into it.
        other = patient.alias("cared_identity")
        registered = (
            sa.select(1)
            .select_from(adt_identity)
            .where(
                adt_identity.c.patient_id == other.c.patient_id,
                adt_identity.c.issuer == other.c.issuer,
                adt_identity.c.nhs_number == other.c.nhs_number,
            )
            .exists()
        )
        decided = sa.select(
            reconciliation.c.patient_id, reconciliation.c.issuer, reconciliation.c.nhs_number
        ).where(
            reconciliation.c.status == RESOLVED, reconciliation.c.resolution == Action.LINK.value
        )
        confirmed = sa.or_(
            registered,
            sa.tuple_(other.c.patient_id, other.c.issuer, other.c.nhs_number).in_(decided),
        )
        own_confirmed = sa.and_(other.c.issuer == trust, confirmed)
        granted_other = sa.tuple_(other.c.patient_id, other.c.issuer).in_(granted_to_trust)
        same_person = (
            sa.select(1)
            .select_from(other)
            .where(
                other.c.nhs_number == patient.c.nhs_number,
                sa.or_(own_confirmed, granted_other),
            )
            .exists()
        )
        linked = sa.and_(patient.c.nhs_number.is_not(None), same_person)
        return sa.or_(direct, linked, self._granted(principal, now), *self._reportable(principal))

    def through_break_glass(self, principal: Principal) -> sa.ColumnElement[bool] | None:
        """Whether a ``patient`` row is reached through one of the principal's open
        break-glass grants (their audit's purpose of use is then emergency treatment),
        evaluated when the statement runs; None for a role that cannot break the glass."""
        if principal.role not in CLINICAL:
            return None
        key = ("break-glass", principal.user_id)
        try:
            return self._conditions[key]
        except KeyError:
            pass
        cond = self._granted(principal, _NOW)
        if len(self._conditions) >= _MAX_CACHED:
            self._conditions.clear()
        self._conditions[key] = cond
        return cond

    @staticmethod
    def _granted(
        principal: Principal, now: dt.datetime | sa.BindParameter[dt.datetime]
    ) -> sa.ColumnElement[bool]:
        return (
            sa.select(1)
            .select_from(break_glass)
            .where(
                break_glass.c.username == principal.user_id,
                break_glass.c.expires_at > now,
                sa.or_(
                    sa.and_(
                        break_glass.c.patient_id == patient.c.patient_id,
                        break_glass.c.issuer == patient.c.issuer,
                    ),
                    sa.and_(
                        break_glass.c.nhs_number.is_not(None),
                        break_glass.c.nhs_number == patient.c.nhs_number,
                    ),
                ),
            )
            .exists()
        )

    @staticmethod
    def sees_assigned_items(principal: Principal, agreements: Sequence[ReportingAgreement]) -> bool:
        """Whether the principal sees the patient of every worklist item ``agreements``
        assign: then a worklist statement needs no patient condition beside theirs.

        True when ``agreements`` are the principal's own reporting agreements and the
        principal may see imaging and report: the last branch of
        :meth:`visible_patients` (:meth:`_reportable`) is then true for every such item's
        patient, by that very item. At thousands of open items the patient condition
        cost about 20 microseconds an item in PostgreSQL (its earlier branches are
        tried first), twice per worklist (the items and their counts; issue 16)."""
        return (
            bool(agreements)
            and tuple(agreements) == principal.reports_for
            and bool(principal.trust)
            and principal.may(Capability.SEE_IMAGING)
            and principal.may(Capability.REPORT)
        )

    @staticmethod
    def _reportable(principal: Principal) -> list[sa.ColumnElement[bool]]:
        """The patients (any identity of the person) with a worklist item the principal's
        reporting agreements cover."""
        if not principal.reports_for or not principal.may(Capability.REPORT):
            return []
        item_study = study.alias("reported_study")
        item_patient = patient.alias("reported_identity")
        items = worklist_item.join(
            item_study, item_study.c.study_instance_uid == worklist_item.c.study_instance_uid
        )
        assigned = agreement_items(principal.reports_for)
        assigned_items = [] if assigned is None else [assigned]
        # Two EXISTS, not one with an OR inside: each is answered from an index (the
        # identity's studies; the person's identities by NHS number), where the OR made
        # PostgreSQL scan every patient for every row it checked.
        this_identity = (
            sa.select(1)
            .select_from(items)
            .where(item_study.c.patient_fk == patient.c.id, *assigned_items)
            .exists()
        )
        same_person = (
            sa.select(1)
            .select_from(items.join(item_patient, item_patient.c.id == item_study.c.patient_fk))
            .where(item_patient.c.nhs_number == patient.c.nhs_number, *assigned_items)
            .exists()
        )
        return [this_identity, sa.and_(patient.c.nhs_number.is_not(None), same_person)]


def agreement_items(agreements: Sequence[ReportingAgreement]) -> sa.ColumnElement[bool] | None:
    """The worklist items ``agreements`` assign (each agreement's trusts and
    subspecialties together); None: every item."""
    any_of: list[sa.ColumnElement[bool]] = []
    for a in agreements:
        parts: list[sa.ColumnElement[bool]] = []
        if a.for_trusts is not None:
            parts.append(worklist_item.c.requesting_trust.in_(sorted(a.for_trusts)))
        if a.subspecialties is not None:
            parts.append(worklist_item.c.subspecialty.in_(sorted(a.subspecialties)))
        if not parts:
            return None
        any_of.append(sa.and_(*parts))
    return sa.or_(*any_of) if any_of else sa.false()


class BreakGlassError(Exception):
    def __init__(self, forbidden: bool, message: str) -> None:
        super().__init__(message)
        self.forbidden = forbidden  # True: the role may not; False: the request is wrong
        self.message = message


class BreakGlass:
    """Emergency access to a patient outside the care relationship.

    A reason is required and audited; the grant lasts ``minutes`` and covers the
    person (every identity linked by NHS number); the audit message is a security
    alert that the user's trust's auditors see (and the audit record repository gets).
    Whether the patient exists is not said: the answer is the same either way.
    """

    MIN_REASON = 10

    def __init__(
        self, engine: sa.Engine, audit: AuditService, access: AccessPolicy, *, minutes: int
    ) -> None:
        self._engine = engine
        self._audit = audit
        self._access = access
        self._minutes = minutes

    @property
    def minutes(self) -> int:
        return self._minutes

    def open(self, principal: Principal, patient_id: str, issuer: str, reason: str) -> dt.datetime:
        refusal = self._access.check(principal, Capability.BREAK_GLASS)
        if refusal is not None:
            raise BreakGlassError(True, refusal.message)
        reason = " ".join(reason.split())
        patient_id = patient_id.strip()
        if not patient_id:
            raise BreakGlassError(False, "say which patient: a hospital number and its trust")
        if len(reason) < self.MIN_REASON:
            raise BreakGlassError(
                False, f"say why (at least {self.MIN_REASON} characters): the reason is audited"
            )
        now = dt.datetime.now(dt.UTC)
        expires = now + dt.timedelta(minutes=self._minutes)
        with self._engine.begin() as conn:
            number = conn.execute(
                sa.select(patient.c.nhs_number).where(
                    patient.c.patient_id == patient_id, patient.c.issuer == issuer.strip()
                )
            ).scalar()
            conn.execute(
                sa.insert(break_glass).values(
                    username=principal.user_id,
                    trust=principal.trust or "",
                    patient_id=patient_id,
                    issuer=issuer.strip(),
                    nhs_number=number,
                    reason=reason,
                    created_at=now,
                    expires_at=expires,
                )
            )
        self._audit.record(
            AuditRecord(
                Event.BREAK_GLASS,
                principal.actor(),
                purpose=Purpose.ETREAT,
                patients=[(patient_id, issuer.strip())],
                detail=f"break-glass until {expires:%Y-%m-%d %H:%M} UTC: {reason}",
            )
        )
        log.warning(
            "BREAK-GLASS by %s (%s) for %s at %s until %s: %s",
            principal.user_id,
            principal.trust,
            patient_id,
            issuer,
            f"{expires:%H:%M}",
            reason,
        )
        return expires
