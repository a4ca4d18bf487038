"""Certificates for the API port: one self-signed certificate, or a private CA and per-node certificates.

One self-signed certificate shared by every node (and used as its own trust anchor) is the simplest
working deployment, as in the original; this module makes one without an ``openssl`` command line
(:func:`write_self_signed`, ``tunmesh gen-cert``). The second model is a private CA
(:func:`make_ca`, ``tunmesh cert ca``) that signs one certificate per node (:func:`sign_node`,
``tunmesh cert sign``); nodes trust the CA through ``ca_file_path``, and a bundle holding an old and a
new CA lets the CA be replaced without a restart (docs/deployment.md, *Rotating certificates*).
The SHA-256 of a certificate's DER encoding is the channel-binding value of security contract W5(a).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from attrs import frozen
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
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


def _write_private(path: Path, data: bytes, replace: bool = True) -> None:
    """Create (or, with ``replace``, replace) ``path`` with mode 0600 from the start, so the key is never
    world-readable. Without ``replace`` an existing file is an error (``FileExistsError``), decided by
    the ``open`` itself (``O_EXCL``), not by an earlier look."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def load_certificates(pem_path: Path) -> list[x509.Certificate]:
    """All certificates of a PEM file, leaf first; raise :exc:`CertificateFileError` when there are none."""
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
    """SHA-256 of the DER encoding (the ``x5t#S256`` value; diagnostics, not the W5(a) binding)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


def certificate_sha256(pem_path: Path) -> bytes:
    """SHA-256 of the DER encoding of the first (leaf) certificate in ``pem_path``."""
    return certificate_der_sha256(load_certificates(pem_path)[0])


# ------------------------------------------------------------------------------------------------ private CA

#: Default validity of a CA made by :func:`make_ca` (10 years: replacing a CA is a rollover of every node).
CA_DAYS = 3650
#: Default validity of a node certificate from :func:`sign_node` (a year; the expiry gauge and the WARN under
#: 14 days say when to re-issue, and a reload applies the new one without a restart).
NODE_DAYS = 365
#: Backdating of ``notBefore``, so a peer whose clock is a little behind accepts a fresh certificate.
BACKDATE = datetime.timedelta(minutes=5)


class CAError(ValueError):
    """The CA files cannot sign: unreadable, not a CA, key does not match, or expired."""


@frozen
class Issued:
    """A key and a certificate made here (not written yet)."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _key_usage(*, sign: bool, certs: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=certs,
        crl_sign=certs,
        encipher_only=False,
        decipher_only=False,
    )


def _name(common_name: str, organization: str | None) -> x509.Name:
    if not common_name:
        raise ValueError("the common name must not be empty")
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def make_ca(
    common_name: str,
    organization: str | None = None,
    days: int = CA_DAYS,
    now: datetime.datetime | None = None,
) -> Issued:
    """A private CA: an ECDSA P-256 key and a self-signed CA certificate (SHA-256).

    ``CA:TRUE`` with ``pathlen:0`` (it signs node certificates only, no intermediate CAs), key usage
    ``keyCertSign, cRLSign`` (critical), and a subject key identifier: node certificates carry it as
    their authority key identifier, which is how OpenSSL picks the right CA when a bundle holds an
    old and a new CA under the same name during a rollover.
    """
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    now = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name, organization)
    public = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(sign=True, certs=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, cert)


def load_ca(cert_path: Path, key_path: Path, now: datetime.datetime | None = None) -> Issued:
    """The CA certificate (the first of ``cert_path``) and its key, checked for signing node certificates."""
    try:
        cert = load_certificates(cert_path)[0]
    except CertificateFileError as exc:
        raise CAError(str(exc)) from None
    try:
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    except OSError as exc:
        raise CAError(f"cannot read {key_path}: {exc.strerror}") from None
    except TypeError:
        raise CAError(f"{key_path} is encrypted; an unencrypted key is required") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CAError(f"{key_path} holds no valid PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CAError(f"{key_path}: the CA key must be an ECDSA key (tunmesh cert ca makes one)")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CAError(f"{cert_path} is not a CA certificate (no basicConstraints CA:TRUE)")
    if _spki(cert.public_key()) != _spki(key.public_key()):
        raise CAError(f"{key_path} does not match the CA certificate in {cert_path}")
    now = now or datetime.datetime.now(datetime.UTC)
    if now >= cert.not_valid_after_utc:
        raise CAError(f"{cert_path}: the CA expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    return Issued(key, cert)


def sign_node(
    ca: Issued,
    hostnames: Sequence[str] = (),
    ips: Sequence[str] = (),
    common_name: str | None = None,
    days: int = NODE_DAYS,
    now: datetime.datetime | None = None,
) -> Issued:
    """A node certificate signed by ``ca``: a fresh ECDSA P-256 key, SANs, ``CA:FALSE``.

    Extended key usage ``serverAuth`` (the node's port) and ``clientAuth`` (the node also connects to
    its peers; a peer that asks for a client certificate gets one that is allowed to be one). The
    validity ends at the CA's end at the latest: a certificate outliving its CA only verifies until then.
    """
    if not hostnames and not ips:
        raise ValueError("a certificate needs at least one hostname (--hostname) or IP address (--ip)")
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    san: list[x509.GeneralName] = [x509.DNSName(name) for name in hostnames]
    san.extend(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips)
    now = now or datetime.datetime.now(datetime.UTC)
    not_after = min(now + datetime.timedelta(days=days), ca.cert.not_valid_after_utc)
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    try:
        ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:  # a CA made elsewhere, without one
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name or (hostnames[0] if hostnames else ips[0]), None))
        .issuer_name(ca.cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - BACKDATE, ca.cert.not_valid_before_utc))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(sign=True, certs=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(key, cert)


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s key signed ``cert`` (the signature only: names and times are not checked)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def write_issued(issued: Issued, cert_path: Path, key_path: Path, force: bool = False) -> None:
    """Write the key (mode 0600) and the certificate (PEM).

    Without ``force`` neither file may exist: both are checked first, so nothing is written when one
    does, and the key is then created exclusively (``O_EXCL``). With ``force`` both are replaced.
    """
    cert_path, key_path = Path(cert_path), Path(key_path)
    if cert_path.resolve() == key_path.resolve():
        raise ValueError(f"the certificate and the key must be two files, both are {cert_path}")
    if not force:
        existing = [str(p) for p in (key_path, cert_path) if p.exists() or p.is_symlink()]
        if existing:
            raise FileExistsError(f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''};"
                                  " use --force to replace")
    _write_private(key_path, issued.key_pem, replace=force)
    if force:
        cert_path.write_bytes(issued.cert_pem)
    else:
        with open(cert_path, "xb") as f:
            f.write(issued.cert_pem)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER encoding as ``AB:CD:...`` (what ``openssl x509 -fingerprint -sha256`` prints)."""
    return ":".join(f"{b:02X}" for b in certificate_der_sha256(cert))
