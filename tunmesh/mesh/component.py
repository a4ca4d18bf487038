"""``Component``: what each part of :class:`tunmesh.mesh.membership.Membership` reads of its coordinator.

Like the workers of magic-wormhole's ``_boss.py``, a component owns one piece of state and reaches the
shared pieces (settings, pool, session store, clocks, timers, the peer exchange, metrics, contact log)
and its siblings through the coordinator, which builds them once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.logger import Logger

from tunmesh.logutil import RateLimitedLog
from tunmesh.mesh.backoff import Backoff

if TYPE_CHECKING:
    from tunmesh.mesh.client import MeshClient
    from tunmesh.mesh.membership import Membership


class Component:
    """The shared pieces of ``membership``, and a rate-limited log on the subclass's ``log``."""

    log = Logger()

    def __init__(self, membership: Membership) -> None:
        m = membership
        self.membership = m
        self.settings = m.settings
        self.node_id = m.node_id
        self.cluster = m.cluster
        self.sessions = m.sessions
        self.pool = m.pool
        self.clock = m.clock
        self.monotonic = m.monotonic
        self.timers = m.timers
        self.exchange = m.exchange
        self.contacts = m.contacts
        self.meters = m.meters
        self._rlog = RateLimitedLog(self.log, m.clock)

    @property
    def client(self) -> MeshClient:
        """The coordinator's control client (read at each use: tests swap in a real TLS client)."""
        return self.membership.client

    def peer_backoff(self) -> Backoff:
        """A W7 backoff (``backoff_initial`` doubling to ``backoff_max``, jittered) on the shared clock."""
        return Backoff(
            self.settings.backoff_initial, self.settings.backoff_max, self.monotonic, self.membership.rng
        )
