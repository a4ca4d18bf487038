""":class:`KeyedTimers`: at most one pending call per key, on an injected clock.

The mesh retries join work (bootstrap passes, gossip bootstraps, session setups) on its own timers as
soon as a backoff allows, instead of waiting for the next groom tick; this keeps those timers in one
place so a stop cancels all of them and a peer's removal cancels its own.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger


class KeyedTimers:
    """One ``IDelayedCall`` per key; asking again for a key keeps whichever call comes first."""

    log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._calls: dict[Hashable, IDelayedCall] = {}

    def call_within(self, key: Hashable, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in ``delay`` seconds, unless ``key`` already has a call due no later.

        An earlier request moves the pending call forward (its function and arguments are replaced).
        """
        delay = max(0.0, delay)
        due = self._clock.seconds() + delay
        pending = self._calls.get(key)
        if pending is not None and pending.active():
            if pending.getTime() <= due:
                return
            pending.cancel()
        self._calls[key] = self._clock.callLater(delay, self._fire, key, fn, args)

    def _fire(self, key: Hashable, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._calls.pop(key, None)
        try:
            fn(*args)
        except Exception:
            self.log.failure("timer {key!r} failed", key=key)

    def pending(self, key: Hashable) -> float | None:
        """Seconds until ``key``'s call runs, or None when none is pending."""
        call = self._calls.get(key)
        if call is None or not call.active():
            return None
        return max(0.0, call.getTime() - self._clock.seconds())

    def cancel(self, key: Hashable) -> None:
        call = self._calls.pop(key, None)
        if call is not None and call.active():
            call.cancel()

    def cancel_all(self) -> None:
        for key in list(self._calls):
            self.cancel(key)

    def __len__(self) -> int:
        return sum(1 for call in self._calls.values() if call.active())
