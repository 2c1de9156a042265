"""London is a second netpacs with its own data directory (issue 14): its region file
lists us ("Surrey") as a partner network whose agreement shares East Surrey (RTP); we
list London as a DICOMweb network signing in with client credentials and asking as its
partner rules require (PatientID=<NHS number>&IssuerOfPatientID=NHS). A clinician here
finds in one QIDO-RS answer the patient's study here and London's study of a shared
trust (not the other), and reads its metadata through the pass-through."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from netpacs.app.settings import BUNDLED_DEMO_REGION
from tests.conftest import Netpacs
from tests.federation.conftest import cared_for_patient, in_our_index
from tests.federation.peers import NHS
from tests.hl7.test_regional_record import send_study
from tests.http.test_partner_access import audit_rows


@dataclass
class Pair:
    here: Netpacs
    london: Netpacs
    local: str  # our study of the patient
    shared: str  # London's study captured at RTP (shared with us)
    unshared: str  # London's study captured at RXC (not shared)


def _region(path: Path, networks: str) -> Path:
    text = BUNDLED_DEMO_REGION.read_text()
    path.write_text(text[: text.index("[[networks]]")] + networks)
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    folder = tmp_path_factory.mktemp("london")
    here = Netpacs(
        data_dir=folder / "here",
        database_url=f"sqlite:///{folder / 'here.sqlite'}",
        region_file=folder / "here.toml",
    )
    london = Netpacs(
        data_dir=folder / "london",
        database_url=f"sqlite:///{folder / 'london.sqlite'}",
        region_file=folder / "london.toml",
    )
    (folder / "secret").write_text("demo\n")  # London's demo mode: the demo password
    _region(
        here.region_file,
        f'[[networks]]\nname = "London"\nprotocol = "dicomweb"\n'
        f'url = "{london.dicomweb_url}"\nauth = "client_credentials"\n'
        f'token_url = "{london.base_url}/auth/token"\nclient_id_there = "surrey"\n'
        f'secret_file_there = "{folder / "secret"}"\nnhs_number_in = "issuer_nhs"\n'
        "timeout_seconds = 5\n",
    )
    _region(
        london.region_file,
        f'[[networks]]\nname = "Surrey"\nprotocol = "dicomweb"\nurl = "{here.dicomweb_url}"\n'
        'shares = ["RTP"]\nclient_id = "surrey"\n',
    )
    started: list[Netpacs] = []
    try:
        for server in (london, here):
            server.start()
            started.append(server)
        shared = cared_for_patient(london, folder / "london-rtp")
        unshared = send_study(
            london, folder / "london-rxc", aet="EDGH_CT1", patient_id="X700001",
            issuer="RXC", name="FED^FIONA", nhs=NHS,
        )  # fmt: skip
        local = cared_for_patient(here, folder / "here-rtp")
        yield Pair(here, london, local, shared, unshared)
    finally:
        for server in started:
            server.stop()


def test_a_clinician_finds_the_patients_studies_here_and_at_london_in_one_qido_answer(
    pair: Pair,
) -> None:
    here = pair.here
    search = {"PatientID": NHS, "IssuerOfPatientID": "NHS", "includenetworks": "true"}
    with httpx.Client(base_url=here.base_url, headers=here.auth("rtp.clinician"), timeout=60) as c:
        answer = c.get("/dicomweb/studies", params=search)
        assert answer.status_code == 200, answer.text
        assert "Warning" not in answer.headers, answer.headers.get("Warning")
        found = {m["0020000D"]["Value"][0]: m for m in answer.json()}
        # London shares only East Surrey's studies with us: not the one captured at RXC.
        assert set(found) == {pair.local, pair.shared}
        url = found[pair.shared]["00081190"]["Value"][0].removeprefix(here.base_url)
        assert url == f"/dicomweb/networks/London/studies/{pair.shared}"
        series = c.get(f"{url}/series")
        assert series.status_code == 200, series.text
        series_uid = series.json()[0]["0020000E"]["Value"][0]
        metadata = c.get(f"{url}/series/{series_uid}/metadata")
        assert metadata.status_code == 200, metadata.text
        items = metadata.json()
        assert len(items) == 2 and {i["0020000D"]["Value"][0] for i in items} == {pair.shared}
        assert pair.london.base_url.encode() not in metadata.content  # its URLs are ours
        # The viewer's own study search reaches London with the NHS number it requires.
        study = c.get("/dicomweb/studies", params={"StudyInstanceUID": pair.shared})
        assert study.status_code == 200, study.text
        assert [m["0020000D"]["Value"] for m in study.json()] == [[pair.shared]]
    assert not in_our_index(here.database_url, pair.shared)
    # London audited our searches and retrieves as the partner network's.
    details = " ".join(row.detail for row in audit_rows(pair.london, "surrey", 0))
    assert details, "London recorded nothing for the partner"
