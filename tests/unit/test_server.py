"""Tests for tunmesh.api.server: limits before the body, deadlines, caps, constant error bodies."""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from tunmesh import twisted_internals
from tunmesh.api.server import (
    CONSTANT_BODIES,
    ConnectionLimitFactory,
    HardenedChannel,
    HardenedSite,
    Refusal,
    RequestHead,
    RouteLimits,
    SourceRateLimiter,
    make_site,
    normalise_target,
)
from tunmesh.metrics import Metrics

PEER = IPv4Address("TCP", "198.18.0.7", 40000)


class _App:
    """A tiny klein app: an echo route, a GET route, a failing route, a route answering 404 itself."""

    app = Klein()

    def __init__(self) -> None:
        self.calls: list[str] = []

    @app.route("/echo", methods=["POST"])
    def echo(self, request: Any) -> bytes:
        self.calls.append("echo")
        return b"got:" + request.content.read()

    @app.route("/hello", methods=["GET"])
    def hello(self, request: Any) -> bytes:
        self.calls.append("hello:" + request.uri.decode())
        return b"hi"

    @app.route("/boom", methods=["GET"])
    def boom(self, request: Any) -> bytes:
        self.calls.append("boom")
        raise RuntimeError("secret-token-value")

    @app.route("/missing", methods=["GET"])
    def missing(self, request: Any) -> bytes:
        request.setResponseCode(404)
        return b"node 1234 does not exist"

    @app.route("/protected", methods=["POST"])
    def protected(self, request: Any) -> bytes:
        self.calls.append("protected")
        return b"ok"


def _parse(raw: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """Status, headers (lower-cased names), body of the first response in ``raw``."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding") == b"chunked":
        body = _dechunk(body)
    return status, headers, body


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


class _Harness:
    def __init__(self, limits: RouteLimits | None = None, metrics: Any = None) -> None:
        self.clock = Clock()
        self.app = _App()
        self.limits = limits or RouteLimits()
        self.metrics = metrics
        self.site = make_site(self.app.app.resource(), self.limits, self.clock, metrics=metrics)

    def connect(self) -> tuple[HardenedChannel, StringTransport]:
        channel = self.site.buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        channel.makeConnection(transport)
        return channel, transport


class RouteLimitsTests(SynchronousTestCase):
    def test_default_limits(self) -> None:
        limits = RouteLimits()
        self.assertEqual(limits.lookup(b"POST", "/x"), (4096, None))
        self.assertEqual(limits.lookup(b"GET", "/x"), (0, None))
        self.assertEqual(limits.lookup(b"HEAD", "/x"), (0, None))

    def test_first_match_and_head_as_get(self) -> None:
        limits = RouteLimits()

        def check(head: RequestHead) -> None:
            return None

        limits.add(b"post", r"/a/[^/]+", 100, check)
        limits.add(b"POST", r"/a/.*", 200)
        limits.add(b"GET", r"/big", 50)
        self.assertEqual(limits.lookup(b"POST", "/a/b"), (100, check))
        self.assertEqual(limits.lookup(b"POST", "/a/b/c"), (200, None))
        self.assertEqual(limits.lookup(b"POST", "/a/b/extra-suffix/"), (200, None))
        self.assertEqual(limits.lookup(b"HEAD", "/big"), (50, None))
        # fullmatch: a prefix is not a match
        self.assertEqual(limits.lookup(b"POST", "/x/a/b"), (4096, None))

    def test_bad_limits(self) -> None:
        self.assertRaises(ValueError, RouteLimits, -1)
        self.assertRaises(ValueError, RouteLimits().add, b"POST", "/", -1)
        self.assertRaises(ValueError, Refusal, 200)

    def test_normalise_target(self) -> None:
        self.assertEqual(normalise_target(b"https://h:4567/tunmesh/x?a=1"), b"/tunmesh/x?a=1")
        self.assertEqual(normalise_target(b"HTTP://h"), b"/")
        self.assertEqual(normalise_target(b"/plain"), b"/plain")
        self.assertEqual(normalise_target(b"*"), b"*")


class BodyLimitTests(SynchronousTestCase):
    def test_oversize_content_length_refused_before_body(self) -> None:
        h = _Harness()
        channel, transport = h.connect()
        channel.dataReceived(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n\r\n")
        status, headers, body = _parse(transport.value())
        self.assertEqual(status, 413)
        self.assertEqual(body, b"Request Entity Too Large")
        self.assertEqual(headers[b"connection"], b"close")
        self.assertTrue(transport.disconnecting)
        request = channel.requests[-1]
        # The body now arrives anyway: nothing is buffered, nothing reaches the handler.
        for _ in range(10):
            channel.dataReceived(b"x" * 1048576)
        self.assertEqual(request.content.tell(), 0)
        self.assertEqual(h.app.calls, [])
        self.assertEqual(transport.value().count(b"HTTP/1.1"), 1)

    def test_refused_peer_that_stalls_is_aborted(self) -> None:
        h = _Harness()
        channel, transport = h.connect()
        channel.dataReceived(b"POST /echo HTTP/1.1\r\nContent-Length: 999999\r\n\r\n")
        self.assertFalse(transport.disconnected)
        h.clock.advance(channel.abortTimeout)
        self.assertTrue(transport.disconnected)

    def test_body_within_limit_is_served_from_memory(self) -> None:
        h = _Harness()
        channel, transport = h.connect()
        channel.dataReceived(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        status, headers, body = _parse(transport.value())
        self.assertEqual((status, body), (200, b"got:hello"))
        self.assertNotIn(b"server", headers)
        self.assertEqual(h.app.calls, ["echo"])

    def test_route_limit_applies(self) -> None:
        limits = RouteLimits()
        limits.add(b"POST", r"/echo", 8)
        h = _Harness(limits)
        channel, transport = h.connect()
        channel.dataReceived(b"POST /echo HTTP/1.1\r\nContent-Length: 9\r\n\r\n")
        self.assertEqual(_parse(transport.value())[0], 413)
        channel, transport = h.connect()
        channel.dataReceived(b"POST /echo HTTP/1.1\r\nContent-Length: 8\r\n\r\n12345678")
        self.assertEqual(_parse(transport.value())[:3:2], (200, b"got:12345678"))

    def test_large_allowed_body_never_uses_a_temp_file(self) -> None:
        limits = RouteLimits()
        limits.add(b"POST", r"/echo", 300_000)
        h = _Harness(limits)
        channel, transport = h.connect()
        channel.dataReceived(b"POST /echo HTTP/1.1\r\nContent-Length: 200000\r\n\r\n")
        request = channel.requests[-1]
        self.assertEqual(type(request.content).__name__, "BytesIO")
        channel.dataReceived(b"a" * 200000)
        status, _, body = _parse(transport.value())
        self.assertEqual((status, len(body)), (200, 200004))

    def test_get_with_body_refused(self) -> None:
        h = _Harness()
        channel, transport = h.connect()
        channel.dataReceived(b"GET /hello HTTP/1.1\r\nContent-Length: 1\r\n\r\nx")
        self.assertEqual(_parse(transport.value())[0], 413)
        self.assertEqual(h.app.calls, [])

    def test_chunked_oversize_aborted_at_limit(self) -> None:
        limits = RouteLimits()
        limits.add(b"POST", r"/echo", 100)
        h = _Harness(limits)
        channel, transport = h.connect()
        channel.dataReceived(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        request = channel.requests[-1]
        self.assertEqual(transport.value(), b"")
        channel.dataReceived(b"40\r\n" + b"a" * 64 + b"\r\n")
        self.assertEqual(transport.value(), b"")
        channel.dataReceived(b"40\r\n" + b"b" * 64 + b"\r\n")
        status, _, body = _parse(transport.value())
        self.assertEqual((status, body), (413, b"Request Entity Too Large"))
        self.assertLessEqual(request.content.tell(), 100)
        channel.dataReceived(b"1000\r\n" + b"c" * 4096 + b"\r\n0\r\n\r\n")
        self.assertLessEqual(request.content.tell(), 100)
        self.assertEqual(h.app.calls, [])

    def test_chunked_within_limit(self) -> None:
        h = _Harness()
        channel, transport = h.connect()
        channel.dataReceived(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        self.assertEqual(_parse(transport.value())[:3:2], (200, b"got:abc"))

    def test_header_block_limit(self) -> None:
        h = _Harness()
        channel, transport = h.connect()
        channel.dataReceived(b"GET /hello HTTP/1.1\r\n")
        for i in range(40):
            channel.dataReceived(b"X-Pad-%d: %s\r\n" % (i, b"p" * 500))  # goes on after the 400
        self.assertEqual(_parse(transport.value())[0], 400)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(h.app.calls, [])


class PreAuthTests(SynchronousTestCase):
    def _harness(self, answer: Any) -> tuple[_Harness, list[RequestHead]]:
        seen: list[RequestHead] = []

        def pre_auth(head: RequestHead) -> Any:
            seen.append(head)
            if isinstance(answer, Exception):
                raise answer
            return answer

        limits = RouteLimits()
        limits.add(b"POST", r"/protected", 1000, pre_auth)
        self.metrics = Metrics("node-a", enabled=True, process_metrics=False)
        return _Harness(limits, self.metrics), seen

    def test_401_before_body(self) -> None:
        h, seen = self._harness(401)
        channel, transport = h.connect()
        channel.dataReceived(
            b"POST https://n1:4567/protected HTTP/1.1\r\nAuthorization: Bearer: abc\r\nContent-Length: 500\r\n\r\n"
        )
        status, headers, body = _parse(transport.value())
        self.assertEqual((status, body), (401, b"Unauthorized"))
        self.assertEqual(seen[0].method, b"POST")
        self.assertEqual(seen[0].path, "/protected")
        self.assertEqual(seen[0].peer_host, "198.18.0.7")
        self.assertEqual(seen[0].headers.getRawHeaders(b"authorization"), [b"Bearer: abc"])
        channel.dataReceived(b"z" * 500)
        self.assertEqual(channel.requests[-1].content.tell(), 0)
        self.assertEqual(h.app.calls, [])
        self.assertNotIn(b"abc", transport.value())

    def test_429_has_retry_after(self) -> None:
        h, _ = self._harness(Refusal(429, retry_after=7))
        channel, transport = h.connect()
        channel.dataReceived(b"POST /protected HTTP/1.1\r\nContent-Length: 2\r\n\r\n")
        status, headers, body = _parse(transport.value())
        self.assertEqual((status, headers[b"retry-after"], body), (429, b"7", b"Too Many Requests"))

    def test_plain_429_gets_default_retry_after(self) -> None:
        h, _ = self._harness(429)
        channel, transport = h.connect()
        channel.dataReceived(b"POST /protected HTTP/1.1\r\nContent-Length: 2\r\n\r\n")
        self.assertEqual(_parse(transport.value())[1][b"retry-after"], b"10")

    def test_none_goes_on(self) -> None:
        h, seen = self._harness(None)
        channel, transport = h.connect()
        channel.dataReceived(b"POST /protected HTTP/1.1\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(_parse(transport.value())[:3:2], (200, b"ok"))
        self.assertEqual(len(seen), 1)

    def test_raising_pre_auth_is_500_and_counted(self) -> None:
        h, _ = self._harness(KeyError("secret-in-exception"))
        channel, transport = h.connect()
        channel.dataReceived(b"POST /protected HTTP/1.1\r\nContent-Length: 2\r\n\r\n")
        status, _, body = _parse(transport.value())
        self.assertEqual((status, body), (500, b"Internal Server Error"))
        self.assertNotIn(b"secret", transport.value())
        self.assertIn(b'tunmesh_errors_total{where="pre_auth"} 1.0', self.metrics.render()[0])
        self.flushLoggedErrors(KeyError)

    def test_oversize_is_413_without_asking_pre_auth(self) -> None:
        h, seen = self._harness(None)
        channel, transport = h.connect()
        channel.dataReceived(b"POST /protected HTTP/1.1\r\nContent-Length: 1001\r\n\r\n")
        self.assertEqual(_parse(transport.value())[0], 413)
        self.assertEqual(seen, [])


class TargetAndErrorBodyTests(SynchronousTestCase):
    def test_absolute_form_target(self) -> None:
        h = _Harness()
        channel, transport = h.connect()
        channel.dataReceived(b"GET https://node1:4567/hello?x=1 HTTP/1.1\r\nHost: node1\r\n\r\n")
        self.assertEqual(_parse(transport.value())[:3:2], (200, b"hi"))
        self.assertEqual(h.app.calls, ["hello:/hello?x=1"])

    def test_unknown_route_404_constant(self) -> None:
        h = _Harness()
        channel, transport = h.connect()
        channel.dataReceived(b"GET /nope/<script> HTTP/1.1\r\n\r\n")
        status, headers, body = _parse(transport.value())
        self.assertEqual((status, body), (404, b"Not Found"))
        self.assertEqual(headers[b"content-type"], b"text/plain; charset=utf-8")
        self.assertEqual(headers[b"content-length"], b"9")

    def test_handler_404_body_replaced(self) -> None:
        h = _Harness()
        channel, transport = h.connect()
        channel.dataReceived(b"GET /missing HTTP/1.1\r\n\r\n")
        self.assertEqual(_parse(transport.value())[:3:2], (404, b"Not Found"))
        self.assertNotIn(b"1234", transport.value())

    def test_wrong_method_405_constant(self) -> None:
        h = _Harness()
        channel, transport = h.connect()
        channel.dataReceived(b"GET /echo HTTP/1.1\r\n\r\n")
        status, headers, body = _parse(transport.value())
        self.assertEqual((status, body), (405, b"Method Not Allowed"))
        self.assertEqual(headers[b"content-type"], b"text/plain; charset=utf-8")

    def test_handler_exception_500_constant_and_counted(self) -> None:
        metrics = Metrics("node-a", enabled=True, process_metrics=False)
        h = _Harness(metrics=metrics)
        channel, transport = h.connect()
        channel.dataReceived(b"GET /boom HTTP/1.1\r\n\r\n")
        status, _, body = _parse(transport.value())
        self.assertEqual((status, body), (500, CONSTANT_BODIES[500]))
        self.assertNotIn(b"secret-token-value", transport.value())
        self.assertIn(b'tunmesh_errors_total{where="api"} 1.0', metrics.render()[0])
        self.assertFalse(transport.disconnecting)
        self.flushLoggedErrors(RuntimeError)

    def test_plain_resource_500_without_metrics(self) -> None:
        class Broken(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> bytes:
                raise ValueError("x")

        clock = Clock()
        site = make_site(Broken(), RouteLimits(), clock)
        channel = site.buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        channel.makeConnection(transport)
        channel.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(_parse(transport.value())[:3:2], (500, b"Internal Server Error"))
        self.flushLoggedErrors(ValueError)

    def test_keep_alive_two_requests(self) -> None:
        h = _Harness()
        channel, transport = h.connect()
        channel.dataReceived(b"GET /hello HTTP/1.1\r\n\r\nGET /hello HTTP/1.1\r\n\r\n")
        self.assertEqual(transport.value().count(b"HTTP/1.1 200"), 2)
        self.assertFalse(transport.disconnecting)


class DeadlineTests(SynchronousTestCase):
    def test_header_deadline_from_connect(self) -> None:
        h = _Harness()
        channel, transport = h.connect()
        channel.dataReceived(b"GET /hello HTTP/1.1\r\nX-A: 1\r\n")
        h.clock.advance(9.9)
        channel.dataReceived(b"X-B: 2\r\n")  # trickling bytes does not extend the deadline
        self.assertFalse(transport.disconnected)
        h.clock.advance(0.1)
        self.assertTrue(transport.disconnected)

    def test_header_deadline_counts_from_accept(self) -> None:
        h = _Harness()
        h.clock.advance(100)
        channel = h.site.buildProtocol(PEER)
        channel.connectionAcceptedAt(h.clock.seconds() - 8.0)
        transport = StringTransport(peerAddress=PEER)
        channel.makeConnection(transport)
        h.clock.advance(1.9)
        self.assertFalse(transport.disconnected)
        h.clock.advance(0.1)
        self.assertTrue(transport.disconnected)

    def test_complete_headers_cancel_deadline(self) -> None:
        h = _Harness()
        channel, transport = h.connect()
        channel.dataReceived(b"GET /hello HTTP/1.1\r\n\r\n")
        h.clock.advance(30)  # below the 60 s idle timeout: keep-alive connections are not churned
        self.assertFalse(transport.disconnecting)
        # The next request gets a fresh header deadline from its first byte.
        channel.dataReceived(b"GET /hel")
        h.clock.advance(10)
        self.assertTrue(transport.disconnected)

    def test_body_deadline(self) -> None:
        h = _Harness()
        channel, transport = h.connect()
        channel.dataReceived(b"POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\n")
        h.clock.advance(29)
        channel.dataReceived(b"x" * 10)
        self.assertFalse(transport.disconnected)
        h.clock.advance(1)
        self.assertTrue(transport.disconnected)
        self.assertEqual(h.app.calls, [])

    def test_body_in_time_is_served(self) -> None:
        h = _Harness()
        channel, transport = h.connect()
        channel.dataReceived(b"POST /echo HTTP/1.1\r\nContent-Length: 4\r\n\r\n")
        h.clock.advance(29)
        channel.dataReceived(b"abcd")
        h.clock.advance(5)
        self.assertEqual(_parse(transport.value())[:3:2], (200, b"got:abcd"))
        self.assertFalse(transport.disconnected)

    def test_idle_timeout_still_applies(self) -> None:
        h = _Harness()
        channel, transport = h.connect()
        channel.dataReceived(b"GET /hello HTTP/1.1\r\n\r\n")
        h.clock.advance(60)
        self.assertTrue(transport.disconnecting)

    def test_bad_timeouts(self) -> None:
        self.assertRaises(ValueError, HardenedSite, Resource(), RouteLimits(), Clock(), 0)


class _Echo(Protocol):
    pass


class ConnectionCapTests(SynchronousTestCase):
    def _connect(self, factory: ConnectionLimitFactory, host: str) -> Any:
        proto = factory.buildProtocol(IPv4Address("TCP", host, 1234))
        if proto is not None:
            proto.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", host, 1234)))
        return proto

    def test_per_peer_cap_enforced_and_released(self) -> None:
        metrics = Metrics("node-a", enabled=True, process_metrics=False)
        factory = ConnectionLimitFactory(Factory.forProtocol(_Echo), max_per_peer=2, max_total=10,
                                         clock=Clock(), metrics=metrics)
        first = self._connect(factory, "198.18.0.1")
        second = self._connect(factory, "198.18.0.1")
        self.assertIsNotNone(first)
        self.assertIsNotNone(second)
        self.assertIsNone(self._connect(factory, "198.18.0.1"))
        self.assertIsNotNone(self._connect(factory, "198.18.0.2"))
        self.assertEqual(factory.connections_from("198.18.0.1"), 2)
        first.connectionLost(None)
        self.assertEqual(factory.connections_from("198.18.0.1"), 1)
        self.assertIsNotNone(self._connect(factory, "198.18.0.1"))
        self.assertEqual(factory.total, 3)
        self.assertIn(b'tunmesh_connections_refused_total{cap="peer"} 1.0', metrics.render()[0])

    def test_global_cap(self) -> None:
        factory = ConnectionLimitFactory(Factory.forProtocol(_Echo), max_per_peer=5, max_total=2)
        a = self._connect(factory, "198.18.0.1")
        self._connect(factory, "198.18.0.2")
        self.assertIsNone(self._connect(factory, "198.18.0.3"))
        a.connectionLost(None)
        self.assertEqual(factory.total, 1)
        self.assertIsNotNone(self._connect(factory, "198.18.0.3"))
        self.assertIsNone(self._connect(factory, "198.18.0.4"))

    def test_bad_caps(self) -> None:
        self.assertRaises(ValueError, ConnectionLimitFactory, Factory.forProtocol(_Echo), 0, 10)
        self.assertRaises(ValueError, ConnectionLimitFactory, Factory.forProtocol(_Echo), 1, 0)


class SourceRateLimiterTests(SynchronousTestCase):
    def test_burst_then_rate(self) -> None:
        clock = Clock()
        limiter = SourceRateLimiter(clock, rate=20, burst=5)
        self.assertEqual([limiter.allow("a") for _ in range(6)], [True] * 5 + [False])
        clock.advance(0.05)  # one token back
        self.assertEqual([limiter.allow("a"), limiter.allow("a")], [True, False])
        clock.advance(10)  # refills to the burst, not beyond
        self.assertEqual(sum(limiter.allow("a") for _ in range(10)), 5)

    def test_sources_are_independent(self) -> None:
        limiter = SourceRateLimiter(Clock(), rate=1, burst=1)
        self.assertTrue(limiter.allow("a"))
        self.assertFalse(limiter.allow("a"))
        self.assertTrue(limiter.allow("b"))

    def test_state_is_bounded_least_recent_first(self) -> None:
        limiter = SourceRateLimiter(Clock(), rate=1, burst=1, max_sources=3)
        for s in ("a", "b", "c"):
            limiter.allow(s)
        limiter.allow("a")  # a is now the most recent
        limiter.allow("d")  # evicts b
        self.assertEqual(len(limiter), 3)
        self.assertTrue(limiter.allow("b"))  # forgotten: a full bucket again
        self.assertFalse(limiter.allow("a"))

    def test_bad_parameters(self) -> None:
        for kw in ({"rate": 0}, {"burst": 0}, {"max_sources": 0}):
            self.assertRaises(ValueError, SourceRateLimiter, Clock(), **kw)

    def test_site_answers_429_for_node_api_paths_only(self) -> None:
        metrics = Metrics("node-a", enabled=True, process_metrics=False)
        clock = Clock()
        root = Resource()
        tunmesh = Resource()
        root.putChild(b"tunmesh", tunmesh)
        tunmesh.putChild(b"x", _App().app.resource())
        root.putChild(b"hello", _App().app.resource())
        limiter = SourceRateLimiter(clock, rate=1, burst=2)
        site = make_site(root, RouteLimits(), clock, metrics=metrics, rate_limiter=limiter)

        def get(path: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
            channel = site.buildProtocol(PEER)
            transport = StringTransport(peerAddress=PEER)
            channel.makeConnection(transport)
            channel.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: n1\r\n\r\n")
            return _parse(transport.value())

        statuses = [get(b"/tunmesh/x/hello")[0] for _ in range(3)]
        self.assertEqual(statuses[:2], [200, 200])
        status, headers, body = get(b"/tunmesh/x/hello")
        self.assertEqual((status, headers[b"retry-after"], body), (429, b"1", b"Too Many Requests"))
        self.assertEqual([get(b"/hello/hello")[0] for _ in range(5)], [200] * 5)  # not under /tunmesh/
        self.assertIn(b'tunmesh_requests_rate_limited_total 2.0', metrics.render()[0])
        clock.advance(1)
        self.assertEqual(get(b"/tunmesh/x/hello")[0], 200)


class HardenedServerFallbackTests(SynchronousTestCase):
    """The hardened HTTP server on a Twisted that keeps the request line elsewhere (tunmesh.twisted_internals)."""

    def test_requests_are_served_and_targets_normalised(self) -> None:
        for constant in ("COMMAND", "PATH", "VERSION"):
            self.patch(twisted_internals, constant, "_renamed_by_a_future_twisted")
        h = _Harness()
        channel, transport = h.connect()
        channel.dataReceived(b"GET https://node1:4567/hello?x=1 HTTP/1.1\r\nHost: node1\r\n\r\n")
        self.assertEqual(_parse(transport.value())[:3:2], (200, b"hi"))
        self.assertEqual(h.app.calls, ["hello:/hello?x=1"])
        # Read as HTTP/1.0 (the cautious reading): the connection closes after the answer.
        self.assertTrue(transport.disconnecting)

    def test_bodies_keep_the_default_limit(self) -> None:
        self.patch(twisted_internals, "COMMAND", "_renamed_by_a_future_twisted")
        h = _Harness()
        channel, transport = h.connect()
        channel.dataReceived(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n\r\n")
        self.assertEqual(_parse(transport.value())[0], 413)
        self.assertEqual(h.app.calls, [])
