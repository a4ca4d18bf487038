"""Keys and certificates made in the test with ``cryptography``: weak, mismatched, expired, not yet valid."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


def rsa_key(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def certificate(
    key: PrivateKey,
    *,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    name: str = "node1.example",
    ca: bool = False,
) -> x509.Certificate:
    """A self-signed certificate for ``key`` valid from ``not_before`` to ``not_after``."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def write_cert(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


def write_key(path: Path, key: PrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def write_pair(
    directory: Path,
    key: PrivateKey | None = None,
    *,
    now: datetime.datetime,
    valid_days: float = 365,
    start_days: float = -1,
) -> tuple[Path, Path]:
    """``cert.pem``/``key.pem`` in ``directory``: valid from ``now + start_days`` for ``valid_days``."""
    key = key if key is not None else ec_key()
    start = now + datetime.timedelta(days=start_days)
    cert = certificate(key, not_before=start, not_after=start + datetime.timedelta(days=valid_days))
    return write_cert(directory / "cert.pem", cert), write_key(directory / "key.pem", key)
