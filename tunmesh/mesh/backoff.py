"""Exponential backoff with jitter per key (W7, contract "Peer failure": 1 s doubling to about 900 s).

Replaces the original's fault tracker, which only blocked a key for one groom interval.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass
class _State:
    failures: int
    not_before: float


class Backoff:
    """``allowed(key)`` until ``failure(key)``; then wait initial·2^(n-1), capped, times U(0.5, 1)."""

    def __init__(
        self,
        initial: float = 1.0,
        maximum: float = 900.0,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        max_keys: int = 4096,
    ) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError("need 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self._monotonic = monotonic
        self._rng = rng or random.SystemRandom()
        self._max_keys = max_keys
        self._state: dict[Hashable, _State] = {}

    def allowed(self, key: Hashable) -> bool:
        state = self._state.get(key)
        return state is None or self._monotonic() >= state.not_before

    def delay_for(self, failures: int) -> float:
        """The un-jittered delay after ``failures`` consecutive failures."""
        return min(self.maximum, self.initial * 2 ** min(failures - 1, 62))

    def failure(self, key: Hashable, at_least: float = 0.0) -> float:
        """Record a failure; returns the delay before the key is allowed again."""
        state = self._state.get(key)
        failures = 1 if state is None else state.failures + 1
        delay = max(at_least, self.delay_for(failures) * self._rng.uniform(0.5, 1.0))
        if state is None and len(self._state) >= self._max_keys:
            self.prune()
        self._state[key] = _State(failures, self._monotonic() + delay)
        return delay

    def wait(self, key: Hashable) -> float:
        """Seconds until ``key`` is allowed again (0 when it is)."""
        state = self._state.get(key)
        return 0.0 if state is None else max(0.0, state.not_before - self._monotonic())

    def success(self, key: Hashable) -> None:
        self._state.pop(key, None)

    def reset(self) -> None:
        """Forget every failure (after a wall-clock step: failures may have been caused by it)."""
        self._state.clear()

    def failures(self, key: Hashable) -> int:
        state = self._state.get(key)
        return 0 if state is None else state.failures

    def prune(self) -> None:
        """Forget keys whose wait ended long ago (bounded memory for gossiped URLs)."""
        now = self._monotonic()
        for key, state in list(self._state.items()):
            if now >= state.not_before + self.maximum:
                del self._state[key]
