"""Authentication for tunmesh: derived keys, HS256 JWTs, replay protection, X25519 sessions.

* :mod:`keys <tunmesh.auth.keys>`: ``derive_key(secret, purpose)``; the purposes; ``cert_thumbprint(der)`` for channel binding.
* :mod:`errors <tunmesh.auth.errors>`: ``AuthError(reason)`` (401, or 429 for rate_limited), ``KexError(reason)`` (400).
* :mod:`tokens <tunmesh.auth.tokens>`: wire format, :class:`VerifiedToken`, :class:`SignedRequest`, :class:`PendingToken`, ``parse_authorization``.
* :mod:`cluster <tunmesh.auth.cluster>`: :class:`ClusterAuthority` for cluster-secret tokens (bootstrap, init_session, fallback).
* :mod:`kex <tunmesh.auth.kex>`: ``KexInitiator``, ``respond`` for the ephemeral X25519 exchange behind every session.
* :mod:`sessions <tunmesh.auth.sessions>`: :class:`SessionStore` (per peer and direction, previous/current by kid) and :class:`SessionAuthority`.

See docs/security.md for the model and the meaning of every failure reason.
"""

from tunmesh.auth.cluster import ClusterAuthority
from tunmesh.auth.errors import REASONS, AuthError, KexError
from tunmesh.auth.keys import cert_thumbprint, derive_key
from tunmesh.auth.sessions import SessionAuthority, SessionStore
from tunmesh.auth.tokens import PendingToken, SignedRequest, VerifiedToken

__all__ = [
    "REASONS",
    "AuthError",
    "ClusterAuthority",
    "KexError",
    "PendingToken",
    "SessionAuthority",
    "SessionStore",
    "SignedRequest",
    "VerifiedToken",
    "cert_thumbprint",
    "derive_key",
]
