"""`InFlight`: one running operation per key, any number of waiters on its result."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tunmesh.mesh.inflight import InFlight


class InFlightTests(SynchronousTestCase):
    def test_a_key_runs_until_its_operation_fires(self) -> None:
        running: InFlight[str, int] = InFlight()
        op: Deferred[int] = Deferred()
        self.assertIs(running.start("a", op), op)
        self.assertIn("a", running)
        self.assertNotIn("b", running)
        self.assertEqual(len(running), 1)
        op.callback(1)
        self.assertNotIn("a", running)
        self.assertEqual(len(running), 0)
        self.assertEqual(self.successResultOf(op), 1)

    def test_followers_get_the_result_and_nothing_runs_for_an_idle_key(self) -> None:
        running: InFlight[str, int] = InFlight()
        self.assertIsNone(running.follow("a"))
        op: Deferred[int] = running.start("a", Deferred())
        first, second = running.follow("a"), running.follow("a")
        assert first is not None and second is not None
        self.assertNoResult(first)
        op.callback(7)
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), (7, 7))

    def test_a_follower_that_handles_a_failure_leaves_it_to_the_others(self) -> None:
        running: InFlight[str, int] = InFlight()
        op: Deferred[int] = running.start("a", Deferred())
        handled = running.follow("a")
        other = running.follow("a")
        assert handled is not None and other is not None
        handled.addErrback(lambda f: 0)
        op.errback(Failure(ValueError("no")))
        self.assertEqual(self.successResultOf(handled), 0)
        self.failureResultOf(other, ValueError)
        self.failureResultOf(op, ValueError)

    def test_the_key_is_free_for_callbacks_added_after_start(self) -> None:
        running: InFlight[str, int] = InFlight()
        op: Deferred[int] = running.start("a", Deferred())
        seen: list[bool] = []

        def look(result: int) -> int:
            seen.append("a" in running)
            return result

        op.addCallback(look)
        op.callback(1)
        self.assertEqual(seen, [False])

    def test_an_operation_that_already_fired_is_not_kept(self) -> None:
        running: InFlight[str, int] = InFlight()
        done: Deferred[int] = Deferred()
        done.callback(3)
        running.start("a", done)
        self.assertNotIn("a", running)
        self.assertIsNone(running.follow("a"))
