"""HS256 JWTs for tunmesh: the wire format, signing and two-step verification.

A token travels as ``Authorization: Bearer <jwt>`` (the original's ``Bearer: <jwt>`` is accepted on input).

Header: ``alg`` = HS256 (nothing else is ever accepted), ``typ`` (one of the ``TYP_*`` kinds), ``kid``
(``"cluster"`` or ``"cluster.<secret id>"`` for cluster-secret tokens, a session kid otherwise).

Claims: ``iss`` sender node id, ``aud`` receiver node id (or ``"bootstrap"``), ``iat``, ``exp`` (exp - iat <= 60 s),
``bh`` = base64url(SHA-256(exact body bytes)), requests add ``htm`` (method) and ``htu`` (path only) and
either ``jti`` (cluster, 128-bit random) or ``ctr`` (session, per direction and kid); responses add ``rid``
(the request's jti or ctr); ``cnf: {"tm-exp": ...}`` binds the token to one TLS session: the TLS exporter
value (RFC 5705/8446, label ``EXPORTER-tunmesh-ctl-v1``) of the connection it travels on (W5,
tunmesh.tls.binding). A ``tm-chan+jwt`` token is the server's proof of the TLS session on a control
connection (docs/security.md, "Control-plane channel binding").

Verification is split so that 401 is decided from the headers alone (W8): ``verify_head``-style functions
check format, size, alg, typ, kid, the HMAC, audience, issuer, method, path, times and channel binding and
return a :class:`PendingToken`; ``PendingToken.verify_body(body)`` checks ``bh`` and only then records the jti/ctr
in the replay state. A tampered body therefore never burns a counter, and replay is always checked after
the HMAC (W1).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

from tunmesh import strictjson
from tunmesh.auth.errors import AuthError
from tunmesh.auth.keys import b64url, b64url_decode
from tunmesh.auth.replay import MAX_CTR

TYP_REQUEST = "tm-req+jwt"
TYP_RESPONSE = "tm-resp+jwt"
TYP_BOOTSTRAP = "tm-bootstrap+jwt"
TYP_LINK = "tm-link+jwt"
TYP_CHANNEL = "tm-chan+jwt"
TYPES = frozenset({TYP_REQUEST, TYP_RESPONSE, TYP_BOOTSTRAP, TYP_LINK, TYP_CHANNEL})

CLUSTER_KID = "cluster"
#: The id of the secret given in the single-secret form (``clustering.auth.secret``); its tokens carry
#: ``kid = "cluster"`` exactly as before secret ids existed, so such nodes interoperate with older ones.
DEFAULT_SECRET_ID = "default"
#: A cluster secret id as configured (``clustering.auth.secrets/<id>``).
SECRET_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}"
BOOTSTRAP_AUDIENCE = "bootstrap"
#: The audience of a channel proof: whoever opened the connection (the server does not know who yet).
CHANNEL_AUDIENCE = "channel"
ALGORITHM = "HS256"
MAX_TOKEN_BYTES = 4096
MAX_LIFETIME = 60
AUTHORIZATION = b"Authorization"
#: The ``cnf`` member holding the TLS exporter value (base64url) of the connection (W5).
CNF_EXPORTER = "tm-exp"

_NODE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_KID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SECRET_ID = re.compile(SECRET_ID_PATTERN)
_CLUSTER_KID_PREFIX = CLUSTER_KID + "."
_JTI = re.compile(r"^[A-Za-z0-9_-]{22,64}$")
_BH = re.compile(r"^[A-Za-z0-9_-]{43}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9_-]*$")
_HEADER_FIELDS = frozenset({"alg", "typ", "kid"})

_PYJWT = jwt.PyJWT(options={"enforce_minimum_key_length": True})
_DECODE_OPTIONS: Any = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
    "require": [],
    "enforce_minimum_key_length": True,
}


def body_hash(body: bytes) -> str:
    """``bh``: base64url(SHA-256(body)), over the exact bytes on the wire (W3)."""
    return b64url(hashlib.sha256(body).digest())


def valid_node_id(value: object) -> bool:
    """The shape of a node id as it may appear in ``iss``/``aud``."""
    return isinstance(value, str) and bool(_NODE_ID.match(value))


def valid_kid(value: object) -> bool:
    """The shape of a ``kid`` header value: a session kid, or a cluster kid (see :func:`cluster_kid`)."""
    return isinstance(value, str) and (bool(_KID.match(value)) or secret_id_of_kid(value) is not None)


def valid_secret_id(value: object) -> bool:
    """The shape of a cluster secret id."""
    return isinstance(value, str) and _SECRET_ID.fullmatch(value) is not None


def cluster_kid(secret_id: str) -> str:
    """The ``kid`` of tokens signed with the cluster secret ``secret_id``.

    ``"cluster"`` for the default id (the single-secret form, unchanged on the wire), else
    ``"cluster.<id>"``. Session kids are base64url and never contain a dot, so the two kinds cannot meet.
    """
    if not valid_secret_id(secret_id):
        raise ValueError(f"invalid cluster secret id {secret_id!r}")
    return CLUSTER_KID if secret_id == DEFAULT_SECRET_ID else _CLUSTER_KID_PREFIX + secret_id


def secret_id_of_kid(kid: object) -> str | None:
    """The cluster secret id a cluster ``kid`` names, or None when ``kid`` is not a (canonical) cluster kid."""
    if kid == CLUSTER_KID:
        return DEFAULT_SECRET_ID
    if not isinstance(kid, str) or not kid.startswith(_CLUSTER_KID_PREFIX):
        return None
    secret_id = kid[len(_CLUSTER_KID_PREFIX) :]
    if not valid_secret_id(secret_id) or secret_id == DEFAULT_SECRET_ID:
        return None  # "cluster.default" is not canonical: the default id is "cluster"
    return secret_id


def is_cluster_kid(kid: object) -> bool:
    """Whether ``kid`` marks a cluster-secret token (``cluster`` or ``cluster.<id>``)."""
    return secret_id_of_kid(kid) is not None


def bearer(token: str) -> str:
    """The ``Authorization`` header value for ``token``."""
    return "Bearer " + token


def parse_authorization(value: bytes | str | None) -> str:
    """Extract the JWT from ``Bearer <jwt>`` or ``Bearer: <jwt>``; raises missing/malformed/oversized."""
    if value is None:
        raise AuthError("missing")
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise AuthError("malformed") from None
    value = value.strip()
    if not value:
        raise AuthError("missing")
    scheme, _, rest = value.partition(" ")
    if scheme.lower() not in ("bearer", "bearer:"):
        raise AuthError("malformed")
    token = rest.strip()
    if len(token) > MAX_TOKEN_BYTES:
        raise AuthError("oversized")
    if not token or " " in token:
        raise AuthError("malformed")
    return token


def _path_only(path: bytes | str) -> str:
    if isinstance(path, bytes):
        path = path.decode("ascii", errors="replace")
    return path.split("?", 1)[0].split("#", 1)[0]


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AuthError("malformed")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float (PyJWT's own decoder allows them)
        raise AuthError("malformed") from None
    if not math.isfinite(number):
        raise AuthError("malformed")
    return number


@dataclass(frozen=True)
class VerifiedToken:
    """The claims of a token whose signature and claims were checked."""

    typ: str
    kid: str
    iss: str
    aud: str
    iat: float
    exp: float
    bh: str
    htm: str | None = None
    htu: str | None = None
    jti: str | None = None
    ctr: int | None = None
    rid: str | int | None = None
    cnf: str | None = None

    @property
    def request_id(self) -> str | int | None:
        """What a response to this request puts in ``rid``: the jti or the ctr."""
        return self.jti if self.jti is not None else self.ctr


@dataclass(frozen=True)
class SignedRequest:
    """A signed request: the header value to send and what its response must echo in ``rid``.

    ``bind(cnf)`` signs the same claims (same ``jti``/``ctr``, ``kid``, ``iat``) again with ``cnf`` added: the
    transport calls it once it knows the TLS session the request goes out on (W5); ``rid`` and ``kid``
    stay those of this object, so the response checks and the replay state do not change.
    """

    header_value: str
    kid: str
    rid: str | int
    peer_id: str
    bind: Callable[[str], str] | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return self.header_value


class PendingToken:
    """A token whose head verified; the body is still to be checked (see module docstring)."""

    def __init__(
        self, token: VerifiedToken, commit: Callable[[VerifiedToken], None] | None = None
    ) -> None:
        self.token = token
        self._commit = commit

    @property
    def iss(self) -> str:
        """The verified issuer, e.g. to pick per-peer limits before reading the body."""
        return self.token.iss

    def verify_body(self, body: bytes) -> VerifiedToken:
        """Check ``bh`` against ``body``, then record the jti/ctr (raises body_mismatch, replay, rate_limited)."""
        if not hmac.compare_digest(body_hash(body), self.token.bh):
            raise AuthError("body_mismatch")
        if self._commit is not None:
            self._commit(self.token)
        return self.token


def encode_token(key: bytes, typ: str, kid: str, claims: Mapping[str, Any]) -> str:
    """Sign ``claims`` with HS256 under the given ``typ`` and ``kid`` headers."""
    if typ not in TYPES:
        raise ValueError(f"unknown token type {typ!r}")
    token = _PYJWT.encode(dict(claims), key, algorithm=ALGORITHM, headers={"typ": typ, "kid": kid})
    if len(token) > MAX_TOKEN_BYTES:
        raise ValueError("token too large")
    return token


def base_claims(
    iss: str, aud: str, now: float, lifetime: float, body: bytes, cnf: str | None = None
) -> dict[str, Any]:
    """iss, aud, iat, exp, bh (and cnf when given): the claims every token carries."""
    iat = int(now)
    life = max(1, min(int(lifetime), MAX_LIFETIME))
    claims: dict[str, Any] = {"iss": iss, "aud": aud, "iat": iat, "exp": iat + life, "bh": body_hash(body)}
    if cnf is not None:
        claims["cnf"] = {CNF_EXPORTER: cnf}
    return claims


def binder(key: bytes, typ: str, kid: str, claims: Mapping[str, Any]) -> Callable[[str], str]:
    """``SignedRequest.bind``: the header value for ``claims`` with ``cnf`` set to the given value."""
    frozen = dict(claims)

    def bind(cnf: str) -> str:
        return bearer(encode_token(key, typ, kid, {**frozen, "cnf": {CNF_EXPORTER: cnf}}))

    return bind


def _json_segment(segment: str) -> dict[str, Any]:
    if not _SEGMENT.match(segment):
        raise AuthError("malformed")
    try:
        value = strictjson.loads(b64url_decode(segment))
    except ValueError:  # StrictJSONError is one; so is a bad base64 alphabet
        raise AuthError("malformed") from None
    if not isinstance(value, dict):
        raise AuthError("malformed")
    return value


def unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims WITHOUT checking anything: only to choose a key. Raises malformed/oversized."""
    if len(token) > MAX_TOKEN_BYTES:
        raise AuthError("oversized")
    parts = token.split(".")
    if len(parts) != 3:
        raise AuthError("malformed")
    return _json_segment(parts[0]), _json_segment(parts[1])


KeySelector = Callable[[Mapping[str, Any], Mapping[str, Any]], bytes]


def verify_token(
    token: str,
    *,
    key_for: KeySelector,
    accept_typs: frozenset[str],
    cluster: bool,
    audience: str | frozenset[str],
    now: float,
    leeway: float,
    issuer: str | None = None,
    method: str | None = None,
    path: bytes | str | None = None,
    counter: str | None = None,
    expect_cnf: str | None = None,
) -> VerifiedToken:
    """Check everything but the body; the order is format, alg, typ/kid, HMAC, then claims.

    ``key_for(header, unverified_claims)`` returns the HMAC key or raises AuthError (unknown_peer,
    unknown_key, ...). ``audience`` may be a set when the typ decides it (the caller re-checks).
    ``counter`` is "jti", "ctr" or None (responses, which carry ``rid`` instead).
    """
    header, unverified = unverified_parts(token)
    if header.get("alg") != ALGORITHM:
        raise AuthError("bad_alg")
    if not token.rsplit(".", 1)[1]:
        raise AuthError("malformed")  # an unsigned token
    if set(header) - _HEADER_FIELDS:
        raise AuthError("malformed")  # crit, jku, jwk, x5u...: never used, never honoured
    typ = header.get("typ")
    if typ not in accept_typs:
        raise AuthError("wrong_type")
    kid = header.get("kid")
    if not isinstance(kid, str) or not valid_kid(kid):
        raise AuthError("malformed")
    if is_cluster_kid(kid) != cluster:
        raise AuthError("wrong_type")  # cluster token on a session verifier, or the reverse
    key = key_for(header, unverified)
    try:
        claims = _PYJWT.decode(token, key, algorithms=[ALGORITHM], options=_DECODE_OPTIONS)
    except jwt.InvalidSignatureError:
        raise AuthError("bad_signature") from None
    except jwt.InvalidKeyError:
        raise AuthError("unknown_key") from None
    except jwt.PyJWTError:
        raise AuthError("malformed") from None
    return _check_claims(
        claims,
        typ=typ,
        kid=kid,
        audience=audience,
        now=now,
        leeway=leeway,
        issuer=issuer,
        method=method,
        path=path,
        counter=counter,
        expect_cnf=expect_cnf,
    )


def _check_claims(
    claims: Mapping[str, Any],
    *,
    typ: str,
    kid: str,
    audience: str | frozenset[str],
    now: float,
    leeway: float,
    issuer: str | None,
    method: str | None,
    path: bytes | str | None,
    counter: str | None,
    expect_cnf: str | None,
) -> VerifiedToken:
    aud = claims.get("aud")
    if not isinstance(aud, str):
        raise AuthError("malformed")
    if (aud != audience) if isinstance(audience, str) else (aud not in audience):
        raise AuthError("wrong_audience")
    iss = claims.get("iss")
    if not isinstance(iss, str) or not valid_node_id(iss):
        raise AuthError("wrong_issuer")
    if issuer is not None and iss != issuer:
        raise AuthError("wrong_issuer")
    if "iat" not in claims or "exp" not in claims:
        raise AuthError("malformed")
    iat = _number(claims["iat"])
    exp = _number(claims["exp"])
    if exp <= iat:
        raise AuthError("malformed")
    if exp - iat > MAX_LIFETIME:
        raise AuthError("lifetime_too_long")
    if iat > now + leeway:
        raise AuthError("clock_skew", skew=iat - now)
    if "nbf" in claims and _number(claims["nbf"]) > now + leeway:
        raise AuthError("clock_skew", skew=iat - now)
    if exp + leeway <= now:
        # Tokens are used within milliseconds of minting and live at most MAX_LIFETIME, so one this
        # far behind says the sender's clock is behind ours (issue 13): ``clock_skew``, with the skew.
        raise AuthError("clock_skew", skew=iat - now)
    bh = claims.get("bh")
    if not isinstance(bh, str) or not _BH.match(bh):
        raise AuthError("malformed")
    htm = claims.get("htm")
    htu = claims.get("htu")
    if method is not None:
        if not isinstance(htm, str):
            raise AuthError("malformed")
        if htm != method.upper():
            raise AuthError("wrong_method")
    if path is not None:
        if not isinstance(htu, str):
            raise AuthError("malformed")
        if htu != _path_only(path):
            raise AuthError("wrong_path")
    jti = claims.get("jti")
    ctr = claims.get("ctr")
    if counter == "jti" and not (isinstance(jti, str) and _JTI.match(jti)):
        raise AuthError("malformed")
    if counter == "ctr" and (
        isinstance(ctr, bool) or not isinstance(ctr, int) or not 0 <= ctr <= MAX_CTR
    ):
        raise AuthError("malformed")
    rid = claims.get("rid")
    if counter is None:
        if isinstance(rid, bool) or not isinstance(rid, (str, int)):
            raise AuthError("malformed")
    cnf_value: str | None = None
    cnf = claims.get("cnf")
    if cnf is not None:
        if not isinstance(cnf, dict) or not isinstance(cnf.get(CNF_EXPORTER), str):
            raise AuthError("malformed")
        cnf_value = cnf[CNF_EXPORTER]
    if expect_cnf is not None and (
        cnf_value is None or not hmac.compare_digest(cnf_value.encode(), expect_cnf.encode())
    ):
        raise AuthError("channel_binding")
    return VerifiedToken(
        typ=typ,
        kid=kid,
        iss=iss,
        aud=aud,
        iat=iat,
        exp=exp,
        bh=bh,
        htm=htm if isinstance(htm, str) else None,
        htu=htu if isinstance(htu, str) else None,
        jti=jti if counter == "jti" else None,
        ctr=ctr if counter == "ctr" else None,
        rid=rid if counter is None else None,
        cnf=cnf_value,
    )


def check_rid(token: VerifiedToken, expected: str | int) -> None:
    """A response must echo its request's jti/ctr in ``rid`` (W12); raises wrong_request."""
    if type(token.rid) is not type(expected) or token.rid != expected:
        raise AuthError("wrong_request")
