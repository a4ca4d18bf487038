"""Per-peer packet metrics: counted per batch, series dropped after metric_ttl idle or on peer removal."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.support import samples
from tunmesh.dataplane.peerstats import PeerPacketMetrics
from tunmesh.metrics import Metrics


class PeerPacketMetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics("node-a", enabled=True, process_metrics=False)
        self.stats = PeerPacketMetrics(self.metrics, self.clock, ttl=60)

    def test_counts_per_peer_and_direction(self) -> None:
        self.stats.received("p1", 3, 300)
        self.stats.received("p1", 1, 40)
        self.stats.sent("p2", 2, 2000)
        rx = "tunmesh_remote_rx_packets_by_source_node_total"
        self.assertEqual(samples(self.metrics, rx), {"p1": 4.0, "p2": 0.0})
        self.assertEqual(samples(self.metrics, "tunmesh_remote_rx_bytes_by_source_node_total"), {"p1": 340.0, "p2": 0.0})
        self.assertEqual(samples(self.metrics, "tunmesh_remote_tx_packets_by_dest_node_total"), {"p1": 0.0, "p2": 2.0})
        self.assertEqual(samples(self.metrics, "tunmesh_remote_tx_bytes_by_dest_node_total"), {"p1": 0.0, "p2": 2000.0})

    def test_idle_series_dropped_after_ttl_active_ones_kept(self) -> None:
        self.stats.received("idle", 1, 10)
        self.stats.received("busy", 1, 10)
        for _ in range(5):
            self.clock.advance(20)
            self.stats.sent("busy", 1, 10)
        self.assertEqual(set(samples(self.metrics, "tunmesh_remote_rx_packets_by_source_node_total")), {"busy"})
        self.assertEqual(len(self.stats), 1)
        self.clock.advance(60)
        self.assertEqual(samples(self.metrics, "tunmesh_remote_rx_packets_by_source_node_total"), {})
        self.assertEqual(len(self.stats), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # no timer left when nothing is tracked

    def test_forget_removes_series_and_a_returning_peer_starts_at_zero(self) -> None:
        self.stats.received("p1", 5, 500)
        self.stats.forget("p1")
        self.stats.forget("p1")  # twice is fine
        self.assertEqual(samples(self.metrics, "tunmesh_remote_rx_packets_by_source_node_total"), {})
        self.stats.received("p1", 1, 10)
        self.assertEqual(samples(self.metrics, "tunmesh_remote_rx_packets_by_source_node_total"), {"p1": 1.0})

    def test_stop_cancels_the_timer(self) -> None:
        self.stats.received("p1", 1, 10)
        self.stats.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bad_ttl(self) -> None:
        self.assertRaises(ValueError, PeerPacketMetrics, self.metrics, self.clock, 0)
