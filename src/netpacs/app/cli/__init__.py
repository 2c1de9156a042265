"""The ``netpacs`` command: serve, import, verify and reindex (a composition root each).

Settings are read only through :func:`netpacs.app.settings.load_settings` (NETPACS_*
variables and the TOML file named by NETPACS_CONFIG). Exit status: 0 success, 1 when
some object was refused, failed or found damaged, 2 for a usage or configuration error.

The package holds one module per command group (:mod:`.serve`, :mod:`.users`,
:mod:`.demo`, :mod:`.import_files`, :mod:`.maintenance`) and what they share
(:mod:`.common`). Each imports what a command needs (the archive container, sqlalchemy,
pydantic) only when that command runs, so ``--version`` and usage errors stay light.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from netpacs import __version__
from netpacs.app.cli.common import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE
from netpacs.app.cli.demo import _cmd_demo_data
from netpacs.app.cli.import_files import _cmd_import
from netpacs.app.cli.maintenance import _cmd_blobs, _cmd_reindex, _cmd_verify
from netpacs.app.cli.serve import _cmd_serve
from netpacs.app.cli.users import _cmd_user

if TYPE_CHECKING:
    from netpacs.app.settings import Settings

__all__ = ["EXIT_OK", "EXIT_PROBLEMS", "EXIT_USAGE", "build_parser", "main"]

DEFAULT_SWEEP_AGE = 3600.0

Command: TypeAlias = Callable[[argparse.Namespace, "Settings", argparse.ArgumentParser], int]


# -- shared ------------------------------------------------------------------------------


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Alembic reports every "no migration to run" at INFO; only its problems matter here.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))


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
    try:
        return _main(argv)
    finally:
        # What is left is frozen, so that the interpreter's collections at exit skip it:
        # with the archive's modules loaded they took over half a second per command.
        gc.freeze()


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Imported once the arguments are good: --version and usage errors end above.
    import sqlalchemy as sa
    from pydantic import ValidationError

    from netpacs.app.settings import ConfigFileError, load_settings
    from netpacs.domain.region import RegionError
    from netpacs.index.db import IndexUnavailable, shown_url
    from netpacs.index.revision import UnknownSchema

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
    except (RegionError, UnknownSchema) as exc:
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
