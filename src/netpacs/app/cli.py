"""The ``netpacs`` command: serve, import, verify and reindex (a composition root each).

Settings are read only through :func:`netpacs.app.settings.load_settings` (NETPACS_*
variables and the TOML file named by NETPACS_CONFIG). Exit status: 0 success, 1 when
some object was refused, failed or found damaged, 2 for a usage or configuration error.
"""

from __future__ import annotations

import argparse
import collections
import getpass
import logging
import os
import socket
import sys
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Never

import sqlalchemy as sa
from pydantic import ValidationError
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from netpacs import __version__
from netpacs.app.container import Archive, build_archive
from netpacs.app.region_file import load_region
from netpacs.app.settings import ConfigFileError, Settings, load_settings
from netpacs.app.startup import (
    StartupError,
    UnsafeConfiguration,
    check_blob_store,
    check_caller_identity,
    check_move_destinations,
    prepare,
)
from netpacs.domain.outcomes import InvalidReason, Origin, Protocol, StoreOutcome, StoreStatus
from netpacs.domain.region import RegionError
from netpacs.index.db import IndexUnavailable, make_engine, migrate, shown_url
from netpacs.services import metrics
from netpacs.services.access import Principal, Role
from netpacs.services.ingest_batch import IngestBatch
from netpacs.services.maintenance import (
    CopyReport,
    ReindexReport,
    ReindexStatus,
    VerifyReport,
    clear_index,
    copy_blobs,
    reindex,
    run_bounded,
    verify,
)
from netpacs.services.spool import ObjectTooLarge

log = logging.getLogger("netpacs.app.cli")

EXIT_OK = 0
METRICS_DIR = "metrics"  # under the data directory: the workers' metrics files (serve)
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
DEFAULT_SWEEP_AGE = 3600.0

Command = Callable[[argparse.Namespace, Settings, argparse.ArgumentParser], int]


# -- shared ------------------------------------------------------------------------------


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Alembic reports every "no migration to run" at INFO; only its problems matter here.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))


def _prepare_index(settings: Settings) -> None:
    """Data directory and schema, for commands that may run beside a live server.

    Not ``app.prepare``: its recovery of interrupted writes would discard the in-flight
    writes of a running server.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings.effective_database_url)


class _ProgressBars:
    """A maintenance ProgressCallback drawing one tqdm bar per phase (only on a terminal)."""

    def __init__(self) -> None:
        self._bars: dict[str, tqdm[Never]] = {}

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        bar = self._bars.get(phase)
        if bar is None:
            for other in self._bars.values():
                other.close()
            bar = tqdm(desc=phase, total=total, unit="blob", disable=None)
            self._bars[phase] = bar
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()


def _os_user() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return None


# -- serve -------------------------------------------------------------------------------


def _cmd_serve(_args: argparse.Namespace, settings: Settings, _p: argparse.ArgumentParser) -> int:
    from netpacs.app import jobs, roles
    from netpacs.app.container import check_edge
    from netpacs.app.roles import oidc_config
    from netpacs.app.supervisor import WorkerGroup, listen, supervise
    from netpacs.app.tls import TlsSettingsError, dimse_tls_context, mllp_tls_context

    try:
        dimse_tls_context(settings)  # certificates that do not load stop us now
        mllp_tls_context(settings)
        region = load_region(settings.effective_region_file)
        jobs.check_settings(settings, region)
        check_caller_identity(settings, region)
        oidc_config(settings)
        check_blob_store(settings)
        check_edge(settings, region)
    except (TlsSettingsError, jobs.JobSettingsError, RegionError, StartupError) as exc:
        print(f"netpacs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        check_move_destinations(settings)
        prepare(settings)
    except UnsafeConfiguration as exc:
        print(f"netpacs: will not start: {exc}", file=sys.stderr)
        return EXIT_USAGE
    listening: list[str] = []

    def open_port(
        what: str, host: str, port: int | None, wanted: bool = True
    ) -> socket.socket | None:
        if port is None or not wanted:
            return None
        sock = listen(host, port)
        listening.append(f"{what} {host}:{sock.getsockname()[1]}")
        return sock

    dimse_host, mllp_host = settings.effective_dimse_host, settings.effective_mllp_host
    dimse_sock = open_port("DIMSE", dimse_host, settings.dimse_port, settings.dimse_plain_port)
    tls_sock = open_port("DICOM TLS", dimse_host, settings.dimse_tls_port)
    http_sock = open_port("HTTP", settings.effective_http_host, settings.http_port)
    mllp_sock = open_port("MLLP", mllp_host, settings.mllp_port, settings.mllp_plain_port)
    mllp_tls_sock = open_port("MLLP over TLS", mllp_host, settings.mllp_tls_port)
    assert http_sock is not None
    log.info(
        "netpacs serve%s listening on %s",
        " (demo mode)" if settings.demo else "",
        ", ".join(listening),
    )
    if settings.role == "edge":
        log.info(
            "edge node of %s (site %s): the regional core is %s",
            settings.edge_trust,
            settings.edge_site,
            settings.upstream_url,
        )
    groups = [
        WorkerGroup(
            "DIMSE",
            settings.dimse_processes,
            lambda: roles.run_dimse(settings, dimse_sock, tls_sock),
        ),
        WorkerGroup("HTTP", settings.http_processes, lambda: roles.run_http(settings, http_sock)),
        # One MLLP process: HL7 messages of one sender must be applied in order.
        WorkerGroup("MLLP", 1, lambda: roles.run_mllp(settings, mllp_sock, mllp_tls_sock)),
        *jobs.worker_groups(settings),
    ]
    # Every worker records its metrics in files of this folder; any HTTP worker's
    # GET /metrics sums them (services.metrics).
    metrics.use_directory(settings.data_dir / METRICS_DIR)
    supervise(
        groups,
        shutdown_timeout=settings.shutdown_timeout,
        on_start=metrics.process_started,
        on_exit=metrics.process_ended,
    )
    return EXIT_OK


# -- user ------------------------------------------------------------------------------


def _cmd_user(args: argparse.Namespace, settings: Settings, p: argparse.ArgumentParser) -> int:
    import sqlalchemy as sa

    from netpacs.index.db import make_engine, migrate
    from netpacs.index.schema import user_account
    from netpacs.services.access import SYSTEM, Role
    from netpacs.services.accounts import AccountError, AccountService, load_secret
    from netpacs.services.audit import AuditService

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings.effective_database_url)
    engine = make_engine(settings.effective_database_url, writer=True)
    try:
        if args.action == "remove-demo":
            with engine.begin() as conn:
                gone = conn.execute(
                    sa.delete(user_account).where(user_account.c.demo.is_(True))
                ).rowcount
            print(f"removed {gone} demo users")
            return EXIT_OK
        if args.action in ("disable", "enable"):
            audit = AuditService(
                AuditService.in_own_transaction(engine), source_id=settings.ae_title
            )
            from netpacs.services.edge.clients import EdgeClients, demo_edges

            region = load_region(settings.effective_region_file)
            edges = region.edges
            if settings.demo:
                edges += demo_edges(region, settings.demo_password)
            service = AccountService(
                engine,
                secret=load_secret(settings.effective_auth_secret_file),
                audit=audit,
                edges=EdgeClients(edges),
            )
            try:
                service.set_disabled(args.username, args.action == "disable", by=SYSTEM)
            except AccountError as exc:
                p.error(str(exc))
            print(f"user {args.username} {args.action}d")
            return EXIT_OK
        password = (
            ""  # signs in through OpenID Connect only
            if args.external
            else os.environ.get("NETPACS_NEW_PASSWORD")
            or getpass.getpass(f"password for {args.username}: ")
        )
        audit = AuditService(AuditService.in_own_transaction(engine), source_id=settings.ae_title)
        accounts = AccountService(
            engine, secret=load_secret(settings.effective_auth_secret_file), audit=audit
        )
        try:
            accounts.create(
                args.username,
                password,
                trust=args.trust,
                role=Role(args.role),
                display_name=args.name or "",
                region=load_region(settings.effective_region_file),
                external=args.external,
            )
        except (AccountError, sa.exc.IntegrityError) as exc:
            message = str(exc) if isinstance(exc, AccountError) else "that user name is taken"
            p.error(message)
        how = ", signs in through OpenID Connect" if args.external else ""
        print(f"user {args.username} ({args.role} at {args.trust}{how}) created")
        return EXIT_OK
    finally:
        engine.dispose()


# -- demo-data ---------------------------------------------------------------------------


def _cmd_demo_data(
    args: argparse.Namespace, settings: Settings, _p: argparse.ArgumentParser
) -> int:
    from netpacs.app import demo_data

    _prepare_index(settings)
    return demo_data.main(settings, patients=args.patients, seed=args.seed, if_empty=args.if_empty)


# -- import ------------------------------------------------------------------------------


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


# -- verify ------------------------------------------------------------------------------


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
    from netpacs.services.audit import Actor, AuditRecord, Event, Outcome, Purpose
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


# -- entry point -------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netpacs",
        description="Regional shared PACS. Settings: NETPACS_* variables and the TOML file "
        "named by NETPACS_CONFIG.",
    )
    parser.add_argument("--version", action="version", version=f"netpacs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser(
        "serve", help="run the DIMSE, HTTP, MLLP and job workers until SIGINT or SIGTERM"
    )
    serve.set_defaults(func=_cmd_serve)

    imp = sub.add_parser("import", help="store DICOM Part 10 files from files and folders")
    imp.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    imp.add_argument(
        "--trust",
        metavar="ODS",
        help="ODS code of the trust the files come from: the issuer of patient IDs that "
        "carry no Issuer of Patient ID (0010,0021)",
    )
    imp.add_argument("--workers", type=_positive_int, default=4, help="files in flight")
    imp.set_defaults(func=_cmd_import)

    ver = sub.add_parser("verify", help="check every stored object against the index")
    ver.add_argument(
        "--sweep-orphans",
        nargs="?",
        type=float,
        const=DEFAULT_SWEEP_AGE,
        default=None,
        metavar="SECONDS",
        help=f"delete blobs with no index row older than SECONDS (default {DEFAULT_SWEEP_AGE:.0f})",
    )
    ver.add_argument("--workers", type=_positive_int, default=4, help="blobs read at once")
    ver.set_defaults(func=_cmd_verify)

    demo = sub.add_parser(
        "demo-data",
        help="generate the synthetic demo region (patients, studies, ADT) and load it",
    )
    demo.add_argument("--patients", type=_positive_int, default=200, help="patients to make")
    demo.add_argument("--seed", type=int, default=2026, help="random seed (same data each time)")
    demo.add_argument(
        "--if-empty", action="store_true", help="do nothing when the archive holds studies"
    )
    demo.set_defaults(func=_cmd_demo_data)

    user = sub.add_parser("user", help="manage local accounts")
    user_sub = user.add_subparsers(dest="action", required=True)
    add = user_sub.add_parser(
        "add", help="create a user (password from NETPACS_NEW_PASSWORD or asked for)"
    )
    add.add_argument("username")
    add.add_argument("--trust", required=True, help="ODS code of the user's trust")
    add.add_argument(
        "--role",
        required=True,
        choices=["radiologist", "radiographer", "clinician", "admin", "auditor"],
    )
    add.add_argument("--name", help="display name")
    add.add_argument(
        "--external",
        action="store_true",
        help="no password: the user signs in through the OpenID Connect identity provider "
        "(oidc_issuer) with this user name",
    )
    user_sub.add_parser("remove-demo", help="delete the demo users (before leaving demo mode)")
    for action, says in (("disable", "refuse"), ("enable", "admit again")):
        switch = user_sub.add_parser(action, help=f"{says} an account's sign-ins and tokens")
        switch.add_argument("username")
    user.set_defaults(func=_cmd_user)

    blobs = sub.add_parser("blobs", help="manage the object store")
    blobs_sub = blobs.add_subparsers(dest="action", required=True)
    copy = blobs_sub.add_parser(
        "copy",
        help="copy every indexed object to an S3 store (resumable, verified, audited); "
        "then set NETPACS_BLOB_URL to it",
    )
    copy.add_argument(
        "--to", required=True, metavar="S3_URL", help="s3://bucket/prefix?endpoint=http://host:port"
    )
    copy.add_argument("--workers", type=_positive_int, default=4, help="blobs in flight")
    blobs.set_defaults(func=_cmd_blobs)

    rei = sub.add_parser(
        "reindex",
        help="empty the index and rebuild it from the stored objects (stop the server first)",
    )
    rei.add_argument("--workers", type=_positive_int, default=4, help="blobs in flight")
    rei.set_defaults(func=_cmd_reindex)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ValidationError as exc:
        print(f"netpacs: invalid settings:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ConfigFileError, tomllib.TOMLDecodeError) as exc:
        print(f"netpacs: cannot read the configuration file: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _configure_logging(settings.log_level)
    command: Command = args.func
    try:
        return command(args, settings, parser)
    except RegionError as exc:
        print(f"netpacs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (sa.exc.DBAPIError, IndexUnavailable) as exc:
        url = shown_url(settings.effective_database_url)
        reason = getattr(exc, "orig", None) or exc
        print(
            f"netpacs: cannot use the index database at {url} (NETPACS_DATABASE_URL): {reason}",
            file=sys.stderr,
        )
        return EXIT_PROBLEMS
    except sa.exc.ArgumentError as exc:  # not a URL, or a dialect/driver not installed
        print(
            f"netpacs: NETPACS_DATABASE_URL is not a usable database URL "
            f"({shown_url(settings.effective_database_url)}): {exc}; e.g. "
            "postgresql+psycopg://user:password@host1:5432,host2:5432/netpacs"
            "?target_session_attrs=read-write or sqlite:////var/lib/netpacs/index.db",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("netpacs: interrupted", file=sys.stderr)
        return 130
