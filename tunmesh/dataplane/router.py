"""Longest-prefix routing over the peers' authenticated CIDRs, and the per-batch router.

The route table answers "which peer owns this address" for both directions: outbound it picks the
destination peer, inbound it is the anti-spoofing check (the owner of the source address must be
the authenticated sender, like WireGuard's AllowedIPs).  Lookups hit a dict of host routes first
(the common case: each node owns its /32), then a small cache, then one dict per prefix length.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import (
    IPv4Interface,
    IPv4Network,
    IPv6Interface,
    IPv6Network,
    ip_network,
)

from tunmesh.dataplane.drops import DropCounter
from tunmesh.dataplane.packets import (
    MALFORMED,
    MAX_IP_PACKET,
    OVERSIZE,
    PLAIN_VNET_HDR,
    VNET_HDR_LEN,
    check_ip,
    check_vnet,
    needs_offload,
)
from tunmesh.interfaces import MetricsLike, RateLimitedLogLike
from tunmesh.tun.gso import GSOError, segment

Network = IPv4Network | IPv6Network

# Drop reasons of the router (besides those of packets.py).
NO_ROUTE = "no_route"
DESTINATION_LOCAL = "destination_local"
SOURCE_NOT_LOCAL = "source_not_local"
SOURCE_NOT_PEER = "source_not_peer"
DESTINATION_NOT_LOCAL = "destination_not_local"
BROADCAST_DISABLED = "broadcast_disabled"
MULTICAST = "multicast"
OFFLOAD_MISMATCH = "offload_mismatch"
#: An IPv6 packet on a node without ``networking.ipv6`` (the host's kernel sends some on its own).
IPV6_DISABLED = "ipv6_disabled"
#: An IPv6 packet from a link-local address (fe80::/10): the kernel's router and neighbour chatter.
LINK_LOCAL = "link_local"

_CACHE_MAX = 4096
_MISS = object()


class _Family:
    """Routes of one address family."""

    __slots__ = ("bits", "hosts", "prefixes", "cache")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.hosts: dict[int, str] = {}
        # (prefixlen, mask, {network_int: peer}) sorted longest first.
        self.prefixes: list[tuple[int, int, dict[int, str]]] = []
        self.cache: dict[int, str | None] = {}


class RouteTable:
    """Peer CIDRs with longest-prefix match for IPv4 and IPv6.

    A CIDR has one owner; :meth:`set_peer` with a CIDR held by another peer moves it (the mesh
    layer decides conflicts before calling).  Every change clears the lookup caches.
    """

    def __init__(self) -> None:
        self._fam = {4: _Family(32), 6: _Family(128)}
        self._peer_cidrs: dict[str, tuple[Network, ...]] = {}
        self._owner: dict[Network, str] = {}

    def set_peer(self, peer_id: str, cidrs: Iterable[Network | str]) -> None:
        """Replace ``peer_id``'s CIDRs."""
        nets = tuple(ip_network(c, strict=True) if isinstance(c, str) else c for c in cidrs)
        self._drop_owned(peer_id)
        for net in nets:
            self._owner[net] = peer_id
        self._peer_cidrs[peer_id] = nets
        self._rebuild()

    def remove_peer(self, peer_id: str) -> None:
        """Forget ``peer_id``'s routes (no-op for an unknown peer)."""
        if self._peer_cidrs.pop(peer_id, None) is not None:
            self._drop_owned(peer_id)
            self._rebuild()

    def peers(self) -> list[str]:
        """Peers that own at least one CIDR (broadcast targets)."""
        return sorted(set(self._owner.values()))

    def cidrs(self, peer_id: str) -> tuple[Network, ...]:
        """The CIDRs currently routed to ``peer_id``."""
        return tuple(n for n in self._peer_cidrs.get(peer_id, ()) if self._owner.get(n) == peer_id)

    def lookup(self, version: int, addr: int) -> str | None:
        """The peer owning the longest prefix that contains ``addr``, or ``None``."""
        fam = self._fam[version]
        peer = fam.hosts.get(addr)
        if peer is not None:
            return peer
        cached = fam.cache.get(addr, _MISS)
        if cached is not _MISS:
            return cached  # type: ignore[return-value]
        for _plen, mask, nets in fam.prefixes:
            peer = nets.get(addr & mask)
            if peer is not None:
                break
        if len(fam.cache) >= _CACHE_MAX:
            fam.cache.clear()
        fam.cache[addr] = peer
        return peer

    def _drop_owned(self, peer_id: str) -> None:
        for net in [n for n, p in self._owner.items() if p == peer_id]:
            del self._owner[net]

    def _rebuild(self) -> None:
        for version, fam in self._fam.items():
            hosts: dict[int, str] = {}
            by_len: dict[int, dict[int, str]] = {}
            for net, peer in self._owner.items():
                if net.version != version:
                    continue
                base = int(net.network_address)
                if net.prefixlen == fam.bits:
                    hosts[base] = peer
                else:
                    by_len.setdefault(net.prefixlen, {})[base] = peer
            full = (1 << fam.bits) - 1
            fam.hosts = hosts
            fam.prefixes = [
                (plen, full ^ ((1 << (fam.bits - plen)) - 1), nets)
                for plen, nets in sorted(by_len.items(), reverse=True)
            ]
            fam.cache = {}


class Router:
    """Checks and routes batches of packets between the TUN device and the peer links.

    ``vnet_hdr`` says whether our TUN packets carry a ``virtio_net_hdr`` (offload on).  Drops are
    counted once per batch per reason.  ``local_cidrs`` are extra networks this node owns
    besides its own address (the node's advertised CIDRs).
    """

    def __init__(
        self,
        local_v4: IPv4Interface,
        local_v6: IPv6Interface | None,
        network_v4: IPv4Network,
        network_v6: IPv6Network | None,
        route_table: RouteTable,
        metrics: MetricsLike,
        enable_broadcast: bool = False,
        mtu: int = 1500,
        rate_limited_log: RateLimitedLogLike | None = None,
        vnet_hdr: bool = False,
        local_cidrs: Sequence[Network] = (),
        drops: DropCounter | None = None,
    ) -> None:
        self.routes = route_table
        self.drops = drops if drops is not None else DropCounter(metrics, rate_limited_log)
        self._software_offload = metrics.counter(
            "software_offload_packets",
            "Packets from offload peers segmented or checksummed in software for our TUN without offload.",
        )
        self.vnet_hdr = vnet_hdr
        self._off = VNET_HDR_LEN if vnet_hdr else 0
        self._mtu = mtu
        self._broadcast = enable_broadcast
        self._v6 = local_v6 is not None
        self._mesh_bcast = int(network_v4.broadcast_address)
        self._local = RouteTable()
        self._local_cidrs = tuple(local_cidrs)
        self.set_local(local_v4, local_v6)
        del network_v6  # IPv6 has no broadcast; kept in the signature for symmetry.

    def set_local(self, local_v4: IPv4Interface, local_v6: IPv6Interface | None) -> None:
        """Our own addresses changed (dynamic addressing moved us, docs/addressing.md): from now on only
        packets to the new addresses are delivered locally and only they are accepted as our sources."""
        mine: list[Network] = [IPv4Network(int(local_v4.ip))]
        if local_v6 is not None:
            mine.append(IPv6Network(int(local_v6.ip)))
        self._local.set_peer("", [*mine, *self._local_cidrs])

    def route_outbound(self, packets: Sequence[bytes]) -> dict[str, list[bytes]]:
        """Route packets read from our TUN: ``{peer_id: [packet, ...]}``, drops counted."""
        out: dict[str, list[bytes]] = {}
        drops: dict[str, int] = {}
        off = self._off
        mtu = self._mtu
        lookup = self.routes.lookup
        local = self._local.lookup
        for pkt in packets:
            if off:
                if len(pkt) < off:
                    drops[MALFORMED] = drops.get(MALFORMED, 0) + 1
                    continue
                max_len = MAX_IP_PACKET if pkt[1] else mtu
            else:
                max_len = mtu
            reason, version, src, dst, end = check_ip(pkt, off, max_len)
            if reason is None:
                if version == 6 and not self._v6:
                    reason = IPV6_DISABLED
                elif local(version, src) is None:
                    reason = LINK_LOCAL if version == 6 and src >> 118 == 0x3FA else SOURCE_NOT_LOCAL
                elif local(version, dst) is not None:
                    reason = DESTINATION_LOCAL
                else:
                    if end != len(pkt):
                        pkt = pkt[:end]
                    if version == 4 and (dst == 0xFFFFFFFF or dst == self._mesh_bcast):
                        if self._broadcast:
                            for p in self.routes.peers():
                                out.setdefault(p, []).append(pkt)
                            continue
                        reason = BROADCAST_DISABLED
                    else:
                        peer = lookup(version, dst)
                        if peer is not None:
                            batch = out.get(peer)
                            if batch is None:
                                out[peer] = [pkt]
                            else:
                                batch.append(pkt)
                            continue
                        if (version == 4 and dst >> 28 == 0xE) or (
                            version == 6 and dst >> 120 == 0xFF
                        ):
                            reason = MULTICAST
                        else:
                            reason = NO_ROUTE
            drops[reason] = drops.get(reason, 0) + 1
        if drops:
            self.drops.add_many(drops)
        return out

    def accept_inbound(
        self, peer_id: str, packets: Sequence[bytes], vnet_hdr: bool | None = None
    ) -> list[bytes]:
        """Check packets received from ``peer_id``; return those to write to our TUN.

        ``vnet_hdr`` says whether the sender's packets carry a ``virtio_net_hdr`` (default: the
        same as ours).  Packets are adapted to our TUN: a plain header is prepended, or a header
        stripped when it asks for no offload; packets needing offload we lack are dropped
        (``offload_mismatch``) only when software segmentation refuses them.
        """
        if vnet_hdr is None:
            vnet_hdr = self.vnet_hdr
        off = VNET_HDR_LEN if vnet_hdr else 0
        add_hdr = self.vnet_hdr and not vnet_hdr
        strip_hdr = vnet_hdr and not self.vnet_hdr
        mtu = self._mtu
        lookup = self.routes.lookup
        local = self._local.lookup
        accepted: list[bytes] = []
        drops: dict[str, int] = {}
        for pkt in packets:
            max_len = mtu
            if off:
                if len(pkt) < off + 20:
                    drops[MALFORMED] = drops.get(MALFORMED, 0) + 1
                    continue
                if pkt[1]:
                    max_len = MAX_IP_PACKET
            reason, version, src, dst, end = check_ip(pkt, off, max_len)
            if reason is None:
                if version == 6 and not self._v6:
                    reason = IPV6_DISABLED
                elif off and (reason := check_vnet(pkt, version)) is not None:
                    pass
                elif lookup(version, src) != peer_id:
                    reason = SOURCE_NOT_PEER
                elif local(version, dst) is None and not (
                    self._broadcast
                    and version == 4
                    and (dst == 0xFFFFFFFF or dst == self._mesh_bcast)
                ):
                    reason = DESTINATION_NOT_LOCAL
                elif strip_hdr and needs_offload(pkt):
                    # Our TUN has no offload: segment / checksum in software (slow, but the
                    # connection works; the counter tells the operator to align the nodes).
                    reason = self._software(pkt[:end] if end != len(pkt) else pkt, mtu, accepted)
                    if reason is None:
                        continue
                else:
                    if end != len(pkt):
                        pkt = pkt[:end]
                    if add_hdr:
                        pkt = PLAIN_VNET_HDR + pkt
                    elif strip_hdr:
                        pkt = pkt[VNET_HDR_LEN:]
                    accepted.append(pkt)
                    continue
            drops[reason] = drops.get(reason, 0) + 1
        if drops:
            self.drops.add_many(drops, peer_id)
        return accepted

    def _software(self, pkt: bytes, mtu: int, accepted: list[bytes]) -> str | None:
        """Append the plain packets ``pkt`` (GSO and/or NEEDS_CSUM) becomes; the drop reason if none."""
        try:
            segments = segment(pkt)
        except GSOError:
            return OFFLOAD_MISMATCH
        for seg in segments:
            if len(seg) > mtu:
                return OVERSIZE
        accepted.extend(segments)
        self._software_offload.inc(len(segments))
        return None
