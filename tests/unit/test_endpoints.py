"""The TCP endpoint of node-to-node connections (``tunmesh.endpoints``) and the control connection's
two deadlines (``ControlEndpointFactory``: TCP connect, then TLS handshake and channel proof)."""

from __future__ import annotations

from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI

from tests.unit.tls_support import self_signed, temp_dir
from tunmesh.endpoints import tcp_client_endpoint
from tunmesh.tls.binding import CTL_ALPN, ChannelProofError, ControlEndpointFactory
from tunmesh.tls.contexts import MeshTLSPolicy


class TCPEndpointTests(SynchronousTestCase):
    def test_an_ipv4_literal_connects_without_resolving(self) -> None:
        reactor = MemoryReactorClock()
        endpoint = tcp_client_endpoint(reactor, b"198.18.0.7", 4567, 5.0)
        self.assertIsInstance(endpoint, TCP4ClientEndpoint)
        endpoint.connect(Factory.forProtocol(Protocol))
        host, port, _factory, timeout, _bind = reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("198.18.0.7", 4567, 5.0))

    def test_an_ipv6_literal_with_or_without_brackets_connects_without_resolving(self) -> None:
        for host in ("fd7e:7e57::7", "[fd7e:7e57::7]", b"[fd7e:7e57::7]"):
            reactor = MemoryReactorClock()
            endpoint = tcp_client_endpoint(reactor, host, 4567, 3.0)
            self.assertIsInstance(endpoint, TCP6ClientEndpoint)
            endpoint.connect(Factory.forProtocol(Protocol))
            self.assertEqual(reactor.tcpClients[0][0], "fd7e:7e57::7")
            self.assertEqual(reactor.tcpClients[0][3], 3.0)

    def test_a_name_is_resolved_by_hostname_endpoint(self) -> None:
        for host in ("tunmesh.example", b"tunmesh.example", "198.18.0.999"):
            self.assertIsInstance(tcp_client_endpoint(MemoryReactorClock(), host, 4567, 5.0), HostnameEndpoint)


class ControlDeadlineTests(SynchronousTestCase):
    """TCP connect within ``timeout``; once connected, the TLS handshake and the proof within
    ``handshake_timeout``: a peer whose kernel accepted the connection is alive, maybe only busy."""

    def connect(self, handshake_timeout: float | None) -> tuple[MemoryReactorClock, list[object]]:
        cert, _key = self_signed(temp_dir(self), "node")
        policy = MeshTLSPolicy(cert, True, alpn=(CTL_ALPN,))
        reactor = MemoryReactorClock()
        factory = ControlEndpointFactory(reactor, policy, 5.0, handshake_timeout=handshake_timeout)
        results: list[object] = []
        endpoint = factory.endpointForURI(URI.fromBytes(b"https://198.18.0.7:4567/"))
        endpoint.connect(Factory.forProtocol(Protocol)).addBoth(results.append)
        host, port, tcp_factory, timeout, _bind = reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("198.18.0.7", 4567, 5.0))
        protocol = tcp_factory.buildProtocol(None)
        assert protocol is not None
        protocol.makeConnection(StringTransport())  # TCP connected; the server never answers
        return reactor, results

    def test_the_handshake_and_proof_may_take_the_handshake_timeout(self) -> None:
        reactor, results = self.connect(15.0)
        reactor.advance(14.9)
        self.assertEqual(results, [])
        reactor.advance(0.1)
        self.assertEqual(len(results), 1)
        error = results[0].value  # type: ignore[attr-defined]
        self.assertIsInstance(error, ChannelProofError)
        self.assertEqual(error.detail, "timeout")

    def test_without_a_handshake_timeout_the_connect_timeout_bounds_it(self) -> None:
        reactor, results = self.connect(None)
        reactor.advance(5.0)
        self.assertEqual(len(results), 1)
        self.assertIsInstance(results[0].value, ChannelProofError)  # type: ignore[attr-defined]
