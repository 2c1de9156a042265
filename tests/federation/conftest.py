"""Fixtures of the federation tests: the neighbouring networks as real archives, and a
netpacs whose region file points at them, with a patient East Surrey (RTP) cares for."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from netpacs.index.schema import study
from tests.browser.conftest import (  # noqa: F401 (the browser tests' fixtures)
    _close_pages,
    browser,
    viewer_installed,
)
from tests.conftest import HttpApp, Netpacs, _IndexTemplates, http_app_on
from tests.federation.peers import (
    NHS,
    Orthanc,
    dicomweb_network,
    dimse_network,
    patient_study,
    region_with_networks,
    start_orthanc,
)
from tests.hl7.conftest import Ack, MllpClient, adt
from tests.hl7.test_regional_record import send_study

LOCAL_ID = "R900123"  # the patient's East Surrey hospital number


@dataclass
class Networks:
    london: Orthanc
    kent: Orthanc
    wessex: Orthanc
    studies: dict[str, list[str]]  # network name -> Study UIDs it holds

    def region(
        self,
        path: Path,
        *,
        extra: str = "",
        workstation_port: int | None = None,
        wessex_retrieve: str = "get",
    ) -> Path:
        """A region file naming the three networks (and ``extra``); RTP_WS1 at
        ``workstation_port`` when given; Wessex retrieved with C-GET or C-MOVE."""
        return region_with_networks(
            path,
            dicomweb_network("London", self.london.dicomweb)
            + dicomweb_network("Kent", self.kent.dicomweb)
            + dimse_network("Wessex", self.wessex.aet, self.wessex.dicom_port, wessex_retrieve)
            + extra,
            workstation_port=workstation_port,
        )


@pytest.fixture(scope="session")
def networks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Networks]:
    base = tmp_path_factory.mktemp("networks")
    started: list[Orthanc] = []
    try:
        # Wessex lets our AE retrieve with C-GET.
        netpacs_ae = {"NETPACS": ["NETPACS", "127.0.0.1", 104]}
        for name, aet in (("London", "LONDON"), ("Kent", "KENT"), ("Wessex", "WESSEX")):
            modalities = netpacs_ae if name == "Wessex" else None
            started.append(start_orthanc(base / name, name, aet, modalities=modalities))
        london, kent, wessex = started
        studies: dict[str, list[str]] = {"London": [], "Kent": [], "Wessex": []}
        for i, (peer, count) in enumerate(((london, 1), (kent, 2), (wessex, 1))):
            for j in range(count):
                folder = base / f"{peer.name}-{j}"
                studies[peer.name].append(patient_study(folder, seed=10 * i + j))
                peer.upload(*sorted(folder.glob("*.dcm")))
        # Another patient at Kent, who must never show.
        other = base / "other"
        patient_study(other, patient_id="9990001243", seed=99)
        kent.upload(*sorted(other.glob("*.dcm")))
        yield Networks(london, kent, wessex, studies)
    finally:
        for peer in started:  # all at once: each takes a few seconds to stop
            peer.proc.terminate()
        for peer in started:
            peer.stop()


def cared_for_patient(app: HttpApp | Netpacs, folder: Path) -> str:
    """The test patient registered at East Surrey (RTP) by ADT with their NHS number,
    and one study of theirs in our archive; its Study UID."""
    message = adt(
        "A04",
        "FED1",
        f"{LOCAL_ID}^^^RTP^MR~{NHS}^^^NHS^NH",
        name="FED^FIONA",
        birth_date="19700101",
        sex="F",
        facility="RTP",
    )
    if isinstance(app, HttpApp):
        ack = Ack(app.adt(message))
    else:
        client = MllpClient(app.mllp_port)
        try:
            ack = client.send(message)
        finally:
            client.close()
    assert ack.code == "AA", ack.text
    return send_study(
        app, folder, aet="ESH_CT1", patient_id=LOCAL_ID, issuer="RTP", name="FED^FIONA", nhs=NHS
    )


@pytest.fixture(scope="module")
def federated_app(
    networks: Networks,
    tmp_path_factory: pytest.TempPathFactory,
    index_templates: _IndexTemplates,
) -> Iterator[tuple[HttpApp, str]]:
    """netpacs (SQLite) asking London, Kent and Wessex; the local study of the patient."""
    folder = tmp_path_factory.mktemp("federated")
    region = networks.region(folder / "region.toml")
    with http_app_on(index_templates, "sqlite", folder / "app", region_file=region) as app:
        yield app, cared_for_patient(app, folder / "local")


def in_our_index(database_url: str, study_uid: str) -> bool:
    """Whether our archive's index holds the study (a remote study never is)."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            query = sa.select(sa.func.count()).select_from(study)
            found = conn.execute(query.where(study.c.study_instance_uid == study_uid)).scalar()
    finally:
        engine.dispose()
    return bool(found)
