"""Ephemeral X25519 session exchange (W2 b, W15), one POST per rotation.

For traffic from sender S to receiver V, S (the requester) posts ``{"public_key": <b64url 32 bytes>}`` to V;
V answers ``{"kid": ..., "public_key": ...}`` with its own ephemeral key. Both derive

    secret = HKDF-SHA256(ikm=X25519(shared), salt=K_kex, info=length_prefixed("tunmesh v1 session", S, V, kid))

where ``K_kex = derive_key(cluster_secret, "kex")`` of the cluster secret the request names (``kex_secret``: the
requester's signing secret; see docs/security.md, "Rotating the cluster secret"). Mixing in the cluster secret works like WireGuard's PSK:
a MITM without it derives a different secret. Nothing secret crosses the wire and both private keys are
thrown away. V stores the secret as its inbound key for S; S stores it as its outbound key to V.
Bad keys (not exactly 32 bytes, low order / all-zero shared secret) raise :exc:`KexError` (HTTP 400).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tunmesh import strictjson
from tunmesh.auth.errors import KexError
from tunmesh.auth.keys import b64url, b64url_decode, length_prefixed, random_id
from tunmesh.auth.tokens import DEFAULT_SECRET_ID, is_cluster_kid, valid_kid, valid_node_id, valid_secret_id

SESSION_INFO = b"tunmesh v1 session"
SECRET_BYTES = 32
KEY_BYTES = 32
MAX_BODY = 8192


def _raw_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _load_public(text: object) -> X25519PublicKey:
    if not isinstance(text, str):
        raise KexError("malformed")
    try:
        raw = b64url_decode(text)
    except ValueError:
        raise KexError("malformed") from None
    if len(raw) != KEY_BYTES:
        raise KexError("bad_public_key")
    return X25519PublicKey.from_public_bytes(raw)


def _json_object(body: bytes) -> dict:
    if len(body) > MAX_BODY:
        raise KexError("malformed")
    try:
        value = strictjson.loads(body)
    except strictjson.StrictJSONError:
        raise KexError("malformed") from None
    if not isinstance(value, dict):
        raise KexError("malformed")
    return value


def derive_session_secret(
    private_key: X25519PrivateKey, peer_public: X25519PublicKey, kex_key: bytes, sender: str, receiver: str, kid: str
) -> bytes:
    """The 32-byte session secret of the direction sender -> receiver under ``kid``."""
    try:
        shared = private_key.exchange(peer_public)
    except ValueError:  # all-zero shared secret: a low-order point
        raise KexError("bad_public_key") from None
    info = SESSION_INFO + length_prefixed(sender, receiver, kid)
    return HKDF(algorithm=hashes.SHA256(), length=SECRET_BYTES, salt=kex_key, info=info).derive(shared)


@dataclass(frozen=True)
class KexRequest:
    """The init_session request body: the requester's ephemeral public key (raw, 32 bytes) and the id of
    the cluster secret whose ``kex`` key salts the new session (``kex_secret``; absent means the default
    id, as nodes from before secret ids send it). The body is covered by the token's ``bh``."""

    public_key: bytes
    secret_id: str = DEFAULT_SECRET_ID

    def to_body(self) -> bytes:
        value = {"public_key": b64url(self.public_key)}
        if self.secret_id != DEFAULT_SECRET_ID:
            value["kex_secret"] = self.secret_id
        return json.dumps(value, separators=(",", ":")).encode()

    @classmethod
    def from_body(cls, body: bytes) -> KexRequest:
        """Parse and validate; raises KexError."""
        value = _json_object(body)
        secret_id = value.get("kex_secret", DEFAULT_SECRET_ID)
        if not valid_secret_id(secret_id):
            raise KexError("malformed")
        return cls(_raw_bytes(_load_public(value.get("public_key"))), secret_id)


@dataclass(frozen=True)
class KexResponse:
    """The init_session response body: the new ``kid`` and the responder's ephemeral public key."""

    kid: str
    public_key: bytes

    def to_body(self) -> bytes:
        return json.dumps(
            {"kid": self.kid, "public_key": b64url(self.public_key)}, separators=(",", ":")
        ).encode()

    @classmethod
    def from_body(cls, body: bytes) -> KexResponse:
        """Parse and validate; raises KexError."""
        value = _json_object(body)
        kid = value.get("kid")
        if not isinstance(kid, str) or not valid_kid(kid) or is_cluster_kid(kid):
            raise KexError("malformed")
        return cls(kid, _raw_bytes(_load_public(value.get("public_key"))))


def _raw_bytes(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class KexInitiator:
    """The requester's side (the future sender S of the direction S -> receiver)."""

    def __init__(
        self,
        kex_key: bytes,
        sender: str,
        receiver: str,
        private_key: X25519PrivateKey | None = None,
        secret_id: str = DEFAULT_SECRET_ID,
    ) -> None:
        """``kex_key`` is the ``kex`` key of the cluster secret ``secret_id``, which the request names."""
        if not (valid_node_id(sender) and valid_node_id(receiver)):
            raise ValueError("invalid node id")
        self._kex_key = kex_key
        self.sender = sender
        self.receiver = receiver
        self._private: X25519PrivateKey | None = private_key or X25519PrivateKey.generate()
        self.request = KexRequest(_raw_public(self._private), secret_id)

    def request_body(self) -> bytes:
        """The body to POST to the receiver's init_session route."""
        return self.request.to_body()

    def complete(self, response_body: bytes) -> tuple[str, bytes]:
        """(kid, secret) from the VERIFIED response body; usable once. Raises KexError."""
        if self._private is None:
            raise KexError("already_used")
        response = KexResponse.from_body(response_body)
        private, self._private = self._private, None
        secret = derive_session_secret(
            private,
            X25519PublicKey.from_public_bytes(response.public_key),
            self._kex_key,
            self.sender,
            self.receiver,
            response.kid,
        )
        return response.kid, secret


@dataclass(frozen=True)
class KexResult:
    """What the responder sends back (``body``) and keeps (``kid``, ``secret`` as its inbound key)."""

    kid: str
    secret: bytes
    body: bytes

    def __repr__(self) -> str:
        return f"KexResult(kid={self.kid!r})"


def respond(
    kex_key: bytes | Callable[[str], bytes],
    request_body: bytes,
    sender: str,
    receiver: str,
    kid: str | None = None,
    private_key: X25519PrivateKey | None = None,
) -> KexResult:
    """The receiver's side: ``sender`` is the VERIFIED ``iss`` of the init_session request, ``receiver`` this node.

    ``kex_key`` is the salt, or a function from the secret id the request names to that secret's ``kex``
    key (it raises ``AuthError("unknown_key")`` for an id this node does not accept).
    Raises KexError (400) for a malformed body or an unusable public key.
    """
    if not (valid_node_id(sender) and valid_node_id(receiver)):
        raise ValueError("invalid node id")
    request = KexRequest.from_body(request_body)
    if callable(kex_key):
        kex_key = kex_key(request.secret_id)
    kid = kid or random_id()
    private = private_key or X25519PrivateKey.generate()
    secret = derive_session_secret(
        private, X25519PublicKey.from_public_bytes(request.public_key), kex_key, sender, receiver, kid
    )
    return KexResult(kid=kid, secret=secret, body=KexResponse(kid, _raw_public(private)).to_body())
