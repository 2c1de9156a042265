"""Composition of the edge's read-through (issue 13): what an edge node's HTTP and DIMSE
workers and its job worker add to read through to the core, and what a core adds to
answer its edge nodes."""

from __future__ import annotations

from netpacs.app.container import Archive, Edge
from netpacs.app.settings import Settings
from netpacs.services.accounts import AccountService
from netpacs.services.edge.audit_outbox import AuditIntake, AuditSender
from netpacs.services.edge.clients import EdgeClients
from netpacs.services.edge.readthrough import ReadThrough
from netpacs.services.edge.serving import EdgeServing
from netpacs.services.edge.signin import SIGNIN_MARGIN, EdgeAccounts
from netpacs.services.tokens import load_secret


def read_through(archive: Archive, edge: Edge | None) -> ReadThrough | None:
    """An edge node's read-through to the core; None for a core."""
    if edge is None:
        return None
    link = edge.link
    return ReadThrough(
        edge.upstream,
        read_engine=archive.read_engine,
        stores=archive.stores,
        audit=archive.audit,
        down_since=lambda: link.current().down_since,
        timeout=edge.timeout,
        retrieve_ae_title=archive.ae_title,
    )


def edge_serving(archive: Archive, edge: Edge | None) -> EdgeServing | None:
    """A core's answers to its edge nodes; None at an edge node."""
    if edge is not None:
        return None
    return EdgeServing(archive.read_engine, audit_intake=AuditIntake(archive.write_engine))


def edge_accounts(
    archive: Archive, settings: Settings, edge: Edge, clients: EdgeClients
) -> AccountService:
    """An edge node's accounts: sign-in confirmed by the core (services.edge.signin)."""
    return EdgeAccounts(
        archive.read_engine,
        upstream=edge.upstream,
        edge_trust=edge.trust,
        timeout=edge.timeout + SIGNIN_MARGIN,
        secret=load_secret(settings.effective_auth_secret_file),
        audit=archive.audit,
        token_minutes=settings.token_minutes,
        signin_attempts=settings.signin_attempts,
        signin_window_minutes=settings.signin_window_minutes,
        edges=clients,
        state_seconds=settings.account_cache_seconds,
    )


def audit_sender(archive: Archive, edge: Edge) -> AuditSender:
    """The job that sends the edge's audit records to the core."""
    return AuditSender(archive.write_engine, edge.upstream)
