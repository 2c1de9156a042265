"""IOCM rejection notes sent by STOW-RS (issue 15): a note naming a whole study makes
the study itself disappear from QIDO-RS, an undo brings it back, and after the region's
retention delay the rejected instances are deleted for good (blobs included)."""

from __future__ import annotations

import datetime as dt

import pydicom
from pydicom.uid import generate_uid

from netpacs.services.rejection import RejectionService
from tests.adapters.test_rejection_notes import rejection_note
from tests.conftest import HttpApp
from tests.factories import ct_dataset
from tests.http.test_stow import encode, multipart, stow


def _stow_study(app: HttpApp, patient_id: str, n: int = 2) -> list[pydicom.Dataset]:
    study, series = generate_uid(), generate_uid()
    images = [
        ct_dataset(
            StudyInstanceUID=study,
            SeriesInstanceUID=series,
            InstanceNumber=i + 1,
            PatientID=patient_id,
            IssuerOfPatientID="RXC",
        )
        for i in range(n)
    ]
    body = multipart(*(("application/dicom", encode(ds)) for ds in images))
    assert stow(app, body).status_code == 200
    return images


def _studies(app: HttpApp, study: str) -> int:
    response = app.http.get("/dicomweb/studies", params={"StudyInstanceUID": study})
    assert response.status_code in (200, 204), response.text
    return 0 if response.status_code == 204 else len(response.json())


def _blobs(app: HttpApp) -> int:
    return sum(1 for p in (app.data_dir / "objects").glob("???/*") if p.is_file())


def _note_of(app: HttpApp, note: pydicom.Dataset) -> int:
    rows = app.http.get("/api/rejections").json()["rejections"]
    return int(next(r["id"] for r in rows if r["note_sop_instance_uid"] == note.SOPInstanceUID))


def test_a_stowed_rejection_note_of_a_whole_study_hides_the_study_until_undone(
    http_app: HttpApp,
) -> None:
    images = _stow_study(http_app, "REJ0101")
    study = str(images[0].StudyInstanceUID)
    note = rejection_note(images, ("113038", "Incorrect Modality Worklist Entry"))
    assert stow(http_app, multipart(("application/dicom", encode(note)))).status_code == 200

    assert _studies(http_app, study) == 0  # its instances and the note gone: no study
    rid = _note_of(http_app, note)
    response = http_app.http.post(
        f"/api/rejections/{rid}/undo", json={"reason": "the worklist entry was right"}
    )
    assert response.status_code == 200, response.text
    assert _studies(http_app, study) == 1
    (found,) = http_app.http.get("/dicomweb/studies", params={"StudyInstanceUID": study}).json()
    assert found["00201208"]["Value"] == [2]  # NumberOfStudyRelatedInstances: the note hidden


def test_rejected_instances_are_deleted_after_the_retention_delay(http_app: HttpApp) -> None:
    images = _stow_study(http_app, "REJ0102")
    note = rejection_note(images, ("113039", "Data Retention Policy Expired"))
    assert stow(http_app, multipart(("application/dicom", encode(note)))).status_code == 200
    blobs = _blobs(http_app)
    archive = http_app.archive
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=archive.region.rejection_retention_days)

    def purge_at(when: dt.datetime) -> int:
        return RejectionService(
            run=archive.writer.execute,
            read_engine=archive.read_engine,
            blobs=archive.blobs,
            source_id=archive.ae_title,
            retention_days=archive.region.rejection_retention_days,
            clock=lambda: when,
        ).purge_expired()

    assert purge_at(later - dt.timedelta(hours=1)) == 0  # not yet
    assert purge_at(later + dt.timedelta(hours=1)) == 2
    assert _blobs(http_app) == blobs - 2  # the note itself is kept
    assert purge_at(later + dt.timedelta(days=1)) == 0
    rid = _note_of(http_app, note)
    undo = http_app.http.post(f"/api/rejections/{rid}/undo", json={"reason": "too late for it"})
    assert undo.status_code == 409, undo.text
