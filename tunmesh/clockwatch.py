"""Wall-clock step detection (contract W10): a detector, not a timer mover.

The node's timers run on the monotonic clock (:func:`tunmesh.clocks.use_monotonic_timers`), so a
wall-clock step cannot move them. What a step still changes is how this node's tokens look to its
peers (``iat``/``exp`` are wall time, judged with a leeway of 60 s): a step larger than that makes
peers refuse this node (``clock_skew``) until the clocks agree again. :class:`ClockStepWatch` compares,
every ``interval`` seconds, how far the wall clock moved with how far the monotonic clock moved; a
difference above ``threshold`` is logged (with what it means for the mesh) and counted in
``tunmesh_clock_steps_total``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from tunmesh.interfaces import MetricsLike

#: A wall-clock jump larger than this (seconds, beyond the monotonic clock's progress) is a step.
STEP_THRESHOLD = 2.0
#: Seconds between checks.
CHECK_INTERVAL = 5.0
#: Token leeway: steps beyond it make peers refuse this node's tokens (see tunmesh.auth.tokens).
TOKEN_LEEWAY = 60.0


class ClockStepWatch(TimerService):
    """Detects wall-clock steps; logs and counts them. Timers are not touched (they are monotonic)."""

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        metrics: MetricsLike | None = None,
        *,
        threshold: float = STEP_THRESHOLD,
        interval: float = CHECK_INTERVAL,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold <= 0 or interval <= 0:
            raise ValueError("threshold and interval must be positive")
        super().__init__(interval, self.check)
        self.setName("clockwatch")
        self.clock = reactor
        self.threshold = threshold
        self._wall = wall
        self._monotonic = monotonic
        self._last_wall = wall()
        self._last_mono = monotonic()
        self.offset = 0.0  # the sum of the steps seen: wall time minus where it would be without them
        self._observers: list[Callable[[float], object]] = []
        self._steps = (
            metrics.counter("clock_steps", "Wall-clock steps detected (timers are monotonic: unaffected).")
            if metrics is not None
            else None
        )

    def add_observer(self, observer: Callable[[float], object]) -> None:
        """``observer(step)`` is called after each step (membership retries peers at once)."""
        self._observers.append(observer)

    def startService(self) -> None:
        self._last_wall, self._last_mono = self._wall(), self._monotonic()
        super().startService()

    def check(self) -> float:
        """Compare the clocks since the last check; returns the step seen (0.0 when none)."""
        wall, mono = self._wall(), self._monotonic()
        step = (wall - self._last_wall) - (mono - self._last_mono)
        self._last_wall, self._last_mono = wall, mono
        if abs(step) <= self.threshold:
            return 0.0
        self.offset += step
        if self._steps is not None:
            self._steps.inc()
        if abs(step) > TOKEN_LEEWAY or abs(self.offset) > TOKEN_LEEWAY:
            self.log.warn(
                "wall clock stepped by {step:+.1f}s: timers are unaffected (monotonic), but peers refuse "
                "this node's tokens while its clock differs from theirs by more than {leeway:.0f}s",
                step=step,
                leeway=TOKEN_LEEWAY,
            )
        else:
            self.log.info("wall clock stepped by {step:+.1f}s; timers unaffected (monotonic)", step=step)
        for observer in self._observers:
            try:
                observer(step)
            except Exception:
                self.log.failure("clock step observer {observer!r} failed", observer=observer)
        return step
