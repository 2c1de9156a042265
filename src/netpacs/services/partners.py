"""Partner networks asking us (issue 14, inbound federation): who signs in as one, and
what it may ask. Decided here, once; the query service applies it to every interface.

A neighbouring network (``[[networks]]`` of the region file with a ``client_id``) signs
in at ``/auth/token`` with the OAuth2 client credentials grant (its secret from
``client_secret_file`` or ``client_secret_hash``; a network with neither signs in only
in demo mode, with the demo password). Its token's principal has role ``partner`` and
no trust of ours. The rules:

- It asks by NHS number only: a study level search with ``PatientID`` one valid NHS
  number (check digit) and ``IssuerOfPatientID`` ``NHS``. No wildcard (``*``, ``?``)
  anywhere, no name, no matching on Other Patient IDs, nothing without the NHS number
  (a date, a modality, nothing at all: browsing), no patient level: each refused with
  a reason (:class:`PartnerRefused`, a 400) and audited as a refusal.
- It sees only the studies of the trusts its agreement ``shares``: a study's trust is
  the one that captured it (``study.origin_trust``), else the issuer of its patient's
  identity. Other Patient IDs are answered with the NHS number only (:func:`redact`):
  the patient's hospital numbers at our trusts are not the partner's to know.
- It retrieves only what it found: the studies a search answered are recorded against
  its access token (``partner_found``); series and instance searches, WADO-RS (study,
  series, instance, metadata, frames, rendered) and FHIR reads answer those studies
  only, until the token expires. Anything else is answered as not stored (404), and
  audited as a refusal.
- It never breaks glass (no such capability), and uses ``/dicomweb`` and ``/fhir``
  only: no pages, no viewer, no API. A network that speaks DIMSE (Wessex) asks by
  C-FIND from its AE title and host, under the same rules, and C-GETs what its AE
  found (within a token's lifetime); it stores nothing, and C-MOVE sends nowhere.
- It may state, per request, its user (``X-Netpacs-Partner-User``) and purpose of use
  (``X-Netpacs-Purpose-Of-Use``, an HL7 v3 PurposeOfUse code of
  :data:`STATED_PURPOSES`); every audit record of the request names the network and
  both, as stated. Stating emergency treatment grants nothing more.
"""

from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
import logging
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.dialects import postgresql, sqlite

from netpacs.domain import nhs_number
from netpacs.domain.networks import Network
from netpacs.domain.query import QueryError, QueryLevel
from netpacs.index.schema import partner_found, patient, study
from netpacs.services.access import Partner, Principal, Role
from netpacs.services.audit import Purpose

log = logging.getLogger(__name__)

PARTNER_USER_HEADER = "X-Netpacs-Partner-User"
PURPOSE_HEADER = "X-Netpacs-Purpose-Of-Use"
#: The purposes of use a partner may state (HL7 v3 PurposeOfUse codes).
STATED_PURPOSES = (Purpose.TREAT, Purpose.ETREAT, Purpose.COC, Purpose.PATRQT)
#: The interfaces (first segment of an HTTP path) a partner network may use.
INTERFACES = frozenset({"dicomweb", "fhir"})
_MAX_USER = 128

_PATIENT_ID = "00100020"
_ISSUER = "00100021"
_PATIENT_NAME = "00100010"
_OTHER_PATIENT_IDS = "00101002"
_STUDY_UID = "0020000D"
_ASK = "ask by NHS number: PatientID=<NHS number>&IssuerOfPatientID=NHS"


class PartnerRefused(QueryError):
    """A partner network asked what its agreement does not answer; says why (400)."""


class PartnerHeaderError(ValueError):
    """A partner's stated user or purpose of use cannot be recorded as given (400)."""


class PartnerClients:
    """The partner networks that may sign in, by client id."""

    def __init__(self, networks: Iterable[Network], *, demo_password: str | None) -> None:
        """``demo_password``: in demo mode, the secret of a network that has none."""
        self._networks = {n.client_id: n for n in networks if n.client_id}
        self._demo_password = demo_password
        self._hasher = PasswordHasher()

    def __bool__(self) -> bool:
        return bool(self._networks)

    def sign_in(self, client_id: str, secret: str, *, address: str | None) -> Principal | None:
        """The network's principal when ``secret`` is its client secret, else None."""
        network = self._networks.get(client_id)
        if network is None or not secret or not self._secret_ok(network, secret):
            return None
        return self.principal(client_id, session="", address=address)

    def principal(self, client_id: str, *, session: str, address: str | None) -> Principal | None:
        """The principal of a listed network's client (a token's subject; ``session``:
        the token's id), None for any other."""
        network = self._networks.get(client_id)
        if network is None:
            return None
        return network_principal(network, client_id, session=session, address=address)

    def _secret_ok(self, network: Network, secret: str) -> bool:
        if network.client_secret_hash is not None:
            try:
                return self._hasher.verify(network.client_secret_hash, secret)
            except (VerificationError, InvalidHashError):
                return False
        if network.client_secret_file is not None:
            try:
                expected = network.client_secret_file.read_text().strip()
            except OSError as exc:
                log.error("network %s: its client_secret_file cannot be read (%s)", network, exc)
                return False
            return bool(expected) and hmac.compare_digest(secret.encode(), expected.encode())
        if self._demo_password is None:
            return False  # no secret, and not in demo mode: it cannot sign in
        return hmac.compare_digest(secret.encode(), self._demo_password.encode())


def network_principal(
    network: Network, user_id: str, *, session: str, address: str | None
) -> Principal:
    """A partner network as a principal: its client id (or its DICOM AE title)."""
    return Principal(
        user_id=user_id,
        role=Role.PARTNER,
        address=address,
        name=network.name,
        partner=Partner(network=network.name, shares=network.shares, session=session),
    )


def dimse_caller(
    networks: Iterable[Network], ae_title: str, address: str | None
) -> Principal | str | None:
    """A calling DICOM AE that is a DIMSE partner network's (its ``ae_title``): its
    principal (its session: what the AE found in the last token lifetime), or why it is
    refused (it called from another address than the network's ``host``); None: no
    network's AE."""
    network = next(
        (n for n in networks if n.dimse is not None and n.dimse.ae_title == ae_title), None
    )
    if network is None or network.dimse is None:
        return None
    try:
        expected: object = ipaddress.ip_address(network.dimse.host)
        called_from: object = ipaddress.ip_address(address or "")
    except ValueError:
        expected, called_from = network.dimse.host, address
    if expected != called_from:
        return (
            f"calling AE {ae_title} is the partner network {network.name}'s, and calls from "
            f"its host {network.dimse.host} only"
        )
    # One session per AE, not per association: a C-GET comes on an association of its
    # own after the C-FIND that found the study.
    return network_principal(network, ae_title, session=f"dimse:{ae_title}", address=address)


def stated(principal: Principal, *, user: str | None, purpose: str | None) -> Principal:
    """A partner's principal with the user and purpose of use it stated for a request
    (the headers); :class:`PartnerHeaderError` for values that cannot be recorded."""
    partner = principal.partner
    if partner is None or (user is None and purpose is None):
        return principal
    said_user = None
    if user is not None:
        said_user = user.strip()
        if not said_user or len(said_user) > _MAX_USER or not said_user.isprintable():
            raise PartnerHeaderError(
                f"{PARTNER_USER_HEADER}: 1-{_MAX_USER} printable characters, the user at "
                "the partner network who asks"
            )
    said_purpose = None
    if purpose is not None:
        code = purpose.strip().upper()
        said_purpose = next((p for p in STATED_PURPOSES if p.name == code), None)
        if said_purpose is None:
            known = ", ".join(p.name for p in STATED_PURPOSES)
            raise PartnerHeaderError(
                f"{PURPOSE_HEADER}: {purpose[:40]!r} is not one of {known} (HL7 v3 PurposeOfUse)"
            )
    return Principal(
        user_id=principal.user_id,
        role=principal.role,
        address=principal.address,
        name=principal.name,
        partner=Partner(
            network=partner.network,
            shares=partner.shares,
            session=partner.session,
            user=said_user,
            purpose=said_purpose,
        ),
    )


def interface_refusal(principal: Principal, interface: str) -> str | None:
    """Why a partner may not use ``interface`` (the first segment of a path), or None."""
    if principal.partner is None or interface in INTERFACES:
        return None
    return (
        f"the partner network {principal.partner.network} may use /dicomweb and /fhir "
        "only (by NHS number): no pages, viewer or API"
    )


# -- what a partner may ask ------------------------------------------------------------------


def _values(element: Any) -> list[str]:
    """The matching values of a DICOM JSON element (PN groups as text)."""
    if not isinstance(element, dict):
        return []
    out: list[str] = []
    for value in element.get("Value") or ():
        if isinstance(value, dict):
            out += [str(v) for v in value.values() if isinstance(v, str)]
        elif value is not None and element.get("vr") != "SQ":
            out.append(str(value))
    return out


def _wildcard(identifier: dict[str, Any]) -> str | None:
    """The first key with a wildcard in its value (sequence items included)."""
    for tag, element in identifier.items():
        if not isinstance(element, dict):
            continue
        if any("*" in v or "?" in v for v in _values(element)):
            return tag
        if element.get("vr") == "SQ":
            for item in element.get("Value") or ():
                if isinstance(item, dict) and _wildcard(item) is not None:
                    return tag
    return None


def _matches_in(element: Any) -> bool:
    """Whether a sequence element has an item with a matching value."""
    if not isinstance(element, dict):
        return False
    for item in element.get("Value") or ():
        if isinstance(item, dict) and any(_values(e) for e in item.values()):
            return True
    return False


def redact(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer as a partner gets it: Other Patient IDs keep the NHS number only (the
    patient's hospital numbers at our trusts are not the partner's to know)."""
    element = answer.get(_OTHER_PATIENT_IDS)
    if isinstance(element, dict) and element.get("Value"):
        kept = [
            item
            for item in element["Value"]
            if isinstance(item, dict)
            and any(nhs_number.is_nhs_issuer(v) for v in _values(item.get(_ISSUER)))
        ]
        answer[_OTHER_PATIENT_IDS] = {**element, "Value": kept} if kept else {"vr": "SQ"}
    return answer


def check_find(identifier: dict[str, Any], level: QueryLevel) -> bool:
    """Whether a partner's query is a search by NHS number (True: its answers are what it
    finds) or a question within the studies it found (False); raises
    :class:`PartnerRefused` saying why it is neither."""
    if level is QueryLevel.PATIENT:
        raise PartnerRefused(f"a partner network asks at study level: {_ASK}")
    tag = _wildcard(identifier)
    if tag is not None:
        raise PartnerRefused(f"wildcards are not answered to partner networks ({tag}): {_ASK}")
    if _values(identifier.get(_PATIENT_NAME)):
        raise PartnerRefused(f"name searches are not answered to partner networks: {_ASK}")
    if _matches_in(identifier.get(_OTHER_PATIENT_IDS)):
        raise PartnerRefused(f"a partner network does not match on Other Patient IDs: {_ASK}")
    ids = _values(identifier.get(_PATIENT_ID))
    if ids:
        _check_nhs_number(ids, _values(identifier.get(_ISSUER)))
        if level is QueryLevel.STUDY:
            return True
    if _values(identifier.get(_STUDY_UID)):
        return False  # within the studies it found (the condition says which)
    if level is QueryLevel.STUDY:
        raise PartnerRefused(f"browsing is not answered to partner networks: {_ASK}")
    raise PartnerRefused(
        "a partner network searches series and instances within a study it found: "
        "/studies/{StudyInstanceUID}/series or /instances"
    )


def _check_nhs_number(ids: list[str], issuers: list[str]) -> None:
    if len(ids) != 1:
        raise PartnerRefused(f"one NHS number per search: {_ASK}")
    if not issuers or not all(nhs_number.is_nhs_issuer(i) for i in issuers):
        raise PartnerRefused(f"PatientID must be an NHS number, with IssuerOfPatientID=NHS: {_ASK}")
    parsed = nhs_number.parse(ids[0])
    if not parsed.valid:
        problem = parsed.problem.value if parsed.problem else "is not valid"
        raise PartnerRefused(f"{ids[0][:20]!r} is not a valid NHS number: it {problem}")


def visible(partner: Partner, *, search: bool, now: dt.datetime) -> sa.ColumnElement[bool]:
    """The condition on ``study`` rows (joined to ``patient``) a partner may see: of a
    shared trust, and, unless ``search``, found with this token."""
    trust = sa.func.coalesce(study.c.origin_trust, patient.c.issuer)
    shared = trust.in_(sorted(partner.shares)) if partner.shares else sa.false()
    if search:
        return shared
    found = sa.select(partner_found.c.study_instance_uid).where(
        partner_found.c.session == partner.session, partner_found.c.expires_at > now
    )
    return sa.and_(shared, study.c.study_instance_uid.in_(found))


class PartnerFinds:
    """Records the studies a partner's search found, against its token, until the
    token expires (``partner_found``); expired rows go as new ones come."""

    def __init__(
        self, run: Callable[[Callable[[sa.Connection], Any]], Any], *, token_seconds: int
    ) -> None:
        """``run``: executes a function in a committed transaction (the index writer)."""
        self._run = run
        self._seconds = token_seconds

    def record(self, principal: Principal, study_uids: list[str]) -> None:
        partner = principal.partner
        if partner is None or not partner.session or not study_uids:
            return
        now = dt.datetime.now(dt.UTC)
        rows = [
            {
                "session": partner.session[:64],
                "study_instance_uid": uid,
                "client_id": principal.user_id[:100],
                "expires_at": now + dt.timedelta(seconds=self._seconds),
            }
            for uid in dict.fromkeys(study_uids)
        ]

        def write(conn: sa.Connection) -> None:
            conn.execute(sa.delete(partner_found).where(partner_found.c.expires_at < now))
            make = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            conn.execute(make(partner_found).on_conflict_do_nothing(), rows)

        self._run(write)
