"""``InFlight``: at most one running operation per key, and any number of waiters on its result.

The keyed form of magic-wormhole's ``OneShotObserver`` (``src/wormhole/observer.py``): membership runs
one bootstrap per URL, one session setup and one renewal per peer; a second caller waits on the running
one instead of starting another.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class InFlight(Generic[K, T]):
    """Running operations by key; each is forgotten as soon as it has a result."""

    def __init__(self) -> None:
        self._running: dict[K, Deferred[T]] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._running

    def __len__(self) -> int:
        return len(self._running)

    def start(self, key: K, operation: Deferred[T]) -> Deferred[T]:
        """Track ``operation`` under ``key`` until it fires; returns ``operation``.

        The key is free again before any callback added afterwards runs, so a callback may start the
        next operation for the same key.
        """
        self._running[key] = operation

        def finished(result: T | Failure) -> T | Failure:
            self._running.pop(key, None)
            return result

        operation.addBoth(finished)
        return operation

    def follow(self, key: K) -> Deferred[T] | None:
        """A new Deferred with the result of ``key``'s running operation (None when none runs).

        It fires after every callback the operation had when it was followed, and leaves the
        operation's own result untouched: a waiter that drops or handles a failure does not change
        what the other waiters get.
        """
        source = self._running.get(key)
        if source is None:
            return None
        mirror: Deferred[T] = Deferred()

        def relay(result: T | Failure) -> T | Failure:
            if isinstance(result, Failure):
                mirror.errback(result)
            else:
                mirror.callback(result)
            return result

        source.addBoth(relay)
        return mirror
