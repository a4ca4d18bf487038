"""The private Twisted names tunmesh uses (``tunmesh.twisted_internals``): each exists on the installed
Twisted and the fast path is taken; without them the public fallbacks keep the link and the HTTP server
correct."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from packaging.specifiers import SpecifierSet
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, Logger
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http
from zope.interface import implementer

import twisted
from tests.unit.tls_support import LoopbackServer
from tunmesh import preload
from tunmesh import twisted_internals as TI
from tunmesh.dataplane import frames as F
from tunmesh.dataplane.link import DirectTLSWriter
from tunmesh.tls.contexts import client_context


def without(case: SynchronousTestCase, constant: str) -> None:
    """Play a Twisted release that renamed the private name ``TI.<constant>`` (Twisted itself keeps working)."""
    case.patch(TI, constant, getattr(TI, constant) + "_renamed_by_a_future_twisted")


def recorded() -> tuple[list[LogEvent], Logger]:
    """A logger whose events land in the returned list."""
    events: list[LogEvent] = []
    return events, Logger(observer=cast(ILogObserver, events.append))


class NamesExistTests(SynchronousTestCase):
    def test_every_named_internal_exists_on_the_installed_twisted(self) -> None:
        self.assertEqual([f"{i.owner}.{i.name}" for i in TI.missing()], [], twisted.__version__)
        self.assertTrue(TI.fast_path_active())

    def test_the_installed_twisted_is_in_the_tested_range_setup_py_pins(self) -> None:
        setup_py = (Path(__file__).resolve().parents[2] / "setup.py").read_text()
        self.assertIn(f'"Twisted[tls]{TI.TESTED_RANGE}"', setup_py)
        self.assertIn(twisted.__version__, SpecifierSet(TI.TESTED_RANGE), "outside the tested range: run the unit suite on it, then widen the pin")

    def test_every_internal_says_what_it_does_without_the_name(self) -> None:
        for internal in TI.INTERNALS:
            self.assertTrue(internal.use and internal.fallback, internal)

    def test_a_missing_name_is_reported(self) -> None:
        gone = TI.Internal("twisted.protocols.tls.TLSMemoryBIOProtocol", "_gone", "use", "fallback")
        module = TI.Internal("twisted.internet._gone", TI.MODULE, "use", "fallback")
        self.assertEqual(TI.missing([*TI.INTERNALS, gone, module]), [gone, module])

    def test_start_logs_the_twisted_version_and_the_fast_path(self) -> None:
        events, log = recorded()
        TI.log_status(log)
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["twisted_version"], twisted.__version__)
        self.assertIn("fast path active", events[0]["log_format"])

    def test_start_log_names_what_is_missing(self) -> None:
        gone = TI.Internal("twisted.protocols.tls.TLSMemoryBIOProtocol", "_gone", "use", "fallback")
        events, log = recorded()
        TI.log_status(log, [*TI.INTERNALS, gone])
        self.assertIn("fast path OFF", events[0]["log_format"])
        self.assertEqual(events[0]["names"], "TLSMemoryBIOProtocol._gone")

    def test_private_modules_keeps_only_those_that_exist(self) -> None:
        self.assertEqual(TI.private_modules(("twisted.internet._idna", "twisted.internet._no_such")),
                         ("twisted.internet._idna",))
        self.assertIn("twisted.internet._idna", preload.PRELOAD_MODULES)


@implementer(IHandshakeListener)
class _Link(Protocol):
    """A link end over real TLS: writes one frame on the handshake, the way chosen by ``send``."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self.received = b""
        self.done: Deferred[bytes] = Deferred()
        self.writer: DirectTLSWriter | None = None
        self.fast_write = False
        self.lost: Deferred[None] = Deferred()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)

    def handshakeCompleted(self) -> None:
        self.writer = DirectTLSWriter.wrap(self.transport)
        self.fast_write = TI.ordered_write(self.transport) == getattr(self.transport, TI.WRITE, None)
        self._send(self)

    def dataReceived(self, data: bytes) -> None:
        # the echo prefixes each piece it reads with b"link:"
        self.received += data
        echoed = self.received.replace(b"link:", b"")
        if len(echoed) >= len(FRAME) + F.TAG_LEN and not self.done.called:
            assert self.transport is not None
            self.transport.loseConnection()
            self.done.callback(echoed)


FRAME = b"F" * 20000


def direct(proto: _Link) -> None:
    writer = proto.writer
    assert writer is not None and writer.usable()
    writer.write(FRAME, b"T" * F.TAG_LEN)
    writer.flush()


def ordered(proto: _Link) -> None:
    write = TI.ordered_write(proto.transport)
    write(FRAME)
    write(b"T" * F.TAG_LEN)


class RealTLSTests(LoopbackServer):
    """The link's write paths over a real TLS socket to the node's ALPN server (which echoes)."""

    def connect(self, send: Any) -> Deferred[_Link]:
        context = client_context(self.cert, "127.0.0.1", True, alpn=(b"tunmesh-link/1",))
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", self.port_number, context)
        return connectProtocol(endpoint, _Link(send))

    @inlineCallbacks
    def test_the_fast_path_is_taken(self) -> Any:
        proto = yield self.connect(direct)
        echoed = yield proto.done
        yield proto.lost
        self.assertIsNotNone(proto.writer)
        self.assertTrue(proto.fast_write)
        self.assertEqual(echoed, FRAME + b"T" * F.TAG_LEN)

    @inlineCallbacks
    def test_without_the_immediate_write_the_public_write_carries_the_link(self) -> Any:
        without(self, "WRITE")
        proto = yield self.connect(ordered)
        echoed = yield proto.done
        yield proto.lost
        self.assertIsNone(proto.writer)
        self.assertFalse(proto.fast_write)
        self.assertEqual(echoed, FRAME + b"T" * F.TAG_LEN)

    @inlineCallbacks
    def test_without_the_tls_buffer_state_the_direct_writer_stays_off(self) -> Any:
        without(self, "LOST_TLS")
        proto = yield self.connect(ordered)
        echoed = yield proto.done
        yield proto.lost
        self.assertIsNone(proto.writer)
        self.assertEqual(echoed, FRAME + b"T" * F.TAG_LEN)


class FallbackTests(SynchronousTestCase):
    """Each accessor on an object without the private name takes its public path."""

    def test_no_aggregator_means_the_public_write(self) -> None:
        t = StringTransport()
        t._write = t.write  # type: ignore[attr-defined]
        self.assertFalse(TI.flush_small_writes(t))
        self.assertEqual(TI.ordered_write(t), t.write)

    def test_tls_state_unknown_is_not_idle(self) -> None:
        self.assertFalse(TI.tls_cleartext_idle(StringTransport()))

    def test_tcp_state_unknown_is_not_idle(self) -> None:
        t = StringTransport()
        t.connected = True
        self.assertFalse(TI.tcp_send_idle(t))
        self.assertFalse(TI.direct_write_possible(t))

    def test_the_request_line_is_read_where_twisted_keeps_it(self) -> None:
        self.assertIsNone(TI.request_line(object()))
        channel = http.HTTPChannel()
        channel.makeConnection(StringTransport())
        self.addCleanup(channel.connectionLost, Exception("done"))
        channel.dataReceived(b"POST /x HTTP/1.1\r\n")
        self.assertEqual(TI.request_line(channel), (b"POST", b"/x", b"HTTP/1.1"))

    def test_100_continue_without_the_private_method(self) -> None:
        without(self, "SEND_100_CONTINUE")
        channel = http.HTTPChannel()
        transport = StringTransport()
        channel.makeConnection(transport)
        self.addCleanup(channel.connectionLost, Exception("done"))
        TI.send_100_continue(channel)
        self.assertEqual(transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")

    def test_disconnected_without_the_private_flag(self) -> None:
        without(self, "DISCONNECTED")
        channel = http.HTTPChannel()
        channel.makeConnection(StringTransport())
        request = http.Request(channel)
        self.assertFalse(TI.request_disconnected(request))
        request.channel = None  # type: ignore[assignment]
        self.assertTrue(TI.request_disconnected(request))
