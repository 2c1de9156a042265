"""C-FIND answers say where to retrieve what they found: our AE title (PS3.4 C.4.1.1.3.2)."""

from __future__ import annotations

from pathlib import Path

import pydicom

from tests.adapters.test_dimse import find, store
from tests.conftest import Netpacs
from tests.factories import write_series


def test_every_c_find_answer_names_netpacs_as_its_retrieve_ae_title(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "in", 2, PatientID="RAE1", PatientName="Retrieve^Ae")
    assert "Store Failed" not in store(netpacs, *files)
    study_uid = pydicom.dcmread(files[0]).StudyInstanceUID
    answers = {
        level: find(
            netpacs,
            tmp_path,
            f"QueryRetrieveLevel={level}",
            "PatientID=RAE1",
            *([f"StudyInstanceUID={study_uid}"] if level != "PATIENT" else []),
            "RetrieveAETitle",
            model="-P",
        )
        for level in ("PATIENT", "STUDY", "SERIES", "IMAGE")
    }
    assert {level: len(found) for level, found in answers.items()} == {
        "PATIENT": 1,
        "STUDY": 1,
        "SERIES": 1,
        "IMAGE": 2,
    }
    titles = {a.RetrieveAETitle for found in answers.values() for a in found}
    assert titles == {"NETPACS"}

    # QIDO-RS answers it too when asked for, as Orthanc does.
    qido = netpacs.http.get(
        f"{netpacs.dicomweb_url}/studies",
        params={"PatientID": "RAE1", "includefield": "RetrieveAETitle"},
    )
    assert qido.status_code == 200, qido.text
    assert [s["00080054"] for s in qido.json()] == [{"vr": "AE", "Value": ["NETPACS"]}]
