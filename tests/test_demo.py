"""``netpacs demo-data``: a synthetic region of six trusts, loaded as the sites would send it.

The command runs once (30 patients) against a temporary data directory; the tests read
what it stored through the query service, the way C-FIND would see it.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import sqlalchemy as sa
from pydicom.datadict import tag_for_keyword
from pydicom.filebase import DicomBytesIO

from netpacs import demo
from netpacs.adapters.hl7 import messages
from netpacs.app.region_file import load_region
from netpacs.app.settings import BUNDLED_DEMO_REGION
from netpacs.domain import nhs_number
from netpacs.domain.query import QueryLevel, QueryModel
from netpacs.index.db import make_engine
from netpacs.index.schema import (
    adt_identity,
    hl7_message,
    patient,
    reconciliation,
    report,
    study,
    worklist_item,
)
from netpacs.services.access import SYSTEM
from netpacs.services.query import QueryService

ROOT = Path(__file__).resolve().parents[1]
NETPACS = ROOT / ".venv" / "bin" / "netpacs"
PATIENTS = 30
SEED = 2026
REGION = load_region(BUNDLED_DEMO_REGION)


def run_demo_data(
    data_dir: Path, database_url: str, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETPACS_")}
    env |= {"NETPACS_DATA_DIR": str(data_dir), "NETPACS_DATABASE_URL": database_url}
    return subprocess.run(
        [str(NETPACS), "demo-data", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@dataclass
class Loaded:
    data_dir: Path
    database_url: str
    first_run: subprocess.CompletedProcess[str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_demo_data(self.data_dir, self.database_url, *args)

    def find(self, level: QueryLevel, **keys: str) -> list[dict[str, Any]]:
        """C-FIND-style query (Study Root) returning the attributes named by keyword."""
        identifier = {f"{tag_for_keyword(k):08X}": {"vr": vr} for k, vr in keys.items()}
        engine = make_engine(self.database_url)
        try:
            return list(
                QueryService(engine, principal=SYSTEM).find(
                    identifier, level=level, model=QueryModel.STUDY_ROOT
                )
            )
        finally:
            engine.dispose()

    def studies(self) -> list[dict[str, Any]]:
        return self.find(
            QueryLevel.STUDY,
            StudyInstanceUID="UI",
            PatientID="LO",
            IssuerOfPatientID="LO",
            PatientName="PN",
            PatientBirthDate="DA",
            OtherPatientIDsSequence="SQ",
            ModalitiesInStudy="CS",
            NumberOfStudyRelatedInstances="IS",
        )


def value(ds: dict[str, Any], keyword: str) -> Any:
    element = ds.get(f"{tag_for_keyword(keyword):08X}", {})
    values = element.get("Value", [])
    if not values:
        return None
    first = values[0]
    return first["Alphabetic"] if isinstance(first, dict) and "Alphabetic" in first else first


def nhs_numbers(ds: dict[str, Any]) -> list[str]:
    items = ds.get("00101002", {}).get("Value", [])
    return [value(i, "PatientID") for i in items if value(i, "IssuerOfPatientID") == "NHS"]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    data_dir = tmp_path_factory.mktemp("demo")
    url = f"sqlite:///{data_dir / 'index.sqlite'}"
    first = run_demo_data(data_dir, url, "--patients", str(PATIENTS))
    assert first.returncode == 0, first.stdout + first.stderr
    yield Loaded(data_dir, url, first)


@pytest.fixture(scope="module")
def model() -> demo.DemoRegion:
    return demo.build_region(PATIENTS, SEED, region=REGION)


def test_summary_names_patients_studies_instances_and_time(
    loaded: Loaded, model: demo.DemoRegion
) -> None:
    out = loaded.first_run.stdout
    assert f"{PATIENTS} patients" in out
    assert f"{len(model.studies)} studies, {model.instance_count} instances in " in out
    assert f"stored {model.instance_count}, already stored 0, refused or failed 0" in out


def test_every_trust_site_and_modality_appears(loaded: Loaded) -> None:
    studies = loaded.studies()
    assert {value(s, "IssuerOfPatientID") for s in studies} == REGION.issuers
    modalities = {m for s in studies for m in s["00080061"]["Value"]}
    # SR: the reports the demo radiologists signed, stored in their studies.
    assert modalities == {"CT", "MR", "CR", "DX", "US", "MG", "SR"}
    engine = make_engine(loaded.database_url)
    with engine.connect() as conn:
        origins = set(conn.execute(sa.select(study.c.origin_trust, study.c.origin_site)))
    engine.dispose()
    assert origins == {(t.ods_code, s.code) for t in REGION.trusts for s in t.sites}


def test_series_name_the_hospital_and_the_sending_modality_ae(loaded: Loaded) -> None:
    hospitals = {s.name.split(" (")[0]: s.code for t in REGION.trusts for s in t.sites}
    series = loaded.find(QueryLevel.SERIES, Modality="CS", InstitutionName="LO", StationName="SH")
    for s in series:
        if value(s, "Modality") == "SR":  # a report, made by netpacs, not a modality
            continue
        site = hospitals[value(s, "InstitutionName")]
        ae = REGION.ae(value(s, "StationName"))
        assert ae is not None and ae.site == site, s
        suffix = {"CT": "_CT1", "MR": "_MR1", "US": "_US1"}.get(value(s, "Modality"), "_CR1")
        assert ae.ae_title.endswith(suffix)


def test_an_nhs_number_links_different_hospital_numbers_at_several_trusts(
    loaded: Loaded,
) -> None:
    identities: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for s in loaded.studies():
        for number in nhs_numbers(s):
            identities[number].add((value(s, "IssuerOfPatientID"), value(s, "PatientID")))
    linked = {n: ids for n, ids in identities.items() if len({issuer for issuer, _ in ids}) >= 2}
    assert linked
    for ids in linked.values():
        assert len({mrn for _, mrn in ids}) == len(ids)  # a different number at each trust
    assert any(len({issuer for issuer, _ in ids}) >= 3 for ids in linked.values())


def test_one_hospital_number_at_two_trusts_belongs_to_two_people(loaded: Loaded) -> None:
    people: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
    for s in loaded.studies():
        people[value(s, "PatientID")].add(
            (value(s, "IssuerOfPatientID"), value(s, "PatientName"), value(s, "PatientBirthDate"))
        )
    shared = {mrn: p for mrn, p in people.items() if len({issuer for issuer, _, _ in p}) > 1}
    assert shared
    for persons in shared.values():
        assert len({(name, birth) for _, name, birth in persons}) == len(persons)


def test_nhs_numbers_are_valid_except_the_deliberately_invalid_ones(
    loaded: Loaded, model: demo.DemoRegion
) -> None:
    found = {n for s in loaded.studies() for n in nhs_numbers(s)}
    invalid = {n for n in found if not nhs_number.is_valid(n)}
    deliberate = {
        p.nhs_number
        for p in model.persons
        if p.nhs_number_status
        in (demo.NhsNumberStatus.WRONG_CHECK_DIGIT, demo.NhsNumberStatus.CHECK_DIGIT_TEN)
    }
    assert len(deliberate) == 2
    assert invalid == deliberate
    problems = {nhs_number.parse(n).problem for n in invalid}
    assert problems == {nhs_number.Problem.WRONG_CHECK_DIGIT, nhs_number.Problem.CHECK_DIGIT_TEN}
    assert all(n.startswith("999") for n in found)  # the range kept for test data
    without = [s for s in loaded.studies() if not nhs_numbers(s)]
    assert without  # some patients have no NHS number at all


def test_if_empty_on_a_populated_archive_adds_nothing(loaded: Loaded) -> None:
    before = loaded.studies()
    result = loaded.run("--if-empty", "--patients", "5", "--seed", "7")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().count("\n") == 0 and "nothing loaded" in result.stdout
    assert loaded.studies() == before


def test_a_second_run_with_the_same_seed_finds_everything_already_stored(
    loaded: Loaded, model: demo.DemoRegion
) -> None:
    result = loaded.run("--patients", str(PATIENTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"stored 0, already stored {model.instance_count}, refused or failed 0" in result.stdout


def test_the_same_seed_gives_the_same_region_and_uids(
    loaded: Loaded, model: demo.DemoRegion
) -> None:
    assert demo.build_region(PATIENTS, SEED, region=REGION) == model
    stored = {value(s, "StudyInstanceUID") for s in loaded.studies()}
    assert stored == {s.study_instance_uid for s in model.studies}
    other = demo.build_region(PATIENTS, SEED + 1, region=REGION)
    assert [p.nhs_number for p in other.persons] != [p.nhs_number for p in model.persons]
    assert not stored & {s.study_instance_uid for s in other.studies}


def test_each_modality_makes_readable_images(model: demo.DemoRegion) -> None:
    shapes = {
        demo.Modality.CT: (128, 128),
        demo.Modality.MR: (128, 128),
        demo.Modality.US: (128, 128),
        demo.Modality.CR: (256, 256),
        demo.Modality.DX: (256, 256),
        demo.Modality.MG: (256, 256),
    }
    for modality, shape in shapes.items():
        example = next(s for s in model.studies if s.modality is modality)
        for ds in demo.datasets(example):
            again = pydicom.dcmread(DicomBytesIO(demo.part10(ds)))
            assert again.pixel_array.shape == shape
            assert again.pixel_array.max() > again.pixel_array.min()
            assert again.PatientID == example.identity.hospital_number
            assert again.IssuerOfPatientID == example.identity.trust


def test_adt_files_are_one_a04_per_local_identity(loaded: Loaded, model: demo.DemoRegion) -> None:
    files = sorted((loaded.data_dir / "demo" / "adt").glob("*.hl7"))
    assert len(files) == len(model.identities)
    control_ids = set()
    for path, identity in zip(files, model.identities, strict=True):
        payload = path.read_bytes()
        segments = payload.decode("ascii").rstrip("\r").split("\r")
        assert [s[:3] for s in segments] == ["MSH", "EVN", "PID", "PV1"]
        msh = segments[0].split("|")
        assert msh[8] == "ADT^A04^ADT_A01" and msh[11] == "2.4"
        control_ids.add(msh[9])
        pid = segments[2].split("|")
        cx = pid[3].split("~")
        assert cx[0] == f"{identity.hospital_number}^^^{identity.trust}^MR"
        person = identity.person
        expected_nhs = [] if person.nhs_number is None else [f"{person.nhs_number}^^^NHS^NH"]
        assert cx[1:] == expected_nhs
        assert pid[5] == f"{person.family_name}^{person.given_name}"
        assert (pid[7], pid[8]) == (f"{person.birth_date:%Y%m%d}", person.sex)
        # The MLLP listener reads it as the same identity.
        event = messages.read(payload).event
        assert (event.identifiers[0].value, event.identifiers[0].authority) == (
            identity.hospital_number,
            identity.trust,
        )
    assert len(control_ids) == len(files)
    assert demo.adt_messages(model) == [p.read_bytes() for p in files]


def test_adt_messages_are_applied_as_the_feed_would_and_flag_invalid_nhs_numbers(
    loaded: Loaded, model: demo.DemoRegion
) -> None:
    """Every local identity is registered by its A04; the invalid NHS numbers are flagged."""
    sent = len(model.identities) + len(demo.reconciliation_cases(model))
    assert f"applied as the ADT feed would: AA {sent}" in loaded.first_run.stdout
    engine = make_engine(loaded.database_url)
    try:
        with engine.connect() as conn:
            acks = conn.execute(sa.select(hl7_message.c.ack_code)).scalars().all()
            flagged = (
                conn.execute(
                    sa.select(adt_identity.c.nhs_number).where(
                        adt_identity.c.nhs_number_problem.is_not(None)
                    )
                )
                .scalars()
                .all()
            )
            identities = conn.execute(sa.select(sa.func.count()).select_from(adt_identity)).scalar()
    finally:
        engine.dispose()
    assert acks and set(acks) == {"AA"}
    assert identities == len(model.identities) + 1  # one planted second registration
    invalid = {
        i.person.nhs_number
        for i in model.identities
        if i.person.nhs_number and not nhs_number.is_valid(i.person.nhs_number)
    }
    assert invalid and set(flagged) == invalid


def test_planted_cases_wait_on_the_reconciliation_page_and_the_rest_is_linked(
    loaded: Loaded, model: demo.DemoRegion
) -> None:
    """Each planted case is one open item; every other valid NHS number linked cleanly."""
    engine = make_engine(loaded.database_url)
    try:
        with engine.connect() as conn:
            kinds = sorted(
                conn.execute(
                    sa.select(reconciliation.c.kind).where(reconciliation.c.status == "open")
                ).scalars()
            )
            linked = set(
                conn.execute(
                    sa.select(patient.c.nhs_number).where(patient.c.nhs_number.is_not(None))
                ).scalars()
            )
    finally:
        engine.dispose()
    invalid = sum(
        1 for p in model.persons if p.nhs_number and not nhs_number.is_valid(p.nhs_number)
    )
    # The birth date sent ten years off also contradicts that identity's stored studies.
    typo = demo.reconciliation_cases(model)[0][1].decode().split("\r")[2].split("|")
    typo_number, _, _, typo_trust = typo[3].split("^")[:4]
    typo_studies = sum(
        1
        for s in model.studies
        if (s.identity.hospital_number, s.identity.trust) == (typo_number, typo_trust)
    )
    assert typo_studies
    assert kinds == sorted(
        ["duplicate-registration", "nhs-number-conflict", "two-nhs-numbers"]
        + ["invalid-nhs-number"] * invalid
        + ["study-mismatch"] * typo_studies
    )
    valid = {
        p.nhs_number for p in model.persons if p.nhs_number and nhs_number.is_valid(p.nhs_number)
    }
    assert linked == valid


def test_the_newest_studies_wait_on_the_worklist_and_the_oldest_of_them_are_reported(
    loaded: Loaded,
) -> None:
    assert "reporting worklist: the newest 40 studies queued, 16 of them reported" in (
        loaded.first_run.stdout
    )
    engine = make_engine(loaded.database_url)
    try:
        with engine.connect() as conn:
            items = conn.execute(
                sa.select(
                    worklist_item.c.status, worklist_item.c.arrived_at, worklist_item.c.reported_by
                )
            ).all()
            authors = conn.execute(sa.select(report.c.author, report.c.status)).all()
    finally:
        engine.dispose()
    assert len(items) == 40
    final = [i for i in items if i.status == "final"]
    assert len(final) == 16
    assert all(i.reported_by.endswith(".radiologist") for i in final)
    assert {status for _, status in authors} == {"final"} and len(authors) == 16
    # Those reported are the ones that waited longest.
    assert max(i.arrived_at for i in final) <= min(
        i.arrived_at for i in items if i.status != "final"
    )


def test_todays_orders_are_on_the_worklist_of_every_sites_ct_mr_cr_us(loaded: Loaded) -> None:
    from netpacs.services.access import principal_for_ae
    from netpacs.services.orders.worklist import ModalityWorklist, WorklistKeys

    assert "modality worklist: " in loaded.first_run.stdout
    assert ": AA " in loaded.first_run.stdout.split("modality worklist: ")[1].split("\n")[0]
    today = dt.date.today().strftime("%Y%m%d")
    engine = make_engine(loaded.database_url)
    try:
        worklist = ModalityWorklist(engine, REGION, None)
        modalities = [
            ae
            for ae in REGION.aes
            if ae.kind.value == "modality" and ae.modality in ("CT", "MR", "CR", "US")
        ]
        assert len(modalities) == 4 * sum(len(t.sites) for t in REGION.trusts)
        for ae in modalities:
            principal = principal_for_ae(ae, ae.ae_title, None)
            answer = worklist.find(principal, WorklistKeys(start_date=today))
            assert len(answer.steps) == 3, ae.ae_title
            assert {s.modality for s in answer.steps} == {ae.modality}
            assert {s.site for s in answer.steps} == {ae.site}
    finally:
        engine.dispose()
