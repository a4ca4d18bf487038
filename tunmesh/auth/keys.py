"""Key derivation: one root secret, a separate key per purpose (W12, W13).

Every HMAC key is ``HKDF-SHA256(secret, salt=b"tunmesh v1", info=purpose)``, so the cluster-request and
cluster-response keys are different bytes and a token minted for one purpose never verifies for another.
"""

from __future__ import annotations

import base64
import hashlib
import secrets

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SALT = b"tunmesh v1"

# Purposes for the cluster secret.
CLUSTER_REQUEST = "cluster-request"
CLUSTER_RESPONSE = "cluster-response"
CLUSTER_BOOTSTRAP = "cluster-bootstrap"
KEX = "kex"
CLUSTER_CHANNEL = "cluster-channel"
# Purposes for a session secret (one per direction and kid).
SESSION_REQUEST = "session-request"
SESSION_RESPONSE = "session-response"
LINK_HELLO = "link-hello"
LINK_FRAMES = "link-frames"

PURPOSES = frozenset(
    {
        CLUSTER_REQUEST,
        CLUSTER_RESPONSE,
        CLUSTER_BOOTSTRAP,
        CLUSTER_CHANNEL,
        KEX,
        SESSION_REQUEST,
        SESSION_RESPONSE,
        LINK_HELLO,
        LINK_FRAMES,
    }
)


def to_secret_bytes(secret: bytes | str) -> bytes:
    """The root secret as bytes: a str (the config value) is used as its UTF-8 encoding."""
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not secret:
        raise ValueError("secret must not be empty")
    return secret


def derive_key(secret: bytes | str, purpose: str, length: int = 32) -> bytes:
    """HKDF-SHA256(secret, salt=b"tunmesh v1", info=purpose) -> ``length`` bytes."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown key purpose {purpose!r}")
    return HKDF(
        algorithm=hashes.SHA256(), length=length, salt=SALT, info=purpose.encode("ascii")
    ).derive(to_secret_bytes(secret))


_B64URL_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def b64url(data: bytes) -> str:
    """Unpadded base64url, as used in JWTs."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict unpadded base64url decode; raises ValueError on anything else."""
    if not isinstance(text, str) or "=" in text:
        raise ValueError("not unpadded base64url")
    raw = text.encode("ascii")
    if raw.translate(None, _B64URL_ALPHABET):  # anything left is outside the alphabet
        raise ValueError("not base64url")
    if len(raw) % 4 == 1:
        raise ValueError("bad base64url length")
    decoded = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    if b64url(decoded) != text:
        raise ValueError("non-canonical base64url")
    return decoded


def random_id(nbytes: int = 16) -> str:
    """A random identifier (jti, kid): 128 bits by default, base64url."""
    return b64url(secrets.token_bytes(nbytes))


def cert_thumbprint(cert_der: bytes) -> str:
    """base64url(SHA-256(certificate DER)), the ``x5t#S256`` form (diagnostics; the binding is the TLS exporter)."""
    return b64url(hashlib.sha256(cert_der).digest())


def length_prefixed(*fields: bytes | str) -> bytes:
    """Canonical concatenation (W3): each field as a 4-byte big-endian length and its bytes."""
    out = bytearray()
    for field in fields:
        data = field.encode("utf-8") if isinstance(field, str) else field
        out += len(data).to_bytes(4, "big") + data
    return bytes(out)
