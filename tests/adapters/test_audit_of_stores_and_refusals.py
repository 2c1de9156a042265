"""Ingest audits its own stores, and the access policy every refusal, alike for every
interface: one DICOM Instances Transferred message per study per association, STOW-RS
request or import run with the real counts; a security alert for each refusal, over
DIMSE and over HTTP."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import httpx
import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from netpacs.adapters.dimse.requestor import associate
from netpacs.synthetic import write_ct_series
from tests.conftest import Netpacs, dcmtk


def audit_report(server: Netpacs, trust: str, *, alerts: bool = False) -> list[dict[str, Any]]:
    """A trust's audit report as its PACS administrator reads it (GET /api/audit)."""
    answer = httpx.get(
        f"{server.base_url}/api/audit",
        params={"trust": trust, "alerts": str(alerts).lower()},
        headers=server.auth("rxc.admin"),
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    entries: list[dict[str, Any]] = answer.json()["entries"]
    return entries


def stores_of(server: Netpacs, trust: str, study: str) -> list[dict[str, Any]]:
    return [
        e
        for e in audit_report(server, trust)
        if e["what"] == "objects transferred" and study in e["studies"] and e["action"] == "C"
    ]


def uid_of(path: Path, keyword: str) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).get(keyword))


def test_an_association_is_audited_once_per_study_with_its_stored_and_refused_counts(
    module_netpacs: Netpacs, tmp_path: Path
) -> None:
    tag = secrets.token_hex(3).upper()
    first = write_ct_series(tmp_path / "a", 5, patient_id=f"RXC{tag}1", rows=16, columns=16)
    second = write_ct_series(tmp_path / "b", 3, patient_id=f"RXC{tag}2", rows=16, columns=16)
    # The same SOP Instance UID as the second study's first slice, with other content.
    clash = pydicom.dcmread(second[0])
    clash.InstanceNumber = 99
    clash.save_as(tmp_path / "clash.dcm")
    sent = dcmtk(
        "storescu",
        "-v",
        "-nh",
        "-aet",
        "EDGH_CT1",
        "-aec",
        "NETPACS",
        "127.0.0.1",
        str(module_netpacs.port),
        *map(str, [*first, *second, tmp_path / "clash.dcm"]),
    )
    assert sent.stderr.count("Received Store Response (Success)") == 8, sent.stderr
    assert "Received Store Response (Error: CannotUnderstand)" in sent.stderr, sent.stderr

    (a,) = stores_of(module_netpacs, "RXC", uid_of(first[0], "StudyInstanceUID"))
    (b,) = stores_of(module_netpacs, "RXC", uid_of(second[0], "StudyInstanceUID"))
    assert a["detail"].startswith("5 instances stored (C-STORE from EDGH_CT1 (RXC))")
    assert (a["user"], a["trust"], a["outcome"]) == ("EDGH_CT1", "RXC", 0)
    assert a["patient_id"] == f"RXC{tag}1"
    assert b["detail"].startswith(
        "3 instances stored, 1 refused (1 already stored with different content)"
    )
    assert b["outcome"] == 4  # minor failure: some refused


def test_a_stow_request_is_audited_per_study_with_its_counts_and_its_refused_parts(
    module_netpacs: Netpacs, tmp_path: Path
) -> None:
    tag = secrets.token_hex(3).upper()
    files = write_ct_series(tmp_path / "s", 2, patient_id=f"RXC{tag}3", rows=16, columns=16)
    boundary = secrets.token_hex(8)
    parts = [(f.read_bytes(), "application/dicom") for f in files]
    parts.append((b"not an image", "application/dicom"))
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: {kind}\r\n\r\n".encode() + data + b"\r\n"
            for data, kind in parts
        )
        + f"--{boundary}--\r\n".encode()
    )
    answer = httpx.post(
        f"{module_netpacs.dicomweb_url}/studies",
        content=body,
        headers={
            **module_netpacs.auth("rxc.radiographer"),
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        },
        timeout=60,
    )
    assert answer.status_code == 202, answer.text

    study = uid_of(files[0], "StudyInstanceUID")
    (stored,) = stores_of(module_netpacs, "RXC", study)
    assert stored["detail"].startswith("2 instances stored (STOW-RS from rxc.radiographer")
    assert stored["user"] == "rxc.radiographer"
    refused = [
        e
        for e in audit_report(module_netpacs, "RXC")
        if e["what"] == "objects transferred"
        and not e["studies"]
        and e["user"] == "rxc.radiographer"
    ]
    assert refused and refused[0]["detail"].startswith("0 instances stored, 1 refused (1 invalid")
    assert refused[0]["outcome"] == 8  # serious failure: nothing kept


def test_an_import_run_is_audited_with_its_counts(module_netpacs: Netpacs, tmp_path: Path) -> None:
    tag = secrets.token_hex(3).upper()
    files = write_ct_series(tmp_path / "i", 3, patient_id=f"RXC{tag}4", rows=16, columns=16)
    (tmp_path / "i" / "notes.txt").write_text("not DICOM")
    done = module_netpacs.cli("import", "--trust", "RXC", str(tmp_path / "i"))
    assert done.returncode == 1, done.stderr  # one file refused

    (entry,) = stores_of(module_netpacs, "RXC", uid_of(files[0], "StudyInstanceUID"))
    assert entry["detail"].startswith("3 instances stored (import from ")
    assert entry["trust"] == "RXC"


def c_find_statuses(server: Netpacs, calling_ae: str) -> list[int]:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = associate(ae, "127.0.0.1", server.port, ae_title="NETPACS")
    assert assoc.is_established
    ident = pydicom.Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = ""
    model = StudyRootQueryRetrieveInformationModelFind
    statuses = [int(status.Status) for status, _ in assoc.send_c_find(ident, model)]
    assoc.release()
    return statuses


def test_the_same_refusal_over_dimse_and_over_http_is_audited_alike(
    module_netpacs: Netpacs,
) -> None:
    # A CT scanner may only store; an auditor reads the audit trail, not images.
    assert c_find_statuses(module_netpacs, "EDGH_CT1") == [0x0124]
    qido = httpx.get(
        f"{module_netpacs.dicomweb_url}/studies", headers=module_netpacs.auth("rpc.auditor")
    )
    assert qido.status_code == 403
    assert qido.json()["message"] == (
        "an auditor may not query imaging; radiologists, radiographers, clinicians and admins may"
    )

    (dimse,) = [
        a for a in audit_report(module_netpacs, "RXC", alerts=True) if a["user"] == "EDGH_CT1"
    ]
    (http,) = [
        a for a in audit_report(module_netpacs, "RPC", alerts=True) if a["user"] == "rpc.auditor"
    ]
    for alert in (dimse, http):
        assert (alert["what"], alert["outcome"]) == ("security alert", 4)
        assert "may not query imaging" in alert["detail"]
    assert dimse["detail"] == ("refused: EDGH_CT1 may not query imaging (region file permissions)")
    assert http["detail"] == "refused: " + qido.json()["message"]
