"""What a C-STORE may do to patients (issue 17, items 2 and 3), with DCMTK against a
running server: a store under a bare NHS number gives the storing trust no access to that
person's studies at other trusts and alerts their auditors; an object whose patient
contradicts the study it names is refused with a failure status and an Error Comment."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.adapters.test_dimse import find
from tests.conftest import Netpacs, dcmtk
from tests.factories import ct_dataset, write
from tests.hl7.test_regional_record import send_study, valid_nhs


@pytest.fixture(scope="module")
def netpacs(module_netpacs: Netpacs) -> Netpacs:
    return module_netpacs


def storescu(server: Netpacs, *paths: Path, aet: str = "EDGH_CT1") -> str:
    """Send with DCMTK storescu, the response command sets dumped (-d); its output."""
    result = dcmtk(
        "storescu", "-d", "-aet", aet, "-aec", "NETPACS", "127.0.0.1", str(server.port),
        *map(str, paths),
    )  # fmt: skip
    return result.stdout + result.stderr


def can_read(server: Netpacs, user: str, study_uid: str) -> bool:
    """Whether ``user`` finds the study over QIDO-RS and reads it over WADO-RS."""
    auth = server.auth(user)
    found = server.http.get(
        f"{server.dicomweb_url}/studies", params={"StudyInstanceUID": study_uid}, headers=auth
    )
    metadata = server.http.get(f"{server.dicomweb_url}/studies/{study_uid}/metadata", headers=auth)
    listed = found.status_code == 200 and bool(found.json())
    assert listed == (metadata.status_code == 200), (found.status_code, metadata.status_code)
    return listed


def alerts_for(server: Netpacs, auditor: str) -> list[dict[str, Any]]:
    response = server.http.get(
        f"{server.base_url}/api/audit",
        params={"alerts": "true", "days": "1"},
        headers=server.auth(auditor),
    )
    assert response.status_code == 200, response.text
    return response.json()["entries"]  # type: ignore[no-any-return]


def items(server: Netpacs, kind: str, patient_id: str) -> list[dict[str, Any]]:
    response = server.http.get(f"{server.base_url}/api/reconciliation", params={"status": "all"})
    assert response.status_code == 200, response.text
    return [
        i for i in response.json()["items"] if i["kind"] == kind and i["patient_id"] == patient_id
    ]


def test_a_c_store_under_a_bare_nhs_number_gives_no_access_to_that_persons_studies_elsewhere(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    number = valid_nhs("401023213")
    # One person at St Peter's (RTK) and at Brighton (RYR); the modalities copied the NHS
    # number from the worklist, so both hospital numbers are linked to it.
    elsewhere = [
        send_study(
            netpacs,
            tmp_path / trust,
            aet=aet,
            patient_id=f"{trust}8001",
            issuer=trust,
            name="NASH^NORA",
            birth_date="19490909",
            sex="F",
            nhs=number,
        )
        for trust, aet in (("RTK", "SPH_CT1"), ("RYR", "RSUS_CT1"))
    ]
    # Eastbourne's CT stores one object with Patient ID = that NHS number (issuer NHS).
    typed = write(
        ct_dataset(
            PatientID=number,
            IssuerOfPatientID="NHS",
            PatientName="NASH^NORA",
            PatientBirthDate="19490909",
            PatientSex="F",
        ),
        tmp_path / "typed.dcm",
    )
    output = storescu(netpacs, typed)
    assert re.search(r"DIMSE Status\s+: 0x0000", output), output
    ours = str(pydicom.dcmread(typed).StudyInstanceUID)

    # East Sussex gains nothing: not over QIDO/WADO, not by C-FIND from its workstation.
    for uid in [*elsewhere, ours]:
        assert not can_read(netpacs, "rxc.clinician", uid)
    assert find(netpacs, tmp_path, "QueryRetrieveLevel=STUDY", f"PatientID={number}") == []
    for uid, trust in zip(elsewhere, ("rtk", "ryr"), strict=True):
        assert can_read(netpacs, f"{trust}.clinician", uid)

    # Both trusts' auditors are alerted, each under their own hospital number.
    for trust in ("RTK", "RYR"):
        alert = next(
            e for e in alerts_for(netpacs, f"{trust.lower()}.auditor") if ours in e["studies"]
        )
        assert alert["user"] == "EDGH_CT1" and "bare NHS number" in alert["detail"]
        assert (alert["patient_id"], alert["issuer"]) == (f"{trust}8001", trust)
    (item,) = items(netpacs, "foreign-identity", number)
    assert (item["issuer"], item["other_issuer"], item["status"]) == ("NHS", "RXC", "open")


def test_a_c_store_of_another_patients_instance_into_a_study_is_refused_with_c003(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    theirs = send_study(
        netpacs, tmp_path / "rtp", aet="ESH_CT1", patient_id="RTP8002", issuer="RTP"
    )
    slipped = write(
        ct_dataset(PatientID="RXC555002", IssuerOfPatientID="RXC", StudyInstanceUID=theirs),
        tmp_path / "slipped.dcm",
    )
    blobs = {p for p in (netpacs.data_dir / "objects").rglob("*") if p.is_file()}
    output = storescu(netpacs, slipped)
    assert re.search(r"DIMSE Status\s+: 0xc003", output, re.IGNORECASE), output
    assert "Patient ID RXC555002 is not the patient of study" in output, output

    metadata = netpacs.http.get(f"{netpacs.dicomweb_url}/studies/{theirs}/metadata")
    assert len(metadata.json()) == 2
    assert {p for p in (netpacs.data_dir / "objects").rglob("*") if p.is_file()} == blobs
    (item,) = items(netpacs, "patient-contradicts-study", "RXC555002")
    assert (item["other_patient_id"], item["study_instance_uid"]) == ("RTP8002", theirs)
    alert = next(e for e in alerts_for(netpacs, "rtp.auditor") if theirs in e["studies"])
    assert alert["user"] == "EDGH_CT1" and "refused" in alert["detail"]
