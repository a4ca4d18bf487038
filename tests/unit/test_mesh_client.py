"""MeshClient transport limits, and the client side refusing unsigned or mis-signed answers (W4)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from tests.unit.mesh_support import Node, advance, info, node_id, reg_body
from tunmesh.auth.cluster import ClusterAuthority
from tunmesh.mesh.client import CACHED_CONNECTION_TIMEOUT, MeshClient, request_kind
from tunmesh.mesh.errors import PeerRequestFailed
from tunmesh.metrics import Metrics
from tunmesh.testing import FakeNetwork, stub_treq

START = 1_700_000_000.0


class Fixed(Resource):
    """Answers every request with a fixed status, headers and body."""

    isLeaf = True

    def __init__(self, code: int, body: bytes, headers: dict[bytes, bytes] | None = None) -> None:
        super().__init__()
        self.code, self.body, self.headers = code, body, headers or {}
        self.requests: list[bytes] = []

    def render(self, request: Any) -> bytes:
        self.requests.append(request.content.read())
        request.setResponseCode(self.code)
        for k, v in self.headers.items():
            request.setHeader(k, v)
        return self.body


class ClientTests(SynchronousTestCase):
    def test_response_size_cap(self) -> None:
        client = MeshClient(stub_treq(Fixed(200, b"x" * 2000)), Clock(), 5.0, max_response=1000)
        failure = self.failureResultOf(client.post("https://a.test:1", "/p", b"{}", "Bearer t"), PeerRequestFailed)
        self.assertEqual(failure.value.reason, "response_too_large")
        self.assertEqual(client.in_flight, 0)

    def test_posts_json_with_token(self) -> None:
        target = Fixed(200, b"{}", {b"Content-Type": b"application/json; charset=utf-8", b"Retry-After": b"3"})
        client = MeshClient(stub_treq(target), Clock(), 5.0)
        response = self.successResultOf(client.post("https://a.test:1/", "/p", b'{"a":1}', "Bearer t"))
        self.assertEqual((response.status, response.body, response.retry_after), (200, b"{}", "3"))
        self.assertTrue(response.is_json())
        self.assertEqual(target.requests, [b'{"a":1}'])

    def test_timeout(self) -> None:
        net = FakeNetwork()
        net.add("https://a.test:1", Fixed(200, b""))
        net.hang.add("a.test:1")
        clock = Clock()
        client = MeshClient(net, clock, 2.0)
        d = client.post("https://a.test:1", "/p", b"{}", "Bearer t")
        self.assertNoResult(d)
        clock.advance(2.0)
        self.assertEqual(self.failureResultOf(d, PeerRequestFailed).value.reason, "timeout")

    def test_connection_refused(self) -> None:
        client = MeshClient(FakeNetwork(), Clock(), 2.0)
        failure = self.failureResultOf(client.post("https://a.test:1", "/p", b"{}", "Bearer t"), PeerRequestFailed)
        self.assertEqual(failure.value.reason, "transport")


class ConcurrencyTests(SynchronousTestCase):
    """At most ``max_concurrent`` requests are out at once; the rest wait in order, and a request's
    deadline starts when it goes out (a queue is not a timeout)."""

    def setUp(self) -> None:
        self.net = FakeNetwork()
        self.target = Fixed(200, b"{}")
        self.net.add("https://a.test:1", self.target)
        self.net.add("https://b.test:1", self.target)
        self.net.hang.add("a.test:1")
        self.clock = Clock()
        self.client = MeshClient(self.net, self.clock, 2.0, max_concurrent=2)

    def test_requests_beyond_the_cap_wait_and_go_out_in_order_as_slots_free(self) -> None:
        hung = [self.client.post("https://a.test:1", "/p", b"1", "Bearer t") for _ in range(2)]
        queued = [self.client.post("https://b.test:1", "/p", str(i).encode(), "Bearer t") for i in range(3)]
        self.assertEqual(len(self.target.requests), 0)  # the two hung ones hold both slots
        self.assertEqual((self.client.in_flight, self.client.waiting), (5, 3))
        for d in queued:
            self.assertNoResult(d)
        self.clock.advance(1.9)  # waiting 1.9 s does not count against the queued requests' deadline
        for d in queued:
            self.assertNoResult(d)
        self.clock.advance(0.1)  # the hung ones time out and free their slots
        for d in hung:
            self.assertEqual(self.failureResultOf(d, PeerRequestFailed).value.reason, "timeout")
        for d in queued:
            self.assertEqual(self.successResultOf(d).status, 200)
        self.assertEqual(self.target.requests, [b"0", b"1", b"2"])
        self.assertEqual((self.client.in_flight, self.client.waiting), (0, 0))

    def test_a_waiting_request_is_cancelled_by_cancel_all_and_never_sent(self) -> None:
        hung = [self.client.post("https://a.test:1", "/p", b"1", "Bearer t") for _ in range(2)]
        queued = self.client.post("https://b.test:1", "/p", b"q", "Bearer t")
        self.client.cancel_all()
        self.assertEqual(self.failureResultOf(queued, PeerRequestFailed).value.reason, "cancelled")
        for d in hung:
            self.assertEqual(self.failureResultOf(d, PeerRequestFailed).value.reason, "cancelled")
        self.clock.advance(10)
        self.assertEqual(self.target.requests, [])
        self.assertEqual((self.client.in_flight, self.client.waiting), (0, 0))
        # the slots are free again
        self.assertEqual(self.successResultOf(self.client.post("https://b.test:1", "/p", b"x", "B")).status, 200)

    def test_the_cap_must_be_positive(self) -> None:
        with self.assertRaises(ValueError):
            MeshClient(self.net, self.clock, 2.0, max_concurrent=0)


class RequestDurationTests(SynchronousTestCase):
    """``tunmesh_mesh_request_duration_seconds{kind, result}``: how long control requests take."""

    def sample(self, metrics: Metrics, suffix: str, **labels: str) -> float | None:
        return metrics.collector_registry().get_sample_value(
            "tunmesh_mesh_request_duration_seconds" + suffix, labels
        )

    def test_answers_and_failures_are_measured_by_kind_and_result(self) -> None:
        metrics = Metrics("n", process_metrics=False)
        net = FakeNetwork()
        net.add("https://a.test:1", Fixed(401, b""))
        net.add("https://b.test:1", Fixed(200, b"{}"))
        net.hang.add("b.test:1")
        clock = Clock()
        client = MeshClient(net, clock, 2.0, metrics=metrics)
        self.successResultOf(client.post("https://a.test:1", "/tunmesh/auth/v0/init_session/x", b"{}", "Bearer t"))
        d = client.post("https://b.test:1", "/tunmesh/control/v0/registrations/register", b"{}", "Bearer t")
        clock.advance(2.0)
        self.failureResultOf(d, PeerRequestFailed)
        self.failureResultOf(client.post("https://c.test:1", "/tunmesh/control/v0/registrations/leave/x", b"{}", "B"))
        self.assertEqual(self.sample(metrics, "_count", kind="init_session", result="4xx"), 1.0)
        self.assertEqual(self.sample(metrics, "_sum", kind="register", result="timeout"), 2.0)
        self.assertEqual(self.sample(metrics, "_bucket", kind="register", result="timeout", le="1.0"), 0.0)
        self.assertEqual(self.sample(metrics, "_bucket", kind="register", result="timeout", le="2.5"), 1.0)
        self.assertEqual(self.sample(metrics, "_count", kind="leave", result="transport"), 1.0)

    def test_kinds_leave_ids_out(self) -> None:
        self.assertEqual(request_kind("/tunmesh/control/v0/registrations/register/0d9c"), "register")
        self.assertEqual(request_kind("/tunmesh/auth/v0/init_session"), "init_session")
        self.assertEqual(request_kind("/tunmesh/control/v0/peers"), "other")


class _Pool:
    """The part of ``HTTPConnectionPool`` that ``MeshClient.close`` uses."""

    def __init__(self) -> None:
        self.closing: list[Deferred[None]] = []

    def closeCachedConnections(self) -> Deferred[None]:  # noqa: N802 (Twisted's name)
        d: Deferred[None] = Deferred()
        self.closing.append(d)
        return d


class CloseTests(SynchronousTestCase):
    def test_close_waits_for_the_pooled_connections_to_close(self) -> None:
        pool = _Pool()
        client = MeshClient(stub_treq(Fixed(200, b"")), Clock(), 5.0, pool=pool)
        d = client.close()
        self.assertEqual(len(pool.closing), 1)
        self.assertNoResult(d)
        pool.closing[0].callback(None)
        self.assertIsNone(self.successResultOf(d))

    def test_close_gives_up_after_its_timeout(self) -> None:
        pool = _Pool()
        clock = Clock()
        client = MeshClient(stub_treq(Fixed(200, b"")), clock, 5.0, pool=pool)
        d = client.close(timeout=1.0)
        clock.advance(1.0)
        self.assertIsNone(self.successResultOf(d))

    def test_close_cancels_requests_in_flight(self) -> None:
        net = FakeNetwork()
        net.add("https://a.test:1", Fixed(200, b""))
        net.hang.add("a.test:1")
        client = MeshClient(net, Clock(), 2.0)
        request = client.post("https://a.test:1", "/p", b"{}", "Bearer t")
        self.successResultOf(client.close())
        self.assertEqual(self.failureResultOf(request, PeerRequestFailed).value.reason, "cancelled")


class UnsignedAnswerTests(SynchronousTestCase):
    """A bootstrap answer is followed only when it is signed for us by the node it names."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.net = FakeNetwork()

    def joiner(self, target_url: str) -> Node:
        node = Node(self.net, self.clock, 2, (target_url,))
        node.start()
        self.addCleanup(node.stop)
        advance(self.clock, 1)
        return node

    def test_unsigned_registration_answer_is_ignored(self) -> None:
        evil = reg_body(info(9, url="https://evil.test:4567"))
        self.net.add("https://lb.test:443", Fixed(200, evil, {b"Content-Type": b"application/json"}))
        node = self.joiner("https://lb.test:443")
        self.assertEqual(node.peer_ids(), set())
        self.assertGreaterEqual(node.counter("tunmesh_auth_failures_total", reason="missing"), 1)
        self.assertGreaterEqual(node.counter("tunmesh_mesh_bootstrap_attempts_total", result="response_auth"), 1)
        self.assertFalse(node.membership.ready())

    def test_answer_signed_with_another_secret_is_ignored(self) -> None:
        evil = reg_body(info(9, url="https://evil.test:4567"))
        forger = ClusterAuthority("not-the-cluster-secret-0123456789abcdefghij", node_id(9), self.clock)

        class Forging(Fixed):
            def render(self, request: Any) -> bytes:
                from tunmesh.auth.tokens import VerifiedToken

                fake = VerifiedToken(typ="tm-req+jwt", kid="cluster", iss=node_id(2), aud="bootstrap", iat=0, exp=1, bh="", jti="x")
                request.setHeader(b"Authorization", forger.sign_response(node_id(2), fake, evil).encode())
                return super().render(request)

        self.net.add("https://lb.test:443", Forging(200, evil, {b"Content-Type": b"application/json"}))
        node = self.joiner("https://lb.test:443")
        self.assertEqual(node.peer_ids(), set())
        self.assertGreaterEqual(node.counter("tunmesh_auth_failures_total", reason="bad_signature"), 1)

    def test_non_json_answer_is_refused(self) -> None:
        self.net.add("https://lb.test:443", Fixed(200, b"<html>", {b"Content-Type": b"text/html"}))
        node = self.joiner("https://lb.test:443")
        self.assertEqual(node.peer_ids(), set())
        self.assertGreaterEqual(node.counter("tunmesh_mesh_bootstrap_attempts_total", result="content_type"), 1)

    def test_error_status_backs_off(self) -> None:
        target = Fixed(500, b"Internal Server Error")
        self.net.add("https://lb.test:443", target)
        node = self.joiner("https://lb.test:443")
        advance(self.clock, 60)
        # passes every 5 s would be 12+; backoff (1, 2, 4, 8, 16, 32 s with jitter) allows far fewer
        self.assertLessEqual(len(target.requests), 8)
        self.assertGreaterEqual(len(target.requests), 3)
        self.assertEqual(node.peer_ids(), set())


class ConnectionCacheTests(SynchronousTestCase):
    def test_idle_connections_outlive_a_renewal_interval_at_rest_and_not_the_servers_idle_timeout(self) -> None:
        """Renewals at rest (stale_threshold / 2 + a groom tick apart) reuse their connection, no TLS
        handshake each; the server (``HardenedSite``) never closes it under a request."""
        import inspect

        from twisted.internet.testing import MemoryReactorClock

        from tunmesh.api.server import HardenedSite
        from tunmesh.config.tree import LocalRegistrationTiming, RegistrationTiming

        local, timing = LocalRegistrationTiming(), RegistrationTiming()
        self.assertGreater(CACHED_CONNECTION_TIMEOUT, local.stale_threshold / 2 + timing.groom_interval)
        server_idle = inspect.signature(HardenedSite.__init__).parameters["idle_timeout"].default
        self.assertLess(CACHED_CONNECTION_TIMEOUT, server_idle)
        client = MeshClient.with_tls(MemoryReactorClock(), object(), timeout=5)
        self.assertEqual(client._pool.cachedConnectionTimeout, CACHED_CONNECTION_TIMEOUT)
