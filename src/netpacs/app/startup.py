"""Start-up checks and one-time preparation, done by the parent before any worker starts."""

from __future__ import annotations

import logging

import sqlalchemy as sa

from netpacs.app.region_file import load_region
from netpacs.app.settings import Settings
from netpacs.domain.region import Permission, Region
from netpacs.index.db import make_engine, migrate
from netpacs.index.schema import instance
from netpacs.services.accounts import AccountService
from netpacs.services.audit import AuditService
from netpacs.services.tokens import load_secret
from netpacs.storage.blobstore import BlobStoreUnavailable
from netpacs.storage.fs import FileSystemBlobStore

log = logging.getLogger(__name__)


class UnsafeConfiguration(RuntimeError):
    """The server will not start like this (secure defaults, issue 5)."""


class StartupError(ValueError):
    """A setting names something that cannot be used (a file that cannot be read);
    the message says which."""


def check_move_destinations(settings: Settings) -> None:
    """Outside demo mode every AE that may C-MOVE names where its results may go: an AE
    without ``move_destinations`` could send a patient's images to any AE of the region."""
    if settings.demo:
        return
    region = load_region(settings.effective_region_file)
    open_to_any = [
        ae.ae_title for ae in region.aes if ae.may(Permission.MOVE) and ae.move_destinations is None
    ]
    if open_to_any:
        shown = ", ".join(open_to_any[:6]) + (" ..." if len(open_to_any) > 6 else "")
        raise UnsafeConfiguration(
            f"C-MOVE destinations are open to any AE for {len(open_to_any)} AEs ({shown}): "
            "give each AE that may C-MOVE a move_destinations list in the region file "
            f"({settings.effective_region_file}), or run in demo mode"
        )


def check_caller_identity(settings: Settings, region: Region) -> None:
    """Region-file callers that could never connect stop the start: a certificate named
    for an AE or an ADT feed needs a TLS port that asks for client certificates."""
    pinned_aes = [ae.ae_title for ae in region.aes if ae.caller.needs_certificate]
    if pinned_aes and (settings.dimse_tls_port is None or settings.dimse_tls_ca_file is None):
        raise StartupError(
            f"the region file names TLS client certificates for {', '.join(pinned_aes[:6])}: "
            "set NETPACS_DIMSE_TLS_PORT and NETPACS_DIMSE_TLS_CA_FILE (the CAs of those "
            "certificates)"
        )
    pinned_feeds = [f.name for f in region.adt_feeds if f.caller.needs_certificate]
    if pinned_feeds and settings.mllp_tls_port is None:
        raise StartupError(
            f"the region file names TLS client certificates for ADT feeds "
            f"{', '.join(pinned_feeds[:6])}: set NETPACS_MLLP_TLS_PORT and its certificate, "
            "key and CA files"
        )
    for what, tls_port, plain in (
        ("DIMSE", settings.dimse_tls_port, settings.dimse_plain_port),
        ("MLLP", settings.mllp_tls_port, settings.mllp_plain_port),
    ):
        if tls_port is not None and plain:
            log.info(
                "the plain %s port is open beside its TLS port: NETPACS_%s_PLAIN_PORT=false "
                "closes it",
                what,
                what,
            )
    plain_feeds = [f.name for f in region.adt_feeds if not f.caller.needs_certificate]
    if plain_feeds and not settings.mllp_plain_port:
        log.warning(
            "ADT feeds %s connect by address only, but the plain MLLP port is closed "
            "(NETPACS_MLLP_PLAIN_PORT=false): they cannot send",
            ", ".join(plain_feeds),
        )
    if not region.adt_feeds:
        log.warning("the region file lists no adt_feeds: every ADT message will be refused")
    anywhere = [ae.ae_title for ae in region.aes if not ae.caller.is_known]
    if anywhere:
        log.log(
            logging.WARNING if settings.dimse_require_ae_hosts else logging.INFO,
            "%d AEs of the region file have no hosts nor certificate (%s%s): %s",
            len(anywhere),
            ", ".join(anywhere[:4]),
            " ..." if len(anywhere) > 4 else "",
            "they are refused (NETPACS_DIMSE_REQUIRE_AE_HOSTS)"
            if settings.dimse_require_ae_hosts
            else "they may call from any address",
        )


def check_blob_store(settings: Settings) -> None:
    """The object store takes objects now (S3: the bucket answers our credentials; a
    directory: it can be made and written), else a StartupError naming the setting: a
    server that could not keep what it acknowledges must not start, and a node that
    would never be ready must say why at once."""
    from netpacs.app.container import make_blob_store

    if settings.blob_url:
        creds = (
            f" and NETPACS_S3_CREDENTIALS_FILE={settings.s3_credentials_file}"
            if settings.s3_credentials_file
            else " (credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
            "NETPACS_S3_CREDENTIALS_FILE)"
        )
        setting = f"NETPACS_BLOB_URL={settings.blob_url}{creds} cannot be used"
    elif settings.blob_dir:
        setting = f"NETPACS_BLOB_DIR={str(settings.blob_dir)!r}"
    else:
        setting = f"NETPACS_DATA_DIR={str(settings.data_dir)!r} (its objects/)"
    try:
        make_blob_store(settings).check()
    except BlobStoreUnavailable as exc:
        raise StartupError(f"{setting}: {exc}") from None
    except OSError as exc:  # the directory itself could not be made
        raise StartupError(
            f"{setting}: the object directory {settings.effective_blob_dir} cannot be made "
            f"({exc.strerror or exc.__class__.__name__})"
        ) from None


def prepare(settings: Settings) -> None:
    """One-time start-up work done before any worker starts: directories, migrations,
    the signing key, and the accounts: demo users in demo mode, none otherwise."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings.effective_database_url)
    recover_pending_writes(settings)
    prepare_accounts(settings)


def prepare_accounts(settings: Settings) -> None:
    engine = make_engine(settings.effective_database_url, writer=True)
    try:
        audit = AuditService(AuditService.in_own_transaction(engine), source_id=settings.ae_title)
        accounts = AccountService(
            engine, secret=load_secret(settings.effective_auth_secret_file), audit=audit
        )
        if settings.demo:
            made = accounts.ensure_demo_users(
                load_region(settings.effective_region_file), settings.demo_password
            )
            if made:
                log.warning("demo mode: %d demo users <ods>.<role> with the demo password", made)
            return
        demo_users = accounts.demo_users()
        if demo_users:
            raise UnsafeConfiguration(
                f"{len(demo_users)} demo users with the demo password exist (e.g. "
                f"{demo_users[0]}) and NETPACS_DEMO is not true: remove them "
                "(`netpacs user remove-demo`) or run in demo mode"
            )
    finally:
        engine.dispose()


def recover_pending_writes(settings: Settings) -> None:
    """Finish or discard blob writes a crash interrupted (see FileSystemBlobStore.put;
    for S3, see S3BlobStore.put).

    A pending write with an index row was acknowledged (a live process renames before
    it commits, so only a crash leaves one): it is renamed into place. One without was
    never acknowledged: it is removed once it is an hour old, so that the in-flight
    writes of other processes sharing the store are left alone.
    """
    if settings.blob_url:
        # S3 uploads are atomic at completion: nothing to finish. Uploads a crash left
        # open an hour ago are aborted (younger ones may be another node's, in flight).
        from netpacs.app.container import make_blob_store
        from netpacs.storage.s3 import S3BlobStore

        store = make_blob_store(settings)
        if isinstance(store, S3BlobStore):
            try:
                aborted = store.abort_stale_uploads(older_than=3600)
            except BlobStoreUnavailable as exc:  # e.g. a policy without ListMultipartUploads
                log.warning("open multipart uploads not looked at: %s", exc)
                return
            if aborted:
                log.warning("aborted %d multipart uploads a crash left open", aborted)
        return
    blobs = FileSystemBlobStore(settings.effective_blob_dir)
    spools = blobs.stale_spools(older_than=3600)
    for spool in spools:
        spool.unlink(missing_ok=True)
    if spools:
        log.warning("removed %d objects a crash left half received", len(spools))
    pending = blobs.pending_keys(older_than=0)
    if not pending:
        return
    engine = make_engine(settings.effective_database_url)
    try:
        with engine.connect() as conn:
            indexed = set(
                conn.execute(
                    sa.select(instance.c.blob_key).where(instance.c.blob_key.in_(pending))
                ).scalars()
            )
    finally:
        engine.dispose()
    stale = set(blobs.pending_keys(older_than=3600))
    for key in pending:
        if key in indexed or key in stale:
            blobs.finish_pending(key, complete=key in indexed)
    if indexed or stale:
        log.warning(
            "finished %d interrupted writes, removed %d unacknowledged ones",
            len(indexed),
            len(stale - indexed),
        )
