"""Self-signed certificates and certificate fingerprints.

One self-signed certificate shared by every node (and used as its own trust anchor) is the simplest
working deployment, as in the original; this module makes one without an ``openssl`` command line.
The SHA-256 of a certificate's DER encoding is the channel-binding value of security contract W5(a).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


class CertificateFileError(ValueError):
    """A PEM file holds no certificate, or cannot be read."""


def write_self_signed(
    cert_path: Path,
    key_path: Path,
    hostnames: Sequence[str] = ("tunmesh.local",),
    ips: Sequence[str] = (),
    days: int = 3650,
) -> None:
    """Write an ECDSA P-256 key (mode 0600) and a self-signed certificate with SANs.

    P-256 because it makes handshakes cheaper than RSA (contract W2(a)); SANs because clients that
    verify hostnames only look at subjectAltName. The certificate is an end-entity certificate
    (CA:FALSE) that is also its own trust anchor.
    """
    if not hostnames and not ips:
        raise ValueError("a certificate needs at least one hostname or IP address")
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    san: list[x509.GeneralName] = [x509.DNSName(name) for name in hostnames]
    san.extend(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips)
    common_name = hostnames[0] if hostnames else ips[0]

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )

    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(Path(key_path), key_pem)
    Path(cert_path).write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_private(path: Path, data: bytes) -> None:
    """Create or replace ``path`` with mode 0600 from the start, so the key is never world-readable."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def load_certificates(pem_path: Path) -> list[x509.Certificate]:
    """All certificates of a PEM file, leaf first; raise L{CertificateFileError} when there are none."""
    try:
        data = Path(pem_path).read_bytes()
    except OSError as exc:
        raise CertificateFileError(f"cannot read {pem_path}: {exc.strerror}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateFileError(f"{pem_path} holds no valid PEM certificate") from None
    return certs


def certificate_der_sha256(cert: x509.Certificate) -> bytes:
    """SHA-256 of the DER encoding: the ``x5t#S256`` value (contract W5(a))."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


def certificate_sha256(pem_path: Path) -> bytes:
    """SHA-256 of the DER encoding of the first (leaf) certificate in ``pem_path``."""
    return certificate_der_sha256(load_certificates(pem_path)[0])
