"""Reporting agreements limited to subspecialties: a radiologist sees the worklist items,
and the patients, of exactly what each agreement assigns them (issues 5 and 6)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from netpacs.synthetic import write_ct_series
from tests.conftest import Netpacs, write_region
from tests.http.conftest import storescu
from tests.http.test_reporting import client, items


@pytest.fixture
def region_file(tmp_path: Path, workstation_port: int) -> Path:
    """University Hospitals Sussex (RYR) reports East Sussex's (RXC) neuro studies only,
    and every study of Surrey and Sussex Healthcare (RTP)."""
    path = write_region(tmp_path / "region.toml", {"RTP_WS1": workstation_port})
    text = path.read_text()
    wide = '[[reporting.agreements]]\nreporters = ["*"]\nfor_trusts = ["*"]\n'
    assert wide in text
    path.write_text(
        text.replace(
            wide,
            '[[reporting.agreements]]\nreporters = ["RYR"]\nfor_trusts = ["RXC"]\n'
            'subspecialties = ["neuro"]\n\n'
            '[[reporting.agreements]]\nreporters = ["RYR"]\nfor_trusts = ["RTP"]\n',
        )
    )
    return path


def ct(server: Netpacs, folder: Path, *, aet: str, patient_id: str, body_part: str) -> str:
    """A 2-slice CT of ``body_part`` sent from ``aet``; its Study Instance UID."""
    issuer = {"EDGH_CT1": "RXC", "ESH_CT1": "RTP"}[aet]
    paths = write_ct_series(folder, 2, rows=16, columns=16, patient_id=patient_id, issuer=issuer)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.BodyPartExamined = body_part
        ds.save_as(p)
    storescu(server, *paths, aet=aet)
    return str(pydicom.dcmread(paths[0]).StudyInstanceUID)


def test_a_subspecialty_agreement_assigns_and_shows_only_its_subspecialty(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    head = ct(netpacs, tmp_path / "h", aet="EDGH_CT1", patient_id="SC1", body_part="HEAD")
    chest = ct(netpacs, tmp_path / "c", aet="EDGH_CT1", patient_id="SC2", body_part="CHEST")
    other = ct(netpacs, tmp_path / "o", aet="ESH_CT1", patient_id="SC3", body_part="CHEST")
    assert set(items(netpacs, "rxc.admin", view="all")) >= {head, chest, other}

    # The RYR radiologist's worklist: East Sussex's neuro study and every RTP study.
    assert set(items(netpacs, "ryr.radiologist", view="all")) == {head, other}
    # ... and the imaging of those patients only (East Sussex's chest patient is not
    # theirs: the same answer as for a study that does not exist).
    with client(netpacs, "ryr.radiologist") as c:
        found = c.get("/dicomweb/studies", params={"PatientID": "SC*"})
        assert found.status_code == 200
        assert {s["0020000D"]["Value"][0] for s in found.json()} == {head, other}
        assert c.get(f"/dicomweb/studies/{head}/metadata").status_code == 200
        assert c.get(f"/dicomweb/studies/{chest}/metadata").status_code == 404
        assert c.post(f"/api/worklist/{chest}/claim").status_code == 404
        assert c.post(f"/api/worklist/{head}/claim").status_code == 200

    # An administrator cannot assign it the study no agreement gives it.
    with client(netpacs, "rxc.admin") as c:
        refused = c.post(f"/api/worklist/{chest}/assign", json={"username": "ryr.radiologist"})
        assert refused.status_code == 422
        assert "no reporting agreement for RXC's chest studies" in refused.text
        assigned = c.post(f"/api/worklist/{other}/assign", json={"username": "ryr.radiologist"})
        assert assigned.status_code == 200, assigned.text
