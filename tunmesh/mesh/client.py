""":class:`MeshClient`: the transport for control requests to peers (treq, or an in-memory ``StubTreq`` in tests).

The flows sign the body; this posts it with a deadline, reads a bounded response and hands back
status, the headers the flows need and the exact body bytes (which the response token signs). Every
request in flight is tracked so ``cancel_all()`` can stop them at shutdown.

Between nodes (:meth:`MeshClient.with_tls`) every connection is a ``tunmesh-ctl/1`` connection whose
server proved the TLS session before anything is sent (:mod:`tunmesh.tls.binding`), and every
request token is bound to the session it goes out on: :class:`BindingConnectionPool` hands the
request to the connection through a wrapper that adds ``cnf`` (``SignedRequest.bind``) once the
connection, and so its TLS exporter value, is known (W5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from treq import collect as treq_collect
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredSemaphore,
    TimeoutError,
    fail,
    inlineCallbacks,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool
from twisted.web.iweb import IClientRequest, IResponse

from tunmesh.auth.errors import AuthError
from tunmesh.auth.tokens import SignedRequest
from tunmesh.failures import describe_failure
from tunmesh.interfaces import TreqLike
from tunmesh.mesh.errors import PeerRequestFailed
from tunmesh.mesh.traffic import ControlTraffic, request_kind
from tunmesh.tls.binding import ChannelProofError, ControlEndpointFactory, ProofVerifier, control_binding

#: Largest response body accepted (a registration with max_nodes entries fits with room to spare).
MAX_RESPONSE_BYTES = 1024 * 1024
JSON = "application/json"
#: Buckets of ``tunmesh_mesh_request_duration_seconds`` (up to the longest request_timeout worth waiting).
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Control requests a node has in flight at once; more wait in order for a free slot, and their deadline
#: starts when they go out. Without a cap a node that learns of 49 peers at once sends 49 registrations,
#: 49 session setups and their TLS handshakes together, and on a busy host (many nodes starting together)
#: each waits behind all the others. The cap bounds that burst; the abandoned handshakes of a 50-node
#: join were ended by the longer handshake deadline (docs/performance.md, "Rest renewals, and a join that
#: does not collapse"). Requests on a kept connection take a slot for a few milliseconds.
MAX_CONCURRENT_REQUESTS = 8
#: Seconds an idle control connection stays cached for the next request to the same peer. Longer than a
#: renewal interval while the membership changes (a local peer's stale_threshold plus a groom tick: 35 s
#: with the shipped timings), so those renewals reuse it instead of paying a TLS handshake each
#: (docs/performance.md "Scale"); shorter than the server's idle timeout (``HardenedSite``, 60 s), so a
#: request never goes out on a connection the server is closing (a POST is not retried). A renewal at
#: rest (``REST_RENEWAL``, 120 s apart) pays a handshake: measured cheaper than one every 35 s on a kept
#: connection.
CACHED_CONNECTION_TIMEOUT = 45


def request_result(response: Any) -> str:
    """``2xx``/``3xx``/``4xx``/``5xx`` for an answer, the failure reason (``timeout``, ``transport``,
    ``tls``, ``cancelled``, ``response_too_large``) for none."""
    if isinstance(response, Failure):
        return str(getattr(response.value, "reason", "error"))
    return f"{response.status // 100}xx"


@dataclass(frozen=True)
class RawResponse:
    """What came back: the status, the headers the flows need, the exact body bytes."""

    status: int
    body: bytes
    authorization: str | None
    content_type: str | None
    retry_after: str | None
    #: the ``cnf`` the request was bound to (this side's TLS exporter value of the connection the
    #: answer came on): the response token must carry the same; ``None`` without TLS (memory tests)
    channel: str | None = None

    def is_json(self) -> bool:
        """``application/json`` with no parameter or ``charset=utf-8`` (:func:`is_json_media_type`)."""
        return self.content_type is not None and is_json_media_type(self.content_type)


def is_json_media_type(value: str) -> bool:
    """``application/json``, bare or with ``charset=utf-8`` (any case, optional quotes); nothing else.

    Bodies are decoded as UTF-8 (RFC 8259), so a body labelled ``charset=utf-16`` would be read as
    something it does not claim to be: refused (issue 12).
    """
    media, _, params = value.partition(";")
    if media.strip().lower() != JSON:
        return False
    for param in params.split(";"):
        if not param.strip():
            continue
        name, _, pval = param.partition("=")
        if name.strip().lower() != "charset" or pval.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True


class _TooLarge(Exception):
    pass


def _first(headers: Any, name: bytes) -> str | None:
    values = headers.getRawHeaders(name)
    if not values:
        return None
    value = values[0]
    return value.decode("latin-1") if isinstance(value, bytes) else value


Binder = Callable[[str], str]


class _BindingConnection:
    """One pooled HTTP/1.1 connection, as the pool hands it to ``Agent`` for one request
    (``HTTPConnectionPool.getConnection`` may return a wrapper): sets the request's
    ``Authorization`` to the token bound to this connection's TLS session before it is written."""

    def __init__(self, connection: Any, pending: dict[str, Binder]) -> None:
        self._connection = connection
        self._pending = pending

    def request(self, request: IClientRequest) -> Deferred[IResponse]:
        values = request.headers.getRawHeaders(b"Authorization") or []
        bind = self._pending.pop(values[0].decode("latin-1"), None) if len(values) == 1 else None
        if bind is not None:
            try:
                cnf = control_binding(self._connection.transport)
                if cnf is None:
                    raise AuthError("channel_binding")
                value = bind(cnf)
            except AuthError:
                self._connection.transport.loseConnection()
                return fail(ChannelProofError("no TLS exporter value for the request"))
            request.headers.setRawHeaders(b"Authorization", [value.encode("ascii")])
        result: Deferred[IResponse] = self._connection.request(request)
        return result


class BindingConnectionPool(HTTPConnectionPool):
    """``HTTPConnectionPool`` whose connections bind each request to their TLS session.

    ``pending`` maps the unbound header value a request is sent with to its ``bind``; the connection
    the request goes out on replaces it (:class:`_BindingConnection`). Automatic retries are off: a
    retry would go out on another connection with a token bound to the first.
    """

    retryAutomatically = False

    def __init__(self, reactor: Any, persistent: bool = True) -> None:
        super().__init__(reactor, persistent)
        self.pending: dict[str, Binder] = {}

    def getConnection(self, key: Any, endpoint: Any) -> Deferred[Any]:
        d: Deferred[Any] = super().getConnection(key, endpoint)
        return d.addCallback(_BindingConnection, self.pending)


class MeshClient:
    """POSTs signed control requests with a deadline; one instance per node."""

    log = Logger()

    def __init__(
        self,
        http: TreqLike,
        clock: IReactorTime,
        timeout: float,
        max_response: int = MAX_RESPONSE_BYTES,
        *,
        pool: Any = None,
        metrics: Any = None,
        endpoints: ControlEndpointFactory | None = None,
        max_concurrent: int = MAX_CONCURRENT_REQUESTS,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._http = http
        #: requests in flight at once (``MAX_CONCURRENT_REQUESTS``); the rest wait here in order
        self._slots = DeferredSemaphore(max_concurrent)
        self._pool = pool
        self._endpoints = endpoints
        self._duration = (
            None
            if metrics is None
            else metrics.histogram(
                "mesh_request_duration_seconds",
                "Control requests to peers (this node as the client), by kind (register, init_session, "
                "leave, other) and result (2xx, 4xx, 5xx, or timeout, transport, tls, channel_binding, "
                "cancelled): seconds from the request to the whole response.",
                ("kind", "result"),
                buckets=REQUEST_BUCKETS,
            )
        )
        self._traffic = None if metrics is None else ControlTraffic(metrics)
        self._clock = clock
        self.timeout = timeout
        self._max_response = max_response
        self._in_flight: set[Deferred[Any]] = set()

    @classmethod
    def with_tls(
        cls,
        reactor: Any,
        tls_policy: Any,
        timeout: float,
        metrics: Any = None,
        handshake_timeout: float | None = None,
    ) -> MeshClient:
        """A real client: treq over an ``Agent`` whose connections are channel-bound ``tunmesh-ctl/1``
        connections made with tunmesh's TLS client policy (whose ALPN must be ``tunmesh-ctl/1``).

        ``timeout`` is the default request deadline and the TCP connect deadline; ``handshake_timeout``
        (default ``timeout``) bounds the TLS handshake and the server's proof once TCP connected.

        Call :meth:`verify_channel_with` before the first request: until then every connection is
        refused.
        """
        from treq.client import HTTPClient
        from twisted.web.client import Agent

        pool = BindingConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 3
        pool.cachedConnectionTimeout = CACHED_CONNECTION_TIMEOUT
        endpoints = ControlEndpointFactory(reactor, tls_policy, timeout, handshake_timeout=handshake_timeout)
        agent = Agent.usingEndpointFactory(reactor, endpoints, pool=pool)
        return cls(
            HTTPClient(agent), reactor, timeout, pool=pool, metrics=metrics, endpoints=endpoints  # type: ignore[arg-type]
        )

    def verify_channel_with(self, verify: ProofVerifier) -> None:
        """Check the servers' channel proofs with ``verify`` (``ClusterAuthority.verify_channel_proof``)."""
        if self._endpoints is not None:
            self._endpoints.verify = verify

    @property
    def in_flight(self) -> int:
        """Requests sent and not answered yet, and those waiting for a slot."""
        return len(self._in_flight)

    @property
    def waiting(self) -> int:
        """Requests waiting for one of the ``max_concurrent`` slots."""
        return len(self._slots.waiting)

    def post(
        self,
        url: str,
        path: str,
        body: bytes,
        authorization: SignedRequest | str,
        timeout: float | None = None,
    ) -> Deferred[RawResponse]:
        """POST ``body`` (JSON) to ``url`` + ``path`` within ``timeout`` (default: the client's); fails with
        :exc:`PeerRequestFailed` (reason timeout/transport/tls/channel_binding...).

        A :class:`SignedRequest` is bound to the TLS session of the connection it goes out on (W5) when this
        client pools bound connections; the response then carries that value as ``channel``.

        At most ``max_concurrent`` requests are out at once; a request waits in order for a slot, and its
        deadline starts when it goes out (:data:`MAX_CONCURRENT_REQUESTS`).
        """
        acquired = self._slots.acquire()
        self._in_flight.add(acquired)

        def send(_: object) -> Deferred[RawResponse]:
            self._in_flight.discard(acquired)
            sent = self._send(url, path, body, authorization, timeout)
            return sent.addBoth(release)

        def release(result: Any) -> Any:
            self._slots.release()
            return result

        def not_sent(failure: Failure) -> Failure:
            self._in_flight.discard(acquired)
            if failure.check(CancelledError):
                raise PeerRequestFailed("cancelled", url)
            return failure

        return acquired.addCallbacks(send, not_sent)

    def _send(
        self, url: str, path: str, body: bytes, authorization: SignedRequest | str, timeout: float | None
    ) -> Deferred[RawResponse]:
        """The request itself, once it holds a slot (:meth:`post`)."""
        started = self._clock.seconds()
        header = authorization if isinstance(authorization, str) else authorization.header_value
        bind = None if isinstance(authorization, str) else authorization.bind
        bound: list[str] = []
        pending = self._pool.pending if isinstance(self._pool, BindingConnectionPool) else None
        if pending is not None and bind is not None:
            signer = bind

            def bind_here(cnf: str) -> str:
                bound.append(cnf)
                return signer(cnf)

            pending[header] = bind_here
        d = self._post(url.rstrip("/") + path, body, header, bound)
        d.addTimeout(self.timeout if timeout is None else timeout, self._clock)
        self._in_flight.add(d)

        def done(result: Any) -> Any:
            self._in_flight.discard(d)
            if pending is not None:
                pending.pop(header, None)
            if isinstance(result, Failure):
                if result.check(PeerRequestFailed):
                    return result
                if result.check(ChannelProofError):
                    raise PeerRequestFailed("channel_binding", f"{url}: {result.value}")
                if result.check(TimeoutError):
                    raise PeerRequestFailed("timeout", url)
                if result.check(CancelledError):
                    raise PeerRequestFailed("cancelled", url)
                reason, detail = describe_failure(result)
                raise PeerRequestFailed(reason, f"{url}: {detail}")
            return result

        d.addBoth(done)
        if self._traffic is not None:
            traffic = self._traffic

            def counted(result: Any) -> Any:
                traffic.client(path, len(body), 0 if isinstance(result, Failure) else len(result.body))
                return result

            d.addBoth(counted)
        if self._duration is not None:
            duration = self._duration

            def measured(result: Any) -> Any:
                duration.labels(kind=request_kind(path), result=request_result(result)).observe(
                    self._clock.seconds() - started
                )
                return result

            d.addBoth(measured)
        return d

    @inlineCallbacks
    def _post(self, full_url: str, body: bytes, authorization: str, bound: list[str]) -> Any:
        headers = {b"Content-Type": [JSON.encode()], b"Authorization": [authorization.encode("ascii")]}
        response = yield self._http.request("POST", full_url, headers=headers, data=body)
        chunks: list[bytes] = []
        size = [0]

        def collector(data: bytes) -> None:
            size[0] += len(data)
            if size[0] > self._max_response:
                raise _TooLarge()
            chunks.append(data)

        try:
            # StubTreq offers collect() itself (it flushes its memory transport); treq's HTTPClient does not.
            collect = getattr(self._http, "collect", None) or treq_collect
            yield collect(response, collector)
        except _TooLarge:
            raise PeerRequestFailed("response_too_large", full_url, response.code) from None
        return RawResponse(
            status=response.code,
            body=b"".join(chunks),
            authorization=_first(response.headers, b"Authorization"),
            content_type=_first(response.headers, b"Content-Type"),
            retry_after=_first(response.headers, b"Retry-After"),
            channel=bound[0] if bound else None,
        )

    def cancel_all(self) -> None:
        """Cancel every request in flight (service stop): those waiting for a slot first, so that none
        goes out on a slot the others free."""
        for d in [*self._slots.waiting, *self._in_flight]:
            d.cancel()

    def close(self, timeout: float = 1.0) -> Deferred[None]:
        """Cancel what is in flight and close the pooled keep-alive connections (service stop, after
        the leave announcement), so they end before the reactor stops rather than being cut by it.

        Fires once they are closed, or after ``timeout`` seconds.
        """
        self.cancel_all()
        if self._pool is None:
            return succeed(None)
        d: Deferred[None] = self._pool.closeCachedConnections()
        d.addTimeout(timeout, self._clock)

        def gave_up(failure: Failure) -> None:
            failure.trap(TimeoutError)
            self.log.warn("pooled connections not closed after {timeout}s", timeout=timeout)

        d.addErrback(gave_up)
        return d
