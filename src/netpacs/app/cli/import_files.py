"""``netpacs import``: store DICOM Part 10 files from files and folders, one ingest batch,
a summary of what was stored, refused and failed."""

from __future__ import annotations

import argparse
import collections
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from netpacs.app.cli.common import (
    EXIT_OK,
    EXIT_PROBLEMS,
    METRICS_DIR,
    _os_user,
    _prepare_index,
    log,
)
from netpacs.domain.outcomes import InvalidReason, Origin, Protocol, StoreOutcome, StoreStatus

if TYPE_CHECKING:
    from netpacs.app.settings import Settings
    from netpacs.services.ingest_batch import IngestBatch


def _walk(paths: Iterable[Path]) -> Iterator[Path]:
    """Every file under ``paths`` (recursively, in name order, not following links)."""
    for path in paths:
        if not path.is_dir():
            yield path
            continue
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                yield Path(root) / name


def _import_one(batch: IngestBatch, path: Path) -> StoreOutcome:
    """Store one file, read in pieces into a spool (a large file is never whole in
    memory; one beyond NETPACS_MAX_OBJECT_MB is refused unread)."""
    from netpacs.services.spool import ObjectTooLarge

    spool = batch.spool()
    try:
        try:
            with path.open("rb") as f:
                while piece := f.read(1 << 20):
                    spool.write(piece)
        except ObjectTooLarge as exc:
            too_large = StoreOutcome(StoreStatus.INVALID, None, str(exc), InvalidReason.TOO_LARGE)
            return batch.refused(too_large)
        except OSError as exc:
            failed = StoreOutcome(StoreStatus.FAILED, None, f"could not read the file: {exc}")
            return batch.refused(failed)
        try:
            return batch.store_part10(spool)
        except Exception as exc:  # one bad file must not stop the import
            log.exception("unexpected error storing %s", path)
            failed = StoreOutcome(StoreStatus.FAILED, None, f"unexpected error: {exc!r}")
            return batch.refused(failed)
    finally:
        spool.close()


def refusal_group(outcome: StoreOutcome) -> str:
    """A reason shared by many files, for the summary (details are printed per file)."""
    if outcome.status is StoreStatus.CONFLICT:
        return "SOP Instance UID already stored with different content"
    if outcome.status is StoreStatus.FAILED:
        return outcome.message.split(":", 1)[0]
    if outcome.reason is InvalidReason.UNPARSABLE:
        return outcome.message.split(";", 1)[0]
    if outcome.reason is InvalidReason.MISSING_UID:
        return outcome.message
    return outcome.reason.value if outcome.reason else outcome.message


@dataclass
class ImportSummary:
    files: int = 0
    by_status: collections.Counter[StoreStatus] = field(default_factory=collections.Counter)
    refusals: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: collections.Counter[str] = field(default_factory=collections.Counter)

    def add(self, outcome: StoreOutcome) -> None:
        self.files += 1
        self.by_status[outcome.status] += 1
        if outcome.status is StoreStatus.FAILED:
            self.failures[refusal_group(outcome)] += 1
        elif not outcome.status.ok:
            self.refusals[refusal_group(outcome)] += 1

    @property
    def refused(self) -> int:
        return sum(self.refusals.values())

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def lines(self) -> list[str]:
        s = self.by_status
        out = [
            f"files:          {self.files}",
            f"stored:         {s[StoreStatus.STORED]}",
            f"replaced:       {s[StoreStatus.REPLACED]}",
            f"already stored: {s[StoreStatus.ALREADY_STORED]}",
            f"refused:        {self.refused}",
        ]
        out += [f"  {n:6d}  {reason}" for reason, n in self.refusals.most_common()]
        out.append(f"failed:         {self.failed}")
        out += [f"  {n:6d}  {reason}" for reason, n in self.failures.most_common()]
        return out


def _import_trust(value: str | None, settings: Settings, parser: argparse.ArgumentParser) -> str:
    from netpacs.app.region_file import load_region

    region = load_region(settings.effective_region_file)
    code = (value or "").strip().upper()
    if region.trust(code) is None:
        parser.error(
            f"--trust {value!r} is not a trust of the region {region.name!r} "
            f"({settings.effective_region_file}); known ODS codes: "
            + ", ".join(sorted(region.issuers))
        )
    return code


def _cmd_import(args: argparse.Namespace, settings: Settings, p: argparse.ArgumentParser) -> int:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from netpacs.app.container import build_archive
    from netpacs.services import metrics
    from netpacs.services.access import Principal, Role
    from netpacs.services.maintenance.streaming import run_bounded

    trust = _import_trust(args.trust, settings, p) if args.trust is not None else None
    paths: list[Path] = args.paths
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        p.error("no such file or directory: " + ", ".join(missing))
    _prepare_index(settings)
    user = _os_user()
    origin = Origin(Protocol.IMPORT, trust=trust, user=user)
    # Who ran the import, audited as netpacs acting for them and the trust named.
    principal = Principal(user or "netpacs import", Role.SYSTEM, trust)
    if (settings.data_dir / METRICS_DIR).is_dir():  # a node serves from this data dir
        metrics.use_directory(settings.data_dir / METRICS_DIR, empty=False)
    total = sum(1 for _ in _walk(paths))
    summary = ImportSummary()
    started = time.monotonic()
    archive = build_archive(settings)
    try:
        with (
            logging_redirect_tqdm(),
            tqdm(total=total, unit="file", desc="importing", disable=None) as bar,
            archive.stores.session(principal, origin) as batch,
        ):
            results = run_bounded(
                lambda path: _import_one(batch, path),
                _walk(paths),
                workers=args.workers,
            )
            for path, outcome in results:
                summary.add(outcome)
                if outcome.status is StoreStatus.FAILED or not outcome.status.ok:
                    tqdm.write(f"{outcome.status.value}: {path}: {outcome.message}")
                bar.update()
    finally:
        archive.close()
    print(f"imported {summary.files} files in {time.monotonic() - started:.1f} s")
    print("\n".join(summary.lines()))
    return EXIT_OK if summary.refused == summary.failed == 0 else EXIT_PROBLEMS
