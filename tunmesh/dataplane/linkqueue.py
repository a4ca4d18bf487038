"""The packets waiting for a peer link: bounded, oldest dropped first, each batch kept a limited time.

Datagram semantics (security contract): nothing waits long and nothing waits unbounded.  The queue
knows nothing of links: its owner pushes batches while the link cannot take them, pops them when it
can, and is told of every drop with a reason.  One timer, for the oldest batch, does the expiry.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: Drop reasons of the queue.
QUEUE_FULL = "queue_full"


class PacketQueue:
    """Batches of packets in arrival order, within ``max_packets`` and ``max_bytes``.

    ``push`` past a bound drops the oldest packets as ``queue_full``; a batch older than
    ``expiration`` seconds is dropped as ``expiry_reason()`` (the owner says why: congestion or a
    link that is down).  ``drop(reason, count)`` is told of every drop.
    """

    __slots__ = (
        "_clock", "expiration", "max_packets", "max_bytes", "_drop", "_expiry_reason",
        "_batches", "packets", "bytes", "_timer",
    )

    def __init__(
        self,
        clock: IReactorTime,
        expiration: float,
        max_packets: int,
        max_bytes: int,
        drop: Callable[[str, int], None],
        expiry_reason: Callable[[], str],
    ) -> None:
        self._clock = clock
        self.expiration = expiration
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self._drop = drop
        self._expiry_reason = expiry_reason
        #: [enqueued_at, packets, first_live_index]
        self._batches: deque[list[Any]] = deque()
        #: packets and bytes queued
        self.packets = 0
        self.bytes = 0
        self._timer: IDelayedCall | None = None

    def push(self, packets: Sequence[bytes]) -> None:
        """Queue ``packets`` (one batch); drop the oldest packets past the bounds."""
        nbytes = 0
        for p in packets:
            nbytes += len(p)
        self._batches.append([self._clock.seconds(), list(packets), 0])
        self.packets += len(packets)
        self.bytes += nbytes
        dropped = 0
        batches = self._batches
        while self.packets > self.max_packets or self.bytes > self.max_bytes:
            entry = batches[0]
            batch, i = entry[1], entry[2]
            self.packets -= 1
            self.bytes -= len(batch[i])
            batch[i] = b""
            dropped += 1
            if i + 1 == len(batch):
                batches.popleft()
            else:
                entry[2] = i + 1
        if dropped:
            self._drop(QUEUE_FULL, dropped)
        self._arm()

    def pop(self) -> list[bytes] | None:
        """The oldest live batch (expired ones are dropped first), or ``None`` when empty."""
        self.expire()
        if not self._batches:
            return None
        _, batch, i = self._batches.popleft()
        live: list[bytes] = batch[i:] if i else batch
        self.packets -= len(live)
        for p in live:
            self.bytes -= len(p)
        if not self._batches:
            self._cancel()
        return live

    def expire(self) -> None:
        """Drop the batches older than ``expiration`` as ``expiry_reason()``."""
        cutoff = self._clock.seconds() - self.expiration
        batches = self._batches
        dropped = 0
        while batches and batches[0][0] <= cutoff:
            _, batch, i = batches.popleft()
            n = len(batch) - i
            dropped += n
            self.packets -= n
            for p in batch[i:]:
                self.bytes -= len(p)
        if dropped:
            self._drop(self._expiry_reason(), dropped)

    def clear(self, reason: str) -> None:
        """Drop everything as ``reason`` and stop the timer."""
        if self.packets:
            self._drop(reason, self.packets)
        self._batches.clear()
        self.packets = 0
        self.bytes = 0
        self._cancel()

    def _arm(self) -> None:
        """The one timer: due when the oldest batch expires."""
        if self._timer is not None or not self._batches:
            return
        delay = self._batches[0][0] + self.expiration - self._clock.seconds()
        self._timer = self._clock.callLater(max(delay, 0.0), self._expired)

    def _expired(self) -> None:
        self._timer = None
        self.expire()
        self._arm()

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
