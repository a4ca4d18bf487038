"""Replay protection: a counter window for session tokens, a bounded jti cache for cluster tokens (W1)."""

from __future__ import annotations

from collections import OrderedDict

from tunmesh.auth.errors import AuthError
from tunmesh.interfaces import SecondsClock

MAX_CTR = 2**64 - 1


class ReplayWindow:
    """RFC 6479-style sliding window over a strictly increasing counter.

    Accepts each counter at most once; counters up to ``size - 1`` below the highest seen are accepted
    out of order, older ones are refused. The bitmap is a Python int: bit i set means ``top - i`` was seen.
    """

    def __init__(self, size: int = 8192) -> None:
        if size < 1:
            raise ValueError("window size must be positive")
        self.size = size
        self._top = -1
        self._bits = 0
        self._mask = (1 << size) - 1

    @property
    def highest(self) -> int:
        """The highest counter accepted so far (-1 before the first)."""
        return self._top

    def check(self, ctr: int) -> bool:
        """True when ``ctr`` would be accepted; does not change the window."""
        if ctr < 0 or ctr > MAX_CTR:
            return False
        if ctr > self._top:
            return True
        offset = self._top - ctr
        if offset >= self.size:
            return False
        return not (self._bits >> offset) & 1

    def check_and_update(self, ctr: int) -> bool:
        """Accept ``ctr`` once: True and record it, or False (replayed or too old)."""
        if not self.check(ctr):
            return False
        if ctr > self._top:
            shift = ctr - self._top
            self._bits = ((self._bits << shift) | 1) & self._mask if shift < self.size else 1
            self._top = ctr
        else:
            self._bits |= 1 << (self._top - ctr)
        return True


class JtiCache:
    """Bounded memory of cluster token ids, each kept until its token could no longer verify.

    When full of live entries it fails closed: ``add`` raises ``AuthError("rate_limited")`` (HTTP 429)
    instead of forgetting an id that could still be replayed.
    """

    def __init__(self, max_entries: int, clock: SecondsClock) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self.max_entries = max_entries
        self._clock = clock
        # jti -> forget_at (wall clock seconds); insertion order ~ expiry order for equal lifetimes.
        self._entries: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _purge(self) -> None:
        now = self._clock.seconds()
        expired = [jti for jti, until in self._entries.items() if until <= now]
        for jti in expired:
            del self._entries[jti]

    def seen(self, jti: str) -> bool:
        """True when ``jti`` is remembered (and not yet past its forget time)."""
        until = self._entries.get(jti)
        return until is not None and until > self._clock.seconds()

    def add(self, jti: str, forget_at: float) -> bool:
        """Record ``jti`` until ``forget_at``; False when already seen. Raises rate_limited when full."""
        if self.seen(jti):
            return False
        if len(self._entries) >= self.max_entries:
            self._purge()
            if len(self._entries) >= self.max_entries:
                soonest = min(self._entries.values())
                raise AuthError("rate_limited", retry_after=max(1.0, soonest - self._clock.seconds()))
        self._entries[jti] = forget_at
        return True
