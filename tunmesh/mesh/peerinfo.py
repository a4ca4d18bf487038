"""``tunmesh_peer_info{peer_id,peer_name,url,addresses} 1``: one series per peer in the pool (issue 8).

An info metric joins peer ids (in other series and in logs) to the names and addresses people know. It
follows membership as a peer observer; the series count is bounded by ``clustering.limits.max_nodes``, and
a peer's series goes when the peer does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tunmesh.mesh.structs import IPNetwork

LABELS = ("peer_id", "peer_name", "url", "addresses")


class PeerInfoMetric:
    """A :class:`tunmesh.mesh.membership.PeerObserver` keeping the ``peer_info`` gauge."""

    def __init__(self, metrics: Any, name_of: Callable[[str], str | None]) -> None:
        self._gauge = metrics.gauge("peer_info", "Peers in the node pool: id, name, URL and overlay addresses.",
                                    LABELS)
        self._name_of = name_of
        self._series: dict[str, tuple[str, ...]] = {}

    def peer_up(self, peer_id: str, url: str, cidrs: Sequence[IPNetwork]) -> None:
        values = (peer_id, self._name_of(peer_id) or "", url, ",".join(str(c.network_address) for c in cidrs))
        old = self._series.get(peer_id)
        if old == values:
            return
        if old is not None:
            self._gauge.remove(*old)
        self._gauge.labels(*values).set(1)
        self._series[peer_id] = values

    def peer_down(self, peer_id: str) -> None:
        old = self._series.pop(peer_id, None)
        if old is not None:
            self._gauge.remove(*old)
