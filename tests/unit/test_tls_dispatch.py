"""ALPN dispatch tests: real TLS in memory (iosim) plus the handshake deadline on a Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.unit.tls_support import Recorder, self_signed, settle, temp_dir
from tunmesh.tls.contexts import client_context, server_context
from tunmesh.tls.dispatch import ALPNDispatchFactory, IAcceptTimeAware


class _Collect(Factory):
    def __init__(self, greeting: bytes = b"") -> None:
        self.built: list[Recorder] = []
        self.greeting = greeting

    def buildProtocol(self, addr: Any) -> Recorder:
        proto = Recorder(self.greeting)
        self.built.append(proto)
        return proto


class DispatchOverTLSTests(SynchronousTestCase):
    def setUp(self) -> None:
        directory = temp_dir(self)
        self.cert, self.key = self_signed(directory, "node")
        self.http = _Collect()
        self.link = _Collect()
        self.clock = Clock()
        # server_context offers only http/1.1 itself: the dispatch factory adds tunmesh-link/1.
        dispatch = ALPNDispatchFactory(self.http, {b"tunmesh-link/1": self.link}, clock=self.clock,
                                       handshake_timeout=10.0)
        self.server_factory = TLSMemoryBIOFactory(server_context(self.cert, self.key), False, dispatch,
                                                  clock=self.clock)

    def _connect(self, alpn: tuple[bytes, ...], greeting: bytes = b"hello") -> Recorder:
        client_app = Recorder(greeting)
        client_factory = TLSMemoryBIOFactory(client_context(self.cert, "tunmesh.local", True, alpn=alpn), True,
                                             Factory.forProtocol(lambda: client_app), clock=self.clock)
        _, _, pump = connectedServerAndClient(lambda: self.server_factory.buildProtocol(None),
                                              lambda: client_factory.buildProtocol(None))
        settle(pump, self.clock)
        self.pump = pump
        return client_app

    def test_link_alpn_reaches_alternative(self) -> None:
        client = self._connect((b"tunmesh-link/1",))
        self.assertTrue(client.handshake_done)
        self.assertEqual([p.data for p in self.link.built], [b"hello"])
        self.assertEqual(self.http.built, [])

    def test_http_alpn_reaches_default(self) -> None:
        self._connect((b"http/1.1",))
        self.assertEqual([p.data for p in self.http.built], [b"hello"])
        self.assertEqual(self.link.built, [])

    def test_no_alpn_reaches_default(self) -> None:
        self._connect(())
        self.assertEqual([p.data for p in self.http.built], [b"hello"])

    def test_server_speaks_first(self) -> None:
        self.link.greeting = b"welcome"
        client = self._connect((b"tunmesh-link/1",), greeting=b"")
        self.assertEqual(client.data, b"welcome")
        self.assertTrue(self.link.built[0].handshake_done)

    def test_connection_lost_forwarded(self) -> None:
        client = self._connect((b"tunmesh-link/1",))
        assert client.transport is not None
        client.transport.loseConnection()
        settle(self.pump, self.clock)
        self.assertIsNotNone(self.link.built[0].lost)

    def test_handshake_deadline_cancelled_after_handshake(self) -> None:
        self._connect((b"http/1.1",))
        self.clock.advance(60)
        self.assertIsNone(self.http.built[0].lost)


@implementer(IAcceptTimeAware)
class _AcceptAware(Protocol):
    accepted_at: float | None = None

    def connectionAcceptedAt(self, when: float) -> None:
        self.accepted_at = when


class DispatchWithoutTLSTests(SynchronousTestCase):
    def test_handshake_deadline(self) -> None:
        clock = Clock()
        factory = ALPNDispatchFactory(_Collect(), {}, clock=clock, handshake_timeout=10.0)
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        clock.advance(9.9)
        self.assertFalse(transport.disconnected)
        clock.advance(0.1)
        self.assertTrue(transport.disconnected)

    def test_first_data_chooses_default_and_passes_accept_time(self) -> None:
        clock = Clock()
        clock.advance(5)
        built: list[_AcceptAware] = []

        def build() -> _AcceptAware:
            built.append(_AcceptAware())
            return built[-1]

        inner_factory = Factory.forProtocol(build)
        factory = ALPNDispatchFactory(inner_factory, {b"x": _Collect()}, clock=clock, handshake_timeout=10.0)
        proto = factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        clock.advance(3)
        proto.dataReceived(b"GET")
        self.assertEqual(built[0].accepted_at, 5.0)
        self.assertEqual(clock.getDelayedCalls(), [])
        proto.connectionLost(Failure(RuntimeError("gone")))

    def test_refusing_inner_factory_closes(self) -> None:
        class Refuse(Factory):
            def buildProtocol(self, addr: Any) -> None:
                return None

        factory = ALPNDispatchFactory(Refuse(), {}, clock=Clock())
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"x")
        proto.dataReceived(b"y")
        self.assertTrue(transport.disconnecting)

    def test_acceptable_protocols_and_start_stop(self) -> None:
        http, link = _Collect(), _Collect()
        factory = ALPNDispatchFactory(http, {b"tunmesh-link/1": link, b"other": http}, clock=Clock())
        self.assertEqual(factory.acceptableProtocols(), [b"tunmesh-link/1", b"other", b"http/1.1"])
        factory.doStart()
        self.assertEqual((http.numPorts, link.numPorts), (1, 1))
        factory.doStop()
        self.assertEqual((http.numPorts, link.numPorts), (0, 0))
