"""The hardened HTTP layer of the one port (security contract W8, W9, W18, §3.0).

Twisted's stock ``Site`` reads a whole body (spilling to a temp file above 100 KB) before any
handler can refuse it, has no deadline for slow headers, no per-peer connection cap, and renders
tracebacks or HTML error pages. This module wraps it:

- ``HardenedRequest`` / ``HardenedChannel``: per-route body limits and an optional ``pre_auth`` check
  decided when the headers are complete, *before* any body byte is read (413/401/429 and close);
  chunked bodies are counted and cut at the limit; bodies live in ``BytesIO``; absolute-form request
  targets are normalised; headers must be complete within ``header_timeout`` of accept (covering the
  TLS handshake) and the body within ``body_timeout``; constant bodies for 401/404/405/413/429/500;
  any unexpected exception becomes one constant 500.
- ``ConnectionLimitFactory``: per-peer and global connection caps, refusing before the handshake.
- ``make_server_factory``: caps(TLS(ALPN dispatch(site, alternatives))) for ``listenTCP``.

``pre_auth`` is an early, cheap refusal, not the authentication itself: handlers still authenticate.
"""

from __future__ import annotations

import io
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, cast
from urllib.parse import urlsplit

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger, LogLevel
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource
from twisted.web.server import Request, Site
from zope.interface import implementer

from tunmesh.api.errors import BODIES, DEFAULT_RETRY_AFTER, TEXT_PLAIN
from tunmesh.interfaces import MetricsLike
from tunmesh.logutil import RateLimitedLog
from tunmesh.tls.dispatch import ALPNDispatchFactory, IAcceptTimeAware
from tunmesh.twisted_internals import request_disconnected, request_line, send_100_continue

DEFAULT_MAX_BODY = 4096
#: Methods whose bodies we never use; a body on them is refused unless a route says otherwise
#: (a body on GET is a request-smuggling and buffering vector with no use on this API).
BODYLESS_METHODS = frozenset({b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"TRACE"})
#: Statuses whose body this layer always replaces with the constant text (contract §3.0): no reason
#: leaks, whatever a resource wrote. (A 503 keeps its body: /health and /ready answer JSON with it.)
CONSTANT_BODIES: Mapping[int, bytes] = {status: BODIES[status] for status in (401, 404, 405, 413, 429, 500)}


@dataclass(frozen=True)
class RequestHead:
    """What is known of a request when its headers are complete and no body byte is read."""

    method: bytes
    path: str
    headers: Headers = field(compare=False)
    peer_host: str
    #: the connection's transport: its TLS session is what control tokens bind (``cnf``, W5)
    transport: object = field(default=None, compare=False, repr=False)


#: Name used in docs/internals.md.
HeaderView = RequestHead


@dataclass(frozen=True)
class Refusal:
    """An early answer: ``status`` with its constant body, ``Retry-After`` for 429."""

    status: int
    retry_after: int | None = None

    def __post_init__(self) -> None:
        if not 400 <= self.status <= 599:
            raise ValueError(f"a refusal needs a 4xx/5xx status, got {self.status}")


PreAuth = Callable[[RequestHead], "int | Refusal | None"]


class SourceRateLimiter:
    """A token bucket per source address for the node-to-node API (contract §1, as WireGuard's
    limiter): ``rate`` requests per second with bursts of ``burst``; over it, 429.

    Bounded state: at most ``max_sources`` buckets, least recently seen dropped first (a dropped
    source starts again with a full bucket, which only ever errs towards allowing).
    """

    def __init__(
        self, clock: IReactorTime, rate: float = 20.0, burst: int = 5, max_sources: int = 4096
    ) -> None:
        if rate <= 0 or burst < 1 or max_sources < 1:
            raise ValueError("rate, burst and max_sources must be positive")
        self.clock = clock
        self.rate = rate
        self.burst = float(burst)
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def allow(self, source: str) -> bool:
        now = self.clock.seconds()
        bucket = self._buckets.pop(source, None)
        if bucket is None:
            bucket = [self.burst, now]
            if len(self._buckets) >= self.max_sources:
                self._buckets.popitem(last=False)
        else:
            tokens, last = bucket
            bucket[0] = min(self.burst, tokens + (now - last) * self.rate)
            bucket[1] = now
        self._buckets[source] = bucket
        if bucket[0] < 1.0:
            return False
        bucket[0] -= 1.0
        return True

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(frozen=True)
class RouteLimit:
    method: bytes
    pattern: re.Pattern[str]
    max_body: int
    pre_auth: PreAuth | None


class RouteLimits:
    """Body limits and early checks per (method, path regex); first match wins.

    Unlisted requests get ``default_max_body`` (4 KiB), or 0 for methods that carry no body.
    HEAD is looked up as GET.
    """

    def __init__(self, default_max_body: int = DEFAULT_MAX_BODY) -> None:
        if default_max_body < 0:
            raise ValueError("default_max_body must be >= 0")
        self.default_max_body = default_max_body
        self._routes: list[RouteLimit] = []

    def add(
        self,
        method: bytes,
        path_regex: str,
        max_body: int,
        pre_auth: PreAuth | None = None,
    ) -> None:
        """Limit ``method`` requests whose whole path matches ``path_regex`` to ``max_body`` bytes."""
        if max_body < 0:
            raise ValueError("max_body must be >= 0")
        self._routes.append(RouteLimit(method.upper(), re.compile(path_regex), max_body, pre_auth))

    def lookup(self, method: bytes, path: str) -> tuple[int, PreAuth | None]:
        method = method.upper()
        if method == b"HEAD":
            method = b"GET"
        for route in self._routes:
            if route.method == method and route.pattern.fullmatch(path):
                return route.max_body, route.pre_auth
        return (0 if method in BODYLESS_METHODS else self.default_max_body), None


def normalise_target(target: bytes) -> bytes:
    """Turn an absolute-form target (``https://h:p/x?q``) into origin form (``/x?q``).

    The original's client sends node_info requests in absolute form; Twisted would otherwise take
    the whole URL as the path.
    """
    lower = target[:8].lower()
    if not (lower.startswith(b"http://") or lower.startswith(b"https://")):
        return target
    parts = urlsplit(target)
    path = parts.path or b"/"
    return path + (b"?" + parts.query if parts.query else b"")


def _refusal_bytes(refusal: Refusal, include_body: bool) -> bytes:
    body = CONSTANT_BODIES.get(refusal.status, http.RESPONSES.get(refusal.status, b"Error"))
    reason = http.RESPONSES.get(refusal.status, b"Error")
    lines = [
        b"HTTP/1.1 %d %s" % (refusal.status, reason),
        b"Content-Type: " + TEXT_PLAIN,
        b"Content-Length: %d" % len(body),
        b"Connection: close",
        b"Cache-Control: no-store",
    ]
    if refusal.status == 429 or refusal.retry_after is not None:
        lines.append(b"Retry-After: %d" % (refusal.retry_after or DEFAULT_RETRY_AFTER))
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body if include_body else b"")


class _ChannelTransport(Protocol):
    """What the channel and its requests use of the channel's transport.

    That transport is ``TLSMemoryBIOProtocol`` in service (a ``StringTransport`` in tests):
    ``ITCPTransport`` plus ``disconnecting``, which no Twisted interface declares, while
    ``Protocol.transport`` is typed ``ITransport | None``.
    """

    disconnecting: bool

    def getPeer(self) -> IAddress: ...

    def write(self, data: bytes) -> None: ...

    def abortConnection(self) -> None: ...


#: The port's counters, declared when the site or the connection caps get a metrics object, so that
#: each is exposed (with this HELP) before its first event: name -> (HELP, label names).
SERVER_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "requests_rate_limited_total": ("Requests refused by the per-source rate limit (429).", ()),
    "http_deadline_expired_total": (
        "Connections aborted for slow headers or body, by phase (headers, body).", ("phase",),
    ),
    "http_refused_total": ("Requests refused before the body was read, by HTTP status.", ("status",)),
    "errors_total": (
        "Unexpected exceptions caught at a boundary, by where (api, pre_auth, a mesh route...).", ("where",),
    ),
    "connections_refused_total": ("Connections refused by a cap, by cap (peer, total).", ("cap",)),
}


def declare_server_metrics(metrics: MetricsLike | None) -> None:
    """Create the :data:`SERVER_METRICS` counters (create-or-get: the first HELP stays)."""
    if metrics is not None:
        for name, (doc, labels) in SERVER_METRICS.items():
            metrics.counter(name, doc, labelnames=labels)


def _count(metrics: MetricsLike | None, name: str, doc: str, **labels: str) -> None:
    """Increment a counter when a metrics object was given; metrics must never break serving."""
    if metrics is None:
        return
    counter = metrics.counter(name, doc, labelnames=tuple(labels))
    (counter.labels(**labels) if labels else counter).inc()


class HardenedRequest(Request):
    """A request that decides on limits before the body, buffers in memory, and never leaks errors."""

    _log = Logger()
    refusal: Refusal | None = None
    max_body: int = 0
    received_body: int = 0
    _constant_written = False
    # Narrower than Twisted's declarations: HardenedRequest is the requestFactory of HardenedSite,
    # whose channels are HardenedChannels; ``site`` is set by ``process()``.
    channel: HardenedChannel
    site: HardenedSite | None
    # Twisted's Request has an unannotated ``content = None`` (so mypy infers the type None); it is
    # the body file from ``gotLength`` on, here always a BytesIO.
    content: io.BytesIO  # type: ignore[assignment]

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """As ``Request.requestReceived``, with the target in origin form (:func:`normalise_target`)."""
        super().requestReceived(command, normalise_target(path), version)

    def gotLength(self, length: int | None) -> None:
        """Headers are complete: pick the route limit, run ``pre_auth``; always buffer in memory."""
        self.content = io.BytesIO()
        channel = self.channel
        site: HardenedSite = channel.site
        line = request_line(channel)
        peer_host = _peer_host(channel.tcp_transport().getPeer())
        head: RequestHead | None = None
        if line is not None:
            path_bytes = normalise_target(line[1]).split(b"?", 1)[0]
            head = RequestHead(
                method=line[0],
                path=path_bytes.decode("latin-1"),
                headers=self.requestHeaders,
                peer_host=peer_host,
                transport=channel.tcp_transport(),
            )
        # Without the request line (tunmesh.twisted_internals) no route is known before the body: every
        # request counts against the per-source limit, bodies get the default limit, handlers authenticate.
        limiter = site.rate_limiter
        if limiter is not None and (head is None or head.path.startswith(site.rate_limited_prefix)):
            if not limiter.allow(peer_host):
                site.count("requests_rate_limited_total", "Requests refused by the per-source rate limit.")
                self.refusal = Refusal(429, 1)
                return
        if head is None:
            self.max_body, pre_auth = site.limits.default_max_body, None
        else:
            self.max_body, pre_auth = site.limits.lookup(head.method, head.path)
        if length is not None and length > self.max_body:
            self.refusal = Refusal(413)
            return
        if pre_auth is None or head is None:
            return
        try:
            answer = pre_auth(head)
        except Exception:
            site.report_error(Failure(), "pre_auth")
            self.refusal = Refusal(500)
            return
        if isinstance(answer, int):
            self.refusal = Refusal(answer)
        elif isinstance(answer, Refusal):
            self.refusal = answer

    def handleContentChunk(self, data: bytes) -> None:
        """Count body bytes; cut the connection with 413 the moment the limit is passed."""
        if self.refusal is not None:
            return
        self.received_body += len(data)
        if self.received_body > self.max_body:
            self.refusal = Refusal(413)
            self.channel.refuse(self.refusal)
            return
        self.content.write(data)

    def write(self, data: bytes) -> None:
        """Strip the ``Server`` header and replace the body of constant-body statuses."""
        if not self.startedWriting:
            self.responseHeaders.removeHeader(b"server")
            self.responseHeaders.setRawHeaders(b"cache-control", [b"no-store"])
        body = CONSTANT_BODIES.get(self.code)
        if body is None:
            Request.write(self, data)
            return
        if self._constant_written:
            return
        self._constant_written = True
        self.responseHeaders.setRawHeaders(b"content-type", [TEXT_PLAIN])
        self.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(body)])
        Request.write(self, body)

    def finish(self) -> None:
        if self.code in CONSTANT_BODIES and not self._constant_written and not request_disconnected(self):
            self.write(b"")
        Request.finish(self)

    def processingFailed(self, reason: Failure) -> Failure:
        """The one error boundary (W18): constant 500, traceback at debug only, counted."""
        assert self.site is not None  # set by process() before anything is rendered
        self.site.report_error(reason, "api")
        if request_disconnected(self) or self.finished:
            return reason
        if self.startedWriting:
            # Too late for a status; do not leave a half response on a keep-alive connection.
            self.channel.tcp_transport().abortConnection()
            return reason
        self.setResponseCode(http.INTERNAL_SERVER_ERROR)
        self.responseHeaders.removeHeader(b"content-length")
        self.write(b"")
        self.finish()
        return reason


def _peer_host(address: object) -> str:
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else repr(address)


@implementer(IAcceptTimeAware)
class HardenedChannel(http.HTTPChannel):
    """HTTP/1.1 channel with header and body deadlines and an early-refusal state.

    Phases: ``headers`` (deadline from accept, or from the first byte of a later keep-alive request),
    ``body`` (deadline from the end of the headers), ``handling`` (no deadline; the idle timeout
    applies between requests), ``refused`` (everything further is discarded; the connection closes).
    """

    maxHeaders = 100
    totalHeadersSize = 16384
    abortTimeout = 5

    site: HardenedSite
    _accepted_at: float | None = None
    _deadline: IDelayedCall | None = None
    _phase = "idle"
    refused = False
    #: the ``forceAbortClient`` call after a refusal, should the peer not close
    _refusal_abort: IDelayedCall | None = None

    def tcp_transport(self) -> _ChannelTransport:
        """``self.transport``, which is set (and a TCP/TLS transport) while the channel is connected."""
        return cast(_ChannelTransport, self.transport)

    def connectionAcceptedAt(self, when: float) -> None:
        self._accepted_at = when

    def connectionMade(self) -> None:
        super().connectionMade()
        elapsed = 0.0
        if self._accepted_at is not None:
            elapsed = max(0.0, self.site.reactor.seconds() - self._accepted_at)
        self._start_phase("headers", self.site.header_timeout - elapsed)

    def _start_phase(self, phase: str, timeout: float | None) -> None:
        self._cancel_deadline()
        self._phase = phase
        if timeout is not None:
            self._deadline = self.site.reactor.callLater(max(0.0, timeout), self._deadline_expired, phase)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _deadline_expired(self, phase: str) -> None:
        self._deadline = None
        self.site.count("http_deadline_expired_total", "Connections aborted for slow headers or body.", phase=phase)
        self.site.ratelimited.emit(
            ("deadline", phase),
            LogLevel.info,
            "aborting connection from {peer}: {phase} deadline expired",
            peer=_peer_host(self.tcp_transport().getPeer()),
            phase=phase,
        )
        self.tcp_transport().abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.refused or self.tcp_transport().disconnecting:
            # Closing already (refusal, 400, timeout): whatever else arrives is not even parsed.
            return
        if self._phase == "idle":
            self._start_phase("headers", self.site.header_timeout)
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self.refused:
            return
        super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if self.refused:
            return
        super().rawDataReceived(data)

    def allHeadersReceived(self) -> None:
        """As ``HTTPChannel.allHeadersReceived``, plus early refusal (the request normalises its target)."""
        req: HardenedRequest = self.requests[-1]
        req.parseCookies()
        line = request_line(self)
        # Without the request line (tunmesh.twisted_internals) take the cautious reading: HTTP/1.0.
        version = line[2] if line is not None else b"HTTP/1.0"
        self.persistent = self.checkPersistence(req, version)
        req.gotLength(self.length)
        if req.refusal is not None:
            self.refuse(req.refusal)
            return
        if self.length == 0:
            self._start_phase("handling", None)
            return
        self._start_phase("body", self.site.body_timeout)
        expect = req.requestHeaders.getRawHeaders(b"expect")
        if expect and expect[0].lower() == b"100-continue" and version == b"HTTP/1.1":
            send_100_continue(self)

    def allContentReceived(self) -> None:
        if self.refused:
            return
        self._start_phase("handling", None)
        super().allContentReceived()

    def requestDone(self, request: Request) -> None:
        self._phase = "idle"
        super().requestDone(request)

    def refuse(self, refusal: Refusal) -> None:
        """Answer ``refusal`` at once, read nothing more, and close (abort if the peer stalls)."""
        if self.refused:
            return
        self.refused = True
        self._cancel_deadline()
        self._phase = "refused"
        self.persistent = False
        self.setTimeout(None)
        self.site.count("http_refused_total", "Requests refused before the body was read.", status=str(refusal.status))
        line = request_line(self)
        method = line[0] if line is not None else b""
        self.tcp_transport().write(_refusal_bytes(refusal, include_body=method.upper() != b"HEAD"))
        self.loseConnection()
        if self.abortTimeout is not None:
            self._refusal_abort = self.site.reactor.callLater(self.abortTimeout, self.forceAbortClient)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_deadline()
        if self._refusal_abort is not None and self._refusal_abort.active():
            self._refusal_abort.cancel()
        self._refusal_abort = None
        super().connectionLost(reason)


class HardenedSite(Site):
    """A ``Site`` building :class:`HardenedChannel` and :class:`HardenedRequest` objects; no access log, no
    tracebacks."""

    protocol = HardenedChannel  # type: ignore[assignment]
    requestFactory = HardenedRequest
    displayTracebacks = False
    _log = Logger()

    def __init__(
        self,
        resource: IResource,
        limits: RouteLimits,
        clock: IReactorTime,
        header_timeout: float = 10.0,
        body_timeout: float = 30.0,
        idle_timeout: float = 60.0,
        metrics: MetricsLike | None = None,
        rate_limiter: SourceRateLimiter | None = None,
        rate_limited_prefix: str = "/tunmesh/",
    ) -> None:
        if header_timeout <= 0 or body_timeout <= 0 or idle_timeout <= 0:
            raise ValueError("timeouts must be positive")
        super().__init__(resource, timeout=idle_timeout, reactor=clock)
        self.limits = limits
        self.rate_limiter = rate_limiter
        self.rate_limited_prefix = rate_limited_prefix
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.metrics = metrics
        declare_server_metrics(metrics)
        self.ratelimited = RateLimitedLog(self._log, clock)

    def count(self, name: str, doc: str, **labels: str) -> None:
        try:
            _count(self.metrics, name, doc, **labels)
        except Exception:
            self._log.failure("metrics update failed for {name}", name=name, level=LogLevel.debug)

    def report_error(self, reason: Failure, where: str) -> None:
        """One debug line with the traceback, one error line without it (no request data)."""
        self._log.failure("unexpected error in {where}", failure=reason, where=where, level=LogLevel.debug)
        self.ratelimited.emit(
            ("error", where, reason.type),
            LogLevel.error,
            "unexpected {error_type} in {where}; answered 500",
            error_type=reason.type.__name__,
            where=where,
        )
        self.count("errors_total", "Unexpected errors by place.", where=where)

    def log(self, request: http.Request) -> None:
        """No access log: it would hold peer paths at line rate and, upstream, Authorization values."""

    def startFactory(self) -> None:
        """Skip ``HTTPFactory``'s log-file and log-clock setup (no access log)."""

    def stopFactory(self) -> None:
        """Nothing to close: see :obj:`startFactory`."""


def make_site(
    root: IResource,
    limits: RouteLimits,
    clock: IReactorTime,
    header_timeout: float = 10.0,
    body_timeout: float = 30.0,
    metrics: MetricsLike | None = None,
    idle_timeout: float = 60.0,
    rate_limiter: SourceRateLimiter | None = None,
) -> HardenedSite:
    """The hardened ``Site`` serving ``root``; ``rate_limiter`` guards the ``/tunmesh/`` routes."""
    return HardenedSite(
        root, limits, clock, header_timeout, body_timeout, idle_timeout, metrics, rate_limiter
    )


class _CountedWrapper(ProtocolWrapper):
    peer_host = ""
    counted = False


class ConnectionLimitFactory(WrappingFactory[_CountedWrapper]):
    """Caps connections per peer IP and in total; beyond a cap, ``buildProtocol`` returns None.

    A None from ``buildProtocol`` makes the listening port close the socket at once, before any TLS
    work. Twisted's ``LimitConnectionsByPeer`` indexes the address as a tuple, which no longer
    works with ``IPv4Address``, hence this small replacement.
    """

    protocol = _CountedWrapper
    _log = Logger()

    def __init__(
        self,
        wrapped: IProtocolFactory,
        max_per_peer: int = 32,
        max_total: int = 1024,
        clock: IReactorTime | None = None,
        metrics: MetricsLike | None = None,
    ) -> None:
        if max_per_peer < 1 or max_total < 1:
            raise ValueError("connection caps must be >= 1")
        super().__init__(wrapped)
        self.max_per_peer = max_per_peer
        self.max_total = max_total
        self.metrics = metrics
        declare_server_metrics(metrics)
        self.total = 0
        self._per_peer: dict[str, int] = {}
        self._ratelimited = RateLimitedLog(self._log, clock) if clock is not None else None

    def connections_from(self, host: str) -> int:
        return self._per_peer.get(host, 0)

    # IProtocolFactory.buildProtocol may return None (the port then closes the socket; see the class
    # docstring); WrappingFactory's annotation leaves that out.
    def buildProtocol(self, addr: IAddress) -> _CountedWrapper | None:  # type: ignore[override]
        host = _peer_host(addr)
        if self.total >= self.max_total or self._per_peer.get(host, 0) >= self.max_per_peer:
            scope = "total" if self.total >= self.max_total else "peer"
            try:
                _count(self.metrics, "connections_refused_total", "Connections refused by a cap.", cap=scope)
            except Exception:
                self._log.failure("metrics update failed", level=LogLevel.debug)
            if self._ratelimited is not None:
                self._ratelimited.emit(
                    ("cap", scope), LogLevel.warn, "refusing connection from {peer}: {cap} cap reached",
                    peer=host, cap=scope,
                )
            return None
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:
            return None
        wrapper = _CountedWrapper(self, inner)
        wrapper.peer_host = host
        wrapper.counted = True
        self.total += 1
        self._per_peer[host] = self._per_peer.get(host, 0) + 1
        return wrapper

    def unregisterProtocol(self, p: ProtocolWrapper) -> None:
        if p not in self.protocols:
            return
        super().unregisterProtocol(p)
        if isinstance(p, _CountedWrapper) and p.counted:
            p.counted = False
            self.total -= 1
            left = self._per_peer.get(p.peer_host, 1) - 1
            if left > 0:
                self._per_peer[p.peer_host] = left
            else:
                self._per_peer.pop(p.peer_host, None)


def make_server_factory(
    site: HardenedSite,
    server_context: IOpenSSLServerConnectionCreator,
    alternatives: Mapping[bytes, IProtocolFactory],
    clock: IReactorTime,
    max_per_peer: int = 32,
    max_total: int = 1024,
    metrics: MetricsLike | None = None,
) -> ConnectionLimitFactory:
    """caps(TLS(ALPN dispatch(site, alternatives))), ready for ``reactor.listenTCP``.

    ``server_context`` must offer ``http/1.1`` and every key of ``alternatives`` via ALPN. The
    handshake must finish within the site's header timeout of accept.
    """
    dispatch = ALPNDispatchFactory(site, alternatives, clock=clock, handshake_timeout=site.header_timeout)
    tls = TLSMemoryBIOFactory(server_context, False, dispatch, clock=clock)
    return ConnectionLimitFactory(tls, max_per_peer, max_total, clock=clock, metrics=metrics)
