"""TLS contexts from the settings: certificates that do not load stop ``netpacs serve``."""

from __future__ import annotations

import ssl

from netpacs.app.settings import Settings


class DimseTlsError(ValueError):
    """The DICOM TLS settings cannot work; the message names the setting."""


def dimse_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server TLS context of the DICOM TLS port (PS3.15 B.1, BCP 195: TLS 1.2+),
    or None when there is no TLS port. Client certificates are required when
    ``dimse_tls_ca_file`` is set (the Secure Transport Connection Profile's
    peer authentication)."""
    if settings.dimse_tls_port is None:
        return None
    cert, key = settings.dimse_tls_cert_file, settings.dimse_tls_key_file
    if cert is None or key is None:
        raise DimseTlsError(
            "NETPACS_DIMSE_TLS_PORT is set: NETPACS_DIMSE_TLS_CERT_FILE and "
            "NETPACS_DIMSE_TLS_KEY_FILE must name our certificate and its key"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise DimseTlsError(
            f"NETPACS_DIMSE_TLS_CERT_FILE/KEY_FILE ({cert}, {key}) do not load: {exc}"
        ) from None
    if settings.dimse_tls_ca_file is not None:
        try:
            context.load_verify_locations(cafile=settings.dimse_tls_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise DimseTlsError(
                f"NETPACS_DIMSE_TLS_CA_FILE={str(settings.dimse_tls_ca_file)!r} does not load: "
                f"{exc}"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context
