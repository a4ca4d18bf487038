"""Fakes of tunmesh's seams, for tests of tunmesh and of code built on it.

Each fake provides one contract of :mod:`tunmesh.interfaces` (mypy checks that structurally;
``tests/unit/test_testing.py`` compares the signatures with the real classes, so a fake cannot drift
from what it stands in for) and adds what a test needs to look inside:

- :class:`FakeTun`: a :class:`~tunmesh.interfaces.PacketDevice` over a ``SOCK_SEQPACKET`` socketpair; the
  test plays the kernel (:meth:`FakeTun.inject`, :meth:`FakeTun.take_written`);
- :class:`FakeMetrics`: a :class:`~tunmesh.interfaces.MetricsLike` whose values tests read
  (:meth:`FakeMetrics.value`, :meth:`FakeMetrics.drops`);
- :class:`FakeRateLimitedLog`: a :class:`~tunmesh.interfaces.RateLimitedLogLike` that records every line;
- :class:`FakeNetwork`: the control plane's HTTP client (:class:`~tunmesh.interfaces.TreqLike`) over
  in-memory resources, by URL, with hosts that refuse or never answer (``treq.testing.StubTreq``
  underneath), and :func:`stub_treq`, a typed ``StubTreq``;
- :class:`RecordingObserver`: a :class:`~tunmesh.interfaces.PeerObserver` that keeps the routes, as the
  data plane would;
- :class:`SteppedWall`: a :class:`~tunmesh.interfaces.SecondsClock` that is a ``Clock`` plus the steps
  its host made.

Timers are faked with Twisted's own :class:`twisted.internet.task.Clock`.
"""

from __future__ import annotations

import heapq
import itertools
import socket
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from tunmesh.interfaces import TreqLike
from tunmesh.mesh.structs import IPNetwork
from tunmesh.tun.base import FdPacketIO, TunStats
from tunmesh.tun.vnet import VNET_HDR_LEN

__all__ = [
    "FakeCollector",
    "FakeMetrics",
    "FakeNetwork",
    "FakeRateLimitedLog",
    "FakeTun",
    "DirectExchange",
    "HeapClock",
    "MemoryResponse",
    "RecordingObserver",
    "SteppedWall",
    "InMemoryTreq",
    "host_key",
    "stub_treq",
]


# -- the TUN device ----------------------------------------------------------------------------------


class FakeTun(FdPacketIO):
    """An in-memory TUN: a ``SOCK_SEQPACKET`` socketpair keeps packet boundaries, and its descriptor
    works with the reactor's ``addReader`` just like the real device's.

    Same interface as :class:`~tunmesh.tun.device.TunDevice`. The test plays the kernel's side:
    :meth:`inject` is "the kernel routed a packet into the TUN", :meth:`take_written` is "packets the node
    wrote to the TUN"."""

    def __init__(
        self, name: str = "faketun", mtu: int = 1500, offload_active: bool = False, sndbuf: int | None = None
    ) -> None:
        self._app, self._kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if sndbuf is not None:
            self._app.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self._app.setblocking(False)
        self._kernel.setblocking(False)
        self._fd = self._app.fileno()
        self.name = name
        self.mtu = mtu
        self.offload_active = offload_active
        self.vnet_hdr_len = VNET_HDR_LEN if offload_active else 0
        self.read_size = 65535 + VNET_HDR_LEN if offload_active else mtu
        self.stats = TunStats()

    def inject(self, packet: bytes) -> None:
        """Queue a packet for the node to read (raises ``BlockingIOError`` when the buffer is full)."""
        self._kernel.send(packet)

    def take_written(self) -> list[bytes]:
        """Everything written to the device since the last call, in order."""
        out = []
        while True:
            try:
                out.append(self._kernel.recv(65535 + VNET_HDR_LEN))
            except BlockingIOError:
                return out

    def close(self) -> None:
        """Close both ends."""
        if self._fd >= 0:
            self._fd = -1
            self._app.close()
            self._kernel.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def kernel_fileno(self) -> int:
        """The other end, for tests that want to poll it."""
        return self._kernel.fileno()


# -- metrics -----------------------------------------------------------------------------------------


class FakeChild:
    """One series: ``value`` (counter, gauge) and every ``observed`` value (histogram)."""

    def __init__(self) -> None:
        self.value = 0.0
        self.observed: list[float] = []
        self.function: Callable[[], float] | None = None

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value

    def set_function(self, f: Callable[[], float]) -> None:
        self.function = f

    def observe(self, amount: float) -> None:
        self.observed.append(amount)


class FakeCollector(FakeChild):
    """A counter, gauge or histogram, with its labelled ``children``."""

    def __init__(self, labelnames: tuple[str, ...]) -> None:
        super().__init__()
        self.labelnames = labelnames
        self.children: dict[tuple[str, ...], FakeCollector] = {}

    def labels(self, *labelvalues: str, **labelkwargs: str) -> FakeCollector:
        key = tuple(labelvalues) if labelvalues else tuple(labelkwargs[n] for n in self.labelnames)
        assert len(key) == len(self.labelnames), (key, self.labelnames)
        return self.children.setdefault(key, FakeCollector(()))

    def remove(self, *labelvalues: str) -> None:
        del self.children[tuple(labelvalues)]


class FakeMetrics:
    """Create-or-get collectors like :class:`tunmesh.metrics.Metrics`; values readable by tests."""

    def __init__(self) -> None:
        self.collectors: dict[str, FakeCollector] = {}

    def _get(self, name: str, labelnames: Sequence[str]) -> FakeCollector:
        c = self.collectors.get(name)
        if c is None:
            c = self.collectors[name] = FakeCollector(tuple(labelnames))
        assert c.labelnames == tuple(labelnames)
        return c

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> FakeCollector:
        return self._get(name, labelnames)

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> FakeCollector:
        return self._get(name, labelnames)

    def histogram(
        self, name: str, documentation: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = ()
    ) -> FakeCollector:
        return self._get(name, labelnames)

    def value(self, name: str, *labels: str) -> float:
        """The value of ``name`` (of its child with ``labels``); 0 when it was never touched."""
        c = self.collectors.get(name)
        if c is None:
            return 0.0
        if not labels:
            return c.function() if c.function is not None else c.value
        child = c.children.get(tuple(labels))
        return child.value if child is not None else 0.0

    def drops(self) -> dict[str, float]:
        """``dropped_packets_total`` by reason, the reasons counted at least once."""
        c = self.collectors.get("dropped_packets_total")
        if c is None:
            return {}
        return {k[0]: v.value for k, v in c.children.items() if v.value}


# -- logging -----------------------------------------------------------------------------------------


class FakeRateLimitedLog:
    """Writes every line: ``events`` are ``(key, format, fields)``, ``levels`` their levels."""

    def __init__(self) -> None:
        self.events: list[tuple[Hashable, str, dict[str, Any]]] = []
        self.levels: list[LogLevel] = []

    def emit(self, key: Hashable, level: LogLevel, format: str, **fields: Any) -> bool:
        self.events.append((key, format, fields))
        self.levels.append(level)
        return True


# -- the control plane's network ---------------------------------------------------------------------


class InMemoryTreq(TreqLike, Protocol):
    """``treq.testing.StubTreq`` as tests use it: it sets treq's functions as attributes when built,
    which a type checker cannot see, so :func:`stub_treq` names them."""

    def content(self, response: Any) -> Deferred[bytes]: ...

    def flush(self) -> None: ...


def stub_treq(resource: IResource) -> InMemoryTreq:
    """A ``StubTreq`` over ``resource``, typed (see :class:`InMemoryTreq`)."""
    return cast(InMemoryTreq, StubTreq(resource))


# -- the control plane's network, by URL ---------------------------------------------------------------------


def host_key(url: str) -> str:
    """``host:port`` of a URL (port 443 when absent): how :class:`FakeNetwork` finds its target."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 443}"


class _Dispatch(Resource):
    """Leaf resource: hand the whole request to the resource behind its Host header."""

    isLeaf = True

    def __init__(self, net: FakeNetwork) -> None:
        super().__init__()
        self._net = net

    def render(self, request: IRequest) -> Any:
        host = (request.getHeader(b"host") or b"").decode("ascii")
        if ":" not in host:
            host += ":443"
        target = self._net.resolve(host)
        self._net.log.append((host, request.method, request.path))
        request.postpath = list(request.prepath) + list(request.postpath)
        request.prepath = []
        return target.render(request)


class MemoryResponse:
    """What a client reads of a response served by :class:`DirectExchange`: ``code``, ``phrase``,
    ``headers`` (a ``Headers``) and the whole ``body`` (read it with :meth:`FakeNetwork.collect`)."""

    def __init__(self, code: int, phrase: bytes, headers: Headers, body: bytes) -> None:
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.body = body
        self.length = len(body)


class _MemoryTransport:
    """The addresses of an in-memory connection (no TLS under it: no channel binding, as with ``StubTreq``)."""

    disconnecting = False
    _peer = IPv4Address("TCP", "127.0.0.1", 31337)

    def __init__(self, port: int) -> None:
        self._host = IPv4Address("TCP", "127.0.0.1", port)

    def getPeer(self) -> IPv4Address:
        return self._peer

    def getHost(self) -> IPv4Address:
        return self._host


class DirectExchange:
    """One request served in memory: a real ``twisted.web.server.Request`` on a real ``Site``, with its
    request headers and body set as an ``HTTPChannel`` would set them and its response recorded as it
    writes it (status, headers, body: the chunks of a chunked response are taken out of their framing).

    What it leaves out of :class:`treq.testing.StubTreq` is the bytes on the wire: the client's
    ``Agent``, HTTP/1.1 serialisation and parsing both ways and the ``iosim`` pump, which made most of a
    simulated request's cost (``contrib/bench/scale_sim.py``). The resource sees the same request.
    """

    def __init__(self, site: Site, secure: bool, port: int) -> None:
        self.site = site
        self.transport = _MemoryTransport(port)
        self._secure = secure
        self._code = 0
        self._phrase = b""
        self._headers = Headers()
        self._body: list[bytes] = []
        self._request: Request | None = None
        self.done: Deferred[MemoryResponse] = Deferred(self._cancel)

    # -- what the server Request uses of its channel --------------------------------------------------

    def getPeer(self) -> IPv4Address:
        return self.transport.getPeer()

    def getHost(self) -> IPv4Address:
        return self.transport.getHost()

    def isSecure(self) -> bool:
        return self._secure

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Headers) -> None:
        self._code, self._phrase, self._headers = int(code), reason, headers.copy()

    def write(self, data: bytes) -> None:
        request = self._request
        if request is not None and request.chunked:
            return  # a chunked body's data comes as sequences; this is the last chunk finish() writes
        self._body.append(data)

    def writeSequence(self, data: Sequence[bytes]) -> None:
        # only chunked bodies are written as sequences: (length, CRLF, data, CRLF)
        self._body.append(data[2])

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def loseConnection(self) -> None:
        pass

    def requestDone(self, request: Request) -> None:
        if not self.done.called:
            self.done.callback(MemoryResponse(self._code, self._phrase, self._headers, b"".join(self._body)))

    # -- the client's side -----------------------------------------------------------------------------

    def serve(self, method: bytes, uri: bytes, headers: Headers, body: bytes) -> Deferred[MemoryResponse]:
        request = Request(self)
        self._request = request
        request.requestHeaders = headers
        request.gotLength(len(body))
        request.handleContentChunk(body)
        request.requestReceived(method, uri, b"HTTP/1.1")
        return self.done

    def _cancel(self, d: Deferred[MemoryResponse]) -> None:
        request = self._request
        if request is not None and not request.finished:
            request.connectionLost(Failure(ConnectionLost("request cancelled by the client")))


class FakeNetwork:
    """URL ``host:port`` -> resource; ``down`` hosts refuse connections, ``hang`` hosts never answer.

    ``log`` records ``(host, method, path)`` of every request served. With ``direct``, requests do not
    go through ``StubTreq``'s HTTP machinery but are handed to the resource as a
    :class:`DirectExchange` (same resource, same request, a fraction of the cost); responses are then
    :class:`MemoryResponse`.
    """

    def __init__(self, direct: bool = False) -> None:
        self._targets: dict[str, Any] = {}
        self.down: set[str] = set()
        self.hang: set[str] = set()
        self.hanging: list[Deferred[Any]] = []
        self.log: list[tuple[str, bytes, bytes]] = []
        self.direct = direct
        self._dispatch = _Dispatch(self)
        self._site = Site(self._dispatch)
        self._stub = stub_treq(self._dispatch)

    def add(self, url: str, resource: Any) -> None:
        self._targets[host_key(url)] = resource

    def add_balancer(self, url: str, urls: Sequence[str]) -> None:
        """A load balancer that alternates between the resources registered for ``urls``."""
        cycle = itertools.cycle([host_key(u) for u in urls])
        self._targets[host_key(url)] = lambda: self._targets[next(cycle)]

    def resolve(self, host: str) -> Any:
        target = self._targets[host]
        return target() if callable(target) and not hasattr(target, "render") else target

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        key = host_key(url)
        if key in self.down or key not in self._targets:
            return fail(ConnectionRefusedError(key))
        if key in self.hang:
            d: Deferred[Any] = Deferred()
            self.hanging.append(d)
            return d
        if self.direct:
            return self._direct(method, url, **kwargs)
        return self._stub.request(method, url, **kwargs)

    def _direct(
        self, method: str, url: str, headers: dict[bytes, list[bytes]] | None = None, data: bytes = b""
    ) -> Deferred[MemoryResponse]:
        parts = urlsplit(url)
        port = parts.port or 443
        request_headers = Headers({k: list(v) for k, v in (headers or {}).items()})
        # what treq's Agent adds to every request
        request_headers.setRawHeaders(b"Connection", [b"close"])
        request_headers.setRawHeaders(b"Content-Length", [str(len(data)).encode("ascii")])
        request_headers.setRawHeaders(b"Accept-Encoding", [b"gzip"])
        request_headers.setRawHeaders(b"Host", [parts.netloc.encode("ascii")])
        uri = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        exchange = DirectExchange(self._site, parts.scheme == "https", port)
        return exchange.serve(method.encode("ascii"), uri.encode("ascii"), request_headers, data)

    def collect(self, response: Any, collector: Any) -> Deferred[None]:
        if isinstance(response, MemoryResponse):
            try:
                if response.body:
                    collector(response.body)
            except Exception:
                return fail()
            return succeed(None)
        return self._stub.collect(response, collector)

    @property
    def stub(self) -> InMemoryTreq:
        """The ``StubTreq`` underneath, for tests that post raw requests."""
        return self._stub


# -- membership --------------------------------------------------------------------------------------


class RecordingObserver:
    """Records ``peer_up``/``peer_down`` and keeps the current routes, like the data plane would."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.routes: dict[str, tuple[IPNetwork, ...]] = {}

    def peer_up(self, peer_id: str, url: str, cidrs: Sequence[IPNetwork]) -> None:
        self.events.append(("up", peer_id))
        self.routes[peer_id] = tuple(cidrs)

    def peer_down(self, peer_id: str) -> None:
        self.events.append(("down", peer_id))
        self.routes.pop(peer_id, None)


# -- clocks ------------------------------------------------------------------------------------------


class HeapClock(Clock):
    """A :class:`twisted.internet.task.Clock` whose pending calls are a heap.

    ``Clock`` sorts all its pending calls at every ``callLater`` and after every call it runs, and
    cancels by ``list.remove``: fine for a test, quadratic for a simulation whose one clock holds the
    timers of hundreds of nodes (``contrib/bench/scale_sim.py``: most of a 100-node join went there).
    Same order: by time, and calls due at the same time in the order they were scheduled (a call that
    was ``reset`` or ``delay``-ed counts as scheduled when that took effect, where ``Clock``'s stable
    sort keeps its earlier place among calls due at exactly the same time). ``calls`` is not kept;
    use :meth:`getDelayedCalls`.
    """

    def __init__(self) -> None:
        super().__init__()
        self._heap: list[list[Any]] = []
        self._entries: dict[DelayedCall, list[Any]] = {}
        self._order = itertools.count()

    def callLater(self, delay: float, callable: Callable[..., object], *args: object, **kw: object) -> IDelayedCall:
        call = DelayedCall(self.seconds() + delay, callable, args, kw, self._cancel, self._reset, self.seconds)
        self._push(call)
        return call

    def _push(self, call: DelayedCall) -> None:
        entry = [call.getTime(), next(self._order), call]
        self._entries[call] = entry
        heapq.heappush(self._heap, entry)

    def _cancel(self, call: DelayedCall) -> None:
        self._entries.pop(call)[2] = None

    def _reset(self, call: DelayedCall) -> None:
        self._entries.pop(call)[2] = None
        self._push(call)

    def getDelayedCalls(self) -> Sequence[IDelayedCall]:
        return [entry[2] for entry in sorted(self._heap) if entry[2] is not None]

    def advance(self, amount: float) -> None:
        self.rightNow += amount
        heap = self._heap
        while heap:
            entry = heap[0]
            call = entry[2]
            if call is None:
                heapq.heappop(heap)
                continue
            if entry[0] > self.rightNow:
                return
            heapq.heappop(heap)
            del self._entries[call]
            if call.delayed_time > 0:
                # ``reset`` to a later time and ``delay`` only add ``delayed_time``: as a reactor does,
                # apply it when the call comes due (a later ``reset`` before that time then reaches
                # ``_reset``) and schedule it again
                call.activate_delay()
                self._push(call)
                continue
            call.called = 1
            call.func(*call.args, **call.kw)


class SteppedWall:
    """A node's wall clock: the timers' ``Clock`` plus the steps its host made (NTP, VM resume)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.offset = 0.0

    def seconds(self) -> float:
        return self.clock.seconds() + self.offset

    def step(self, seconds: float) -> None:
        self.offset += seconds
