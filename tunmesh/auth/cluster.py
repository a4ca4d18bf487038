"""Cluster-secret tokens: bootstrap, init_session and the registration fallback.

A node accepts one or more cluster secrets, each with an id (a :class:`ClusterKeyring`), and signs with one
of them. A token names its secret in ``kid`` (``cluster`` for the default id, ``cluster.<id>`` otherwise);
the verifier picks the keys by that id and refuses an id it does not hold as ``unknown_key``. A response is
signed with the secret its request used, so a node that signs with a new secret is answered in it, and a
node that still signs with the old one is answered in the old one. That is what makes the rolling order
of docs/security.md ("Rotating the cluster secret") safe at every step.

The cluster secret never signs anything directly: requests, bootstrap requests and responses each use
their own HKDF-derived key (W12, W13), so a response cannot be replayed as a request. Cluster requests
carry a 128-bit ``jti`` remembered in a bounded cache until the token could no longer verify
(exp + leeway); when the cache is full of live ids it fails closed with ``rate_limited`` (429).
"""

from __future__ import annotations

import hashlib
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from tunmesh.auth import keys
from tunmesh.auth.errors import AuthError
from tunmesh.auth.replay import JtiCache
from tunmesh.auth.tokens import (
    BOOTSTRAP_AUDIENCE,
    CHANNEL_AUDIENCE,
    DEFAULT_SECRET_ID,
    MAX_LIFETIME,
    TYP_BOOTSTRAP,
    TYP_CHANNEL,
    TYP_REQUEST,
    TYP_RESPONSE,
    PendingToken,
    SignedRequest,
    VerifiedToken,
    base_claims,
    bearer,
    binder,
    check_rid,
    cluster_kid,
    encode_token,
    parse_authorization,
    secret_id_of_kid,
    valid_secret_id,
    verify_token,
)
from tunmesh.interfaces import SecondsClock

DEFAULT_JTI_ENTRIES = 16384
#: Most tokens in a channel proof (one per accepted secret; a rotation holds two or three).
MAX_PROOF_TOKENS = 16


def check_timing(validity: float, leeway: float) -> None:
    """Refuse timings that break the contract (lifetime <= 60 s, leeway 0..300 s)."""
    if not 0 < validity:
        raise ValueError("validity must be positive")
    if not 0 <= leeway <= 300:
        raise ValueError("leeway must be within 0..300 s")


@dataclass(frozen=True)
class ClusterKeyring:
    """The cluster secrets a node accepts, by id, and the id it signs with (never repr'd with secrets)."""

    secrets: Mapping[str, bytes | str]
    signing_id: str = DEFAULT_SECRET_ID

    def __post_init__(self) -> None:
        if not self.secrets:
            raise ValueError("a keyring needs at least one secret")
        for secret_id, secret in self.secrets.items():
            if not valid_secret_id(secret_id):
                raise ValueError(f"invalid cluster secret id {secret_id!r}")
            keys.to_secret_bytes(secret)  # refuses an empty secret
        if self.signing_id not in self.secrets:
            raise ValueError(f"signing secret id {self.signing_id!r} is not among the secrets")
        object.__setattr__(self, "secrets", types.MappingProxyType(dict(self.secrets)))

    @classmethod
    def single(cls, secret: bytes | str) -> ClusterKeyring:
        """The single-secret form: one secret under the default id (``kid = "cluster"`` on the wire)."""
        return cls({DEFAULT_SECRET_ID: secret})

    @property
    def ids(self) -> tuple[str, ...]:
        """The accepted ids, sorted."""
        return tuple(sorted(self.secrets))

    def fingerprint(self, secret_id: str) -> str:
        """A short non-reversible tag of one secret (to tell a changed secret from an unchanged one)."""
        return hashlib.sha256(keys.derive_key(self.secrets[secret_id], keys.KEX)).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"ClusterKeyring(ids={list(self.ids)!r}, signing_id={self.signing_id!r})"


class _ClusterKeys:
    """The purpose keys of one cluster secret."""

    def __init__(self, secret: bytes | str) -> None:
        self.request = keys.derive_key(secret, keys.CLUSTER_REQUEST)
        self.response = keys.derive_key(secret, keys.CLUSTER_RESPONSE)
        self.bootstrap = keys.derive_key(secret, keys.CLUSTER_BOOTSTRAP)
        self.kex = keys.derive_key(secret, keys.KEX)
        self.channel = keys.derive_key(secret, keys.CLUSTER_CHANNEL)


class ClusterAuthority:
    """Signs and verifies cluster tokens for one node.

    ``secret`` is one secret (the single-secret form, id ``default``) or a :class:`ClusterKeyring`;
    :meth:`set_keyring` replaces it at run time (SIGHUP). ``validity`` is the token lifetime (capped at
    60 s); ``leeway`` the clock-skew tolerance (W10).
    """

    log = Logger()

    def __init__(
        self,
        secret: bytes | str | ClusterKeyring,
        node_id: str,
        clock: SecondsClock,
        validity: float = 30.0,
        leeway: float = 60.0,
        jti_entries: int = DEFAULT_JTI_ENTRIES,
    ) -> None:
        check_timing(validity, leeway)
        self.node_id = node_id
        self.validity = min(validity, MAX_LIFETIME)
        self.leeway = leeway
        self._clock = clock
        self.jtis = JtiCache(jti_entries, clock)
        self._keys: dict[str, _ClusterKeys] = {}
        self.signing_id = DEFAULT_SECRET_ID
        self.set_keyring(secret if isinstance(secret, ClusterKeyring) else ClusterKeyring.single(secret))

    def set_keyring(self, keyring: ClusterKeyring) -> None:
        """Accept exactly the secrets of ``keyring`` from now on and sign with its signing id.

        Tokens already verified keep their answer: a response is signed with its request's secret while
        that secret is still held (see :meth:`sign_response`).
        """
        self._keys = {secret_id: _ClusterKeys(secret) for secret_id, secret in keyring.secrets.items()}
        self.signing_id = keyring.signing_id
        self.keyring: ClusterKeyring = keyring

    @property
    def secret_ids(self) -> tuple[str, ...]:
        """The ids of the accepted secrets, sorted."""
        return tuple(sorted(self._keys))

    @property
    def kex_key(self) -> bytes:
        """The salt of the X25519 session exchange this node starts: its signing secret's (tunmesh.auth.kex)."""
        return self._keys[self.signing_id].kex

    def kex_key_for(self, secret_id: str) -> bytes:
        """The ``kex`` key of the accepted secret ``secret_id``; ``unknown_key`` (401) when not accepted."""
        found = self._keys.get(secret_id)
        if found is None:
            raise AuthError("unknown_key", secret_id=secret_id)
        return found.kex

    def _keys_for_kid(self, kid: object) -> _ClusterKeys:
        secret_id = secret_id_of_kid(kid)
        found = self._keys.get(secret_id) if secret_id is not None else None
        if found is None:
            raise AuthError("unknown_key", secret_id=secret_id)
        return found

    def sign_request(
        self,
        aud: str,
        method: str,
        path: bytes | str,
        body: bytes,
        typ: str = TYP_REQUEST,
        cnf: str | None = None,
    ) -> SignedRequest:
        """A cluster request token. ``typ=TYP_BOOTSTRAP`` signs for ``aud="bootstrap"`` (W4) whatever ``aud`` is.

        ``cnf`` is the TLS exporter value of the connection, when known; otherwise the transport adds it
        through ``SignedRequest.bind`` once the connection is chosen (W5).
        """
        signing = self._keys[self.signing_id]
        if typ == TYP_BOOTSTRAP:
            key, aud = signing.bootstrap, BOOTSTRAP_AUDIENCE
        elif typ == TYP_REQUEST:
            key = signing.request
        else:
            raise ValueError(f"not a cluster request type: {typ!r}")
        if isinstance(path, bytes):
            path = path.decode("ascii")
        jti = keys.random_id()
        claims = base_claims(self.node_id, aud, self._clock.seconds(), self.validity, body, cnf)
        claims.update(htm=method.upper(), htu=path.split("?", 1)[0], jti=jti)
        kid = cluster_kid(self.signing_id)
        token = encode_token(key, typ, kid, claims)
        return SignedRequest(
            header_value=bearer(token), kid=kid, rid=jti, peer_id=aud, bind=binder(key, typ, kid, claims)
        )

    def sign_channel_proof(self, cnf: str) -> list[str]:
        """This server's proof of the TLS session whose exporter value is ``cnf`` (W5): one
        ``tm-chan+jwt`` per accepted secret, so a client holding any one of them can check it
        whichever step of a rotation either side is at."""
        claims = base_claims(self.node_id, CHANNEL_AUDIENCE, self._clock.seconds(), self.validity, b"", cnf)
        out = []
        for secret_id in self.secret_ids:
            claims["jti"] = keys.random_id()
            out.append(encode_token(self._keys[secret_id].channel, TYP_CHANNEL, cluster_kid(secret_id), claims))
        return out

    def verify_channel_proof(self, tokens: list[str], cnf: str) -> VerifiedToken:
        """The first of ``tokens`` that proves the session ``cnf`` under a secret this node accepts.

        Raises the refusal of the first token when none does (``channel_binding`` when one was
        authentic but bound to another session: a relay).
        """
        if len(tokens) > MAX_PROOF_TOKENS:
            raise AuthError("malformed")
        first: AuthError | None = None
        for token in tokens:
            try:
                verified = verify_token(
                    token,
                    key_for=lambda header, claims: self._keys_for_kid(header.get("kid")).channel,
                    accept_typs=frozenset({TYP_CHANNEL}),
                    cluster=True,
                    audience=CHANNEL_AUDIENCE,
                    now=self._clock.seconds(),
                    leeway=self.leeway,
                    counter="jti",
                    expect_cnf=cnf,
                )
                return PendingToken(verified).verify_body(b"")
            except AuthError as exc:
                if first is None or exc.reason == "channel_binding":
                    first = exc
        raise first if first is not None else AuthError("missing")

    def _request_key_for(self, header: Mapping[str, Any], claims: Mapping[str, Any]) -> bytes:
        found = self._keys_for_kid(header.get("kid"))
        return found.bootstrap if header.get("typ") == TYP_BOOTSTRAP else found.request

    def verify_request_head(
        self,
        header_value: bytes | str | None,
        method: bytes | str,
        path: bytes | str,
        accept_bootstrap: bool = False,
        cnf: str | None = None,
    ) -> PendingToken:
        """Verify a cluster request from its headers (before the body is read).

        ``accept_bootstrap`` is True only on ``POST /registrations/register`` (W4). ``cnf`` is this server's
        own certificate thumbprint; when given, the token must carry it (W5).
        Then call ``.verify_body(body)``, which checks ``bh`` and records the ``jti``.
        """
        token = parse_authorization(header_value)
        if isinstance(method, bytes):
            method = method.decode("ascii", errors="replace")
        accept = frozenset({TYP_REQUEST, TYP_BOOTSTRAP} if accept_bootstrap else {TYP_REQUEST})
        verified = verify_token(
            token,
            key_for=self._request_key_for,
            accept_typs=accept,
            cluster=True,
            audience=frozenset({self.node_id, BOOTSTRAP_AUDIENCE}),
            now=self._clock.seconds(),
            leeway=self.leeway,
            method=method,
            path=path,
            counter="jti",
            expect_cnf=cnf,
        )
        expected_aud = BOOTSTRAP_AUDIENCE if verified.typ == TYP_BOOTSTRAP else self.node_id
        if verified.aud != expected_aud:
            raise AuthError("wrong_audience")
        if self.jtis.seen(verified.jti or ""):
            raise AuthError("replay")
        return PendingToken(verified, self._commit)

    def _commit(self, token: VerifiedToken) -> None:
        assert token.jti is not None
        if not self.jtis.add(token.jti, token.exp + self.leeway):
            raise AuthError("replay")

    def sign_response(
        self, aud: str, request: VerifiedToken, body: bytes, cnf: str | None = None
    ) -> str:
        """The response header value for a verified cluster request from ``aud``; ``rid`` = its jti.

        Signed with the secret the request used (its ``kid``), which the requester is known to hold:
        during a rotation a node that already signs with the new secret and one that still signs with
        the old one both get answers they can verify. ``unknown_key`` if that secret was dropped since.
        """
        found = self._keys_for_kid(request.kid)
        claims = base_claims(self.node_id, aud, self._clock.seconds(), self.validity, body, cnf)
        claims["rid"] = request.jti
        return bearer(encode_token(found.response, TYP_RESPONSE, request.kid, claims))

    def verify_response(
        self,
        header_value: bytes | str | None,
        expected_issuer: str | None,
        request: SignedRequest,
        body: bytes,
        cnf: str | None = None,
    ) -> VerifiedToken:
        """Verify the response to ``request`` (rid must be its jti).

        ``expected_issuer=None`` for bootstrap: the caller does not know who answers; the verified ``iss``
        and the signed body's ``listen_url`` say it (W4). ``cnf`` is the thumbprint of the certificate
        this client saw in the handshake. The response must be signed with the request's secret (same
        ``kid``); any other id is ``unknown_key``.
        """
        token = parse_authorization(header_value)

        def key_for(header: Mapping[str, Any], claims: Mapping[str, Any]) -> bytes:
            if header.get("kid") != request.kid:
                raise AuthError("unknown_key")
            return self._keys_for_kid(request.kid).response

        verified = verify_token(
            token,
            key_for=key_for,
            accept_typs=frozenset({TYP_RESPONSE}),
            cluster=True,
            audience=self.node_id,
            now=self._clock.seconds(),
            leeway=self.leeway,
            issuer=expected_issuer,
            counter=None,
            expect_cnf=cnf,
        )
        check_rid(verified, request.rid)
        return PendingToken(verified).verify_body(body)
