"""Cluster-secret tokens: bootstrap, init_session and the registration fallback.

The cluster secret never signs anything directly: requests, bootstrap requests and responses each use
their own HKDF-derived key (W12, W13), so a response cannot be replayed as a request. Cluster requests
carry a 128-bit `jti` remembered in a bounded cache until the token could no longer verify
(exp + leeway); when the cache is full of live ids it fails closed with `rate_limited` (429).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.logger import Logger

from tunmesh.auth import keys
from tunmesh.auth.errors import AuthError
from tunmesh.auth.replay import JtiCache
from tunmesh.auth.tokens import (
    BOOTSTRAP_AUDIENCE,
    CLUSTER_KID,
    MAX_LIFETIME,
    TYP_BOOTSTRAP,
    TYP_REQUEST,
    TYP_RESPONSE,
    PendingToken,
    SignedRequest,
    VerifiedToken,
    base_claims,
    bearer,
    check_rid,
    encode_token,
    parse_authorization,
    verify_token,
)
from tunmesh.logutil import SecondsClock

DEFAULT_JTI_ENTRIES = 16384


def check_timing(validity: float, leeway: float) -> None:
    """Refuse timings that break the contract (lifetime <= 60 s, leeway 0..300 s)."""
    if not 0 < validity:
        raise ValueError("validity must be positive")
    if not 0 <= leeway <= 300:
        raise ValueError("leeway must be within 0..300 s")


class ClusterAuthority:
    """Signs and verifies cluster tokens for one node.

    `validity` is the token lifetime (capped at 60 s); `leeway` the clock-skew tolerance (W10).
    """

    log = Logger()

    def __init__(
        self,
        secret: bytes | str,
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
        self._request_key = keys.derive_key(secret, keys.CLUSTER_REQUEST)
        self._response_key = keys.derive_key(secret, keys.CLUSTER_RESPONSE)
        self._bootstrap_key = keys.derive_key(secret, keys.CLUSTER_BOOTSTRAP)
        #: salt for the X25519 session exchange (see tunmesh.auth.kex)
        self.kex_key = keys.derive_key(secret, keys.KEX)
        self.jtis = JtiCache(jti_entries, clock)

    def sign_request(
        self,
        aud: str,
        method: str,
        path: bytes | str,
        body: bytes,
        typ: str = TYP_REQUEST,
        cnf: str | None = None,
    ) -> SignedRequest:
        """A cluster request token. `typ=TYP_BOOTSTRAP` signs for `aud="bootstrap"` (W4) whatever `aud` is.

        `cnf` is the x5t#S256 of the server certificate seen in the TLS handshake, when known.
        """
        if typ == TYP_BOOTSTRAP:
            key, aud = self._bootstrap_key, BOOTSTRAP_AUDIENCE
        elif typ == TYP_REQUEST:
            key = self._request_key
        else:
            raise ValueError(f"not a cluster request type: {typ!r}")
        if isinstance(path, bytes):
            path = path.decode("ascii")
        jti = keys.random_id()
        claims = base_claims(self.node_id, aud, self._clock.seconds(), self.validity, body, cnf)
        claims.update(htm=method.upper(), htu=path.split("?", 1)[0], jti=jti)
        token = encode_token(key, typ, CLUSTER_KID, claims)
        return SignedRequest(header_value=bearer(token), kid=CLUSTER_KID, rid=jti, peer_id=aud)

    def _request_key_for(self, header: Mapping[str, Any], claims: Mapping[str, Any]) -> bytes:
        return self._bootstrap_key if header.get("typ") == TYP_BOOTSTRAP else self._request_key

    def verify_request_head(
        self,
        header_value: bytes | str | None,
        method: bytes | str,
        path: bytes | str,
        accept_bootstrap: bool = False,
        cnf: str | None = None,
    ) -> PendingToken:
        """Verify a cluster request from its headers (before the body is read).

        `accept_bootstrap` is True only on `POST /registrations/register` (W4). `cnf` is this server's
        own certificate thumbprint; when given, the token must carry it (W5).
        Then call `.verify_body(body)`, which checks `bh` and records the `jti`.
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
        """The response header value for a verified cluster request from `aud`; `rid` = its jti."""
        claims = base_claims(self.node_id, aud, self._clock.seconds(), self.validity, body, cnf)
        claims["rid"] = request.jti
        return bearer(encode_token(self._response_key, TYP_RESPONSE, CLUSTER_KID, claims))

    def verify_response(
        self,
        header_value: bytes | str | None,
        expected_issuer: str | None,
        request: SignedRequest,
        body: bytes,
        cnf: str | None = None,
    ) -> VerifiedToken:
        """Verify the response to `request` (rid must be its jti).

        `expected_issuer=None` for bootstrap: the caller does not know who answers; the verified `iss`
        and the signed body's `listen_url` say it (W4). `cnf` is the thumbprint of the certificate
        this client saw in the handshake.
        """
        token = parse_authorization(header_value)
        verified = verify_token(
            token,
            key_for=lambda header, claims: self._response_key,
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
