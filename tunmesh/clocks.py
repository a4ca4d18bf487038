"""Time in a node: every timer on the monotonic clock, wall time only where wall time is meant.

Twisted's reactors schedule ``callLater`` on ``reactor.seconds()``, which is ``time.time``: a wall-clock
step (NTP at boot, a VM resumed from a snapshot, an operator's ``date -s``) moves every pending timer,
and timers that fall due inside a forward step fire at once and re-arm themselves on the new clock
(issue 13: a +1 h step silenced the groom loop until a restart). :func:`use_monotonic_timers` makes the
reactor's clock ``time.monotonic``, so no timer of the node (``callLater``, ``LoopingCall``,
``TimerService``, HTTP idle and header/body deadlines, backoff, keepalives, link idle checks) can be
moved by a step.

Wall time is read through a :class:`WallClock` only where wall time is meant: token ``iat``/``exp``
and the replay cache's expiry (tokens are compared with other hosts' clocks), registration stamps,
certificate validity and log timestamps. Nothing compares ``reactor.seconds()`` with wall time; see
docs/internals.md ("Time").
"""

from __future__ import annotations

import time
import weakref
from typing import Any

from twisted.logger import Logger

log = Logger(namespace="tunmesh.clocks")

_converted: weakref.WeakSet[Any] = weakref.WeakSet()


class WallClock:
    """``seconds()`` is ``time.time()``: the clock tokens and certificates are judged by."""

    def seconds(self) -> float:
        return time.time()


def use_monotonic_timers(reactor: Any) -> bool:
    """Make ``reactor.seconds`` the monotonic clock; returns whether this call changed it.

    Call it once, before the reactor runs (``makeService`` does, for ``twistd tunmesh`` and
    ``tunmesh run``). Timers already pending keep their remaining delay: they are shifted by the same
    offset, which keeps the reactor's ordering of them intact.
    """
    if reactor in _converted:
        return False
    wall, mono = reactor.seconds(), time.monotonic()
    reactor.seconds = time.monotonic
    for call in reactor.getDelayedCalls():
        call.time = call.time - wall + mono
        call.seconds = time.monotonic
    _converted.add(reactor)
    log.debug("reactor timers run on the monotonic clock")
    return True


__all__ = ["WallClock", "use_monotonic_timers"]
