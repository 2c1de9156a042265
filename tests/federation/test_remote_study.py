"""A study Kent holds (Orthanc over DICOMweb), opened through netpacs (issue 14): its
metadata, frames and study search passed through under the RetrieveURL the federated
search gave, and under our own /dicomweb paths for the viewer; only for a user who
may see the patient; nothing stored."""

from __future__ import annotations

import sqlalchemy as sa

from netpacs.index.schema import instance, study
from tests.conftest import HttpApp
from tests.federation.conftest import Networks
from tests.federation.peers import NHS

SEARCH = {"PatientID": NHS, "IssuerOfPatientID": "NHS", "includenetworks": "true"}


def _kent_url(app: HttpApp, user: str, uid: str) -> str:
    with app.client(user) as client:
        answer = client.get("/dicomweb/studies", params=SEARCH).json()
    match = next(m for m in answer if m["0020000D"]["Value"] == [uid])
    url: str = match["00081190"]["Value"][0]
    return url.removeprefix(app.base_url)


def test_a_kent_study_is_passed_through_under_its_retrieve_url_and_stored_nowhere(
    federated_app: tuple[HttpApp, str], networks: Networks
) -> None:
    app, _ = federated_app
    uid = networks.studies["Kent"][0]
    url = _kent_url(app, "rtp.clinician", uid)
    assert url == f"/dicomweb/networks/Kent/studies/{uid}"
    with app.client("rtp.clinician") as client:
        series = client.get(f"{url}/series")
        assert series.status_code == 200, series.text
        series_uid = series.json()[0]["0020000E"]["Value"][0]
        metadata = client.get(f"{url}/series/{series_uid}/metadata")
        assert metadata.status_code == 200, metadata.text
        assert networks.kent.dicomweb.encode() not in metadata.content  # its URLs are ours
        items = metadata.json()
        assert len(items) == 2
        sop = items[0]["00080018"]["Value"][0]
        frames = client.get(
            f"{url}/series/{series_uid}/instances/{sop}/frames/1",
            headers={"Accept": 'multipart/related; type="application/octet-stream"'},
        )
        assert frames.status_code == 200, frames.text
        assert frames.headers["content-type"].startswith("multipart/related")
        assert len(frames.content) >= 64 * 64 * 2
        # The viewer's own paths reach the same study.
        ours = client.get(f"/dicomweb/studies/{uid}/series/{series_uid}/metadata")
        assert ours.status_code == 200 and len(ours.json()) == 2
        found = client.get("/dicomweb/studies", params={"StudyInstanceUID": uid})
        assert [m["0020000D"]["Value"] for m in found.json()] == [[uid]]
    with sa.create_engine(app.database_url).connect() as conn:
        stored = conn.execute(
            sa.select(sa.func.count()).select_from(study).where(study.c.study_instance_uid == uid)
        ).scalar()
        instances = conn.execute(
            sa.select(sa.func.count())
            .select_from(instance)
            .where(instance.c.sop_instance_uid == sop)
        ).scalar()
    assert stored == 0 and instances == 0


def test_a_user_who_may_not_see_the_patient_cannot_open_the_kent_study(
    federated_app: tuple[HttpApp, str], networks: Networks
) -> None:
    app, _ = federated_app
    uid = networks.studies["Kent"][1]
    with app.client("rtk.clinician") as client:
        direct = client.get(f"/dicomweb/networks/Kent/studies/{uid}/series")
        ours = client.get(f"/dicomweb/studies/{uid}/series")
    assert direct.status_code == 403 and "care for" in direct.text
    assert ours.status_code in (200, 204, 404)
    assert uid not in ours.text


def test_a_path_that_is_no_wado_resource_is_refused(
    federated_app: tuple[HttpApp, str], networks: Networks
) -> None:
    app, _ = federated_app
    uid = networks.studies["Kent"][0]
    with app.client("rtp.clinician") as client:
        response = client.get(f"/dicomweb/networks/Kent/studies/{uid}/../../tools/reset")
        unknown = client.get(f"/dicomweb/networks/Nowhere/studies/{uid}/series")
        dots = client.get(
            f"/dicomweb/networks/Kent/studies/{uid}/series/1.2/instances/1.3/bulk/%2E%2E/x"
        )
    assert response.status_code in (400, 404)
    assert dots.status_code == 400 and "not a WADO-RS resource" in dots.text
    assert unknown.status_code == 404 and "Nowhere" in unknown.text


def test_a_kent_study_opens_under_our_paths_without_a_search_in_this_process(
    federated_app: tuple[HttpApp, str], networks: Networks
) -> None:
    """As when the viewer's requests reach another HTTP process than the search did:
    the study is not ours, Kent holds it, and the user may see its patient."""
    app, _ = federated_app
    uid = networks.studies["Kent"][1]
    with app.client("rtp.radiographer") as client:
        series = client.get(f"/dicomweb/studies/{uid}/series")
        found = client.get("/dicomweb/studies", params={"StudyInstanceUID": uid})
    assert series.status_code == 200, series.text
    assert len(series.json()) == 1
    assert [m["0020000D"]["Value"] for m in found.json()] == [[uid]]
