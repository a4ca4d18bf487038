"""Peer links in memory: HELLO accepted/refused, packets flow, queues, backoff, rotation, the plane."""

from __future__ import annotations

import os
from ipaddress import IPv4Interface, IPv4Network
from typing import Any

from twisted.internet import defer, task
from twisted.internet.protocol import Protocol
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

import twisted
from tests.unit.support import NOW, A, B, Pair, ipv4
from tunmesh.auth.sessions import SessionAuthority, SessionStore
from tunmesh.dataplane import frames as F
from tunmesh.dataplane.link import PEER_REMOVED
from tunmesh.dataplane.plane import DataPlane
from tunmesh.dataplane.router import Router, RouteTable
from tunmesh.dataplane.ticker import KeepaliveTicker
from tunmesh.testing import FakeMetrics, FakeTun


class HandshakeTests(SynchronousTestCase):
    def test_packets_flow(self) -> None:
        pair = Pair(self)
        pair.client.start()
        pair.pump()
        self.assertTrue(pair.client.ready)
        self.assertEqual(pair.metrics_a.value("links_connected", "out"), 1)
        self.assertEqual(pair.metrics_b.value("links_connected", "in"), 1)
        batch = [ipv4("100.64.0.2", "100.64.0.3", bytes([i]) * 100) for i in range(10)]
        pair.client.send_batch(batch)
        pair.client.send_batch(batch[:2])
        pair.pump()
        self.assertEqual(pair.packets(), batch + batch[:2])
        self.assertEqual(pair.received[0][0], A)
        self.assertEqual(pair.metrics_a.value("link_frames_total", "tx"), 2)
        self.assertEqual(pair.metrics_b.value("link_frames_total", "rx"), 2)

    def test_large_batch_split_into_frames(self) -> None:
        pair = Pair(self)
        pair.client.start()
        pair.pump()
        batch = [os.urandom(65000) for _ in range(9)]
        pair.client.send_batch(batch)
        pair.pump()
        self.assertEqual(pair.packets(), batch)
        self.assertEqual(pair.metrics_a.value("link_frames_total", "tx"), 3)

    def test_packets_before_hello_ok_are_queued_then_sent(self) -> None:
        pair = Pair(self)
        pair.client.start()
        pair.client.send_batch([b"early"])
        self.assertEqual(pair.client.queued_packets, 1)
        pair.pump()
        self.assertEqual(pair.packets(), [b"early"])
        self.assertEqual(pair.client.queued_packets, 0)

    def test_unknown_peer_refused(self) -> None:
        pair = Pair(self)
        pair.known.clear()
        pair.client.start()
        pair.pump()
        self.assertFalse(pair.client.ready)
        self.assertEqual(pair.metrics_b.value("link_hello_failures_total", "unknown_peer"), 1)
        self.assertEqual(pair.metrics_a.value("link_hello_failures_total", "refused_unknown_peer"), 1)
        # the client retries later, with backoff
        self.assertEqual(len(pair.connects), 1)
        pair.clock.advance(0.1)
        self.assertEqual(len(pair.connects), 2)

    def test_bad_token_refused(self) -> None:
        pair = Pair(self, install_inbound=False)
        pair.client.start()
        pair.pump()
        self.assertFalse(pair.client.ready)
        self.assertEqual(pair.metrics_b.value("link_hello_failures_total", "auth_unknown_peer"), 1)

    def test_tampered_token_refused(self) -> None:
        pair = Pair(self)
        real = pair.auth_a.sign_link_hello

        def tampered(peer_id: str, body: bytes = b"") -> Any:
            signed = real(peer_id, body=body)
            return type(signed)(signed.header_value[:-2] + "AA", signed.kid, signed.rid, signed.peer_id)

        pair.auth_a.sign_link_hello = tampered  # type: ignore[method-assign, assignment]
        pair.client.start()
        pair.pump()
        self.assertFalse(pair.client.ready)
        self.assertEqual(pair.metrics_b.value("link_hello_failures_total", "auth_bad_signature"), 1)

    def test_token_bound_to_hello_fields(self) -> None:
        """A token minted for another connection's random is refused (bh mismatch)."""
        pair = Pair(self)
        real = pair.auth_a.sign_link_hello
        pair.auth_a.sign_link_hello = lambda peer_id, body=b"": real(peer_id, body=b"other")  # type: ignore[method-assign, assignment, misc]
        pair.client.start()
        pair.pump()
        self.assertEqual(pair.metrics_b.value("link_hello_failures_total", "auth_body_mismatch"), 1)

    def test_no_inbound_session_refused(self) -> None:
        pair = Pair(self)

        class Claims:
            iss = A
            kid = "kid-unknown"

        pair.auth_b.verify_link_hello = lambda peer, token, body=b"": Claims()  # type: ignore[assignment, method-assign, misc]
        pair.client.start()
        pair.pump()
        self.assertFalse(pair.client.ready)
        self.assertEqual(pair.metrics_b.value("link_hello_failures_total", "no_session"), 1)

    def test_no_hello_before_deadline(self) -> None:
        pair = Pair(self)
        proto = pair.server.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        pair.clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        pair.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(pair.metrics_b.value("link_hello_failures_total", "timeout"), 1)

    def test_data_before_hello_refused(self) -> None:
        pair = Pair(self)
        proto = pair.server.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        frame, tag = F.DataSealer(1, bytes(32)).seal([b"x"])
        proto.dataReceived(frame + tag)
        self.assertEqual(F.decode_hello_err(transport.value()), F.ERR_PROTOCOL)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(pair.received, [])

    def test_oversized_frame_closes(self) -> None:
        pair = Pair(self)
        pair.client.start()
        pair.pump()
        pair.server_proto.dataReceived((F.MAX_FRAME + 1).to_bytes(4, "big"))
        self.assertEqual(pair.metrics_b.value("link_frames_dropped_total", "malformed_frame"), 1)
        pair.pump()
        self.assertFalse(pair.client.ready)

    def test_forged_data_closes_and_replay_dropped(self) -> None:
        pair = Pair(self)
        pair.client.start()
        pair.pump()
        # capture a genuine frame as it goes over the wire, then replay it
        client_transport = pair.pumps[0].clientIO
        pair.client.send_batch([b"once"])
        wire = b"".join(client_transport.stream)
        pair.pump()
        pair.server_proto.dataReceived(wire)
        self.assertEqual(pair.packets(), [b"once"])
        self.assertEqual(pair.metrics_b.value("link_frames_dropped_total", "replay"), 1)
        self.assertTrue(pair.client.ready)
        forged = bytearray(wire)
        forged[-1] ^= 1
        forged[10:18] = (99).to_bytes(8, "big")
        pair.server_proto.dataReceived(bytes(forged))
        self.assertEqual(pair.metrics_b.value("link_frames_dropped_total", "bad_tag"), 1)
        self.assertEqual(pair.packets(), [b"once"])


class QueueTests(SynchronousTestCase):
    def test_overflow_drops_oldest(self) -> None:
        pair = Pair(self, max_queue_packets=4)
        pair.client.start()
        pair.pump()
        pair.client.pauseProducing()
        pair.client.send_batch([b"1", b"2", b"3"])
        pair.client.send_batch([b"4", b"5"])
        pair.client.send_batch([b"6"])
        self.assertEqual(pair.client.queued_packets, 4)
        self.assertEqual(pair.metrics_a.drops(), {"queue_full": 2})
        pair.client.resumeProducing()
        pair.pump()
        self.assertEqual(pair.packets(), [b"3", b"4", b"5", b"6"])
        self.assertEqual(pair.client.queued_bytes, 0)

    def test_overflow_by_bytes(self) -> None:
        pair = Pair(self, max_queue_bytes=250)
        pair.fail_connect = True
        pair.client.start()
        pair.client.send_batch([b"a" * 100, b"b" * 100])
        pair.client.send_batch([b"c" * 100])
        self.assertEqual(pair.metrics_a.drops(), {"queue_full": 1})
        self.assertEqual(pair.client.queued_bytes, 200)

    def test_backpressure_from_transport(self) -> None:
        pair = Pair(self)
        pair.client.start()
        pair.pump()
        transport = pair.pumps[0].clientIO
        self.assertIs(transport.producer, pair.client)
        transport.producer.pauseProducing()
        pair.client.send_batch([b"held"])
        self.assertEqual(pair.client.queued_packets, 1)
        pair.pump()
        self.assertEqual(pair.packets(), [])
        transport.producer.resumeProducing()
        pair.pump()
        self.assertEqual(pair.packets(), [b"held"])

    def test_expired_while_down(self) -> None:
        pair = Pair(self, packet_expiration=0.1)
        pair.fail_connect = True
        pair.client.start()
        pair.client.send_batch([b"x", b"y"])
        pair.clock.advance(0.05)
        pair.client.send_batch([b"z"])
        pair.clock.advance(0.05)
        self.assertEqual(pair.metrics_a.drops(), {"peer_down": 2})
        pair.clock.advance(0.05)
        self.assertEqual(pair.metrics_a.drops(), {"peer_down": 3})
        self.assertEqual(pair.client.queued_packets, 0)

    def test_stop_drops_queue_as_peer_removed(self) -> None:
        pair = Pair(self)
        pair.fail_connect = True
        pair.client.start()
        pair.client.send_batch([b"x", b"y"])
        pair.client.stop()
        self.assertEqual(pair.metrics_a.drops(), {"peer_removed": 2})
        pair.client.send_batch([b"z"])
        self.assertEqual(pair.metrics_a.drops(), {"peer_removed": 2, "peer_down": 1})
        n = len(pair.connects)
        pair.clock.advance(60)
        self.assertEqual(len(pair.connects), n)


class ReconnectTests(SynchronousTestCase):
    def test_exponential_backoff_capped(self) -> None:
        pair = Pair(self)
        pair.fail_connect = True
        pair.client.start()
        while len(pair.connects) < 15:
            pair.clock.advance(pair.clock.getDelayedCalls()[0].getTime() - pair.clock.seconds())
        gaps = [round(b - a, 3) for a, b in zip(pair.connects, pair.connects[1:], strict=False)]
        self.assertEqual(gaps[:9], [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6])
        self.assertTrue(all(g == 30.0 for g in gaps[9:]), gaps)

    def test_jitter_shortens_delay(self) -> None:
        pair = Pair(self)
        pair.client._rng = lambda: 0.0
        pair.fail_connect = True
        pair.client.start()
        pair.clock.advance(0.05)
        self.assertEqual(len(pair.connects), 2)

    def test_reconnects_after_loss_and_resets_backoff(self) -> None:
        pair = Pair(self)
        pair.client.start()
        pair.pump()
        pair.pumps[0].clientIO.loseConnection()
        pair.pump()
        self.assertFalse(pair.client.ready)
        self.assertEqual(pair.metrics_a.value("links_connected", "out"), 0)
        pair.clock.advance(0.1)
        pair.pump()
        self.assertTrue(pair.client.ready)
        self.assertEqual(pair.client.attempts, 0)
        pair.client.send_batch([b"again"])
        pair.pump()
        self.assertEqual(pair.packets(), [b"again"])

    def test_hello_timeout_on_client(self) -> None:
        pair = Pair(self)
        pair.client.start()  # never pumped: no HELLO_OK arrives
        pair.clock.advance(5)
        self.assertEqual(pair.metrics_a.value("link_hello_failures_total", "timeout"), 1)

    def test_keepalive(self) -> None:
        pair = Pair(self, keepalive=10.0)
        pair.client.start()
        pair.pump()
        for _ in range(6):
            pair.clock.advance(10)
            pair.pump()
        self.assertTrue(pair.client.ready)
        # the server stops answering: the client gives up after 3 silent periods
        pair.pumps[0].serverIO.write = lambda data: None
        for _ in range(3):
            pair.clock.advance(10)
            pair.pump()
        self.assertEqual(pair.metrics_a.value("link_frames_dropped_total", "idle_timeout"), 1)
        self.assertFalse(pair.client.ready)
        pair.clock.advance(0.1)  # and reconnects
        pair.pump()
        self.assertTrue(pair.client.ready)
        self.assertEqual(len(pair.pumps), 2)

    def test_keepalive_measures_the_round_trip(self) -> None:
        """Each PING carries a number the PONG echoes: the delay in between is the link's RTT, in the
        node-wide histogram and the peer's gauge; the peer's series go when it leaves."""
        pair = Pair(self, keepalive=10.0)
        pair.client.start()
        pair.pump()
        up = pair.metrics_a.collectors["peer_link_up"]
        self.assertEqual(up.children[(B,)].value, 1)
        # The first probe goes out at link up (answered at once in memory: 0 s).
        self.assertEqual(pair.metrics_a.collectors["link_rtt_seconds"].observed, [0.0])
        for delay in (0.25, 0.004):
            pair.clock.advance(10)  # the PING is written
            pair.pumps[0].pump()  # ...reaches the server, which answers
            pair.clock.advance(delay)
            pair.pump()  # the PONG arrives `delay` later
            self.assertAlmostEqual(pair.client.rtt or 0.0, delay, places=5)
        self.assertEqual(
            [round(v, 4) for v in pair.metrics_a.collectors["link_rtt_seconds"].observed], [0.0, 0.25, 0.004]
        )
        self.assertAlmostEqual(pair.metrics_a.collectors["peer_link_rtt_seconds"].children[(B,)].value, 0.004, 5)
        # A stale PONG (not the number in flight) is not a measurement.
        pair.client._frame(pair.client._proto, F.encode_ping(F.PONG, 12345))  # type: ignore[arg-type]
        self.assertEqual(len(pair.metrics_a.collectors["link_rtt_seconds"].observed), 3)
        pair.pumps[0].serverIO.abortConnection()
        pair.pump()
        self.assertEqual(up.children[(B,)].value, 0)
        pair.client.stop(PEER_REMOVED)
        self.assertNotIn((B,), up.children)
        self.assertNotIn((B,), pair.metrics_a.collectors["peer_link_rtt_seconds"].children)

    def test_server_closes_silent_client(self) -> None:
        pair = Pair(self, keepalive=10.0)
        pair.client.start()
        pair.pump()
        pair.pumps[0].clientIO.write = lambda data: None
        for _ in range(3):
            pair.clock.advance(10)
        self.assertEqual(pair.metrics_b.value("link_frames_dropped_total", "idle_timeout"), 1)


class _Aggregator:
    def __init__(self, write: Any) -> None:
        self.held: list[bytes] = []
        self._out = write

    def write(self, data: bytes) -> None:
        self.held.append(data)

    def flush(self) -> None:
        if self.held:
            self._out(b"".join(self.held))
            self.held = []


class AggregatingTransport:
    """Mimics ``TLSMemoryBIOProtocol``: ``write`` is held for later, ``_write`` is immediate."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._aggregator = _Aggregator(inner.write)
        self.write = self._aggregator.write
        self._write = inner.write

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class RotationTests(SynchronousTestCase):
    def test_rotation_on_live_link_without_loss(self) -> None:
        pair = Pair(self)
        pair.client.start()
        pair.pump()
        pair.client.send_batch([b"k1"])
        new = os.urandom(32)
        pair.store_b.install_inbound(A, "kid2", new)  # responder installs first
        pair.store_a.install_outbound(B, "kid2", new)
        pair.client.send_batch([b"k2-a"])
        pair.client.send_batch([b"k2-b"])
        pair.pump()
        self.assertEqual(pair.packets(), [b"k1", b"k2-a", b"k2-b"])
        self.assertEqual(pair.client._key_id, 2)
        self.assertEqual(len(pair.pumps), 1)  # no reconnect
        self.assertEqual(pair.metrics_b.value("link_frames_dropped_total", "unknown_key"), 0)

    def test_rekey_not_overtaken_by_data_on_aggregating_transport(self) -> None:
        """Twisted's TLS transport holds ``write`` data until the next loop iteration while
        ``_write`` goes out at once: the REKEY must still reach the peer before its DATA."""
        pair = Pair(self)
        pair.client.start()
        pair.pump()
        assert pair.client._proto is not None
        aggregating = AggregatingTransport(pair.client._proto.transport)
        pair.client._proto.transport = aggregating  # type: ignore[assignment]
        pair.client._keepalive()  # a PING sits in the aggregator
        self.assertEqual(len(aggregating._aggregator.held), 1)
        new = os.urandom(32)
        pair.store_b.install_inbound(A, "kid2", new)
        pair.store_a.install_outbound(B, "kid2", new)
        pair.client.send_batch([b"after-rekey"])
        pair.pump()
        self.assertEqual(pair.packets(), [b"after-rekey"])
        self.assertEqual(pair.metrics_b.value("link_frames_dropped_total", "unknown_key"), 0)
        self.assertEqual(aggregating._aggregator.held, [])

    def test_rekey_before_receiver_has_session(self) -> None:
        pair = Pair(self)
        pair.client.start()
        pair.pump()
        new = os.urandom(32)
        pair.store_a.install_outbound(B, "kid2", new)
        pair.client.send_batch([b"lost"])
        pair.pump()
        self.assertEqual(pair.metrics_b.value("link_frames_dropped_total", "unknown_key"), 1)
        self.assertTrue(pair.client.ready)
        pair.store_b.install_inbound(A, "kid2", new)
        pair.client.send_batch([b"late"])
        pair.pump()
        self.assertEqual(pair.packets(), [b"late"])

    def test_forged_rekey_closes(self) -> None:
        pair = Pair(self)
        pair.client.start()
        pair.pump()
        pair.store_b.install_inbound(A, "kid2", os.urandom(32))
        pair.server_proto.dataReceived(F.encode_rekey(os.urandom(32), 2, "kid2"))
        self.assertEqual(pair.metrics_b.value("link_frames_dropped_total", "bad_tag"), 1)
        pair.pump()
        self.assertFalse(pair.client.ready)


class Node:
    def __init__(self, node_id: str, addr: str, clock: task.Clock, store: SessionStore) -> None:
        self.tun = FakeTun(mtu=1500)
        self.metrics = FakeMetrics()
        self.reactor = MemoryReactorClock()
        router = Router(
            IPv4Interface(f"{addr}/10"),
            None,
            IPv4Network("100.64.0.0/10"),
            None,
            RouteTable(),
            self.metrics,
        )
        self.plane = DataPlane(
            node_id,
            self.tun,
            router,
            store,
            SessionAuthority(store),
            self.connect,
            self.reactor,
            self.metrics,
            clock=clock,
        )
        self.peers: dict[str, Node] = {}
        self.pumps: list[iosim.IOPump] = []

    def connect(self, url: str, proto: Any) -> defer.Deferred[Any]:
        target = self.peers[url]
        server = target.plane.server_factory.buildProtocol(None)
        self.pumps.append(
            iosim.connect(server, iosim.makeFakeServer(server), proto, iosim.makeFakeClient(proto), greet=False)
        )
        return defer.succeed(proto)


class TwoPlanes(SynchronousTestCase):
    """Nodes A and B, each with a data plane, on one clock, linked both ways."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(NOW)
        sa = SessionStore(A, self.clock, monotonic=self.clock.seconds)
        sb = SessionStore(B, self.clock, monotonic=self.clock.seconds)
        for src, dst, s_src, s_dst in ((A, B, sa, sb), (B, A, sb, sa)):
            secret = os.urandom(32)
            s_src.install_outbound(dst, "k" + src[-1], secret)
            s_dst.install_inbound(src, "k" + src[-1], secret)
        self.a = Node(A, "100.64.0.1", self.clock, sa)
        self.b = Node(B, "100.64.0.2", self.clock, sb)
        self.a.peers["https://b/"] = self.b
        self.b.peers["https://a/"] = self.a
        for n in (self.a, self.b):
            n.plane.startService()
            self.addCleanup(n.tun.close)
        self.assertIn(self.a.plane._reader, self.a.reactor.readers)
        self.a.plane.peer_up(B, "https://b/", ["100.64.0.2/32"])
        self.b.plane.peer_up(A, "https://a/", ["100.64.0.1/32"])
        self.pump()

    def pump(self) -> None:
        for _ in range(3):
            for n in (self.a, self.b):
                for p in n.pumps:
                    p.flush()


class DataPlaneTests(TwoPlanes):

    def test_end_to_end(self) -> None:
        pkts = [ipv4("100.64.0.1", "100.64.0.2", bytes([i]) * 200) for i in range(20)]
        for p in pkts:
            self.a.tun.inject(p)
        self.a.plane._reader.doRead()
        self.pump()
        self.assertEqual(self.b.tun.take_written(), pkts)
        self.assertEqual(self.a.metrics.value("tun_rx_packets_total"), 20)
        self.assertEqual(self.b.metrics.value("tun_tx_packets_total"), 20)
        self.assertEqual(self.b.metrics.value("tun_tx_bytes_total"), sum(map(len, pkts)))
        # and back
        reply = ipv4("100.64.0.2", "100.64.0.1")
        self.b.tun.inject(reply)
        self.b.plane._reader.doRead()
        self.pump()
        self.assertEqual(self.a.tun.take_written(), [reply])

    def _kernel_answers(self, node: Node) -> None:
        """Make ``node``'s TUN answer each written packet at once, as the kernel does for a ping."""
        write_batch = node.tun.write_batch

        def answering(packets: list[bytes]) -> tuple[int, int]:
            result = write_batch(packets)
            for p in packets:
                node.tun.inject(ipv4("100.64.0.2", "100.64.0.1", b"re:" + p[20:]))
            return result

        node.tun.write_batch = answering  # type: ignore[method-assign, assignment]

    def test_small_packet_answer_read_in_the_same_iteration(self) -> None:
        self._kernel_answers(self.b)
        self.a.tun.inject(ipv4("100.64.0.1", "100.64.0.2", b"ping"))
        self.a.plane._reader.doRead()
        self.pump()  # B's reader is never woken: the answer goes out from the write
        self.assertEqual(self.b.metrics.value("tun_rx_packets_total"), 1)
        self.assertEqual([p[20:] for p in self.a.tun.take_written()], [b"re:ping"])

    def test_bulk_batch_answers_wait_for_the_reader(self) -> None:
        self._kernel_answers(self.b)
        for i in range(3):
            self.a.tun.inject(ipv4("100.64.0.1", "100.64.0.2", bytes([i]) * 100))
        self.a.plane._reader.doRead()
        self.pump()
        self.assertEqual(len(self.b.tun.take_written()), 3)
        self.assertEqual(self.b.metrics.value("tun_rx_packets_total"), 0)
        self.b.plane._reader.doRead()
        self.pump()
        self.assertEqual(len(self.a.tun.take_written()), 3)

    def test_per_peer_metrics_fed_from_batches(self) -> None:
        from tests.unit.support import samples
        from tunmesh.dataplane.peerstats import PeerPacketMetrics
        from tunmesh.metrics import Metrics

        real = Metrics("node", enabled=True, process_metrics=False)
        self.a.plane.peer_metrics = PeerPacketMetrics(real, self.clock, ttl=60)
        self.b.plane.peer_metrics = PeerPacketMetrics(real, self.clock, ttl=60)
        pkts = [ipv4("100.64.0.1", "100.64.0.2", os.urandom(100)) for _ in range(3)]
        for p in pkts:
            self.a.tun.inject(p)
        self.a.plane._reader.doRead()
        self.pump()
        size = sum(map(len, pkts))
        self.assertEqual(samples(real, "tunmesh_remote_tx_packets_by_dest_node_total")[B], 3)
        self.assertEqual(samples(real, "tunmesh_remote_tx_bytes_by_dest_node_total")[B], size)
        self.assertEqual(samples(real, "tunmesh_remote_rx_packets_by_source_node_total")[A], 3)
        self.assertEqual(samples(real, "tunmesh_remote_rx_bytes_by_source_node_total")[A], size)
        self.b.plane.peer_down(A)
        self.assertNotIn(A, samples(real, "tunmesh_remote_rx_packets_by_source_node_total"))
        for n in (self.a, self.b):
            n.plane.stopService()

    def test_read_batch_bounded_per_wakeup(self) -> None:
        for i in range(100):
            self.a.tun.inject(ipv4("100.64.0.1", "100.64.0.2", bytes([i])))
        self.a.plane._reader.doRead()
        self.assertEqual(self.a.metrics.value("tun_rx_packets_total"), 64)

    def test_spoofed_source_from_peer_dropped(self) -> None:
        self.a.tun.inject(ipv4("100.64.0.1", "100.64.0.2"))
        self.a.plane.router.routes.set_peer(B, ["100.64.0.2/32"])
        # B's view: A may only send from 100.64.0.1; make A's router let a spoof through
        self.a.plane.router._local.set_peer("", ["100.64.0.1/32", "100.64.0.99/32"])
        self.a.tun.inject(ipv4("100.64.0.99", "100.64.0.2"))
        self.a.plane._reader.doRead()
        self.pump()
        self.assertEqual(len(self.b.tun.take_written()), 1)
        self.assertEqual(self.b.metrics.drops(), {"source_not_peer": 1})

    def test_tun_write_error_counted(self) -> None:
        self.b.tun.close()
        self.a.tun.inject(ipv4("100.64.0.1", "100.64.0.2"))
        self.a.plane._reader.doRead()
        self.pump()
        self.assertEqual(self.b.metrics.drops(), {"tun_write_error": 1})

    def test_unknown_peer_link_refused(self) -> None:
        self.b.plane.peer_down(A)
        self.pump()
        # A's link to B was closed by B and A's reconnect is refused while B does not know A
        self.clock.advance(0.1)
        self.pump()
        self.assertFalse(self.a.plane.links[B].ready)
        self.assertGreaterEqual(self.b.metrics.value("link_hello_failures_total", "unknown_peer"), 1)

    def test_peer_down_drops_queue(self) -> None:
        link = self.a.plane.links[B]
        link.pauseProducing()
        self.a.tun.inject(ipv4("100.64.0.1", "100.64.0.2"))
        self.a.plane._reader.doRead()
        self.assertEqual(link.queued_packets, 1)
        self.a.plane.peer_down(B)
        self.assertEqual(self.a.metrics.drops(), {"peer_removed": 1})
        self.a.tun.inject(ipv4("100.64.0.1", "100.64.0.2"))
        self.a.plane._reader.doRead()
        self.assertEqual(self.a.metrics.drops(), {"peer_removed": 1, "no_route": 1})

    def test_a_removed_peers_connection_is_closed(self) -> None:
        link = self.a.plane.links[B]
        self.assertTrue(link.ready)
        self.a.plane.peer_down(B)
        self.pump()
        self.assertNotIn(A, self.b.plane.server_factory.links)
        self.assertFalse(link.running)
        self.assertFalse(link.ready)
        self.clock.advance(60)
        self.pump()
        self.assertNotIn(A, self.b.plane.server_factory.links)

    def test_link_age_counts_frames_on_either_link_of_the_pair(self) -> None:
        """Frames on B's own link to A (PONGs) and on A's link to B (PINGs, packets) are both
        authenticated contact from A for B; the age is the freshest of the two, None with neither up."""
        self.assertEqual(self.b.plane.link_age(A), 0.0)
        self.clock.advance(7)
        self.assertEqual(self.b.plane.link_age(A), 7.0)
        self.a.tun.inject(ipv4("100.64.0.1", "100.64.0.2"))  # A sends on its link: B's inbound one
        self.a.plane._reader.doRead()
        self.pump()
        self.assertEqual(self.b.plane.server_factory.rx_age(A), 0.0)
        self.assertEqual(self.b.plane.link_age(A), 0.0)
        self.b.plane.links[A].stop("test")  # B's outbound link down: A's inbound one counts
        self.pump()
        self.clock.advance(2)
        self.assertFalse(self.b.plane.links[A].ready)
        self.assertEqual(self.b.plane.link_age(A), 2.0)
        self.a.plane.links[B].stop("test")
        self.pump()
        self.assertIsNone(self.b.plane.server_factory.rx_age(A))
        self.assertIsNone(self.b.plane.link_age(A))

    def test_peer_url_change_reconnects(self) -> None:
        old = self.a.plane.links[B]
        self.a.peers["https://b2/"] = self.b
        self.a.plane.peer_up(B, "https://b2/", ["100.64.0.2/32"])
        self.assertIsNot(self.a.plane.links[B], old)
        self.pump()
        self.assertTrue(self.a.plane.links[B].ready)

    def test_stop_service(self) -> None:
        self.a.plane.stopService()
        self.assertNotIn(self.a.plane._reader, self.a.reactor.readers)
        self.pump()
        self.assertFalse(self.a.plane.links[B].ready)

    def test_forgotten_session_closes_inbound_link(self) -> None:
        self.assertIn(A, self.b.plane.server_factory.links)
        self.b.plane._sessions.forget(A)  # type: ignore[attr-defined]
        self.pump()
        self.assertNotIn(A, self.b.plane.server_factory.links)
        self.assertFalse(self.a.plane.links[B].ready)

    def test_tun_read_failure_closes_device_so_liveness_fails(self) -> None:
        """Issue 12, defect 3: a TUN deleted from outside must turn ``/health`` false, not only log."""
        from tunmesh.tun.service import TunService

        service = TunService(None, open_device=lambda networking: self.a.tun)
        service.startService()
        self.assertTrue(service.is_open())

        def deleted(*args: Any, **kw: Any) -> list[bytes]:
            raise OSError(77, "File descriptor in bad state")

        self.a.tun.read_batch = deleted  # type: ignore[method-assign]
        self.a.plane._reader.doRead()
        self.assertNotIn(self.a.plane._reader, self.a.reactor.readers)
        self.assertTrue(self.a.tun.closed)
        self.assertFalse(service.is_open())

    def test_tun_closed_stops_reading(self) -> None:
        self.a.tun.close()
        self.a.plane._reader.doRead()
        self.assertNotIn(self.a.plane._reader, self.a.reactor.readers)


class SessionWaitTests(SynchronousTestCase):
    """Joining: the mesh adds a peer (``peer_up``) before its session exists; the link must not then sit
    out a grown reconnect backoff once the session arrives."""

    def test_link_waiting_for_a_session_connects_when_it_is_installed(self) -> None:
        clock = task.Clock()
        clock.advance(NOW)
        sa = SessionStore(A, clock, monotonic=clock.seconds)
        sb = SessionStore(B, clock, monotonic=clock.seconds)
        a = Node(A, "100.64.0.1", clock, sa)
        b = Node(B, "100.64.0.2", clock, sb)
        a.peers["https://b/"] = b
        b.peers["https://a/"] = a
        for n in (a, b):
            n.plane.startService()
            self.addCleanup(n.tun.close)
        b.plane.peer_up(A, "https://a/", ["100.64.0.1/32"])
        a.plane.peer_up(B, "https://b/", ["100.64.0.2/32"])
        link = a.plane.links[B]
        # no session yet: every attempt is given up before it connects (no TCP or TLS handshake for a
        # HELLO that cannot be signed) and the reconnect backoff grows (0.1, 0.2, 0.4, ...)
        for _ in range(6):
            for p in a.pumps:
                p.flush()
            clock.advance(link.retry_at - clock.seconds() if link.retry_at is not None else 0)
        for p in a.pumps:
            p.flush()
        self.assertFalse(link.ready)
        self.assertGreater(link.retry_at - clock.seconds(), 1.0)  # type: ignore[operator]
        self.assertEqual(a.metrics.value("link_hello_failures_total", "no_session"), 7)
        self.assertEqual(a.pumps, [])  # not one connection was opened
        secret = os.urandom(32)
        sb.install_inbound(A, "k1", secret)
        sa.install_outbound(B, "k1", secret)  # the SessionStore observer tells the plane
        for _ in range(3):
            for p in a.pumps:
                p.flush()
        self.assertTrue(link.ready)
        self.assertEqual(link.attempts, 0)
        self.assertEqual(len(a.pumps), 1)


class PreHelloLimitTests(SynchronousTestCase):
    def test_large_frame_before_hello_closes(self) -> None:
        pair = Pair(self)
        proto = pair.server.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived((F.MAX_HELLO_FRAME + 1).to_bytes(4, "big"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(pair.metrics_b.value("link_frames_dropped_total", "malformed_frame"), 1)


class ServerAuthenticityTests(SynchronousTestCase):
    def test_client_refuses_unauthentic_hello_ok(self) -> None:
        """A TLS man-in-the-middle without the session secret gets no packet."""
        pair = Pair(self)
        pair.fail_connect = False
        sent: list[bytes] = []

        def mitm(url: str, client_proto: Any) -> defer.Deferred[Any]:
            transport = StringTransport()
            client_proto.makeConnection(transport)
            # answers like a server, but derives its tag from a guessed key
            client_proto.dataReceived(F.encode_hello_ok(os.urandom(16), os.urandom(32), 1))
            sent.append(transport.value())
            return defer.succeed(client_proto)

        pair.client._connector = mitm
        pair.client.start()
        pair.client.send_batch([b"secret packet"])
        self.assertFalse(pair.client.ready)
        self.assertEqual(pair.metrics_a.value("link_hello_failures_total", "server_not_authentic"), 1)
        self.assertEqual(pair.client.queued_packets, 1)
        self.assertEqual(F.frame_type(sent[0]), F.HELLO)
        self.assertEqual(len(sent[0]), int.from_bytes(sent[0][:4], "big") + 4)  # only the HELLO


class SocketTuningTests(SynchronousTestCase):
    def test_innermost_transport_tuned(self) -> None:
        import socket

        from tunmesh.dataplane.link import tune_socket

        sock = socket.socket()
        self.addCleanup(sock.close)

        class TCP:
            nodelay = False

            def setTcpNoDelay(self, on: bool) -> None:
                self.nodelay = on

            def getHandle(self) -> socket.socket:
                return sock

        class TLS:
            transport = TCP()

        tls = TLS()
        self.assertTrue(tune_socket(tls, 1 << 20))
        self.assertTrue(tls.transport.nodelay)
        self.assertGreaterEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), 1 << 20)
        self.assertFalse(tune_socket(StringTransport()))

    def test_connector_refuses_non_https(self) -> None:
        from tunmesh.dataplane.link import TLSLinkConnector

        connector = TLSLinkConnector(MemoryReactorClock(), lambda host: None)
        for url in ("http://b:4567/", "https:///", "ftp://x/"):
            self.failureResultOf(connector(url, Protocol()), ValueError)


class LinkServiceTests(SynchronousTestCase):
    """The data plane owns one service per peer: added with the peer, gone with it, nothing left behind."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(NOW)
        store = SessionStore(A, self.clock, monotonic=self.clock.seconds)
        store.install_outbound(B, "k", os.urandom(32))
        self.node = Node(A, "100.64.0.1", self.clock, store)
        self.addCleanup(self.node.tun.close)
        self.connects: list[str] = []

        def refused(url: str, proto: Any) -> defer.Deferred[Any]:
            self.connects.append(url)
            return defer.fail(ConnectionRefusedError())

        self.node.plane._connector = refused

    def test_each_peer_is_a_child_service_started_with_the_plane(self) -> None:
        plane = self.node.plane
        plane.peer_up(B, "https://b/", ["100.64.0.2/32"])
        link = plane.links[B]
        self.assertEqual(list(plane), [link])
        self.assertFalse(link.running)
        self.assertEqual(self.connects, [])
        plane.startService()
        self.assertTrue(link.running)
        self.assertEqual(self.connects, ["https://b/"])
        plane.stopService()
        self.assertFalse(link.running)

    def test_a_removed_peer_leaves_nothing_behind(self) -> None:
        plane = self.node.plane
        plane.startService()
        self.addCleanup(plane.stopService)
        plane.peer_up(B, "https://b/", ["100.64.0.2/32"])
        link = plane.links[B]
        link.send_batch([b"waiting"])  # queued, with its expiry timer, while the link retries
        self.assertNotEqual(self.clock.getDelayedCalls(), [])
        plane.peer_down(B)
        self.assertEqual(list(plane), [])
        self.assertFalse(link.running)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # no retry, no expiry, no deadline
        self.assertEqual(self.node.metrics.drops(), {"peer_removed": 1})
        self.clock.advance(3600)
        self.assertEqual(self.connects, ["https://b/"])

    def test_a_peer_at_a_new_url_gets_a_new_service(self) -> None:
        plane = self.node.plane
        plane.startService()
        self.addCleanup(plane.stopService)
        plane.peer_up(B, "https://b/", ["100.64.0.2/32"])
        old = plane.links[B]
        plane.peer_up(B, "https://b2/", ["100.64.0.2/32"])
        self.assertEqual(list(plane), [plane.links[B]])
        self.assertIsNot(plane.links[B], old)
        self.assertFalse(old.running)
        self.assertEqual(self.connects, ["https://b/", "https://b2/"])


class StartLogTests(SynchronousTestCase):
    """The private Twisted names of the write path (tunmesh.twisted_internals) are reported at start."""

    def test_the_data_plane_says_once_at_start_whether_the_fast_path_is_active(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        clock = task.Clock()
        node = Node(A, "100.64.0.1", clock, SessionStore(A, clock, monotonic=clock.seconds))
        node.plane.startService()
        self.addCleanup(node.tun.close)
        self.addCleanup(node.plane.stopService)
        lines = [e for e in events if "fast path" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0]["twisted_version"], twisted.__version__)
        self.assertEqual(lines[0]["log_level"], LogLevel.info)


class KeepaliveTickerTests(SynchronousTestCase):
    """One timer per node for the keepalives and idle checks of all its links (docs/performance.md, "Scale")."""

    def test_members_are_called_once_per_period_from_one_timer(self) -> None:
        clock = task.Clock()
        ticker = KeepaliveTicker(clock, 10.0)
        calls: list[tuple[str, float]] = []
        ticker.add("a", lambda: calls.append(("a", clock.seconds())))
        clock.advance(4)
        ticker.add("b", lambda: calls.append(("b", clock.seconds())))
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(6)
        clock.advance(10)
        self.assertEqual(calls, [("a", 10.0), ("b", 10.0), ("a", 20.0), ("b", 20.0)])
        self.assertEqual(ticker.ticks, 2)
        self.assertEqual(len(clock.getDelayedCalls()), 1)

    def test_the_timer_runs_only_while_there_are_members(self) -> None:
        clock = task.Clock()
        ticker = KeepaliveTicker(clock, 10.0)
        self.assertEqual(clock.getDelayedCalls(), [])
        ticker.add("a", lambda: None)
        ticker.add("b", lambda: None)
        ticker.remove("a")
        ticker.remove("a")  # idempotent
        self.assertTrue(ticker.running)
        ticker.remove("b")
        self.assertFalse(ticker.running)
        self.assertEqual(clock.getDelayedCalls(), [])
        ticker.add("a", lambda: None)
        self.assertEqual(len(clock.getDelayedCalls()), 1)

    def test_a_failing_member_stops_neither_the_others_nor_the_timer(self) -> None:
        clock = task.Clock()
        ticker = KeepaliveTicker(clock, 10.0)
        calls: list[str] = []

        def boom() -> None:
            raise RuntimeError("boom")

        ticker.add("bad", boom)
        ticker.add("good", lambda: calls.append("good"))
        clock.advance(10)
        clock.advance(10)
        self.assertEqual(calls, ["good", "good"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertTrue(ticker.running)

    def test_a_member_removed_by_an_earlier_one_is_not_called(self) -> None:
        clock = task.Clock()
        ticker = KeepaliveTicker(clock, 10.0)
        calls: list[str] = []
        ticker.add("first", lambda: ticker.remove("second"))
        ticker.add("second", lambda: calls.append("second"))
        clock.advance(10)
        self.assertEqual(calls, [])

    def test_a_period_must_be_positive(self) -> None:
        self.assertRaises(ValueError, KeepaliveTicker, task.Clock(), 0)


class DataPlaneKeepaliveTests(TwoPlanes):
    """The data plane's links share its ticker: one timer per node at rest, whatever the number of links."""

    def test_one_timer_per_node_for_both_directions_of_every_link(self) -> None:
        for node in (self.a, self.b):
            self.assertEqual(len(node.plane.keepalive_ticker), 2)  # the outbound link and the inbound one
        # Two nodes on one clock: one timer each (it was one per link and direction: four).
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        rtts = self.a.metrics.collectors["link_rtt_seconds"]
        before = len(rtts.observed)
        for _ in range(3):
            self.clock.advance(10)
            self.pump()
        self.assertEqual(len(rtts.observed), before + 3)  # a PING per period, answered
        self.assertTrue(self.a.plane.links[B].ready)
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)

    def test_a_silent_link_is_still_closed_after_three_periods(self) -> None:
        # B stops answering A's link: A's outbound side gives up, B's inbound side sees PINGs and keeps it.
        for pump in self.a.pumps:
            pump.serverIO.write = lambda data: None
        for _ in range(3):
            self.clock.advance(10)
            self.pump()
        self.assertEqual(self.a.metrics.value("link_frames_dropped_total", "idle_timeout"), 1)
        self.assertFalse(self.a.plane.links[B].ready)
        self.assertNotIn(self.a.plane.links[B], self.a.plane.keepalive_ticker)

    def test_a_removed_peer_leaves_the_ticker(self) -> None:
        self.a.plane.peer_down(B)
        self.pump()
        self.assertEqual(len(self.a.plane.keepalive_ticker), 0)
        self.assertFalse(self.a.plane.keepalive_ticker.running)
