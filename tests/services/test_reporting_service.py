"""The reporting services' promises that no HTTP test reaches well: an SR that could
not be stored when the report was signed is stored later, once per version; a lapsed
claim is released by the expiry job and audited once, a live one stays."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa

from netpacs.app.container import Archive, build_archive
from netpacs.app.settings import Settings
from netpacs.index.schema import audit_event, report, result_outbox, worklist_item
from netpacs.services.access import SYSTEM, Principal, Role
from netpacs.services.access_policy import AccessDenied
from netpacs.services.audit import AuditService
from netpacs.services.report_outputs import ReportOutputs
from netpacs.services.reporting import (
    ClaimsService,
    ReportingScope,
    ReportsService,
)
from tests.services.test_report_outputs import STUDY, archive, store_ct, stored

__all__ = ["archive"]  # the fixture

RADIOLOGIST = Principal("ryr.radiologist", Role.RADIOLOGIST, "RYR", name="Dr Ruth Younger")


def scope(archive: Archive) -> ReportingScope:
    return ReportingScope(
        archive.read_engine,
        archive.write_engine,
        archive.region,
        AuditService(archive.writer.execute, source_id="NETPACS"),
        archive.access,
    )


def reporting(archive: Archive, outputs: ReportOutputs) -> ReportsService:
    shared = scope(archive)
    return ReportsService(shared, outputs=outputs).for_principal(
        shared.with_agreements(RADIOLOGIST)
    )


def unavailable_outputs(archive: Archive, settings: Settings) -> ReportOutputs:
    """Outputs whose ingest has shut down: storing an SR fails."""
    broken = build_archive(settings)
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
    archive: Archive, tmp_path: Path, database_url: str
) -> None:
    store_ct(archive)
    assert archive.report_outputs is not None
    # The archive fixture's settings: a second archive on the same index, closed.
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    failing = reporting(archive, unavailable_outputs(archive, settings))
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


def audited(archive: Archive, words: str) -> list[tuple[str, str | None, str]]:
    """(user, patient ID, detail) of the audit messages whose detail has ``words``."""
    with archive.read_engine.connect() as conn:
        rows = conn.execute(
            sa.select(audit_event.c.user_id, audit_event.c.patient_id, audit_event.c.detail)
            .where(audit_event.c.detail.contains(words))
            .order_by(audit_event.c.id)
        ).all()
    return [(r.user_id, r.patient_id, r.detail) for r in rows]


def holder(archive: Archive) -> str | None:
    with archive.read_engine.connect() as conn:
        return conn.execute(  # type: ignore[no-any-return]
            sa.select(worklist_item.c.claimed_by).where(worklist_item.c.study_instance_uid == STUDY)
        ).scalar_one()


def test_the_expiry_job_releases_a_lapsed_claim_once_audited_and_keeps_a_live_one(
    archive: Archive,
) -> None:
    store_ct(archive)
    shared = scope(archive)
    radiologist = ClaimsService(shared).for_principal(shared.with_agreements(RADIOLOGIST))
    job = ClaimsService(shared).for_principal(SYSTEM)
    radiologist.claim(STUDY)
    now = dt.datetime.now(dt.UTC)
    assert job.expire_claims(now=now) == 0
    assert holder(archive) == "ryr.radiologist"
    lapsed = now + dt.timedelta(minutes=archive.region.reporting.claim_minutes + 1)
    assert job.expire_claims(now=lapsed) == 1
    assert holder(archive) is None
    assert job.expire_claims(now=lapsed) == 0
    assert audited(archive, "lapsed") == [
        ("netpacs", "RXC5001", "claim of ryr.radiologist released: it lapsed")
    ]
    with pytest.raises(AccessDenied) as refused:
        radiologist.expire_claims(now=lapsed)
    assert refused.value.message == "only a PACS admin may release lapsed claims"


def test_releasing_a_claim_is_audited_and_a_release_of_nothing_is_not(archive: Archive) -> None:
    store_ct(archive)
    shared = scope(archive)
    radiologist = ClaimsService(shared).for_principal(shared.with_agreements(RADIOLOGIST))
    radiologist.claim(STUDY)
    assert radiologist.release(STUDY)["claimed_by"] is None
    assert radiologist.release(STUDY)["claimed_by"] is None
    assert audited(archive, "released") == [
        ("ryr.radiologist", "RXC5001", "claim of ryr.radiologist released")
    ]
