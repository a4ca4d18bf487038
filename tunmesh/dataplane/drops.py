"""Counting dropped packets by reason, once per batch, with rate-limited log lines.

Every drop on the data path goes through one :class:`DropCounter`, so the reasons are the label
values of one series, ``tunmesh_dropped_packets_total{reason}`` (security contract: every drop
counted by reason; W17: logs limited per (reason, peer)).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.logger import LogLevel

from tunmesh.interfaces import MetricsLike, RateLimitedLogLike

DROPPED_DOC = "Packets dropped by the data plane, by reason."
#: peers whose drops are kept by reason for ``tunmesh status`` (beyond: counted in the metric only)
MAX_PEERS = 4096
#: Drops of traffic a host emits on its own that the mesh does not carry by design (IPv6 on an
#: IPv4-only node, link-local IPv6, multicast): counted like every drop, logged at debug only,
#: since a WARN every few seconds for the kernel's router solicitations tells the operator nothing.
QUIET_REASONS = frozenset({"ipv6_disabled", "link_local", "multicast"})


class DropCounter:
    """Add per-batch drop counts to the shared counter and log a rate-limited line per reason."""

    def __init__(
        self, metrics: MetricsLike, rate_limited_log: RateLimitedLogLike | None = None
    ) -> None:
        self._counter = metrics.counter("dropped_packets_total", DROPPED_DOC, ["reason"])
        self._children: dict[str, Any] = {}
        self._rlog = rate_limited_log
        #: drops by peer and reason (``tunmesh status``); bounded, a peer's entry goes with the peer
        self.by_peer: dict[str, dict[str, int]] = {}

    def child(self, reason: str) -> Any:
        """The labelled counter for ``reason`` (cached: ``labels()`` is not free)."""
        c = self._children.get(reason)
        if c is None:
            c = self._children[reason] = self._counter.labels(reason=reason)
        return c

    def add(self, reason: str, count: int, peer: str | None = None, **fields: object) -> None:
        """Count ``count`` packets dropped for ``reason`` and log (rate-limited)."""
        if count <= 0:
            return
        self.child(reason).inc(count)
        if peer is not None:
            counts = self.by_peer.get(peer)
            if counts is None and len(self.by_peer) < MAX_PEERS:
                counts = self.by_peer[peer] = {}
            if counts is not None:
                counts[reason] = counts.get(reason, 0) + count
        if self._rlog is not None:
            self._rlog.emit(
                (reason, peer),
                LogLevel.debug if reason in QUIET_REASONS else LogLevel.warn,
                "dropped {count} packet(s): {reason} (peer {peer})",
                count=count,
                reason=reason,
                peer=peer,
                **fields,
            )

    def forget(self, peer: str) -> None:
        """Drop ``peer``'s per-peer counts (it left the mesh)."""
        self.by_peer.pop(peer, None)

    def add_many(self, counts: Mapping[str, int], peer: str | None = None) -> None:
        """Count a batch's drops, one call per reason."""
        for reason, count in counts.items():
            self.add(reason, count, peer)
