"""PacketQueue: the packets waiting for a link, bounded and expiring on one timer (pure, on a Clock)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tunmesh.dataplane.linkqueue import QUEUE_FULL, PacketQueue


class PacketQueueTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.drops: list[tuple[str, int]] = []
        self.reason = "peer_down"
        self.queue = self.make()

    def make(self, max_packets: int = 100, max_bytes: int = 10_000, expiration: float = 0.1) -> PacketQueue:
        return PacketQueue(
            self.clock, expiration, max_packets, max_bytes, lambda r, n: self.drops.append((r, n)), lambda: self.reason
        )

    def drain(self, queue: PacketQueue) -> list[bytes]:
        out = []
        while (batch := queue.pop()) is not None:
            out.extend(batch)
        return out

    def test_batches_come_out_in_order(self) -> None:
        self.queue.push([b"1", b"2"])
        self.queue.push([b"3"])
        self.assertEqual((self.queue.packets, self.queue.bytes), (3, 3))
        self.assertEqual(self.queue.pop(), [b"1", b"2"])
        self.assertEqual(self.queue.pop(), [b"3"])
        self.assertIsNone(self.queue.pop())
        self.assertEqual((self.queue.packets, self.queue.bytes, self.drops), (0, 0, []))

    def test_the_oldest_packets_go_first_past_the_packet_bound(self) -> None:
        queue = self.make(max_packets=4)
        queue.push([b"1", b"2", b"3"])
        queue.push([b"4", b"5"])
        queue.push([b"6"])
        self.assertEqual(self.drops, [(QUEUE_FULL, 1), (QUEUE_FULL, 1)])
        self.assertEqual(self.drain(queue), [b"3", b"4", b"5", b"6"])
        self.assertEqual(queue.bytes, 0)

    def test_the_byte_bound_drops_too(self) -> None:
        queue = self.make(max_bytes=250)
        queue.push([b"a" * 100, b"b" * 100])
        queue.push([b"c" * 100])
        self.assertEqual(self.drops, [(QUEUE_FULL, 1)])
        self.assertEqual((queue.packets, queue.bytes), (2, 200))
        self.assertEqual(self.drain(queue), [b"b" * 100, b"c" * 100])

    def test_batches_expire_on_one_timer_with_the_owners_reason(self) -> None:
        self.queue.push([b"x", b"y"])
        self.clock.advance(0.05)
        self.queue.push([b"z"])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0.05)
        self.assertEqual(self.drops, [("peer_down", 2)])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.reason = "expired"
        self.clock.advance(0.05)
        self.assertEqual(self.drops, [("peer_down", 2), ("expired", 1)])
        self.assertEqual((self.queue.packets, self.queue.bytes), (0, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_an_expired_batch_is_gone_before_the_next_pop(self) -> None:
        self.queue.push([b"old"])
        self.clock.advance(0.06)
        self.queue.push([b"new"])
        self.clock.advance(0.05)  # the timer ran at 0.1
        self.assertEqual(self.queue.pop(), [b"new"])
        self.assertEqual(self.drops, [("peer_down", 1)])

    def test_emptied_queue_leaves_no_timer(self) -> None:
        self.queue.push([b"x"])
        self.assertEqual(self.queue.pop(), [b"x"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_clear_counts_everything_and_stops_the_timer(self) -> None:
        self.queue.push([b"x", b"y"])
        self.queue.push([b"z"])
        self.queue.clear("peer_removed")
        self.assertEqual(self.drops, [("peer_removed", 3)])
        self.assertEqual((self.queue.packets, self.queue.bytes), (0, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.queue.clear("peer_removed")
        self.assertEqual(len(self.drops), 1)
