"""Time in a node (issue 13, W10): timers on the monotonic clock; wall-clock steps detected, not acted on.

``Clock`` plays the reactor, whose ``seconds()`` is the monotonic clock once
:func:`tunmesh.clocks.use_monotonic_timers` ran; the wall clock is a separate function the tests step.
"""

from __future__ import annotations

import time

from twisted.internet.selectreactor import SelectReactor
from twisted.internet.task import Clock, LoopingCall
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tunmesh.clocks import WallClock, use_monotonic_timers
from tunmesh.clockwatch import CHECK_INTERVAL, ClockStepWatch
from tunmesh.metrics import Metrics

WALL0 = 1_700_000_000.0


class Steps:
    """A wall clock that moves with the monotonic one (``Clock``) plus the steps the host makes."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.offset = WALL0

    def __call__(self) -> float:
        return self.clock.seconds() + self.offset

    def step(self, seconds: float) -> None:
        self.offset += seconds


class CheckTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.wall = Steps(self.clock)
        self.metrics = Metrics("node-a", enabled=True, process_metrics=False)
        self.watch = ClockStepWatch(self.clock, self.metrics, wall=self.wall, monotonic=self.clock.seconds)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]

    def steps_counted(self) -> bytes:
        return self.metrics.render()[0]

    def test_steps_of_an_hour_are_detected_logged_and_counted(self) -> None:
        self.watch.startService()
        self.addCleanup(self.watch.stopService)
        for step in (+3600, -3600, -86400, +86400):
            self.wall.step(step)
            self.clock.advance(CHECK_INTERVAL)
        self.assertIn(b'tunmesh_clock_steps_total 4.0', self.steps_counted())
        lines = [e for e in self.events if "wall clock stepped" in e.get("log_format", "")]
        self.assertEqual([round(e["step"]) for e in lines], [3600, -3600, -86400, 86400])
        self.assertIn("peers refuse", lines[0]["log_format"])

    def test_timers_keep_their_schedule_whatever_the_wall_clock_does(self) -> None:
        """The watch never touches timers: they run on the reactor's (monotonic) clock."""
        fired: list[float] = []
        ticks: list[float] = []
        self.watch.startService()
        self.addCleanup(self.watch.stopService)
        self.clock.callLater(100, lambda: fired.append(self.clock.seconds()))
        loop = LoopingCall(lambda: ticks.append(self.clock.seconds()))
        loop.clock = self.clock
        loop.start(10.0, now=False)
        for step in (+3600, -3600, +10, -10, -86400):
            self.clock.advance(CHECK_INTERVAL)
            self.wall.step(step)
        for _ in range(15):
            self.clock.advance(5)
        loop.stop()
        self.assertEqual(fired, [100.0])
        self.assertEqual(ticks, [10.0 * i for i in range(1, 11)])
        self.assertEqual(self.watch.offset, 3600 - 3600 + 10 - 10 - 86400)

    def test_small_steps_below_the_leeway_are_info_and_drift_is_ignored(self) -> None:
        self.watch.startService()
        self.addCleanup(self.watch.stopService)
        self.wall.step(1.5)
        self.clock.advance(CHECK_INTERVAL)
        self.assertIn(b'tunmesh_clock_steps_total 0.0', self.steps_counted())
        self.wall.step(10)
        self.clock.advance(CHECK_INTERVAL)
        lines = [e for e in self.events if "wall clock stepped" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        self.assertNotIn("peers refuse", lines[0]["log_format"])

    def test_bad_parameters(self) -> None:
        for kw in ({"threshold": 0}, {"interval": 0}):
            self.assertRaises(ValueError, ClockStepWatch, self.clock, **kw)


class MonotonicReactorTests(SynchronousTestCase):
    """``use_monotonic_timers`` on a real (not installed) reactor."""

    def test_reactor_seconds_become_monotonic_and_pending_timers_keep_their_delay(self) -> None:
        reactor = SelectReactor()
        self.addCleanup(reactor.disconnectAll)
        early = reactor.callLater(30, lambda: None)
        late = reactor.callLater(60, lambda: None)
        self.assertTrue(use_monotonic_timers(reactor))
        self.assertIs(reactor.seconds, time.monotonic)
        self.assertLess(abs(reactor.seconds() - (time.monotonic())), 0.5)
        self.assertLess(abs(early.getTime() - time.monotonic() - (30)), 0.5)
        self.assertLess(abs(late.getTime() - time.monotonic() - (60)), 0.5)
        timeout = reactor.timeout()
        assert timeout is not None
        self.assertLess(abs(timeout - (30)), 0.5)
        fresh = reactor.callLater(5, lambda: None)
        self.assertLess(abs(fresh.getTime() - time.monotonic() - (5)), 0.5)
        early.reset(1)  # uses the call's own seconds(): monotonic too
        self.assertLess(abs(early.getTime() - time.monotonic() - (1)), 0.5)
        self.assertFalse(use_monotonic_timers(reactor))  # once only
        for call in (early, late, fresh):
            call.cancel()

    def test_wall_clock_is_wall_time(self) -> None:
        self.assertLess(abs(WallClock().seconds() - (time.time())), 0.5)
