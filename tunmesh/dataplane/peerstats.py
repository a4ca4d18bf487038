"""Per-peer packet and byte counters (``monitoring.enable_node_packet_metrics``, off by default).

The original's ``remote_rx_*_by_source_node`` / ``remote_tx_*_by_dest_node`` series, as counters:
``tunmesh_remote_rx_packets_by_source_node_total{source_node_id}`` and ``..._bytes_...``,
``tunmesh_remote_tx_packets_by_dest_node_total{dest_node_id}`` and ``..._bytes_...``. The source
is the authenticated link's peer, never an address claimed by the packet. Counted once per batch
(the hot path pays a dict lookup per batch, nothing per packet); a peer's series are removed when
it leaves the mesh or after ``metric_ttl`` seconds without traffic, so the series count is bounded
by the live peers.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from tunmesh.interfaces import MetricsLike


class _Peer:
    __slots__ = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "last")

    def __init__(self, rx_packets: Any, rx_bytes: Any, tx_packets: Any, tx_bytes: Any, now: float) -> None:
        self.rx_packets = rx_packets
        self.rx_bytes = rx_bytes
        self.tx_packets = tx_packets
        self.tx_bytes = tx_bytes
        self.last = now


class PeerPacketMetrics:
    """Counts per peer; the series of idle or departed peers are dropped."""

    def __init__(self, metrics: MetricsLike, clock: IReactorTime, ttl: float) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self._clock = clock
        self.ttl = ttl
        self._rx_packets = metrics.counter(
            "remote_rx_packets_by_source_node", "Packets received from each peer, by source_node_id (the authenticated link's peer).", ["source_node_id"]
        )
        self._rx_bytes = metrics.counter(
            "remote_rx_bytes_by_source_node", "Packet bytes received from each peer, by source_node_id.", ["source_node_id"]
        )
        self._tx_packets = metrics.counter(
            "remote_tx_packets_by_dest_node", "Packets sent to each peer, by dest_node_id.", ["dest_node_id"]
        )
        self._tx_bytes = metrics.counter(
            "remote_tx_bytes_by_dest_node", "Packet bytes sent to each peer, by dest_node_id.", ["dest_node_id"]
        )
        self._peers: dict[str, _Peer] = {}
        self._timer: IDelayedCall | None = None

    def _peer(self, peer_id: str) -> _Peer:
        peer = self._peers.get(peer_id)
        now = self._clock.seconds()
        if peer is None:
            peer = _Peer(
                self._rx_packets.labels(peer_id),
                self._rx_bytes.labels(peer_id),
                self._tx_packets.labels(peer_id),
                self._tx_bytes.labels(peer_id),
                now,
            )
            self._peers[peer_id] = peer
            if self._timer is None:
                self._timer = self._clock.callLater(self.ttl, self._expire)
        else:
            peer.last = now
        return peer

    def received(self, peer_id: str, packets: int, nbytes: int) -> None:
        peer = self._peer(peer_id)
        peer.rx_packets.inc(packets)
        peer.rx_bytes.inc(nbytes)

    def sent(self, peer_id: str, packets: int, nbytes: int) -> None:
        peer = self._peer(peer_id)
        peer.tx_packets.inc(packets)
        peer.tx_bytes.inc(nbytes)

    def forget(self, peer_id: str) -> None:
        """Drop ``peer_id``'s series (it left the mesh, or was idle for ``ttl``)."""
        if self._peers.pop(peer_id, None) is None:
            return
        for counter in (self._rx_packets, self._rx_bytes, self._tx_packets, self._tx_bytes):
            try:
                counter.remove(peer_id)
            except KeyError:
                pass

    def _expire(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        for peer_id, peer in list(self._peers.items()):
            if now - peer.last >= self.ttl:
                self.forget(peer_id)
        if self._peers:
            oldest = min(p.last for p in self._peers.values())
            self._timer = self._clock.callLater(max(0.0, oldest + self.ttl - now), self._expire)

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def __len__(self) -> int:
        return len(self._peers)
