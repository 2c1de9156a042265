"""``netpacs demo-data``: the demo region loaded into an archive (its objects, its ADT,
a reporting worklist), through the services the composition root builds."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import sqlalchemy as sa
from tqdm import tqdm

from netpacs.app.container import Archive, build_archive
from netpacs.app.region_file import load_region
from netpacs.app.settings import Settings
from netpacs.demo.adt import adt_messages, reconciliation_cases, write_adt
from netpacs.demo.images import datasets, part10
from netpacs.demo.model import DemoRegion, build_region
from netpacs.demo.orders import order_messages
from netpacs.domain.outcomes import Origin, Protocol, StoreOutcome, StoreStatus
from netpacs.index.db import make_engine
from netpacs.index.schema import study as study_table
from netpacs.services.ingest import IngestService
from netpacs.services.maintenance.streaming import run_bounded

log = logging.getLogger(__name__)


@dataclass
class LoadSummary:
    """What :func:`load` stored: counts by outcome, and a line per refused object."""

    studies: int = 0
    instances: int = 0
    by_status: Counter[StoreStatus] = dataclasses.field(default_factory=Counter)
    problems: list[str] = dataclasses.field(default_factory=list)


def load(
    demo: DemoRegion, ingest: IngestService, *, workers: int = 4, progress: bool = True
) -> LoadSummary:
    """Store every demo object through the ingest service, as its site's modality sent it.

    The origin is an import (in-process, the rules of C-STORE) naming the modality AE,
    trust and site, so that each study shows where it was captured.
    """
    summary = LoadSummary(studies=len(demo.studies))

    def objects() -> Iterator[tuple[bytes, Origin]]:
        for s in demo.studies:
            origin = Origin(
                Protocol.IMPORT, ae_title=s.ae_title, trust=s.identity.trust, site=s.site.code
            )
            for ds in datasets(s):
                yield part10(ds), origin

    def store(item: tuple[bytes, Origin]) -> StoreOutcome:
        return ingest.store_part10(item[0], origin=item[1])

    disable = None if progress else True  # None: a bar only on a terminal
    with tqdm(total=demo.instance_count, unit="instance", desc="demo-data", disable=disable) as bar:
        for _, outcome in run_bounded(store, objects(), workers=workers):
            summary.instances += 1
            summary.by_status[outcome.status] += 1
            if not outcome.status.ok:
                summary.problems.append(
                    f"{outcome.status.value}: {outcome.sop_instance_uid}: {outcome.message}"
                )
            bar.update()
    return summary


def _index_has_studies(settings: Settings) -> bool:
    engine = make_engine(settings.effective_database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.select(study_table.c.id).limit(1)).first() is not None
    finally:
        engine.dispose()


def apply_adt(demo: DemoRegion, archive: Archive) -> dict[str, int]:
    """Apply the region's ADT messages through the HL7 endpoint; count the ACK codes."""
    from netpacs.adapters.hl7.server import Hl7Endpoint
    from netpacs.services.adt import AdtService

    service = AdtService(archive.write_engine, archive.region)
    endpoint = Hl7Endpoint(service, service.console())
    counts: dict[str, int] = {}
    adt_log = logging.getLogger("netpacs.services.adt")
    level = adt_log.level
    adt_log.setLevel(max(level, logging.WARNING))  # one line per message is for the feed
    try:
        for message in adt_messages(demo) + [m for _, m in reconciliation_cases(demo)]:
            ack = endpoint(message).decode("utf-8", "replace")
            msa = next((seg for seg in ack.split("\r") if seg.startswith("MSA")), "MSA|??")
            code = msa.split("|")[1] if "|" in msa else "??"
            counts[code] = counts.get(code, 0) + 1
    finally:
        adt_log.setLevel(level)
    return counts


def apply_orders(demo: DemoRegion, archive: Archive, day: dt.date) -> dict[str, int]:
    """Place today's demo orders through the HL7 endpoint; count the ACK codes."""
    from netpacs.adapters.hl7.server import Hl7Endpoint
    from netpacs.services.adt import AdtService
    from netpacs.services.orders import OrderService

    adt = AdtService(archive.write_engine, archive.region)
    endpoint = Hl7Endpoint(adt, adt.console(), OrderService(adt, archive.region))
    counts: dict[str, int] = {}
    adt_log = logging.getLogger("netpacs.services.adt")
    level = adt_log.level
    adt_log.setLevel(max(level, logging.WARNING))
    try:
        for message in order_messages(demo, archive.region, day):
            ack = endpoint(message).decode("utf-8", "replace")
            msa = next((seg for seg in ack.split("\r") if seg.startswith("MSA")), "MSA|??")
            code = msa.split("|")[1] if "|" in msa else "??"
            counts[code] = counts.get(code, 0) + 1
    finally:
        adt_log.setLevel(level)
    return counts


_FINDINGS = {
    "CT": "No acute intracranial, thoracic or abdominal abnormality on this study.",
    "MR": "Normal signal throughout. No mass, collection or abnormal enhancement.",
    "CR": "Lungs clear. Heart size normal. No bony injury.",
    "DX": "No fracture or dislocation. Soft tissues unremarkable.",
    "US": "Liver, gallbladder, kidneys and spleen of normal appearance.",
    "MG": "Scattered fibroglandular tissue. No suspicious mass or calcification.",
}


def queue_worklist(
    demo: DemoRegion, archive: Archive, *, seed: int, queued: int = 40, reported: int = 16
) -> tuple[int, int]:
    """Put the newest studies on the reporting worklist as if they arrived over the last
    three days, and have the demo radiologists report the oldest of them, so that the
    worklist, the reporting page and the turnaround dashboard have something to show.

    Loading history (an import) queues nothing: this stands in for the modalities that
    would have sent these studies. Reports go through the reporting service like any
    other (their SR is stored; their ORU waits in the outbox for the trust's listener).
    """
    from netpacs.services.access import SYSTEM, Principal, Role
    from netpacs.services.reporting import (
        Priority,
        ReportingError,
        ReportingScope,
        ReportsService,
        WorklistService,
    )

    rng = random.Random(seed * 7919 + 6)
    scope = ReportingScope(
        archive.read_engine,
        archive.write_engine,
        archive.region,
        archive.audit,
        archive.access,
        principal=SYSTEM,
    )
    worklist = WorklistService(scope)
    reports = ReportsService(scope, outputs=archive.report_outputs)
    newest = sorted(demo.studies, key=lambda s: (s.study_date, s.study_time), reverse=True)
    now = dt.datetime.now(dt.UTC)
    weights = {
        Priority.EMERGENCY: 2,
        Priority.INPATIENT: 5,
        Priority.CANCER_2WW: 2,
        Priority.OUTPATIENT: 6,
        Priority.GP: 3,
    }
    chosen = [s for s in newest if s.modality.value in _FINDINGS][:queued]
    # Oldest arrivals first, so that those reported are the ones that waited longest.
    arrivals = sorted(now - dt.timedelta(minutes=rng.randrange(20, 72 * 60)) for _ in chosen)
    done = 0
    for n, (study, arrived) in enumerate(zip(chosen, arrivals, strict=True)):
        priority = rng.choices(list(weights), weights=list(weights.values()))[0]
        try:
            worklist.queue(study.study_instance_uid, priority=priority.value, arrived_at=arrived)
        except ReportingError:
            continue
        if n >= reported:
            continue
        trust = rng.choice(archive.region.trusts).ods_code
        reporter = reports.for_principal(
            worklist.with_agreements(
                Principal(
                    f"{trust.lower()}.radiologist",
                    Role.RADIOLOGIST,
                    trust,
                    name=f"Demo radiologist ({trust})",
                )
            )
        )
        modality = study.modality.value
        text = reports.templates().get(modality, "FINDINGS:\n\n\nCONCLUSION:\n")
        text = text.replace("FINDINGS:\n", f"FINDINGS:\n{_FINDINGS[modality]}\n", 1)
        text = text.replace("CONCLUSION:\n", "CONCLUSION:\nNo acute abnormality.\n", 1)
        try:
            reporter.save(study.study_instance_uid, text, "final")
            done += 1
        except ReportingError as exc:
            log.warning("demo report of %s: %s", study.study_instance_uid, exc.message)
    return len(chosen), done


def main(settings: Settings, *, patients: int, seed: int, if_empty: bool) -> int:
    """``netpacs demo-data``: make the region, load it, write its ADT messages; exit code."""
    if if_empty and _index_has_studies(settings):
        print("demo-data: the archive already holds studies; nothing loaded")
        return 0
    started = time.monotonic()
    region = load_region(settings.effective_region_file)
    demo = build_region(patients, seed, region=region)
    adt_dir = settings.data_dir / "demo" / "adt"
    adt_paths = write_adt(demo, adt_dir)
    print(
        f"demo-data: loading {len(demo.studies)} studies ({demo.instance_count} instances) "
        f"of {len(demo.persons)} synthetic patients (seed {seed})",
        flush=True,
    )
    archive = build_archive(settings)
    try:
        summary = load(demo, archive.ingest)
        acks = apply_adt(demo, archive)
        today = dt.date.today()
        orders = apply_orders(demo, archive, today)
        queued, reported = queue_worklist(demo, archive, seed=seed)
    finally:
        archive.close()
    elapsed = time.monotonic() - started
    s = summary.by_status
    trusts = len({i.trust for i in demo.identities})
    print(
        f"demo-data: {len(demo.persons)} patients ({len(demo.identities)} hospital numbers "
        f"at {trusts} trusts), {summary.studies} studies, {summary.instances} instances "
        f"in {elapsed:.1f} s (seed {seed})"
    )
    print(
        f"  stored {s[StoreStatus.STORED]}, already stored {s[StoreStatus.ALREADY_STORED]}, "
        f"refused or failed {len(summary.problems)}"
    )
    cases = reconciliation_cases(demo)
    print(
        f"  {len(adt_paths)} ADT^A04 messages in {adt_dir} and {len(cases)} planted "
        "reconciliation cases, applied as the ADT feed would: "
        + ", ".join(f"{code} {n}" for code, n in sorted(acks.items()))
    )
    for what, _ in cases:
        print(f"  for /reconciliation: {what}")
    print(
        f"  modality worklist: {sum(orders.values())} orders scheduled on {today:%Y-%m-%d} for "
        "every site's CT, MR, CR and US (findscu -W): "
        + ", ".join(f"{code} {n}" for code, n in sorted(orders.items()))
    )
    print(
        f"  reporting worklist: the newest {queued} studies queued, {reported} of them "
        "reported by the demo radiologists (see /worklist and /turnaround)"
    )
    for line in summary.problems[:20]:
        print(f"  {line}")
    return 0 if not summary.problems else 1
