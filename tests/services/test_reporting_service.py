"""The reporting service's promise that a signed report reaches its study: an SR that
could not be stored when the report was signed is stored later, once per version."""

from __future__ import annotations

import sqlalchemy as sa

from netpacs.app.container import Archive, build_archive
from netpacs.index.schema import report, result_outbox
from netpacs.services.access import Principal, Role
from netpacs.services.audit import AuditService
from netpacs.services.report_outputs import ReportOutputs
from netpacs.services.reporting import ReportingService
from tests.services.test_report_outputs import STUDY, archive, store_ct, stored

__all__ = ["archive"]  # the fixture

RADIOLOGIST = Principal("ryr.radiologist", Role.RADIOLOGIST, "RYR", name="Dr Ruth Younger")


def reporting(archive: Archive, outputs: ReportOutputs) -> ReportingService:
    service = ReportingService(
        archive.read_engine,
        archive.write_engine,
        archive.region,
        principal=RADIOLOGIST,
        audit=AuditService(archive.writer.execute, source_id="NETPACS"),
        outputs=outputs,
    )
    return service.for_principal(service.with_agreements(RADIOLOGIST))


def unavailable_outputs(archive: Archive) -> ReportOutputs:
    """Outputs whose ingest has shut down: storing an SR fails."""
    broken = build_archive(archive.settings)
    broken.close()
    return ReportOutputs(
        ingest=broken.ingest, region=archive.region, read_engine=archive.read_engine, ae_title="X"
    )


def sr_uid(archive: Archive) -> str | None:
    with archive.read_engine.connect() as conn:
        return conn.execute(  # type: ignore[no-any-return]
            sa.select(report.c.sr_sop_instance_uid).where(report.c.study_instance_uid == STUDY)
        ).scalar_one()


def test_an_sr_that_could_not_be_stored_at_signing_is_stored_by_the_sweep_once(
    archive: Archive,
) -> None:
    store_ct(archive)
    assert archive.report_outputs is not None
    failing = reporting(archive, unavailable_outputs(archive))
    signed = failing.save(
        STUDY, "FINDINGS:\nNormal.\n\nCONCLUSION:\nNo acute abnormality.", "final"
    )
    assert signed["status"] == "final" and signed["sr_sop_instance_uid"] is None
    with archive.read_engine.connect() as conn:  # the ORU is queued all the same
        assert conn.execute(sa.select(sa.func.count()).select_from(result_outbox)).scalar() == 1
    working = reporting(archive, archive.report_outputs)
    assert working.store_missing_srs(older_than=0) == 1
    first = sr_uid(archive)
    assert first is not None
    sr = stored(archive, first)
    assert sr.StudyInstanceUID == STUDY and sr.VerificationFlag == "VERIFIED"
    assert working.store_missing_srs(older_than=0) == 0  # once
    # An addendum whose SR fails: the report is due a new SR version, stored later.
    failing.addendum(STUDY, "Comparison with the 2024 CT: unchanged.")
    assert sr_uid(archive) is None
    assert working.store_missing_srs(older_than=0) == 1
    second = sr_uid(archive)
    assert second not in (None, first)
    assert len(stored(archive, str(second)).VerifyingObserverSequence) == 2
