"""ClockStepWatch: wall-clock steps are detected and pending timers keep their schedule (W10)."""

from __future__ import annotations

import threading
from typing import Any

from twisted.internet.task import Clock, LoopingCall
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tunmesh.clockwatch import ClockStepWatch
from tunmesh.metrics import Metrics


class SteppableClock(Clock):
    """A reactor clock whose wall time can be stepped while a monotonic clock goes on."""

    def __init__(self) -> None:
        super().__init__()
        self.rightNow = 1_700_000_000.0
        self.mono = 50.0

    def run(self, seconds: float) -> None:
        """Let time pass: both clocks move, timers fire."""
        self.mono += seconds
        self.advance(seconds)

    def step(self, seconds: float) -> None:
        """The host sets its clock: only the wall clock moves, nothing fires yet."""
        self.rightNow += seconds


class CheckTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = SteppableClock()
        self.metrics = Metrics("node-a", enabled=True, process_metrics=False)
        self.watch = ClockStepWatch(
            self.clock, self.metrics, wall=self.clock.seconds, monotonic=lambda: self.clock.mono
        )
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def steps_counted(self) -> bytes:
        return self.metrics.render()[0]

    def test_backward_step_does_not_stall_timers(self) -> None:
        fired: list[float] = []
        self.clock.callLater(10, lambda: fired.append(self.clock.mono))
        self.clock.run(4)
        self.clock.step(-3600)  # an hour back: the timer would now wait 3606 s
        self.assertEqual(self.watch.check(), -3600)
        self.clock.run(5.9)
        self.assertEqual(fired, [])
        self.clock.run(0.2)
        self.assertEqual(fired, [60.1])  # 10 s after it was scheduled, on the monotonic clock
        self.assertIn(b'tunmesh_clock_steps_total{node_id="node-a"} 1.0', self.steps_counted())
        self.assertTrue(any("wall clock stepped" in e.get("log_format", "") for e in self.events))

    def test_forward_step_does_not_fire_timers_early(self) -> None:
        fired: list[float] = []
        self.clock.callLater(100, lambda: fired.append(self.clock.mono))
        self.clock.step(+3600)
        self.assertEqual(self.watch.check(), 3600)
        self.clock.run(99)
        self.assertEqual(fired, [])
        self.clock.run(1)
        self.assertEqual(fired, [150.0])

    def test_looping_call_keeps_its_period_across_a_backward_step(self) -> None:
        ticks: list[float] = []
        loop = LoopingCall(lambda: ticks.append(self.clock.mono))
        loop.clock = self.clock
        loop.start(1.0, now=False)
        self.clock.run(1)
        self.clock.run(1)
        self.clock.step(-600)
        self.watch.check()
        for _ in range(3):
            self.clock.run(1)
        loop.stop()
        self.assertEqual(ticks, [51.0, 52.0, 53.0, 54.0, 55.0])

    def test_drift_below_the_threshold_is_ignored(self) -> None:
        call = self.clock.callLater(10, lambda: None)
        self.clock.run(1)
        self.clock.step(1.5)
        self.assertEqual(self.watch.check(), 0.0)
        self.assertEqual(call.getTime(), 1_700_000_010.0)  # untouched
        self.assertIn(b'tunmesh_clock_steps_total{node_id="node-a"} 0.0', self.steps_counted())

    def test_cancelled_and_called_timers_are_left_alone(self) -> None:
        cancelled = self.clock.callLater(5, lambda: None)
        cancelled.cancel()
        self.clock.callLater(1, lambda: None)
        self.clock.run(1)
        self.clock.step(-100)
        self.watch.check()  # would raise AlreadyCancelled / AlreadyCalled if it touched them

    def test_bad_parameters(self) -> None:
        for kw in ({"threshold": 0}, {"interval": 0}):
            self.assertRaises(ValueError, ClockStepWatch, self.clock, **kw)


class _ThreadReactor:
    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.called = threading.Event()

    def callFromThread(self, f: Any) -> None:  # noqa: N802 (Twisted name)
        self.calls.append(f)
        self.called.set()


class ThreadTests(SynchronousTestCase):
    def test_ticks_come_from_a_thread_and_stop_with_the_service(self) -> None:
        reactor = _ThreadReactor()
        watch = ClockStepWatch(reactor, interval=0.01)
        watch.startService()
        self.assertTrue(reactor.called.wait(10))
        watch.stopService()
        self.assertIsNone(watch._thread)
        count = len(reactor.calls)
        self.assertEqual(reactor.calls[0], watch.check)
        threading.Event().wait(0.05)
        self.assertEqual(len(reactor.calls), count)  # no tick after stop
