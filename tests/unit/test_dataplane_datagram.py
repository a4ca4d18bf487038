"""The datagram path in memory: wire format, replay window, path states, and a link pair over a fake UDP wire."""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.support import B, Pair, ipv4
from tunmesh.dataplane import datagram as D
from tunmesh.dataplane import frames as F
from tunmesh.dataplane.link import tcp_socket
from tunmesh.dataplane.pollwindow import GAP, MIN_BACKOFF, PollWindow
from tunmesh.testing import FakeMetrics


class ReplayWindowTests(SynchronousTestCase):
    def test_each_counter_once_reordering_within_the_window(self) -> None:
        w = D.ReplayWindow()
        self.assertEqual([w.accept(c) for c in (1, 3, 2, 3, 1, 5000, 4999, 5000)], [True, True, True, False, False,
                                                                                     True, True, False])
        self.assertFalse(w.accept(5000 - D.REPLAY_WINDOW))  # too old to tell: refused
        self.assertTrue(w.accept(5000 - D.REPLAY_WINDOW + 1))
        self.assertFalse(w.accept(0))

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.integers(min_value=1, max_value=6000), max_size=300))
    def test_matches_a_set_model(self, counters: list[int]) -> None:
        """Accepted = never seen before and within the window of the highest seen so far."""
        w = D.ReplayWindow()
        seen: set[int] = set()
        highest = 0
        for c in counters:
            expect = c not in seen and c > highest - D.REPLAY_WINDOW
            self.assertEqual(w.accept(c), expect, (c, highest))
            if expect:
                seen.add(c)
                highest = max(highest, c)


class WireTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.key = os.urandom(32)
        self.sealer = D.DatagramSealer(0x01020304, 7, self.key)
        self.opener = D.DatagramOpener()
        self.opener.install(7, self.key)

    def test_roundtrip_with_flags(self) -> None:
        packet = ipv4("100.64.0.1", "100.64.0.2", b"hello")
        data = self.sealer.seal(D.KIND_DATA, F.FLAG_VNET_HDR, packet)
        self.assertEqual(data[2:6], bytes([1, 2, 3, 4]))  # the receiver index, in the clear
        self.assertNotIn(b"hello", data)  # the packet is encrypted, not only authenticated
        self.assertEqual(self.opener.open(data), (D.KIND_DATA, F.FLAG_VNET_HDR, packet))

    def test_refusals(self) -> None:
        first = self.sealer.seal(D.KIND_DATA, 0, b"x" * 40)
        self.opener.open(first)
        cases = {
            D.REPLAY: first,
            D.MALFORMED: first[: D.HEAD_LEN + D.TAG_LEN - 1],
            D.BAD_TAG: first[:-1] + bytes([first[-1] ^ 1]),
            "flags": first[:1] + b"\x01" + first[2:],  # the header is authenticated too
            D.UNKNOWN_KEY: D.DatagramSealer(0x01020304, 8, self.key).seal(D.KIND_DATA, 0, b"x"),
            "other key": D.DatagramSealer(0x01020304, 7, os.urandom(32)).seal(D.KIND_DATA, 0, b"x"),
        }
        reasons = {}
        for name, data in cases.items():
            with self.assertRaises(D.DatagramError) as cm:
                self.opener.open(data)
            reasons[name] = cm.exception.reason
        self.assertEqual(
            reasons,
            {D.REPLAY: D.REPLAY, D.MALFORMED: D.MALFORMED, D.BAD_TAG: D.BAD_TAG, "flags": D.BAD_TAG,
             D.UNKNOWN_KEY: D.UNKNOWN_KEY, "other key": D.BAD_TAG},
        )

    def test_two_keys_live_at_most(self) -> None:
        old = self.sealer.seal(D.KIND_DATA, 0, b"a")
        self.opener.install(8, os.urandom(32))
        self.opener.open(old)  # previous key still accepted (make-before-break)
        self.opener.install(9, os.urandom(32))
        with self.assertRaises(D.DatagramError) as cm:
            self.opener.open(self.sealer.seal(D.KIND_DATA, 0, b"b"))
        self.assertEqual(cm.exception.reason, D.UNKNOWN_KEY)

    def test_datagram_key_differs_from_the_link_key(self) -> None:
        self.assertNotEqual(D.derive_datagram_key(self.key), self.key)
        self.assertEqual(D.derive_datagram_key(self.key), D.derive_datagram_key(self.key))


class FakeUDPSocket:
    """The endpoint's view of a bound UDP socket: its family and ``sendto`` (received datagrams come from
    :meth:`UDPWire.flush`)."""

    def __init__(self, wire: UDPWire, host: str, family: int = socket.AF_INET) -> None:
        self.wire = wire
        self.host = host
        self.family = family

    def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
        return self.wire.send(self.host, data, addr)


class UDPWire:
    """Datagrams between endpoints by address, delivered on :meth:`flush` (or dropped while ``down``)."""

    def __init__(self) -> None:
        self.endpoints: dict[str, D.DatagramEndpoint] = {}
        self.in_flight: list[tuple[str, bytes]] = []
        self.sent: list[bytes] = []
        self.down = False
        self.refuse_sends = False

    def attach(self, host: str, endpoint: D.DatagramEndpoint, family: int = socket.AF_INET) -> None:
        self.endpoints[host] = endpoint
        endpoint.attach(FakeUDPSocket(self, host, family))

    def send(self, source: str, data: bytes, addr: tuple[str, int]) -> int:
        if self.refuse_sends:
            raise BlockingIOError("full")
        self.sent.append(data)
        if not self.down:
            self.in_flight.append((addr[0].removeprefix("::ffff:"), data))
        return len(data)

    def flush(self) -> None:
        while self.in_flight:
            host, data = self.in_flight.pop(0)
            endpoint = self.endpoints.get(host)
            if endpoint is not None:
                endpoint.datagram_in(data)


class DatagramPair:
    """A link pair (``tests.unit.support.Pair``) whose client and server share a UDP wire."""

    def __init__(self, test: SynchronousTestCase, client_udp: bool = True, server_udp: bool = True, **kw: Any) -> None:
        self.wire = UDPWire()
        self.udp_metrics_a, self.udp_metrics_b = FakeMetrics(), FakeMetrics()
        self.ep_a = D.DatagramEndpoint(D.DatagramMetrics(self.udp_metrics_a)) if client_udp else None
        self.ep_b = D.DatagramEndpoint(D.DatagramMetrics(self.udp_metrics_b)) if server_udp else None
        self.pair = Pair(test, datagrams=self.ep_a, **kw)
        self.pair.server.datagrams = self.ep_b
        connect = self.pair.connector

        def connector(url: str, proto: Any) -> Any:
            d = connect(url, proto)
            # The client's TCP transport reached the server's API port at 192.168.1.1 (iosim says "fake").
            self.pair.pumps[-1].clientIO.peerAddress = IPv4Address("TCP", "192.168.1.1", 4567)
            return d

        self.pair.client._connector = connector
        if self.ep_a is not None:
            self.wire.attach("192.168.1.2", self.ep_a)
        if self.ep_b is not None:
            # iosim's client transport sees the server at 192.168.1.1
            self.wire.attach("192.168.1.1", self.ep_b)

    def pump(self) -> None:
        for _ in range(3):
            self.pair.pump()
            self.wire.flush()

    def up(self) -> None:
        self.pair.client.start()
        self.pump()

    def tx(self) -> float:
        return float(self.udp_metrics_a.value("link_datagrams_total", "tx") or 0)

    def rx(self) -> float:
        return float(self.udp_metrics_b.value("link_datagrams_total", "rx") or 0)

    def dropped(self, reason: str) -> float:
        return float(self.udp_metrics_b.value("link_datagrams_dropped_total", reason) or 0)

    def frames(self) -> float:
        return float(self.pair.metrics_a.value("link_frames_total", "tx") or 0)


SMALL = ipv4("100.64.0.2", "100.64.0.3", b"ping" * 10)


class DatagramLinkTests(SynchronousTestCase):
    def test_proven_path_carries_lone_small_packets(self) -> None:
        p = DatagramPair(self)
        p.up()
        path = p.pair.client.datagram_path
        assert path is not None
        self.assertTrue(path.proven)
        self.assertEqual(path.addr, ("192.168.1.1", 4567))
        self.assertEqual(p.udp_metrics_a.value("link_datagram_paths"), 1)
        p.pair.clock.advance(D.QUIET + 0.001)
        p.pair.client.send_batch([SMALL])
        p.pump()
        self.assertEqual(p.pair.packets(), [SMALL])
        self.assertEqual(p.pair.received[-1][0], p.pair.client.node_id)
        self.assertEqual((p.tx(), p.rx(), p.frames()), (1, 1, 0))

    def test_bulk_goes_over_the_link_and_keeps_small_packets_behind_it(self) -> None:
        """A batch, or a big packet, goes over TLS; lone small packets follow it over TLS until the link has
        been quiet for QUIET seconds, so they never overtake it."""
        p = DatagramPair(self)
        p.up()
        bulk = [ipv4("100.64.0.2", "100.64.0.3", bytes([i]) * 100) for i in range(3)]
        big = ipv4("100.64.0.2", "100.64.0.3", b"z" * (D.MAX_PACKET + 1))
        p.pair.client.send_batch(bulk)
        p.pair.client.send_batch([SMALL])
        p.pair.clock.advance(D.QUIET / 2)
        p.pair.client.send_batch([SMALL])
        p.pump()
        self.assertEqual((p.tx(), p.frames()), (0, 3))
        p.pair.clock.advance(D.QUIET + 0.001)
        p.pair.client.send_batch([big])
        self.assertEqual((p.tx(), p.frames()), (0, 4))
        p.pair.clock.advance(D.QUIET + 0.001)
        p.pair.client.send_batch([SMALL, SMALL])
        p.pump()
        self.assertEqual((p.tx(), p.rx(), p.frames()), (2, 2, 4))
        self.assertEqual(p.pair.packets(), [*bulk, SMALL, SMALL, big, SMALL, SMALL])

    def test_lone_packets_wait_while_the_link_socket_holds_unacknowledged_bytes(self) -> None:
        """Quiet for QUIET seconds is not enough: bytes still queued on the link's socket could be overtaken."""
        p = DatagramPair(self)
        p.up()
        p.pair.client.send_batch([SMALL, SMALL, SMALL])  # over the link
        near, far = socket.socketpair()
        self.addCleanup(near.close)
        self.addCleanup(far.close)
        near.send(b"x" * 1000)  # not read by the far end: still queued
        p.pair.client._link_socket = near
        p.pair.clock.advance(D.QUIET + 0.001)
        p.pair.client.send_batch([SMALL])
        self.assertEqual((p.tx(), p.frames()), (0, 2))
        far.recv(4096)  # drained
        p.pair.clock.advance(D.QUIET + 0.001)
        p.pair.client.send_batch([SMALL])
        self.assertEqual((p.tx(), p.frames()), (1, 2))

    def test_the_link_socket_is_the_tcp_socket_under_tls_or_none(self) -> None:
        sock = socket.socket()
        self.addCleanup(sock.close)

        class TCP:
            def getHandle(self) -> socket.socket:
                return sock

        class TLS:
            transport = TCP()

        self.assertIs(tcp_socket(TLS()), sock)
        self.assertIsNone(tcp_socket(object()))
        p = DatagramPair(self)
        p.up()
        proto = p.pair.client._proto
        assert proto is not None
        self.assertIsNone(tcp_socket(proto.transport))  # iosim: no socket

    def test_a_send_error_falls_back_to_the_link(self) -> None:
        p = DatagramPair(self)
        p.up()
        p.pair.clock.advance(D.QUIET + 0.001)
        p.wire.refuse_sends = True
        p.pair.client.send_batch([SMALL])
        p.pump()
        self.assertEqual(p.pair.packets(), [SMALL])
        self.assertEqual((p.tx(), p.frames()), (0, 1))
        self.assertEqual(p.udp_metrics_a.value("link_datagrams_dropped_total", D.SEND_ERROR), 1)

    def test_no_path_with_a_peer_or_node_without_it(self) -> None:
        for client_udp, server_udp in ((False, True), (True, False)):
            p = DatagramPair(self, client_udp=client_udp, server_udp=server_udp)
            p.up()
            self.assertTrue(p.pair.client.ready)
            self.assertIsNone(p.pair.client.datagram_path)
            p.pair.clock.advance(1)
            p.pair.client.send_batch([SMALL])
            p.pump()
            self.assertEqual(p.pair.packets(), [SMALL])
            self.assertEqual(p.frames(), 1)
            self.assertEqual(p.wire.sent, [])

    def test_blocked_udp_never_carries_packets_and_probes_slow_down(self) -> None:
        p = DatagramPair(self, keepalive=10.0)
        p.wire.down = True
        p.up()
        path = p.pair.client.datagram_path
        assert path is not None
        self.assertFalse(path.proven)
        for _ in range(D.FAST_PROBES + 2 * D.SLOW_PROBE):
            p.pair.clock.advance(10)
            p.pump()
        self.assertTrue(p.pair.client.ready)  # the TLS link stays up
        self.assertEqual(len(p.wire.sent), 1 + D.FAST_PROBES + 2)
        p.pair.client.send_batch([SMALL])
        p.pump()
        self.assertEqual((p.pair.packets(), p.tx()), ([SMALL], 0))

    def test_a_path_that_stops_answering_is_lost_then_found_again(self) -> None:
        p = DatagramPair(self, keepalive=10.0)
        p.up()
        path = p.pair.client.datagram_path
        assert path is not None
        p.wire.down = True
        for _ in range(D.LOST_AFTER + 1):
            p.pair.clock.advance(10)
            p.pump()
        self.assertFalse(path.proven)
        self.assertEqual(p.udp_metrics_a.value("link_datagram_paths"), 0)
        self.assertTrue(p.pair.client.ready)  # PINGs over the link again kept it up
        p.pair.client.send_batch([SMALL])
        p.pump()
        self.assertEqual((p.pair.packets(), p.tx()), ([SMALL], 0))
        p.wire.down = False
        p.pair.clock.advance(10)
        p.pump()
        self.assertTrue(path.proven)

    def test_probes_replace_pings_while_proven_and_measure_the_rtt(self) -> None:
        p = DatagramPair(self, keepalive=10.0)
        p.up()
        pings_before = len(p.wire.sent)
        for _ in range(5):
            p.pair.clock.advance(10)
            p.pair.pump()  # the server gets no PING over the link...
            p.pair.clock.advance(0.003)
            p.pump()  # ...the probe arrives and its ack comes back 3 ms later
        self.assertTrue(p.pair.client.ready)
        self.assertEqual(len(p.wire.sent) - pings_before, 5)
        self.assertAlmostEqual(p.pair.client.rtt or 0, 0.003, places=5)
        self.assertFalse(p.pair.server_proto._closed)  # the probes count as the client's contact

    def test_rotation_rekeys_the_path_after_the_rekey_frame(self) -> None:
        p = DatagramPair(self)
        p.up()
        pair = p.pair
        secret = os.urandom(32)
        pair.store_a.install_outbound(B, "kid2", secret)
        pair.store_b.install_inbound(pair.client.node_id, "kid2", secret)
        pair.clock.advance(D.QUIET + 0.001)
        pair.client.send_batch([SMALL])  # rotates: the REKEY goes over the link, this packet too
        pair.clock.advance(D.QUIET + 0.001)
        pair.client.send_batch([SMALL])  # now as a datagram under the new key
        p.pump()
        self.assertEqual((pair.packets(), p.tx(), p.rx()), ([SMALL, SMALL], 1, 1))
        self.assertEqual(p.dropped(D.UNKNOWN_KEY), 0)

    def test_forged_replayed_and_stale_datagrams_are_counted_and_dropped(self) -> None:
        p = DatagramPair(self)
        p.up()
        p.pair.clock.advance(D.QUIET + 0.001)
        p.pair.client.send_batch([SMALL])
        data = p.wire.sent[-1]
        p.pump()
        assert p.ep_b is not None
        p.ep_b.datagram_in(data)  # replayed
        p.ep_b.datagram_in(data[:-1] + bytes([data[-1] ^ 0xFF]))  # forged
        p.ep_b.datagram_in(b"\x01\x00" + os.urandom(40))  # unknown index
        p.ep_b.datagram_in(b"short")
        self.assertEqual(p.pair.packets(), [SMALL])
        self.assertEqual(
            [p.dropped(r) for r in (D.REPLAY, D.BAD_TAG, D.UNKNOWN_INDEX, D.MALFORMED)], [1, 1, 1, 1]
        )
        self.assertTrue(p.pair.client.ready)  # nothing of this touches the link
        # A closed link's index is gone: its datagrams are unknown from then on.
        p.pair.pumps[0].serverIO.abortConnection()
        p.pump()
        p.ep_b.datagram_in(data)
        self.assertEqual(p.dropped(D.UNKNOWN_INDEX), 2)


class EndpointTests(SynchronousTestCase):
    def test_destinations_by_family(self) -> None:
        wire = UDPWire()
        v4 = D.DatagramEndpoint(D.DatagramMetrics(FakeMetrics()))
        v6 = D.DatagramEndpoint(D.DatagramMetrics(FakeMetrics()))
        self.assertIsNone(v4.destination("198.18.0.1", 4567))  # not bound yet
        wire.attach("a", v4)
        wire.attach("b", v6, socket.AF_INET6)
        self.assertEqual(v4.destination("198.18.0.1", 4567), ("198.18.0.1", 4567))
        self.assertIsNone(v4.destination("fd00::1", 4567))
        self.assertEqual(v6.destination("198.18.0.1", 4567), ("::ffff:198.18.0.1", 4567))
        self.assertEqual(v6.destination("fd00::1", 4567), ("fd00::1", 4567))
        self.assertIsNone(v4.destination("peer.example", 4567))
        self.assertIsNone(v4.destination("198.18.0.1", 0))

    def test_reads_what_is_waiting_on_a_real_socket_without_an_exception(self) -> None:
        metrics = FakeMetrics()
        ep = D.DatagramEndpoint(D.DatagramMetrics(metrics))
        got: list[bytes] = []

        class Sink:
            def datagram_received(self, data: bytes) -> None:
                got.append(data)

        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        self.addCleanup(sock.close)
        ep.attach(sock)
        index = ep.register(Sink())
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sender.close)
        sealer = D.DatagramSealer(index, 1, os.urandom(32))
        sent = [sealer.seal(D.KIND_DATA, 0, bytes([i]) * 30) for i in range(3)]
        for data in sent:
            sender.sendto(data, sock.getsockname())
        raised: list[str] = []

        def profile(frame: Any, event: str, arg: Any) -> None:
            if event == "c_exception":
                raised.append(repr(arg))

        sys.setprofile(profile)
        try:
            ep.doRead()  # all three in one wake-up, and no read of the empty socket
        finally:
            sys.setprofile(None)
        self.assertEqual(got, sent)
        self.assertEqual(raised, [])
        ep.doRead()  # a spurious wake-up reads nothing and raises nothing out
        self.assertEqual(got, sent)
        sender.sendto(b"x" * 5, sock.getsockname())
        ep.doRead()
        self.assertEqual(metrics.value("link_datagrams_dropped_total", D.MALFORMED), 1)

    def test_the_service_binds_the_port_number_and_reads_it_with_the_reactor(self) -> None:
        reactor = MemoryReactorClock()
        ep = D.DatagramEndpoint(D.DatagramMetrics(FakeMetrics()))
        made: list[tuple[int, socket.socket]] = []

        def make(family: int) -> socket.socket:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            made.append((family, sock))
            return sock

        service = D.DatagramService(ep, 0, "127.0.0.1", reactor, make_socket=make)
        service.privilegedStartService()
        service.startService()  # binds once
        self.assertEqual([f for f, _ in made], [socket.AF_INET])
        self.assertIn(ep, reactor.readers)
        self.assertTrue(ep.active)
        self.assertEqual(made[0][1].getsockname()[0], "127.0.0.1")
        service.stopService()
        self.assertNotIn(ep, reactor.readers)
        self.assertFalse(ep.active)
        self.assertEqual(made[0][1].fileno(), -1)  # closed

    def test_a_port_that_cannot_be_bound_turns_the_path_off_with_a_warning(self) -> None:
        taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        taken.bind(("127.0.0.1", 0))
        self.addCleanup(taken.close)
        reactor = MemoryReactorClock()
        ep = D.DatagramEndpoint(D.DatagramMetrics(FakeMetrics()))
        service = D.DatagramService(ep, taken.getsockname()[1], "127.0.0.1", reactor)
        with capturedLogs() as events:
            service.privilegedStartService()
        self.assertFalse(ep.active)
        self.assertEqual(reactor.readers, set())
        [event] = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertIn("datagram path off", formatEvent(event))
        self.assertIn("Address already in use", formatEvent(event))

    def test_indexes_are_random_unique_and_nonzero(self) -> None:
        values = iter([b"\0\0\0\0", b"\0\0\0\5", b"\0\0\0\5", b"\0\0\0\6"])
        ep = D.DatagramEndpoint(D.DatagramMetrics(FakeMetrics()), rng=lambda n: next(values))
        first, second = object(), object()
        self.assertEqual([ep.register(first), ep.register(second)], [5, 6])  # type: ignore[arg-type]
        ep.unregister(5, second)  # type: ignore[arg-type]  # not its index: kept
        ep.unregister(5, first)  # type: ignore[arg-type]
        self.assertEqual(list(ep._receivers), [6])


class Turns:
    """A reactor's timers turn by turn: each :meth:`turn` moves time on by ``dt`` and runs the calls due at
    its start, as one reactor iteration does (``task.Clock`` would run a ``callLater(0)`` chain forever)."""

    def __init__(self) -> None:
        self.now = 0.0
        #: the polling thread's CPU seconds: a turn either works (CPU advances with the wall) or is preempted
        self.cpu_now = 0.0
        self.calls: list[task.DelayedCall] = []

    def cpu(self) -> float:
        return self.cpu_now

    def seconds(self) -> float:
        return self.now

    def callLater(self, delay: float, f: Any, *args: Any) -> task.DelayedCall:  # noqa: N802 - IReactorTime
        call = task.DelayedCall(self.now + delay, f, args, {}, self.calls.remove, lambda c: None, self.seconds)
        self.calls.append(call)
        return call

    def turn(self, dt: float, working: bool = True) -> None:
        self.now += dt
        if working:
            self.cpu_now += dt
        due = [c for c in self.calls if c.getTime() <= self.now]
        for c in due:
            self.calls.remove(c)
            c.called = True
            c.func(*c.args)


class PollWindowTests(SynchronousTestCase):
    def test_polls_for_the_window_after_the_last_poke(self) -> None:
        turns = Turns()
        w = PollWindow(turns, 0.0005, turns.cpu)  # type: ignore[arg-type]
        w.poke()
        self.assertTrue(w.polling)
        for _ in range(4):
            turns.turn(0.0001)
        w.poke()  # extends the window
        for _ in range(4):
            turns.turn(0.0001)
        self.assertTrue(w.polling)
        for _ in range(3):
            turns.turn(0.0001)
        self.assertFalse(w.polling)
        self.assertEqual(turns.calls, [])
        self.assertGreaterEqual(w.spins, 8)

    def test_never_polls_with_a_zero_window(self) -> None:
        turns = Turns()
        w = PollWindow(turns, 0, turns.cpu)  # type: ignore[arg-type]
        w.poke()
        self.assertFalse(w.polling)
        self.assertEqual(turns.calls, [])

    def test_preemption_stops_polling_and_backs_off(self) -> None:
        turns = Turns()
        w = PollWindow(turns, 0.0005, turns.cpu)  # type: ignore[arg-type]
        w.poke()
        turns.turn(GAP * 1.5)  # a long turn, but working (a cold reactor turn, a batch): not preemption
        self.assertTrue(w.polling)
        turns.turn(GAP * 3, working=False)  # off the CPU that long: the core was not ours
        self.assertFalse(w.polling)
        self.assertEqual(w.preempted, 1)
        w.poke()
        self.assertFalse(w.polling)  # backing off
        turns.turn(MIN_BACKOFF)
        w.poke()
        self.assertTrue(w.polling)
        turns.turn(GAP * 3, working=False)
        turns.turn(MIN_BACKOFF)  # doubled: still off
        w.poke()
        self.assertFalse(w.polling)
        turns.turn(MIN_BACKOFF)
        w.poke()
        self.assertTrue(w.polling)
        w.stop()
        self.assertEqual(turns.calls, [])
