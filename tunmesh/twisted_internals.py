"""Every private Twisted name tunmesh uses, named once, each behind a function with a public fallback.

tunmesh uses Twisted's public API, with a few exceptions where a public path costs throughput or
latency (the packet link's TLS write path) or is not offered at all (the HTTP request line before
the body, which the hardened server needs to refuse early).  Each exception is listed in
:data:`INTERNALS` and reached only through a function of this module.  Each function takes the
fast, private path when the name is there and a documented public (slower, or more conservative)
path when it is not, so a Twisted release that renames one degrades speed, never correctness.

``setup.py`` pins the Twisted range these names were checked on; ``tests/unit/test_twisted_internals.py``
checks that each still exists on the installed Twisted (and that the fallbacks work without them),
and ``tox -e newest-twisted`` runs the unit suite on the newest release.  Twisted 23.10 shows why:
it added ``_AggregateSmallWrites`` under ``TLSMemoryBIOProtocol.write``, which delays small writes
by a reactor iteration (see :func:`ordered_write`).  At start the node logs once whether the fast
path is active (:func:`log_status`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.logger import Logger

import twisted

#: The Twisted releases the names below were checked on (``setup.py`` pins the same range).
TESTED_RANGE = ">=26.4,<27"


# The names, each spelled once (tests rename one to play a Twisted release without it).
WRITE = "_write"
AGGREGATOR = "_aggregator"
APP_SEND_BUFFER = "_appSendBuffer"
LOST_TLS = "_lostTLSConnection"
TEMP_DATA_BUFFER = "_tempDataBuffer"
DATA_BUFFER = "dataBuffer"
OFFSET = "offset"
COMMAND = "_command"
PATH = "_path"
VERSION = "_version"
SEND_100_CONTINUE = "_send100Continue"
DISCONNECTED = "_disconnected"
IDNA_MODULE = "twisted.internet._idna"
#: the ``name`` of an :class:`Internal` that is a whole module
MODULE = "(module)"

#: The log namespace of ``twisted.application.internet.ClientService`` (the private module it lives in):
#: it logs every connection attempt of every packet link ("Scheduling retry 1 ...") at INFO, so the node's
#: observer holds that namespace at WARN unless the node logs at DEBUG (``tunmesh.logsetup``).
CLIENT_SERVICE_LOG_NAMESPACE = "twisted.application._client_service"


@dataclass(frozen=True)
class Internal:
    """One private Twisted name: where it lives, what tunmesh uses it for, what it does without it."""

    owner: str
    name: str
    use: str
    fallback: str


#: The private names, by owner.  ``dataBuffer`` and ``offset`` carry no underscore but are
#: undocumented buffer state of ``FileDescriptor``; they are listed for the same reason.
INTERNALS: Sequence[Internal] = (
    Internal(
        "twisted.protocols.tls.TLSMemoryBIOProtocol", WRITE,
        "write a batch of link frames to OpenSSL at once, not one reactor iteration later",
        "transport.write (ordered, each small write delayed to the next reactor iteration)",
    ),
    Internal(
        "twisted.protocols.tls.BufferingTLSTransport", AGGREGATOR,
        "push out small writes held back before writing around them (a REKEY must precede its DATA)",
        "with no aggregator known, nothing is written around it: transport.write only",
    ),
    Internal(
        "twisted.protocols.tls.TLSMemoryBIOProtocol", APP_SEND_BUFFER,
        "the direct TLS writer only runs while Twisted holds no cleartext (stream order)",
        "the direct writer is off; frames go through ordered_write",
    ),
    Internal(
        "twisted.protocols.tls.TLSMemoryBIOProtocol", LOST_TLS,
        "the direct TLS writer stops once the TLS connection is closing",
        "the direct writer is off; frames go through ordered_write",
    ),
    Internal(
        "twisted.internet.abstract.FileDescriptor", TEMP_DATA_BUFFER,
        "send TLS bytes on the socket at once when Twisted has nothing queued before them",
        "the bytes go through transport.write (sent on the next reactor iteration)",
    ),
    Internal(
        "twisted.internet.abstract.FileDescriptor", DATA_BUFFER,
        "as _tempDataBuffer: whether bytes are queued before ours",
        "as _tempDataBuffer",
    ),
    Internal(
        "twisted.internet.abstract.FileDescriptor", OFFSET,
        "as _tempDataBuffer: how much of dataBuffer was sent",
        "as _tempDataBuffer",
    ),
    Internal(
        "twisted.web.http.HTTPChannel", COMMAND,
        "the request method, for route limits and pre-auth checks before the body is read",
        "route unknown before the body: the default body limit, no pre-auth (handlers still authenticate)",
    ),
    Internal(
        "twisted.web.http.HTTPChannel", PATH,
        "the request target, as _command",
        "as _command",
    ),
    Internal(
        "twisted.web.http.HTTPChannel", VERSION,
        "keep-alive and Expect: 100-continue decisions when refusing early",
        "treated as HTTP/1.0: the connection closes after the response, no 100 Continue",
    ),
    Internal(
        "twisted.web.http.HTTPChannel", SEND_100_CONTINUE,
        "answer Expect: 100-continue once the request passed its early checks",
        "the same status line written on the transport",
    ),
    Internal(
        "twisted.web.http.Request", DISCONNECTED,
        "do not answer a request whose connection is gone",
        "request.channel is None (Request.connectionLost clears it too)",
    ),
    Internal(
        IDNA_MODULE, MODULE,
        "imported before the privilege drop: Twisted imports it lazily to encode host names",
        "not preloaded (a Twisted without it does not import it later either)",
    ),
)

_MISSING = object()


# --- the packet link's TLS write path --------------------------------------------------------


def flush_small_writes(tls: Any) -> bool:
    """Push out what Twisted's small-write aggregator holds, so bytes written around it stay in
    order; ``False`` when no aggregator is known (then nothing may be written around ``write``)."""
    aggregator = getattr(tls, AGGREGATOR, None)
    if aggregator is None:
        return False
    aggregator.flush()
    return True


def ordered_write(tls: Any) -> Callable[[bytes], None]:
    """The fastest write to ``tls`` that keeps the stream in order.

    Twisted's TLS transport aggregates small ``write`` calls and flushes them on the next reactor
    iteration (a copy of every frame plus one loop of latency per hop); its ``_write`` goes to
    OpenSSL at once.  Link frames are batched already, so they use ``_write`` -- after what the
    aggregator holds is pushed out first, or a REKEY written through it would reach the peer after
    the DATA it keys.  Fallback (either name missing): ``tls.write``, ordered and one loop slower.
    """
    immediate = getattr(tls, WRITE, None)
    if immediate is None or not flush_small_writes(tls):
        return tls.write  # type: ignore[no-any-return]
    return immediate  # type: ignore[no-any-return]


def immediate_write(tls: Any) -> Callable[[bytes], None] | None:
    """``tls._write`` (encrypt and hand to TCP now, with Twisted's error handling), or ``None``."""
    return getattr(tls, WRITE, None)


def tls_cleartext_idle(tls: Any) -> bool:
    """Whether ``tls`` holds no cleartext of its own and is not closing: bytes written straight to
    its OpenSSL connection then keep the stream order.  Fallback (a name missing): ``False``."""
    pending = getattr(tls, APP_SEND_BUFFER, _MISSING)
    lost = getattr(tls, LOST_TLS, _MISSING)
    if pending is _MISSING or lost is _MISSING:
        return False
    return not (pending or lost or tls.disconnecting)


def tcp_send_idle(tcp: Any) -> bool:
    """Whether the TCP transport has nothing queued for its socket (bytes sent on the socket now
    keep the stream order).  Fallback (a name missing): ``False``, so callers use ``tcp.write``."""
    temp = getattr(tcp, TEMP_DATA_BUFFER, _MISSING)
    buffered = getattr(tcp, DATA_BUFFER, _MISSING)
    offset = getattr(tcp, OFFSET, _MISSING)
    if temp is _MISSING or buffered is _MISSING or offset is _MISSING:
        return False
    return bool(tcp.connected and not tcp.disconnecting and not temp and offset == len(buffered))  # type: ignore[arg-type]


def direct_write_possible(tls: Any) -> bool:
    """Whether ``tls`` (and the TCP transport under it) has every name the direct TLS writer needs."""
    tcp = getattr(tls, "transport", None)
    if tcp is None or immediate_write(tls) is None:
        return False
    if not all(hasattr(tls, n) for n in (APP_SEND_BUFFER, LOST_TLS, AGGREGATOR, "getHandle")):
        return False
    return all(hasattr(tcp, n) for n in (TEMP_DATA_BUFFER, DATA_BUFFER, OFFSET, "getHandle"))


# --- the HTTP request line before the body ---------------------------------------------------


def request_line(channel: Any) -> tuple[bytes, bytes, bytes] | None:
    """The parsed request line (method, target, version) of ``channel``'s current request, before
    its body is read; ``None`` when Twisted keeps it elsewhere (see :data:`INTERNALS`)."""
    command = getattr(channel, COMMAND, None)
    path = getattr(channel, PATH, None)
    version = getattr(channel, VERSION, None)
    if not (isinstance(command, bytes) and isinstance(path, bytes) and isinstance(version, bytes)):
        return None
    return command, path, version


def send_100_continue(channel: Any) -> None:
    """Answer ``Expect: 100-continue`` (fallback: the same status line written on the transport)."""
    send = getattr(channel, SEND_100_CONTINUE, None)
    if send is not None:
        send()
    else:
        channel.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")


def request_disconnected(request: Any) -> bool:
    """Whether ``request``'s connection is gone (fallback: Twisted clears ``channel`` then too)."""
    flag = getattr(request, DISCONNECTED, None)
    if isinstance(flag, bool):
        return flag
    return request.channel is None


# --- modules ---------------------------------------------------------------------------------


def private_modules(names: Sequence[str] = (IDNA_MODULE,)) -> tuple[str, ...]:
    """Those of the private Twisted modules tunmesh preloads that the installed Twisted has."""
    return tuple(n for n in names if importlib.util.find_spec(n) is not None)


# --- the check -------------------------------------------------------------------------------


class _NullTransport:
    """Takes and drops whatever the sample protocols write: enough of ``ITransport`` for their
    ``makeConnection``. Not ``twisted.internet.testing.StringTransport``: that module imports trial (and
    stdlib ``unittest``, ``doctest``), ~2 MB a running node would keep for this one check."""

    disconnecting = False

    def write(self, data: bytes) -> None:
        pass

    def writeSequence(self, data: Any) -> None:  # noqa: N802 (ITransport)
        pass

    def loseConnection(self) -> None:  # noqa: N802
        self.disconnecting = True

    def abortConnection(self) -> None:  # noqa: N802
        self.disconnecting = True

    def getPeer(self) -> Any:  # noqa: N802
        return IPv4Address("TCP", "192.0.2.1", 1)

    def getHost(self) -> Any:  # noqa: N802
        return IPv4Address("TCP", "192.0.2.2", 2)

    def registerProducer(self, producer: Any, streaming: bool) -> None:  # noqa: N802
        pass

    def unregisterProducer(self) -> None:  # noqa: N802
        pass

    def pauseProducing(self) -> None:  # noqa: N802
        pass

    def resumeProducing(self) -> None:  # noqa: N802
        pass

    def stopProducing(self) -> None:  # noqa: N802
        pass


def _samples() -> dict[str, Any]:
    """Fresh instances of the owners, in the state where the names are set (cheap, no I/O)."""
    from twisted.internet import abstract
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.ssl import CertificateOptions
    from twisted.internet.task import Clock
    from twisted.protocols import tls
    from twisted.web import http

    clock = Clock()
    factory = tls.TLSMemoryBIOFactory(CertificateOptions(), True, Factory.forProtocol(Protocol), clock)
    tls_proto = factory.buildProtocol(None)
    tls_proto.makeConnection(_NullTransport())
    channel = http.HTTPChannel()
    channel.callLater = clock.callLater  # type: ignore[method-assign, assignment]
    channel.makeConnection(_NullTransport())
    channel.dataReceived(b"GET / HTTP/1.1\r\n")
    request = channel.requests[-1] if channel.requests else http.Request(channel)
    samples = {
        "twisted.protocols.tls.TLSMemoryBIOProtocol": tls_proto,
        "twisted.protocols.tls.BufferingTLSTransport": tls_proto,
        "twisted.internet.abstract.FileDescriptor": abstract.FileDescriptor(clock),  # type: ignore[arg-type]
        "twisted.web.http.HTTPChannel": channel,
        "twisted.web.http.Request": request,
    }
    channel.connectionLost(Exception("probe done"))
    return samples


def missing(internals: Sequence[Internal] = INTERNALS) -> list[Internal]:
    """The names of ``internals`` the installed Twisted does not have."""
    samples = _samples()
    out = []
    for internal in internals:
        if internal.name == MODULE:
            present = importlib.util.find_spec(internal.owner) is not None
        else:
            owner = samples.get(internal.owner)
            present = owner is not None and hasattr(owner, internal.name)
        if not present:
            out.append(internal)
    return out


@cache
def _missing_internals() -> tuple[Internal, ...]:
    """:func:`missing` of :data:`INTERNALS`, checked once: before the privilege drop
    (``tunmesh.preload``), since the check imports Twisted modules the node does not otherwise use."""
    return tuple(missing())


def fast_path_active() -> bool:
    """Whether every name of :data:`INTERNALS` is on the installed Twisted (checked once)."""
    return not _missing_internals()


def log_status(log: Logger, internals: Sequence[Internal] = INTERNALS) -> None:
    """One INFO line: the Twisted version and whether tunmesh runs its fast paths on it."""
    gone = list(_missing_internals()) if internals is INTERNALS else missing(internals)
    if not gone:
        log.info(
            "Twisted {twisted_version}: fast path active (all {count} private names present; tested range {tested})",
            twisted_version=twisted.__version__,
            count=len(internals),
            tested=TESTED_RANGE,
        )
    else:
        log.info(
            "Twisted {twisted_version}: fast path OFF, public fallbacks in use for {names} (tested range {tested})",
            twisted_version=twisted.__version__,
            names=", ".join(f"{i.owner.rsplit('.', 1)[-1]}.{i.name}" for i in gone),
            tested=TESTED_RANGE,
        )
