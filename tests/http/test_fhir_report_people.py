"""A FHIR DiagnosticReport names who reported it once, and their trust as its performer."""

from __future__ import annotations

from pathlib import Path

import pydicom
from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from netpacs.synthetic import write_ct_series
from tests.conftest import HttpApp

FINDINGS = "FINDINGS:\nNo acute abnormality.\n\nCONCLUSION:\nNormal study."


def test_the_reporter_is_named_once_and_their_trust_is_the_performer(
    http_app: HttpApp, tmp_path: Path
) -> None:
    paths = write_ct_series(tmp_path, 2, rows=16, columns=16, patient_id="RXC3003", issuer="RXC")
    http_app.store(*paths, aet="EDGH_CT1")
    uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    with http_app.client("ryr.radiologist") as radiologist:
        signed = radiologist.put(f"/api/reports/{uid}", json={"text": FINDINGS, "status": "final"})
        assert signed.status_code == 200, signed.text
    with http_app.client("rxc.clinician") as reader:
        read = reader.get(f"/fhir/DiagnosticReport/{uid}").json()
        search = {"patient.identifier": "urn:netpacs:issuer:RXC|RXC3003"}
        found = reader.get("/fhir/DiagnosticReport", params=search).json()["entry"][0]["resource"]
    for resource in (read, found):
        DiagnosticReport.model_validate(resource)
        # The demo radiologist's name already says their trust: it is not added again.
        assert resource["resultsInterpreter"] == [
            {
                "type": "Practitioner",
                "identifier": {"system": "urn:netpacs:user", "value": "ryr.radiologist"},
                "display": "Demo radiologist (RYR)",
            }
        ]
        assert resource["performer"] == [
            {
                "type": "Organization",
                "identifier": {
                    "system": "https://fhir.nhs.uk/Id/ods-organization-code",
                    "value": "RYR",
                },
                "display": "University Hospitals Sussex NHS Foundation Trust",
            }
        ]
