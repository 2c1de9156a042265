"""TLS contexts from the settings: certificates that do not load stop ``netpacs serve``."""

from __future__ import annotations

import ssl
from pathlib import Path

from netpacs.app.settings import Settings


class TlsSettingsError(ValueError):
    """TLS settings cannot work; the message names the setting."""


#: The DICOM TLS settings' error (kept under its first name).
DimseTlsError = TlsSettingsError


def _server_context(
    prefix: str, cert: Path | None, key: Path | None, ca_file: Path | None
) -> ssl.SSLContext:
    """A server context, TLS 1.2 or later (BCP 195); client certificates signed by
    ``ca_file`` are required when it is set. ``prefix`` names the settings in errors."""
    if cert is None or key is None:
        raise TlsSettingsError(
            f"{prefix}_PORT is set: {prefix}_CERT_FILE and {prefix}_KEY_FILE must name our "
            "certificate and its key"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSettingsError(
            f"{prefix}_CERT_FILE/KEY_FILE ({cert}, {key}) do not load: {exc}"
        ) from None
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise TlsSettingsError(
                f"{prefix}_CA_FILE={str(ca_file)!r} does not load: {exc}"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def dimse_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server TLS context of the DICOM TLS port (PS3.15 B.1, BCP 195: TLS 1.2+),
    or None when there is no TLS port. Client certificates are required when
    ``dimse_tls_ca_file`` is set (the Secure Transport Connection Profile's
    peer authentication)."""
    if settings.dimse_tls_port is None:
        return None
    return _server_context(
        "NETPACS_DIMSE_TLS",
        settings.dimse_tls_cert_file,
        settings.dimse_tls_key_file,
        settings.dimse_tls_ca_file,
    )


def mllp_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server TLS context of the MLLP over TLS port, or None when there is none. A
    feed is recognised by its client certificate, so one is always required."""
    if settings.mllp_tls_port is None:
        return None
    if settings.mllp_tls_ca_file is None:
        raise TlsSettingsError(
            "NETPACS_MLLP_TLS_PORT is set: NETPACS_MLLP_TLS_CA_FILE must name the CAs of the "
            "ADT feeds' client certificates (each feed is recognised by its certificate)"
        )
    return _server_context(
        "NETPACS_MLLP_TLS",
        settings.mllp_tls_cert_file,
        settings.mllp_tls_key_file,
        settings.mllp_tls_ca_file,
    )
