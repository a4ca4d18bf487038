"""Replay window and jti cache (W1)."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tunmesh.auth.errors import AuthError
from tunmesh.auth.replay import MAX_CTR, JtiCache, ReplayWindow


class ReplayWindowTests(SynchronousTestCase):
    def test_in_order_once(self) -> None:
        w = ReplayWindow(64)
        for ctr in range(200):
            self.assertTrue(w.check_and_update(ctr))
            self.assertFalse(w.check_and_update(ctr))
        self.assertEqual(w.highest, 199)

    def test_out_of_order_within_window_accepted_once(self) -> None:
        w = ReplayWindow(64)
        self.assertTrue(w.check_and_update(10))
        self.assertTrue(w.check_and_update(5))
        self.assertFalse(w.check_and_update(5))
        self.assertTrue(w.check_and_update(100))
        self.assertTrue(w.check_and_update(37))  # 100 - 37 = 63 < 64
        self.assertFalse(w.check_and_update(36))  # too old
        self.assertFalse(w.check_and_update(10))

    def test_check_does_not_record(self) -> None:
        w = ReplayWindow()
        self.assertTrue(w.check(3))
        self.assertTrue(w.check(3))
        self.assertTrue(w.check_and_update(3))
        self.assertFalse(w.check(3))

    def test_big_jump_clears_bitmap(self) -> None:
        w = ReplayWindow(8192)
        self.assertTrue(w.check_and_update(1))
        self.assertTrue(w.check_and_update(1_000_000))
        self.assertFalse(w.check_and_update(1))
        self.assertTrue(w.check_and_update(1_000_000 - 8191))
        self.assertFalse(w.check_and_update(1_000_000 - 8192))

    def test_bounds(self) -> None:
        w = ReplayWindow()
        self.assertFalse(w.check_and_update(-1))
        self.assertFalse(w.check_and_update(MAX_CTR + 1))
        self.assertTrue(w.check_and_update(MAX_CTR))
        self.assertRaises(ValueError, ReplayWindow, 0)


class JtiCacheTests(SynchronousTestCase):
    def test_remembers_until_forget_time(self) -> None:
        clock = Clock()
        cache = JtiCache(10, clock)
        self.assertTrue(cache.add("a", 90))
        self.assertFalse(cache.add("a", 90))
        self.assertTrue(cache.seen("a"))
        clock.advance(90)
        self.assertFalse(cache.seen("a"))
        self.assertTrue(cache.add("a", 200))

    def test_full_fails_closed(self) -> None:
        clock = Clock()
        cache = JtiCache(3, clock)
        for jti in "abc":
            cache.add(jti, 50)
        with self.assertRaises(AuthError) as ctx:
            cache.add("d", 50)
        self.assertEqual(ctx.exception.reason, "rate_limited")
        self.assertEqual(ctx.exception.status, 429)
        self.assertEqual(ctx.exception.retry_after, 50)
        self.assertTrue(cache.seen("a"))  # nothing was evicted
        clock.advance(50)
        self.assertTrue(cache.add("d", 100))
        self.assertEqual(len(cache), 1)
