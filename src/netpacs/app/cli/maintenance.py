"""Maintenance over the object store and the index: ``netpacs verify``, ``netpacs reindex``
and ``netpacs blobs copy``."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from netpacs.app.cli.common import (
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_USAGE,
    _os_user,
    _prepare_index,
    _ProgressBars,
)

if TYPE_CHECKING:
    from netpacs.app.container import Archive
    from netpacs.app.settings import Settings
    from netpacs.services.maintenance.blob_copy import CopyReport
    from netpacs.services.maintenance.reindexing import ReindexReport
    from netpacs.services.maintenance.verification import VerifyReport


def print_verify_report(report: VerifyReport) -> None:
    print(
        f"verified {report.checked} objects: {report.checked - len(report.problems)} intact, "
        f"{len(report.missing)} missing, {len(report.mismatched)} damaged or unreadable"
    )
    for p in report.problems:
        print(f"{p.kind.value}: SOP Instance {p.sop_instance_uid} blob {p.blob_key}: {p.detail}")
    print(f"orphan blobs (no index row): {len(report.orphans)}, swept: {report.swept}")
    for o in report.orphans:
        age = "age unknown" if o.age_seconds is None else f"{o.age_seconds:.0f} s old"
        print(f"orphan: blob {o.blob_key} ({age}){' swept' if o.swept else ''}")


def _cmd_verify(args: argparse.Namespace, settings: Settings, p: argparse.ArgumentParser) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from netpacs.app.container import build_archive
    from netpacs.services.maintenance.verification import verify

    if args.sweep_orphans is not None and args.sweep_orphans < 0:
        p.error("--sweep-orphans takes a number of seconds >= 0")
    _prepare_index(settings)
    archive = build_archive(settings)
    bars = _ProgressBars()
    try:
        with logging_redirect_tqdm():
            report = verify(
                blobs=archive.blobs,
                engine=archive.read_engine,
                sweep_orphans_older_than=args.sweep_orphans,
                progress=bars,
                workers=args.workers,
            )
    finally:
        bars.close()
        archive.close()
    print_verify_report(report)
    return EXIT_OK if report.clean else EXIT_PROBLEMS


# -- reindex -----------------------------------------------------------------------------


def print_reindex_report(report: ReindexReport) -> None:
    from netpacs.services.maintenance.reindexing import ReindexStatus

    print(f"blobs: {report.blobs}")
    print(f"indexed: {report.indexed}")
    print(f"  origin from file meta (received over DIMSE): {report.origin_from_file_meta}")
    print(
        f"  origin unknown (imported or STOW-RS; issuer only from Issuer of Patient ID): "
        f"{report.indexed - report.origin_from_file_meta}"
    )
    for status in ReindexStatus:
        if status is not ReindexStatus.INDEXED:
            print(f"{status.value}: {report.count(status)}")
    for item in report.problems:
        print(f"{item.status.value}: blob {item.blob_key}: {item.detail}")


def _rebuild(archive: Archive, workers: int) -> ReindexReport:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from netpacs.services.maintenance.reindexing import reindex

    bars = _ProgressBars()
    try:
        with logging_redirect_tqdm():
            return reindex(
                blobs=archive.blobs,
                writer=archive.writer,
                engine=archive.read_engine,
                region=archive.region,
                progress=bars,
                workers=workers,
            )
    finally:
        bars.close()


def _cmd_reindex(args: argparse.Namespace, settings: Settings, _p: argparse.ArgumentParser) -> int:
    from netpacs.app.container import build_archive
    from netpacs.index.db import make_engine
    from netpacs.services.maintenance.reindexing import ReindexStatus, clear_index

    _prepare_index(settings)
    engine = make_engine(settings.effective_database_url, writer=True)
    try:
        clear_index(engine)
    finally:
        engine.dispose()
    archive = build_archive(settings)
    try:
        report = _rebuild(archive, args.workers)
    finally:
        archive.close()
    print_reindex_report(report)
    bad = report.count(ReindexStatus.FAILED) + report.count(ReindexStatus.UNINDEXABLE)
    return EXIT_OK if bad == 0 else EXIT_PROBLEMS


# -- blobs copy --------------------------------------------------------------------------


def print_copy_report(report: CopyReport, target: str) -> None:
    print(
        f"objects: {report.objects}: {report.copied} copied ({report.bytes_copied} bytes), "
        f"{report.present} already in {target}, {len(report.problems)} not copied"
    )
    for item in report.problems:
        print(
            f"{item.status.value}: SOP Instance {item.sop_instance_uid} "
            f"blob {item.blob_key}: {item.detail}"
        )


def _cmd_blobs(args: argparse.Namespace, settings: Settings, p: argparse.ArgumentParser) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from netpacs.app.container import build_archive
    from netpacs.services.audit import Actor, AuditRecord, Event, Outcome, Purpose
    from netpacs.services.maintenance.blob_copy import copy_blobs
    from netpacs.storage.blobstore import BlobStoreUnavailable
    from netpacs.storage.s3 import S3BlobStore, S3Location, S3UrlError

    try:
        location = S3Location.parse(args.to)
    except S3UrlError as exc:
        p.error(f"--to: {exc}")
    if args.to == settings.blob_url:
        p.error("--to names the store NETPACS_BLOB_URL already uses: nothing to copy")
    target = S3BlobStore(location, credentials_file=settings.s3_credentials_file)
    try:
        target.check()
    except BlobStoreUnavailable as exc:
        print(f"netpacs: --to {args.to}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _prepare_index(settings)
    archive = build_archive(settings)
    bars = _ProgressBars()
    user = _os_user() or "netpacs blobs copy"
    started = time.monotonic()
    try:
        with logging_redirect_tqdm():
            report = copy_blobs(
                source=archive.blobs,
                target=target,
                engine=archive.read_engine,
                progress=bars,
                workers=args.workers,
            )
        bars.close()
        archive.audit.record(
            AuditRecord(
                Event.EXPORT,
                Actor(user),
                outcome=Outcome.SUCCESS if report.complete else Outcome.SERIOUS_FAILURE,
                purpose=Purpose.HSYSADMIN,
                detail=f"blobs copy to {location}: {report.objects} objects, "
                f"{report.copied} copied, {report.present} already there, "
                f"{len(report.problems)} not copied",
            )
        )
    finally:
        bars.close()
        archive.close()
    print_copy_report(report, str(location))
    print(f"took {time.monotonic() - started:.1f} s")
    if report.complete:
        print(f"every object is in {location}: set NETPACS_BLOB_URL={args.to} and restart")
        return EXIT_OK
    print("some objects were not copied: run the command again after fixing what is listed")
    return EXIT_PROBLEMS
