""":class:`KeepaliveTicker`: one timer for the keepalives and idle checks of all a node's links.

Each packet link used to keep its own timer: the outbound side (:class:`~tunmesh.dataplane.link.LinkClient`)
a keepalive PING every ``keepalive`` seconds, the inbound side (``LinkServerProtocol``) an idle check as
often. With a full mesh that is 2 (N−1) timers per node, each a wake-up of an idle process
(docs/performance.md, "Scale"). The data plane now keeps one ticker that calls every member on the same
tick: one wake-up per period sends the due PINGs of all outbound links and checks all inbound ones.

Semantics kept: a link is checked once per ``period``, its first check at most one period after it joined
(its first PING went out when it came up, so the RTT is known from the start); a link silent for three
periods is closed, detected between three and four periods after its last frame as before. The timer runs
only while there are members.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

#: a member's tick (it reads the clock itself)
Tick = Callable[[], None]


class KeepaliveTicker:
    """Calls each member's tick every ``period`` seconds, from one ``LoopingCall`` (see module docstring)."""

    log = Logger()

    def __init__(self, clock: IReactorTime, period: float) -> None:
        if period <= 0:
            raise ValueError(f"keepalive period must be positive, not {period!r}")
        self.clock = clock
        self.period = period
        self._members: dict[object, Tick] = {}
        self._loop: LoopingCall | None = None
        #: ticks run so far (a test and a benchmark count wake-ups with it)
        self.ticks = 0

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, member: object) -> bool:
        return member in self._members

    @property
    def running(self) -> bool:
        """Whether the timer is scheduled (there are members)."""
        return self._loop is not None

    def add(self, member: object, tick: Tick) -> None:
        """Call ``tick`` on every tick from now on, the first one at most one period from now."""
        self._members[member] = tick
        if self._loop is None:
            loop = self._loop = LoopingCall(self._tick)
            loop.clock = self.clock
            loop.start(self.period, now=False)

    def remove(self, member: object) -> None:
        """Stop ticking ``member`` (idempotent); the timer stops with the last member."""
        if self._members.pop(member, None) is not None and not self._members and self._loop is not None:
            loop, self._loop = self._loop, None
            if loop.running:
                loop.stop()

    def _tick(self) -> None:
        self.ticks += 1
        for member, tick in list(self._members.items()):
            if self._members.get(member) is not tick:
                continue  # removed (or replaced) by an earlier member's tick
            try:
                tick()
            except Exception:
                # One link's failure must not stop the timer of all the others.
                self.log.failure("keepalive tick of {member!r} failed", member=member)
