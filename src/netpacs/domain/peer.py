"""Who is at the other end of a connection, and the region file's rule for recognising a
caller: the addresses it connects from and the TLS client certificate it presents.

Adapters describe a connection as a :class:`Peer` (its address, and the certificate it
presented over TLS, already verified against our CAs); the services decide with a
:class:`CallerIdentity` whether that peer is the DICOM AE or ADT feed it claims to be.
A name on the wire (AE title, MSH-4) is typed by anyone; an address and a certificate
are not.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

from cryptography import x509

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """A client certificate as presented: its subject (RFC 4514) and SHA-256 fingerprint."""

    subject: str
    sha256: str  # lower-case hex, no colons

    @classmethod
    def from_der(cls, der: bytes) -> PeerCertificate:
        certificate = x509.load_der_x509_certificate(der)
        return cls(certificate.subject.rfc4514_string(), hashlib.sha256(der).hexdigest())


@dataclass(frozen=True, slots=True)
class Peer:
    """One connection's caller: its IP address, and its certificate (TLS) if any."""

    address: str | None
    certificate: PeerCertificate | None = None

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The address as an IP address; an IPv4-mapped IPv6 address as IPv4."""
        try:
            ip = ipaddress.ip_address((self.address or "").split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        return ip

    def __str__(self) -> str:
        where = self.address or "an unknown address"
        if self.certificate is None:
            return where
        return f"{where} (certificate {self.certificate.subject or '<no subject>'})"


def network(text: str) -> Network:
    """A ``hosts`` entry of the region file: an IP address or a network (CIDR)."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an IP address or network (such as 10.1.2.3 or 10.1.2.0/24; "
            "host names are not resolved)"
        ) from None


def subject(text: str) -> str:
    """A ``tls_subject`` of the region file in the form certificates are compared in."""
    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a subject name (RFC 4514, e.g. CN=pas,O=RXC)") from None
    if not len(name):
        raise ValueError("an empty tls_subject names no certificate")
    return name.rfc4514_string()


def fingerprint(text: str) -> str:
    """A ``tls_fingerprint``: SHA-256 of the certificate, hex, colons allowed (as
    ``openssl x509 -noout -fingerprint -sha256`` prints it)."""
    digits = text.strip().lower().removeprefix("sha256:").replace(":", "")
    if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits)")
    return digits


@dataclass(frozen=True, slots=True)
class CallerIdentity:
    """How the region file recognises a caller. ``hosts`` None: from any address; a
    certificate named (subject, fingerprint or both): only over TLS with that certificate."""

    hosts: tuple[Network, ...] | None = None
    tls_subject: str | None = None
    tls_fingerprint: str | None = None

    @property
    def needs_certificate(self) -> bool:
        return self.tls_subject is not None or self.tls_fingerprint is not None

    @property
    def is_known(self) -> bool:
        """Whether the region file says anything about where this caller comes from."""
        return self.hosts is not None or self.needs_certificate

    def problem(self, peer: Peer) -> str | None:
        """None when ``peer`` may be this caller; else why not, in words."""
        if self.hosts is not None:
            ip = peer.ip
            if ip is None or not any(ip in net for net in self.hosts):
                return f"connects from {peer.address or 'an unknown address'}, not one of its hosts"
        if not self.needs_certificate:
            return None
        cert = peer.certificate
        if cert is None:
            return "must connect over TLS with its client certificate"
        if self.tls_subject is not None and cert.subject != self.tls_subject:
            return f"presented certificate {cert.subject!r}, not {self.tls_subject!r}"
        if self.tls_fingerprint is not None and cert.sha256 != self.tls_fingerprint:
            return f"presented a certificate with SHA-256 {cert.sha256}, not the one named"
        return None
