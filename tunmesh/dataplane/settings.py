"""``DataPlaneSettings``: the config values the data plane uses, as one frozen value.

Built from the config tree by :meth:`DataPlaneSettings.from_config` (as :class:`tunmesh.mesh.settings.MeshSettings`
is for the mesh); ``tunmesh.service.build_dataplane`` takes nothing else from the config.
"""

from __future__ import annotations

import ipaddress

import attrs

from tunmesh.config.tree import TunMeshConfig


@attrs.frozen
class DataPlaneSettings:
    """Addresses, MTU and timings of the router, the links and the TUN loop."""

    #: this node's overlay addresses (configured, or claimed and filled in: dynamic addressing)
    ipv4_address: ipaddress.IPv4Interface
    ipv6_address: ipaddress.IPv6Interface | None
    ipv4_network: ipaddress.IPv4Network
    ipv6_network: ipaddress.IPv6Network | None
    enable_broadcast: bool
    mtu: int
    #: deadline of a packet link's TCP connect and TLS handshake
    link_connect_timeout: float = attrs.field(validator=attrs.validators.gt(0))
    #: most seconds a packet waits in a send queue
    packet_expiration: float = attrs.field(validator=attrs.validators.gt(0))
    #: most packets read from the TUN per reactor turn
    max_read_batch: int = attrs.field(validator=attrs.validators.ge(1))
    #: idle seconds before a peer's packet series go; ``None``: no per-peer packet metrics
    peer_metrics_ttl: float | None = None
    #: whether lone small packets may go as UDP datagrams (``networking.datagrams``)
    datagrams: bool = False
    #: seconds of polling after a lone small packet (``networking.poll_window``)
    poll_window: float = 0.0

    @classmethod
    def from_config(cls, cfg: TunMeshConfig) -> DataPlaneSettings:
        """Read ``cfg``, whose node addresses are all known (``tunmesh.service.networking_with`` fills
        in claimed ones); ``ValueError`` when the IPv4 address is missing."""
        net = cfg.networking
        ipv6 = net.ipv6
        if net.ipv4.node_address_cidr is None:
            raise ValueError("tun_mesh/networking/ipv4/node_address_cidr: neither configured nor claimed")
        timing = cfg.process.timing
        monitoring = cfg.monitoring
        per_peer = monitoring.enable_node_packet_metrics and monitoring.method == "prometheus"
        return cls(
            ipv4_address=net.ipv4.node_address_cidr,
            ipv6_address=ipv6.node_address_cidr if ipv6 is not None else None,
            ipv4_network=net.ipv4.network_cidr,
            ipv6_network=ipv6.network_cidr if ipv6 is not None else None,
            enable_broadcast=net.ipv4.enable_broadcast,
            mtu=net.mtu,
            link_connect_timeout=max(1.0, float(timing.request_timeout) * 5),
            packet_expiration=float(timing.network.mesh.packet_expiration),
            max_read_batch=int(cfg.control_api.max_batch_size),
            peer_metrics_ttl=float(monitoring.metric_ttl) if per_peer else None,
            datagrams=bool(net.datagrams),
            poll_window=float(net.poll_window),
        )


__all__ = ["DataPlaneSettings"]
