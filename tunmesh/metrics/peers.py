"""``tunmesh_peer_info``: one series per peer, to join peer ids to names, URLs and overlay addresses.

Series that carry a ``peer_id`` label (``tunmesh_peer_link_up``, ``tunmesh_peer_link_rtt_seconds``,
the per-peer packet counters) are joined with this one in PromQL for a readable legend::

    tunmesh_peer_link_rtt_seconds * on(instance, peer_id) group_left(peer_name) tunmesh_peer_info

A :class:`PeerInfo` follows membership as a ``PeerObserver``: a peer's series appears when it joins
the pool and goes when it leaves (groomed, left, replaced), so the series count is bounded by
``clustering.limits.max_nodes``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from tunmesh.metrics.registry import PEER_INFO_LABELS, Metrics


class PeerInfo:
    """Keeps ``tunmesh_peer_info{peer_id, peer_name, url, addresses} 1`` in step with the peers."""

    def __init__(
        self, metrics: Metrics, max_peers: int, name_of: Callable[[str], str | None] | None = None
    ) -> None:
        """``name_of(peer_id)`` gives a peer's name when ``peer_up`` is not told one (membership's
        registrations carry it), ``None`` or ``""`` when it has none."""
        if max_peers < 1:
            raise ValueError("max_peers must be at least 1")
        self.max_peers = max_peers
        self._name_of = name_of
        self._gauge = metrics.gauge(
            "peer_info",
            "Always 1, one series per peer in the node pool; labels: peer_id, peer_name (empty when the "
            "peer has no name), url (its advertise URL) and addresses (its overlay CIDRs, comma-separated).",
            PEER_INFO_LABELS,
        )
        self._labels: dict[str, tuple[str, str, str, str]] = {}

    def peer_up(self, peer_id: str, url: str, cidrs: Iterable[Any], name: str = "") -> None:
        """``peer_id`` is in the pool with ``url`` and ``cidrs`` (and ``name``): replace its series."""
        if not name and self._name_of is not None:
            name = self._name_of(peer_id) or ""
        labels = (peer_id, name or "", url, ",".join(str(c) for c in cidrs))
        old = self._labels.get(peer_id)
        if old == labels:
            return
        if old is None and len(self._labels) >= self.max_peers:
            return
        if old is not None:
            self._remove(old)
        self._labels[peer_id] = labels
        self._gauge.labels(*labels).set(1)

    def set_name(self, peer_id: str, name: str) -> None:
        """The peer's name is now ``name`` (learnt after it joined)."""
        old = self._labels.get(peer_id)
        if old is not None:
            self.peer_up(peer_id, old[2], old[3].split(",") if old[3] else (), name)

    def peer_down(self, peer_id: str) -> None:
        """``peer_id`` left the pool: its series goes."""
        old = self._labels.pop(peer_id, None)
        if old is not None:
            self._remove(old)

    def _remove(self, labels: tuple[str, str, str, str]) -> None:
        try:
            self._gauge.remove(*labels)
        except KeyError:
            pass

    def __len__(self) -> int:
        return len(self._labels)


__all__ = ["PEER_INFO_LABELS", "PeerInfo"]
