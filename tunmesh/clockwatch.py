"""Wall-clock step detection (contract W10).

Twisted schedules ``callLater`` timers on the wall clock (``reactor.seconds()`` is ``time.time``).
When the host steps its clock back by an hour (NTP at boot, a VM restored from a snapshot), every
pending timer (the groom loop, renewals, session rotation, link keepalives) would wait an hour
more: the node would fall silent and be groomed by its peers. Stepping forward fires them early.

:class:`ClockStepWatch` compares, once a second, how far the wall clock moved with how far the
monotonic clock moved. A difference above ``threshold`` is a step: it is logged, counted in
``tunmesh_clock_steps_total``, and every pending timer is moved by the step, so it fires when it
would have without the step. The tick comes from a thread sleeping on the monotonic clock and is
handed to the reactor with ``callFromThread`` (which wakes it), so a stalled timer queue cannot
stall the watch itself. Staleness, session ages and token replay windows never depend on the wall
clock (they use the monotonic clock and counters), so only timers need fixing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

#: A wall-clock jump larger than this (seconds, beyond the monotonic clock's progress) is a step.
STEP_THRESHOLD = 2.0
#: Seconds between checks.
CHECK_INTERVAL = 1.0


class ClockStepWatch(Service):
    """Keeps the reactor's timers on schedule across wall-clock steps."""

    name = "clockwatch"  # type: ignore[assignment]  # Twisted declares Service.name as None
    log = Logger()

    def __init__(
        self,
        reactor: Any,
        metrics: Any = None,
        *,
        threshold: float = STEP_THRESHOLD,
        interval: float = CHECK_INTERVAL,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold <= 0 or interval <= 0:
            raise ValueError("threshold and interval must be positive")
        self.reactor = reactor
        self.threshold = threshold
        self.interval = interval
        self._wall = wall
        self._monotonic = monotonic
        self._last_wall = wall()
        self._last_mono = monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._steps = (
            metrics.counter("clock_steps", "Wall-clock steps detected (timers were rescheduled).")
            if metrics is not None
            else None
        )

    def check(self) -> float:
        """Compare the clocks since the last check (in the reactor thread); returns the step
        corrected (0.0 when none)."""
        wall, mono = self._wall(), self._monotonic()
        step = (wall - self._last_wall) - (mono - self._last_mono)
        self._last_wall, self._last_mono = wall, mono
        if abs(step) <= self.threshold:
            return 0.0
        moved = self._move_timers(step)
        if self._steps is not None:
            self._steps.inc()
        self.log.warn(
            "wall clock stepped by {step:+.1f}s; {moved} pending timers rescheduled",
            step=step,
            moved=moved,
        )
        return step

    def _move_timers(self, step: float) -> int:
        """Each pending timer was due at wall time T before the step: it is due at T + step now."""
        now = self.reactor.seconds()
        moved = 0
        for call in list(self.reactor.getDelayedCalls()):
            if not call.active():
                continue
            call.reset(max(0.0, call.getTime() + step - now))
            moved += 1
        return moved

    # -- the ticking thread ------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._last_wall, self._last_mono = self._wall(), self._monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tunmesh-clockwatch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Event.wait sleeps on the monotonic clock: a wall-clock step does not delay it.
        while not self._stop.wait(self.interval):
            try:
                self.reactor.callFromThread(self.check)
            except Exception:  # the reactor is shutting down
                return

    def stopService(self) -> Any:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)
        return super().stopService()
