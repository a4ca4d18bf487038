"""The contracts between tunmesh's packages, declared once.

A component names its dependencies with these types, never ``Any``, so a reader sees what it may call
and a test knows what a fake must provide. Each is a structural :class:`typing.Protocol`: the real
class does not inherit from it, and :mod:`tunmesh.testing` ships a checked fake for each (mypy checks
the fakes against these protocols, and ``tests/unit/test_testing.py`` compares their signatures with
the real classes at run time).

Where Twisted already declares the contract as a zope ``Interface``, that interface is the contract
and is not declared again here:

- timers: :class:`twisted.internet.interfaces.IReactorTime` (``callLater``, ``seconds``; tests pass a
  :class:`twisted.internet.task.Clock`);
- the reactor's descriptors: :class:`twisted.internet.interfaces.IReactorFDSet`.

The contracts:

- :class:`SecondsClock`: a clock that is only read (wall time for tokens, ``WallClock``);
- :class:`MetricsLike` (with :class:`CounterLike`, :class:`GaugeLike`, :class:`HistogramLike`):
  :class:`tunmesh.metrics.Metrics`;
- :class:`RateLimitedLogLike`: :class:`tunmesh.logutil.RateLimitedLog`;
- :class:`PacketDevice`: the TUN device, :class:`tunmesh.tun.device.TunDevice`;
- :class:`SessionsLike`: :class:`tunmesh.auth.sessions.SessionStore` as the data plane uses it, and
  :class:`LinkAuthorityLike`: its :class:`~tunmesh.auth.sessions.SessionAuthority`;
- :class:`TreqLike`: the control plane's HTTP client (treq);
- :class:`PeerObserver`: what follows membership (the data plane, ``PeerInfo``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from twisted.logger import LogLevel

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from tunmesh.mesh.structs import IPNetwork
    from tunmesh.tun.base import TunStats

__all__ = [
    "CounterLike",
    "GaugeLike",
    "HistogramLike",
    "LinkAuthorityLike",
    "LinkHelloClaims",
    "MetricsLike",
    "PacketDevice",
    "PeerObserver",
    "RateLimitedLogLike",
    "SecondsClock",
    "Session",
    "SessionObserver",
    "SessionsLike",
    "SignedHello",
    "TreqLike",
]


# -- clocks ------------------------------------------------------------------------------------------


class SecondsClock(Protocol):
    """Anything with ``seconds()``: an ``IReactorTime``, :class:`tunmesh.clocks.WallClock`, or a
    monotonic adapter. For clocks that are read, never scheduled on (for that, ``IReactorTime``)."""

    def seconds(self) -> float: ...


# -- metrics -----------------------------------------------------------------------------------------


class CounterLike(Protocol):
    """A ``prometheus_client.Counter`` (or one labelled child of it)."""

    def inc(self, amount: float = 1) -> None: ...

    def labels(self, *labelvalues: str, **labelkwargs: str) -> CounterLike: ...

    def remove(self, *labelvalues: str) -> None: ...


class GaugeLike(Protocol):
    """A ``prometheus_client.Gauge`` (or one labelled child of it)."""

    def inc(self, amount: float = 1) -> None: ...

    def dec(self, amount: float = 1) -> None: ...

    def set(self, value: float) -> None: ...

    def set_function(self, f: Callable[[], float]) -> None: ...

    def labels(self, *labelvalues: str, **labelkwargs: str) -> GaugeLike: ...

    def remove(self, *labelvalues: str) -> None: ...


class HistogramLike(Protocol):
    """A ``prometheus_client.Histogram`` (or one labelled child of it)."""

    def observe(self, amount: float) -> None: ...

    def labels(self, *labelvalues: str, **labelkwargs: str) -> HistogramLike: ...

    def remove(self, *labelvalues: str) -> None: ...


class MetricsLike(Protocol):
    """:class:`tunmesh.metrics.Metrics`: create-or-get collectors in the node's registry (give the name
    without the ``tunmesh_`` prefix; the first HELP stays)."""

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> CounterLike: ...

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> GaugeLike: ...

    def histogram(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = ...,
    ) -> HistogramLike: ...


# -- logging -----------------------------------------------------------------------------------------


class RateLimitedLogLike(Protocol):
    """:class:`tunmesh.logutil.RateLimitedLog`: a few lines per key, then one summary per period.

    ``emit`` returns whether a line was written.
    """

    def emit(self, key: Hashable, level: LogLevel, format: str, **fields: Any) -> bool: ...


# -- the TUN device ----------------------------------------------------------------------------------


@runtime_checkable
class PacketDevice(Protocol):
    """The TUN device as the data plane uses it: :class:`~tunmesh.tun.device.TunDevice`, and
    :class:`~tunmesh.testing.FakeTun` in tests.

    ``read_batch`` drains up to ``max_packets`` packets without blocking (raises ``TunClosedError``, an
    ``OSError``, once the device is gone); ``write``/``write_batch`` never block and count what the
    kernel refuses in ``stats``. With ``offload_active`` every packet starts with a ``vnet_hdr_len``-byte
    virtio header.
    """

    name: str
    mtu: int
    offload_active: bool
    vnet_hdr_len: int
    stats: TunStats

    def fileno(self) -> int: ...

    def read_batch(self, max_packets: int = ..., max_bytes: int = ...) -> list[bytes]: ...

    def write(self, packet: bytes) -> bool: ...

    def write_batch(self, packets: Iterable[bytes]) -> tuple[int, int]: ...

    def close(self) -> None: ...

    @property
    def closed(self) -> bool: ...


# -- sessions ----------------------------------------------------------------------------------------


class Session(Protocol):
    """One direction's session (``tunmesh.auth.sessions``): its kid and derived frame key."""

    @property
    def kid(self) -> str: ...

    @property
    def frame_key(self) -> bytes: ...


#: ``observer(peer_id, direction, kid)``: a session was installed (``kid``) or forgotten (``None``).
SessionObserver = Callable[[str, str, str | None], None]


class SessionsLike(Protocol):
    """:class:`tunmesh.auth.sessions.SessionStore` as the data plane uses it."""

    def outbound(self, peer_id: str) -> Session | None: ...

    def inbound(self, peer_id: str, kid: str) -> Session | None: ...

    def add_observer(self, observer: SessionObserver) -> None: ...


class SignedHello(Protocol):
    """``tunmesh.auth.tokens.SignedRequest``: ``header_value`` is ``Bearer <jwt>``."""

    @property
    def header_value(self) -> str: ...

    @property
    def kid(self) -> str: ...


class LinkHelloClaims(Protocol):
    """The verified claims of a ``tm-link+jwt`` HELLO token."""

    @property
    def iss(self) -> str: ...

    @property
    def kid(self) -> str: ...


class LinkAuthorityLike(Protocol):
    """:class:`tunmesh.auth.sessions.SessionAuthority`: mints and checks link HELLO tokens.

    ``body`` is bound into the token (``bh`` claim): the HELLO's fixed fields, so the token
    cannot be moved to another connection.  ``verify_link_hello`` raises ``AuthError(reason)``.
    """

    def sign_link_hello(self, peer_id: str, body: bytes = b"") -> SignedHello: ...

    def verify_link_hello(self, peer_id: str | None, token: str, body: bytes = b"") -> LinkHelloClaims: ...


# -- the control plane's HTTP client ----------------------------------------------------------------


class TreqLike(Protocol):
    """The part of the treq API the mesh client uses: ``treq.client.HTTPClient``, ``treq.testing.StubTreq``,
    or :class:`tunmesh.testing.FakeNetwork`."""

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]: ...

    def collect(self, response: Any, collector: Any) -> Deferred[None]: ...


# -- membership --------------------------------------------------------------------------------------


class PeerObserver(Protocol):
    """What follows membership (:meth:`tunmesh.mesh.membership.Membership.add_observer`): the data
    plane routes and links a peer, ``PeerInfo`` labels its series."""

    def peer_up(self, peer_id: str, url: str, cidrs: Sequence[IPNetwork]) -> None: ...

    def peer_down(self, peer_id: str) -> None: ...
