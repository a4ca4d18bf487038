"""Control-plane channel binding (contract W5(a), issue 12 defect 6), over real TLS on 127.0.0.1.

A node (the in-memory harness's ``Node``, its resource served by the real hardened server factory)
and a relay that holds the same trusted certificate and forwards plaintext between its two TLS
sessions. The client of the mesh (``MeshClient.with_tls``) must refuse the relay before it writes any
request byte; a client that does not check the proof gets its relayed request refused by the node.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from tests.unit.mesh_support import SECRET, Node
from tests.unit.tls_support import self_signed, temp_dir
from tunmesh import ctlquery
from tunmesh.api.server import RouteLimits, make_server_factory, make_site
from tunmesh.auth.cluster import ClusterAuthority, ClusterKeyring
from tunmesh.auth.errors import AuthError
from tunmesh.auth.keys import b64url
from tunmesh.auth.tokens import unverified_parts
from tunmesh.mesh.client import BindingConnectionPool, MeshClient
from tunmesh.mesh.errors import PeerRequestFailed
from tunmesh.mesh.exchange import REGISTER_PATH
from tunmesh.testing import FakeNetwork
from tunmesh.tls.binding import CTL_ALPN, ChannelProofFactory
from tunmesh.tls.contexts import MeshTLSPolicy, client_context, server_context

OTHER_SECRET = "another-cluster-secret-0123456789abcdefghijklmnop"


class _Back(Protocol):
    """The relay's connection to the real node."""

    def __init__(self, front: _RelayFront) -> None:
        self.front = front

    def dataReceived(self, data: bytes) -> None:
        assert self.front.transport is not None
        self.front.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.front.back = None
        if self.front.transport is not None:
            self.front.transport.loseConnection()


class _RelayFront(Protocol):
    """The relay's TLS server side: records the plaintext the client sends, forwards both ways."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.back: _Back | None = None
        self.queued: list[bytes] = []
        self.lost = False

    def connectionMade(self) -> None:
        creator = client_context(self.relay.cert, "127.0.0.1", True, alpn=(CTL_ALPN,))
        endpoint = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "127.0.0.1", self.relay.target_port))
        back = _Back(self)

        def connected(_: Any) -> None:
            transport: Any = back.transport
            if self.lost:
                transport.abortConnection()
                return
            self.back = back
            for data in self.queued:
                transport.write(data)
            self.queued = []

        def failed(_: Any) -> None:
            assert self.transport is not None
            self.transport.loseConnection()

        connectProtocol(endpoint, back).addCallbacks(connected, failed)

    def dataReceived(self, data: bytes) -> None:
        self.relay.from_client += data
        if self.back is None:
            self.queued.append(data)
        else:
            assert self.back.transport is not None
            self.back.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True
        if self.back is not None:
            transport: Any = self.back.transport
            transport.abortConnection()


class Relay:
    """A TLS-terminating relay on 127.0.0.1 holding a certificate the nodes trust (W5(a))."""

    def __init__(self, cert: Any, key: Any, target_port: int) -> None:
        self.cert = cert
        self.target_port = target_port
        self.from_client = b""
        factory = Factory.forProtocol(lambda: _RelayFront(self))
        tls = TLSMemoryBIOFactory(server_context(cert, key, alpn=(CTL_ALPN, b"http/1.1")), False, factory)
        self.port = reactor.listenTCP(0, tls, interface="127.0.0.1")  # type: ignore[arg-type]
        self.url = f"https://127.0.0.1:{cast(IPv4Address, self.port.getHost()).port}"


class BoundControlTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        directory = temp_dir(self)
        self.cert, self.key = self_signed(directory, "node", hostnames=("tunmesh.local",), ips=("127.0.0.1",))
        self.clock = Clock()
        net = FakeNetwork()
        self.a = Node(net, self.clock, 1)
        self.b = Node(net, self.clock, 2)
        limits = RouteLimits()
        self.b.api.register_limits(limits)
        site = make_site(self.b.resource, limits, reactor)
        proof = ChannelProofFactory(site, self.b.cluster.sign_channel_proof)
        factory = make_server_factory(
            site, server_context(self.cert, self.key, alpn=(CTL_ALPN, b"http/1.1")), {CTL_ALPN: proof}, reactor
        )
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(self.port.stopListening)
        self.port_number = cast(IPv4Address, self.port.getHost()).port
        self.url = f"https://127.0.0.1:{self.port_number}"
        self.relay = Relay(self.cert, self.key, self.port_number)
        self.addCleanup(self.relay.port.stopListening)

    def real_client(self, node: Node, verify: Any = None) -> MeshClient:
        """``node`` sends its control requests with the real, channel-bound client."""
        client = MeshClient.with_tls(reactor, MeshTLSPolicy(self.cert, True, alpn=(CTL_ALPN,)), timeout=5)
        client.verify_channel_with(verify or node.cluster.verify_channel_proof)
        node.membership.client = client
        node.membership.exchange.client = client
        self.addCleanup(client.close)
        return client

    @inlineCallbacks
    def test_bootstrap_over_a_bound_connection_works(self) -> Any:
        from twisted.internet.testing import EventLoggingObserver
        from twisted.logger import formatEvent, globalLogPublisher

        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.real_client(self.a)
        peer = yield self.a.membership.bootstrapper.bootstrap(self.url)
        self.assertEqual(peer, self.b.id)
        self.assertIn(self.a.id, self.b.peer_ids())
        self.assertEqual(self.b.counter("tunmesh_auth_failures_total"), 0)
        bound = [formatEvent(e) for e in events if "bound to their TLS session" in e.get("log_format", "")]
        self.assertEqual(bound, [f"control connections to 127.0.0.1:{self.port_number} are bound to "
                                 f"their TLS session (proved by {self.b.id})"])

    @inlineCallbacks
    def test_bound_requests_carry_the_sessions_exporter_value_and_so_do_answers(self) -> Any:
        client = self.real_client(self.a)
        body = self.a.membership.our_registration().to_json()
        request = self.a.cluster.sign_request("bootstrap", "POST", REGISTER_PATH, body, typ="tm-bootstrap+jwt")
        seen: list[str] = []
        assert isinstance(client._pool, BindingConnectionPool)
        client._pool.pending = _SpyDict(seen)
        response = yield client.post(self.url, REGISTER_PATH, body, request)
        self.assertEqual(response.status, 200)
        self.assertEqual(len(seen), 1)
        _, claims = unverified_parts(seen[0].split(" ", 1)[1])
        self.assertEqual(claims["cnf"], {"tm-exp": response.channel})
        self.assertEqual(claims["jti"], request.rid)  # same request id: response checks and replay unchanged
        _, answer = unverified_parts(response.authorization.split(" ", 1)[1])
        self.assertEqual(answer["cnf"], {"tm-exp": response.channel})
        self.a.cluster.verify_response(response.authorization, self.b.id, request, response.body, cnf=response.channel)

    @inlineCallbacks
    def test_relay_with_a_trusted_certificate_is_refused_before_any_request_byte(self) -> Any:
        client = self.real_client(self.a)
        with self.assertRaises(PeerRequestFailed) as caught:
            yield self.a.membership.bootstrapper.bootstrap(self.relay.url)
        self.assertEqual(caught.exception.reason, "channel_binding")
        self.assertIn("channel_binding", caught.exception.detail)
        self.assertEqual(self.relay.from_client, b"")  # nothing but the TLS handshake went through it
        self.assertNotIn(self.a.id, self.b.peer_ids())
        self.assertEqual(client.in_flight, 0)

    @inlineCallbacks
    def test_relayed_request_from_a_client_that_does_not_check_is_refused_by_the_node(self) -> Any:
        self.real_client(self.a, verify=lambda tokens, cnf: None)  # accepts any proof
        with self.assertRaises(PeerRequestFailed) as caught:
            yield self.a.membership.bootstrapper.bootstrap(self.relay.url)
        self.assertEqual(caught.exception.status, 401)
        self.assertIn(b"POST " + REGISTER_PATH.encode(), self.relay.from_client)  # it did read this one
        self.assertEqual(self.b.counter("tunmesh_auth_failures_total", reason="channel_binding"), 1)
        self.assertNotIn(self.a.id, self.b.peer_ids())

    @inlineCallbacks
    def test_request_without_cnf_is_refused_on_either_alpn(self) -> Any:
        body = self.a.membership.our_registration().to_json()
        client = self.real_client(self.a)
        unbound = self.a.cluster.sign_request("bootstrap", "POST", REGISTER_PATH, body, typ="tm-bootstrap+jwt")
        response = yield client.post(self.url, REGISTER_PATH, body, unbound.header_value)  # a str: sent as is
        self.assertEqual(response.status, 401)
        # plain http/1.1 (what curl and probes speak): no proof, and control routes refuse unbound tokens
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        agent = Agent(reactor, contextFactory=MeshTLSPolicy(self.cert, True), pool=pool)
        import treq

        again = self.a.cluster.sign_request("bootstrap", "POST", REGISTER_PATH, body, typ="tm-bootstrap+jwt")
        headers: dict[bytes | str, bytes | str] = {
            b"Authorization": again.header_value.encode(),
            b"Content-Type": b"application/json",
        }
        plain = yield treq.post(
            self.url + REGISTER_PATH,
            data=body,
            headers=headers,
            agent=agent,
        )
        yield plain.content()
        self.assertEqual(plain.code, 401)
        info = yield treq.get(self.url + "/tunmesh/control/v0/node_info", agent=agent)  # no token: not bound
        yield info.content()
        self.assertEqual(info.code, 200)
        self.assertEqual(self.b.counter("tunmesh_auth_failures_total", reason="channel_binding"), 2)

    @inlineCallbacks
    def test_node_with_another_secret_is_refused_before_any_request_byte(self) -> Any:
        other = ClusterAuthority(OTHER_SECRET, "node-x", self.clock)
        self.real_client(self.a, verify=other.verify_channel_proof)
        with self.assertRaises(PeerRequestFailed) as caught:
            yield self.a.membership.bootstrapper.bootstrap(self.url)
        self.assertEqual(caught.exception.reason, "channel_binding")
        self.assertEqual(self.b.counter("tunmesh_auth_failures_total"), 0)  # it never saw a request

    @inlineCallbacks
    def test_cli_query_is_bound_and_refuses_the_relay(self) -> Any:
        cli = ClusterAuthority(SECRET, "cli", self.clock)
        answer = yield deferToThread(
            ctlquery.request, self.url, "GET", "/tunmesh/control/v0/peers", b"", cli, self.cert, True, timeout=10
        )
        self.assertEqual((answer.status, answer.node_id), (200, self.b.id))
        with self.assertRaises(AuthError) as caught:
            yield deferToThread(
                ctlquery.request, self.relay.url, "GET", "/tunmesh/control/v0/peers", b"", cli, self.cert, True, timeout=10
            )
        self.assertEqual(caught.exception.reason, "channel_binding")
        self.assertEqual(self.relay.from_client, b"")
        other = ClusterAuthority(OTHER_SECRET, "cli", self.clock)
        with self.assertRaises(ctlquery.ProofRefused) as refused:
            yield deferToThread(ctlquery.request, self.url, "GET", "/tunmesh/control/v0/peers", b"", other, self.cert, True, timeout=10)
        self.assertEqual(refused.exception.reason, "bad_signature")  # same id "default", another secret
        self.assertEqual(self.b.counter("tunmesh_auth_failures_total"), 0)  # the node never saw a request


class _SpyDict(dict[str, Any]):
    """``BindingConnectionPool.pending`` that records the bound header values it hands out."""

    def __init__(self, seen: list[str]) -> None:
        super().__init__()
        self.seen = seen

    def pop(self, key: Any, default: Any = None) -> Any:
        bind = super().pop(key, default)
        if bind is None:
            return None

        def record(cnf: str) -> str:
            value: str = bind(cnf)
            self.seen.append(value)
            return value

        return record


class ChannelProofTests(SynchronousTestCase):
    """``ClusterAuthority.sign_channel_proof`` / ``verify_channel_proof``."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.cnf = b64url(b"s" * 32)

    def authority(self, secrets: dict[str, str], signing: str, node: str = "node-b") -> ClusterAuthority:
        return ClusterAuthority(ClusterKeyring(secrets, signing), node, self.clock)

    def test_the_proof_names_the_server_and_verifies_for_the_same_session(self) -> None:
        server = self.authority({"default": SECRET}, "default")
        client = self.authority({"default": SECRET}, "default", "node-a")
        self.assertEqual(client.verify_channel_proof(server.sign_channel_proof(self.cnf), self.cnf).iss, "node-b")

    def test_another_session_is_channel_binding(self) -> None:
        server = self.authority({"default": SECRET}, "default")
        client = self.authority({"default": SECRET}, "default", "node-a")
        with self.assertRaises(AuthError) as caught:
            client.verify_channel_proof(server.sign_channel_proof(self.cnf), b64url(b"c" * 32))
        self.assertEqual(caught.exception.reason, "channel_binding")

    def test_every_step_of_a_rotation_verifies(self) -> None:
        """The server proves under every secret it accepts, so a client holding any one of them
        (old only, both, new only) checks it, whichever the server signs with."""
        for server_secrets, signing in (({"old": SECRET, "new": OTHER_SECRET}, "new"),
                                        ({"old": SECRET, "new": OTHER_SECRET}, "old")):
            server = self.authority(server_secrets, signing)
            for client_secrets in ({"old": SECRET}, {"new": OTHER_SECRET}, server_secrets):
                client = self.authority(client_secrets, next(iter(client_secrets)), "node-a")
                self.assertEqual(client.verify_channel_proof(server.sign_channel_proof(self.cnf), self.cnf).iss,
                                 "node-b")

    def test_a_proof_is_not_a_request_and_a_request_is_not_a_proof(self) -> None:
        server = self.authority({"default": SECRET}, "default")
        request = server.sign_request("node-a", "POST", "/x", b"", cnf=self.cnf).header_value.split(" ", 1)[1]
        with self.assertRaises(AuthError) as caught:
            server.verify_channel_proof([request], self.cnf)
        self.assertEqual(caught.exception.reason, "wrong_type")
        proof = server.sign_channel_proof(self.cnf)[0]
        with self.assertRaises(AuthError):
            server.verify_request_head("Bearer " + proof, "POST", "/x", cnf=self.cnf)

    def test_garbage_proofs_are_refused_cleanly(self) -> None:
        client = self.authority({"default": SECRET}, "default", "node-a")
        server = self.authority({"default": SECRET}, "default")
        too_many = server.sign_channel_proof(self.cnf) * 17
        for tokens in ([], [""], ["a.b.c"], ["x" * 5000], ["[" * 3000], too_many):
            with self.assertRaises(AuthError):
                client.verify_channel_proof(tokens, self.cnf)


class ProofProtocolEdgeTests(SynchronousTestCase):
    """The two proof protocols on memory transports: deadlines, oversize, no TLS value."""

    def client(self) -> tuple[Any, Any, Clock]:
        from twisted.internet.testing import StringTransport

        from tunmesh.tls.binding import ChannelProofClientProtocol

        clock = Clock()
        proto = ChannelProofClientProtocol(Factory.forProtocol(Protocol), lambda tokens, cnf: None, clock, 5.0)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport, clock

    def failure_of(self, proto: Any) -> Any:
        failures: list[Any] = []
        proto.ready.addErrback(failures.append)
        self.assertEqual(len(failures), 1)
        return failures[0].value

    def test_no_proof_within_the_deadline_aborts_having_written_nothing(self) -> None:
        from tunmesh.tls.binding import ChannelProofError

        proto, transport, clock = self.client()
        clock.advance(5.0)
        error = self.failure_of(proto)
        self.assertIsInstance(error, ChannelProofError)
        self.assertEqual(error.detail, "timeout")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_an_oversized_proof_is_refused_at_its_length(self) -> None:
        proto, transport, clock = self.client()
        proto.dataReceived(b"\x7f\xff\xff\xff")
        self.assertEqual(self.failure_of(proto).detail, "oversized")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_proof_on_a_connection_without_tls_is_refused(self) -> None:
        proto, transport, _ = self.client()
        proto.dataReceived(b"\x00\x00\x00\x01x")
        self.assertEqual(self.failure_of(proto).detail, "channel_binding")
        self.assertEqual(transport.value(), b"")

    def test_the_server_without_a_tls_value_closes_without_a_proof_or_http(self) -> None:
        from twisted.internet.testing import StringTransport
        from zope.interface import directlyProvides

        from tunmesh.tls.binding import ChannelProofFactory

        built: list[Any] = []

        def build() -> Protocol:
            built.append(1)
            return Protocol()

        inner = Factory.forProtocol(build)
        factory = ChannelProofFactory(inner, lambda cnf: ["t"], Clock())
        transport = StringTransport()
        directlyProvides(transport, ISSLTransport)
        transport.getHandle = lambda: object()  # type: ignore[attr-defined]
        factory.buildProtocol(None).makeConnection(transport)
        self.assertEqual((transport.value(), built), (b"", []))
        self.assertTrue(transport.disconnecting)
