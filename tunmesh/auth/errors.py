"""Authentication errors with a closed set of reasons.

One boundary (the API / data plane) turns an :exc:`AuthError` into an HTTP status and a counted reason
(``tunmesh_auth_failures_total{reason}``). The reason is a short label from ``REASONS``; it never contains
the token, a claim value or a secret, so it is safe for logs and metric labels.
"""

from __future__ import annotations

from tunmesh.errors import StatusError

#: Every reason an :exc:`AuthError` may carry. See docs/security.md for what each one means.
REASONS: frozenset[str] = frozenset(
    {
        "missing",  # no Authorization header
        "malformed",  # not "Bearer <jwt>", bad base64/JSON, missing or mistyped claim
        "oversized",  # token longer than MAX_TOKEN_BYTES
        "bad_alg",  # alg is not HS256 (none, HS512, RS256, ...)
        "wrong_type",  # typ or kid kind not accepted here (cluster vs session, request vs response)
        "bad_signature",  # HMAC does not verify with the selected key
        "wrong_audience",  # aud is not this node (or "bootstrap" for bootstrap tokens)
        "wrong_issuer",  # iss not the expected peer / not a valid node id
        "wrong_method",  # htm differs from the HTTP method
        "wrong_path",  # htu differs from the request path
        "wrong_request",  # a response whose rid is not the request's jti/ctr
        "expired",  # exp + leeway is in the past
        "clock_skew",  # iat (or nbf) is further in the future than the leeway
        "lifetime_too_long",  # exp - iat > MAX_LIFETIME
        "replay",  # jti already seen, or ctr already seen / older than the window
        "unknown_key",  # kid is not a current or not-yet-retired previous session key
        "unknown_peer",  # no session at all for this peer
        "session_expired",  # the inbound session outlived max_age + validity + leeway
        "body_mismatch",  # bh differs from SHA-256 of the received body
        "channel_binding",  # cnf is not this side's TLS exporter value of the connection (a relay), or a bad proof
        "rate_limited",  # jti cache full or init_session too frequent (HTTP 429)
    }
)

#: Reasons that map to 429 instead of 401.
_STATUS = {"rate_limited": 429}


class AuthError(StatusError):
    """A token or session was refused; ``reason`` is one of ``REASONS``; ``status`` is 429 when rate
    limited, otherwise 401.

    ``retry_after`` (seconds) is set for ``rate_limited`` so the boundary can send ``Retry-After``.
    """

    def __init__(
        self,
        reason: str,
        retry_after: float | None = None,
        skew: float | None = None,
        secret_id: str | None = None,
    ) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown auth failure reason {reason!r}")
        super().__init__(reason)
        self.reason = reason
        self.status = _STATUS.get(reason, 401)
        self.retry_after = retry_after
        #: for time refusals: the sender's clock minus ours, as its token showed it (``iat - now``)
        self.skew = skew
        #: for ``unknown_key`` on a cluster token: the (well-formed) cluster secret id it named
        self.secret_id = secret_id

    def __repr__(self) -> str:
        return f"AuthError({self.reason!r})"


class KexError(StatusError):
    """An init_session body or key is unusable (HTTP 400). ``reason`` is a short label."""

    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
