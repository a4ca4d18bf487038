"""``PollWindow``: keep the reactor polling for a moment after a lone packet (issue 10).

On these vCPUs a process woken from sleep runs its first Python 10-30x slower than warm, and a sleeping vCPU
costs a wake-up (docs/performance.md, "Why ping is not at 0.4 ms"); the answer to a request usually comes back
within a few hundred microseconds. After a lone small packet the data plane pokes the window; for ``window``
seconds after the last poke the reactor keeps turning with a zero timeout (a ``callLater(0)`` chain) instead
of sleeping in ``epoll_wait``, so the answer is read by a warm process on an awake core. Every descriptor is
still served by the reactor, in its order. Bulk traffic never pokes (it keeps the reactor busy anyway) and a
node at rest never polls.

Polling only pays while the core is ours. When other work wants the core, a polling process is preempted,
stays runnable, and the answer waits for its next turn (milliseconds, measured in docs/performance.md):
worse than sleeping. So the window is adaptive: a turn of the chain that comes later than ``GAP`` after
the previous one *without having used the CPU in between* (wall time minus the thread's CPU time) means the
process was preempted: polling stops and stays off for a backoff that doubles with each such window (up to
``MAX_BACKOFF``) and halves with each clean one. Time spent working (a cold reactor turn, a batch) is not
preemption.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: off the CPU for longer than this between two turns of the chain: the core was not ours
GAP = 0.0002
MIN_BACKOFF = 1.0
MAX_BACKOFF = 60.0


class PollWindow:
    """Busy-poll the reactor for ``window`` seconds after the last :meth:`poke` (``window`` 0: never)."""

    __slots__ = (
        "_clock", "_cpu", "window", "_until", "_last", "_last_cpu", "_call", "_backoff", "_resume_at", "spins",
        "preempted",
    )

    def __init__(self, clock: IReactorTime, window: float, cpu: Callable[[], float] = time.thread_time) -> None:
        if window < 0:
            raise ValueError(f"poll window must not be negative, not {window!r}")
        self._clock = clock
        #: this thread's CPU seconds (``time.thread_time``)
        self._cpu = cpu
        self._last_cpu = 0.0
        self.window = window
        self._until = 0.0
        self._last = 0.0
        self._call: IDelayedCall | None = None
        self._backoff = 0.0
        self._resume_at = 0.0
        #: reactor turns spent polling, and windows cut short by preemption (the benchmark reads them)
        self.spins = 0
        self.preempted = 0

    @property
    def polling(self) -> bool:
        return self._call is not None

    @property
    def backing_off(self) -> bool:
        return self._clock.seconds() < self._resume_at

    def poke(self) -> None:
        """A lone packet went out or came in: poll until ``window`` seconds from now."""
        if not self.window:
            return
        now = self._clock.seconds()
        if now < self._resume_at:
            return
        self._until = now + self.window
        if self._call is None:
            self._last = now
            self._last_cpu = self._cpu()
            self._call = self._clock.callLater(0, self._spin)

    def _spin(self) -> None:
        self._call = None
        now = self._clock.seconds()
        cpu = self._cpu()
        off_cpu = (now - self._last) - (cpu - self._last_cpu)
        self._last_cpu = cpu
        if off_cpu > GAP:
            # Preempted (or busy elsewhere): polling would only make the next answer wait for our turn.
            self.preempted += 1
            self._backoff = min(MAX_BACKOFF, self._backoff * 2) if self._backoff else MIN_BACKOFF
            self._resume_at = now + self._backoff
            return
        self._last = now
        if now < self._until:
            self.spins += 1
            self._call = self._clock.callLater(0, self._spin)
        elif self._backoff:
            self._backoff = self._backoff / 2 if self._backoff > MIN_BACKOFF else 0.0

    def stop(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
