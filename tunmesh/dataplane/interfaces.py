"""What the data plane needs from the packages written alongside it.

Each is a small structural ``Protocol`` so that the data plane codes against the contracts in
docs/internals.md without importing the other packages, and its tests use fakes.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any, Protocol

from twisted.logger import LogLevel


class CounterChild(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class GaugeChild(Protocol):
    def set(self, value: float) -> None: ...

    def inc(self, amount: float = 1) -> None: ...

    def dec(self, amount: float = 1) -> None: ...


class LabelledCounter(CounterChild, Protocol):
    def labels(self, *args: str, **kwargs: str) -> CounterChild: ...


class LabelledGauge(GaugeChild, Protocol):
    def labels(self, *args: str, **kwargs: str) -> GaugeChild: ...


class MetricsLike(Protocol):
    """``tunmesh.metrics.Metrics`` (create-or-get collectors; the ``tunmesh_`` prefix is added)."""

    def counter(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> Any: ...

    def gauge(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> Any: ...

    def histogram(
        self, name: str, doc: str, labelnames: Sequence[str] = (), buckets: Iterable[float] = ...
    ) -> Any: ...


class RateLimitedLogLike(Protocol):
    """``tunmesh.logutil.RateLimitedLog``: a few lines per key, then one summary per period.

    ``emit`` returns whether a line was written.
    """

    def emit(self, key: Hashable, level: LogLevel, format: str, **fields: Any) -> bool: ...


class Session(Protocol):
    """One direction's session (``tunmesh.auth.sessions``): its kid and derived frame key."""

    kid: str
    frame_key: bytes


class SessionsLike(Protocol):
    """``tunmesh.auth.sessions.SessionStore`` as the data plane uses it."""

    def outbound(self, peer_id: str) -> Session | None: ...

    def inbound(self, peer_id: str, kid: str) -> Session | None: ...


class SignedHello(Protocol):
    """``tunmesh.auth.tokens.SignedRequest``: ``header_value`` is ``Bearer <jwt>``."""

    header_value: str
    kid: str


class LinkHelloClaims(Protocol):
    """The verified claims of a ``tm-link+jwt`` HELLO token."""

    iss: str
    kid: str


class LinkAuthorityLike(Protocol):
    """``tunmesh.auth.sessions.SessionAuthority``: mints and checks link HELLO tokens.

    ``body`` is bound into the token (``bh`` claim): the HELLO's fixed fields, so the token
    cannot be moved to another connection.  ``verify_link_hello`` raises ``AuthError(reason)``.
    """

    def sign_link_hello(self, peer_id: str, body: bytes = b"") -> SignedHello: ...

    def verify_link_hello(
        self, peer_id: str | None, token: str, body: bytes = b""
    ) -> LinkHelloClaims: ...


class TunLike(Protocol):
    """The TUN device (``tunmesh.tun``)."""

    def fileno(self) -> int: ...

    def read_batch(self, max_packets: int) -> list[bytes]: ...

    def write(self, packet: bytes) -> object: ...

    def close(self) -> None: ...
