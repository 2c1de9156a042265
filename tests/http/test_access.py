"""Who may see what over HTTP: sign-in, the care relationship of each trust, roles,
break-glass, and nothing revealed to a user who may not see it (netpacs's HTTP app)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from netpacs.index.schema import audit_event
from tests.conftest import HttpApp, write_region
from tests.hl7.conftest import Ack, adt
from tests.hl7.test_regional_record import send_study

TRUSTS = ("RTP", "RTK", "RXC", "RPC", "RA2", "RYR")
CLINICAL = ("clinician", "radiologist", "radiographer")
ROLES = (*CLINICAL, "admin", "auditor")
NHS = "9434765919"


@pytest.fixture
def region_studies(http_app: HttpApp, tmp_path: Path) -> dict[str, tuple[str, str, set[str]]]:
    """Study UID -> (patient ID, issuer, trusts with a care relationship)."""
    # A person known at University Hospitals Sussex and, by ADT, at Brighton (RA2).
    for trust, number in (("RYR", "K777"), ("RA2", "B777")):
        message = adt(
            "A04",
            f"AX{trust}",
            f"{number}^^^{trust}^MR~{NHS}^^^NHS^NH",
            name="CARE^CAROL",
            birth_date="19600101",
            sex="F",
            facility=trust,
        )
        ack = Ack(http_app.adt(message))
        assert ack.code == "AA", ack.text
    studies = {
        send_study(http_app, tmp_path / "a", aet="EDGH_CT1", patient_id="A1", issuer="RXC"): (
            "A1",
            "RXC",
            {"RXC"},
        ),
        send_study(http_app, tmp_path / "b", aet="ESH_CT1", patient_id="B1", issuer="RTP"): (
            "B1",
            "RTP",
            {"RTP"},
        ),
        send_study(
            http_app,
            tmp_path / "c",
            aet="RSUS_CT1",
            patient_id="K777",
            issuer="RYR",
            name="CARE^CAROL",
        ): ("K777", "RYR", {"RYR", "RA2"}),
        # An Ashford and St Peter's hospital number scanned at Eastbourne: a store makes
        # no care relationship, so only RTK's staff see it (RXC's need a reconciliation
        # decision or break-glass: tests/services/test_care.py).
        send_study(http_app, tmp_path / "d", aet="EDGH_CT1", patient_id="K42", issuer="RTK"): (
            "K42",
            "RTK",
            {"RTK"},
        ),
    }
    return studies


@pytest.fixture
def http_settings(tmp_path: Path) -> dict[str, Any]:
    """The demo region with one reporting agreement instead of the region-wide one:
    University Hospitals Sussex's radiologists report East Sussex's studies."""
    path = write_region(tmp_path / "region.toml", {})
    text = path.read_text()
    wide = '[[reporting.agreements]]\nreporters = ["*"]\nfor_trusts = ["*"]\n'
    assert wide in text
    path.write_text(
        text.replace(wide, '[[reporting.agreements]]\nreporters = ["RYR"]\nfor_trusts = ["RXC"]\n')
    )
    return {"region_file": path}


#: Where each fixture study was captured (its requesting trust, on the worklist).
REQUESTED_BY = {"A1": "RXC", "B1": "RTP", "K777": "RYR", "K42": "RXC"}


def expected(role: str, trust: str, carers: set[str], patient_id: str) -> bool:
    if role == "admin":
        return True
    if role == "auditor":
        return False
    if role == "radiologist" and trust == "RYR" and REQUESTED_BY[patient_id] == "RXC":
        return True  # the reporting agreement assigns them East Sussex's studies
    return trust in carers


def test_access_matrix_over_qido_wado_fhir_and_the_study_list_has_no_leak(
    http_app: HttpApp, region_studies: dict[str, tuple[str, str, set[str]]]
) -> None:
    leaks: list[str] = []
    denials: list[str] = []
    for trust in TRUSTS:
        for role in ROLES:
            user = f"{trust.lower()}.{role}"
            with http_app.client(user) as client:
                found = client.get(f"{http_app.dicomweb_url}/studies")
                page = client.get(f"{http_app.base_url}/studies")
                if role == "auditor":  # reads the audit trail, never imaging: refused
                    assert (found.status_code, page.status_code) == (403, 403), user
                    continue
                assert found.status_code in (200, 204), (user, found.text)
                listed = (
                    {s["0020000D"]["Value"][0] for s in found.json()}
                    if found.status_code == 200
                    else set()
                )
                assert page.status_code == 200
                for uid, (patient_id, _, carers) in region_studies.items():
                    allowed = expected(role, trust, carers, patient_id)
                    seen = {
                        "QIDO-RS": uid in listed,
                        "WADO-RS metadata": client.get(
                            f"{http_app.dicomweb_url}/studies/{uid}/metadata"
                        ).status_code
                        == 200,
                        "FHIR read": client.get(
                            f"{http_app.base_url}/fhir/ImagingStudy/{uid}"
                        ).status_code
                        == 200,
                        "study list": uid in page.text,
                    }
                    for interface, saw in seen.items():
                        if saw and not allowed:
                            leaks.append(f"{user} saw {uid[-8:]} over {interface}")
                        if allowed and not saw:
                            denials.append(f"{user} was denied {uid[-8:]} over {interface}")
    assert leaks == [], f"{len(leaks)} leaks: {leaks[:20]}"
    assert denials == [], f"{len(denials)} wrongful denials: {denials[:20]}"


def test_a_hidden_study_is_answered_exactly_like_a_missing_one(
    http_app: HttpApp, region_studies: dict[str, tuple[str, str, set[str]]]
) -> None:
    hidden = next(uid for uid, (_, issuer, _) in region_studies.items() if issuer == "RTP")
    missing = "1.2.826.0.1.3680043.8.498.1"
    with http_app.client("rpc.clinician") as client:
        for suffix in ("/metadata", "", "/rendered", "/series"):
            a = client.get(f"{http_app.dicomweb_url}/studies/{hidden}{suffix}")
            b = client.get(f"{http_app.dicomweb_url}/studies/{missing}{suffix}")
            assert a.status_code == b.status_code, suffix
            assert a.text.replace(hidden, "UID") == b.text.replace(missing, "UID"), suffix
        a = client.get(f"{http_app.base_url}/fhir/ImagingStudy/{hidden}")
        b = client.get(f"{http_app.base_url}/fhir/ImagingStudy/{missing}")
        assert (a.status_code, a.text.replace(hidden, "UID")) == (
            b.status_code,
            b.text.replace(missing, "UID"),
        )


def test_every_interface_needs_sign_in_and_a_browser_gets_the_sign_in_page(
    http_app: HttpApp,
) -> None:
    with http_app.anonymous() as anyone:
        for path in (
            "/dicomweb/studies",
            "/fhir/ImagingStudy?patient.identifier=x",
            "/studies",
            "/viewer/",
            "/api/reconciliation",
            "/api/openapi.json",
            "/reconciliation",
        ):
            plain = anyone.get(path)
            assert plain.status_code == 401, path
            assert plain.headers["www-authenticate"].startswith("Bearer")
            forged = anyone.get(path, headers={"Authorization": "Bearer x.y.z"})
            assert forged.status_code == 401, path
        page = anyone.get("/studies", headers={"Accept": "text/html"})
    assert page.status_code == 401 and 'action="/signin"' in page.text


def test_token_endpoint_gives_a_bearer_token_and_refuses_a_wrong_password(
    http_app: HttpApp,
) -> None:
    anyone = http_app.anonymous()
    ok = anyone.post(
        f"{http_app.base_url}/auth/token", data={"username": "rxc.clinician", "password": "demo"}
    )
    assert ok.status_code == 200
    body = ok.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600
    me = anyone.get(
        f"{http_app.base_url}/api/me", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert me.json() == {
        "username": "rxc.clinician",
        "name": "Demo clinician (RXC)",
        "trust": "RXC",
        "role": "clinician",
    }
    wrong = anyone.post(
        f"{http_app.base_url}/auth/token", data={"username": "rxc.clinician", "password": "guess"}
    )
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"


def test_repeated_failed_sign_ins_are_refused_for_a_while_and_audited(http_app: HttpApp) -> None:
    anyone = http_app.anonymous()
    url = f"{http_app.base_url}/auth/token"
    codes = [
        anyone.post(url, data={"username": "rtp.admin", "password": f"guess{n}"}).status_code
        for n in range(6)
    ]
    assert codes == [400] * 5 + [429]
    # Even the right password waits now.
    right = anyone.post(url, data={"username": "rtp.admin", "password": "demo"})
    assert right.status_code == 429 and int(right.headers["retry-after"]) > 0
    engine = sa.create_engine(http_app.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(audit_event.c.event_id, audit_event.c.outcome).where(
                    audit_event.c.user_id == "rtp.admin"
                )
            ).all()
    finally:
        engine.dispose()
    assert rows.count(("110114", 4)) == 5  # failed logins
    assert ("110113", 4) in rows  # security alert


def test_break_glass_opens_a_patient_for_a_while_and_is_audited_with_emergency_purpose(
    http_app: HttpApp, region_studies: dict[str, tuple[str, str, set[str]]]
) -> None:
    anyone = http_app.anonymous()
    uid = next(u for u, (_, issuer, _) in region_studies.items() if issuer == "RYR")
    user = "rpc.clinician"
    with http_app.client(user) as client:
        metadata = f"{http_app.dicomweb_url}/studies/{uid}/metadata"
        assert client.get(metadata).status_code == 404
        before = client.get(f"{http_app.dicomweb_url}/studies", params={"PatientID": "K777"})
        assert before.status_code == 200 and before.json() == []
        no_reason = client.post(
            f"{http_app.base_url}/api/break-glass",
            json={"patient_id": "K777", "issuer": "RYR", "reason": " "},
        )
        assert no_reason.status_code == 400
        opened = client.post(
            f"{http_app.base_url}/api/break-glass",
            json={
                "patient_id": "K777",
                "issuer": "RYR",
                "reason": "unconscious in ED at QVH, CT head from Brighton needed",
            },
        )
        assert opened.status_code == 200, opened.text
        assert opened.json()["minutes"] == 60
        assert client.get(metadata).status_code == 200
        # The grant is for the person: their Brighton (RA2) identity too.
        linked = client.get(
            f"{http_app.dicomweb_url}/studies",
            params={"PatientID": NHS, "IssuerOfPatientID": "NHS"},
        )
        assert [s["0020000D"]["Value"][0] for s in linked.json()] == [uid]
    auditor = anyone.post(
        f"{http_app.base_url}/api/break-glass",
        headers=http_app.auth("rpc.auditor"),
        json={"patient_id": "K777", "issuer": "RYR", "reason": "curious about"},
    )
    assert auditor.status_code == 403
    engine = sa.create_engine(http_app.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(audit_event).where(audit_event.c.user_id == user)).all()
    finally:
        engine.dispose()
    alert = [r for r in rows if r.event_id == "110113" and r.event_type == "110127"]
    assert len(alert) == 1 and alert[0].patient_id == "K777" and alert[0].trust == "RPC"
    assert "unconscious in ED" in alert[0].message_xml
    emergency = [r for r in rows if r.purpose_of_use == "ETREAT" and r.event_id == "110103"]
    assert emergency and all(r.patient_id == "K777" for r in emergency)
    # Searches: for treatment before the grant (nobody found), for emergency treatment
    # once it reached the person through it.
    searches = sorted((r.id, r.purpose_of_use) for r in rows if r.event_id == "110112")
    assert [purpose for _, purpose in searches] == ["TREAT", "ETREAT"]


def test_an_api_client_revokes_its_token_and_it_is_refused_from_then_on(
    http_app: HttpApp,
) -> None:
    anyone = http_app.anonymous()
    token = anyone.post(
        f"{http_app.base_url}/auth/token", data={"username": "rtk.clinician", "password": "demo"}
    ).json()["access_token"]
    me = f"{http_app.base_url}/api/me"
    assert anyone.get(me, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    revoked = anyone.post(f"{http_app.base_url}/auth/revoke", data={"token": token})
    assert revoked.status_code == 200
    assert anyone.get(me, headers={"Authorization": f"Bearer {token}"}).status_code == 401
    # Not a token of ours: the same answer (RFC 7009), and nothing else is revoked.
    other = anyone.post(f"{http_app.base_url}/auth/revoke", data={"token": "not.a.token"})
    assert other.status_code == 200
    assert anyone.get(me, headers=http_app.auth("rtk.clinician")).status_code == 200


def test_signing_out_with_an_expired_or_no_session_still_leads_to_the_sign_in_page(
    http_app: HttpApp,
) -> None:
    for cookies in ({}, {"netpacs_session": "expired.or.forged"}):
        with http_app.anonymous(cookies=cookies) as browser:
            answer = browser.post("/signout")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/signin"
