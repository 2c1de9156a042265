"""``netpacs user``: add local accounts, disable and enable them, remove the demo users."""

from __future__ import annotations

import argparse
import getpass
import os
from typing import TYPE_CHECKING

from netpacs.app.cli.common import EXIT_OK

if TYPE_CHECKING:
    from netpacs.app.settings import Settings


def _cmd_user(args: argparse.Namespace, settings: Settings, p: argparse.ArgumentParser) -> int:
    import sqlalchemy as sa

    from netpacs.app.region_file import load_region
    from netpacs.index.db import make_engine, migrate
    from netpacs.index.schema import user_account
    from netpacs.services.access import SYSTEM, Role
    from netpacs.services.accounts import AccountError, AccountService
    from netpacs.services.audit import AuditService
    from netpacs.services.tokens import load_secret

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
