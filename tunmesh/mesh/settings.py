""":class:`MeshSettings`: the few config values the mesh uses, as one frozen value.

Built from the config tree by ``MeshSettings.from_config(cfg)``; tests construct it directly so they do
not depend on config files.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tunmesh.mesh.structs import Bounds, IPInterface, IPNetwork, NodeInfo, check_url
from tunmesh.names import resolve_node_name


@dataclass(frozen=True)
class BootstrapGroupSpec:
    """One configured bootstrap group: URLs (may be load balancers) and retries (-1 = forever)."""

    name: str
    urls: tuple[str, ...]
    retries: int = -1


#: Deadline of registrations and first session setups (``MeshSettings.registration_request_timeout``), and
#: of a control connection's TLS handshake and channel proof once TCP connected (``MeshClient.with_tls``).
#: A connection the peer's kernel accepted but the peer has not served yet is a live peer that is busy
#: (many nodes starting on few cores): giving up after 5 s, then retrying, made a 50-node join on two
#: cores spend its CPU on ~7 000 abandoned handshakes (docs/performance.md, "Scale"). A dead peer still
#: fails at once (refused) or at the TCP connect deadline (``request_timeout``).
REGISTRATION_REQUEST_TIMEOUT = 15.0

@dataclass(frozen=True)
class PeerTiming:
    """Per-class timing: how often we renew with a peer, and when silence makes it stale."""

    reregistration_interval: float
    stale_threshold: float


@dataclass(frozen=True)
class MeshSettings:
    """Everything the mesh needs from the config (docs/configuration.md lists the source keys)."""

    advertise_url: str
    network_cidrs: Mapping[str, IPNetwork]
    #: configured addresses; a family missing here is claimed dynamically (tunmesh.mesh.addressing)
    node_addresses: Mapping[str, IPInterface]
    bootstrap_groups: tuple[BootstrapGroupSpec, ...] = ()
    reload_config_on_bootstrap: bool = False
    groom_interval: float = 5.0
    startup_grace: float = 0.0
    bootstrap_retry_interval: float = 15.0
    #: first wait before a bootstrap group's next pass; doubles up to bootstrap_retry_interval
    bootstrap_retry_initial: float = 0.5
    #: least time between two join passes run outside the groom tick (gossip fan-out, W7)
    join_pass_min_interval: float = 0.25
    #: deadline of registrations (bootstrap, renewal) and first session setups (at least request_timeout):
    #: a peer busy starting up answers late, and a retry after a lost answer costs a backoff, a 429 (W11),
    #: or, for renewals, the peer's removal as stale after a row of them
    registration_request_timeout: float = REGISTRATION_REQUEST_TIMEOUT
    local_timing: PeerTiming = field(default_factory=lambda: PeerTiming(5.0, 30.0))
    mesh_timing: PeerTiming = field(default_factory=lambda: PeerTiming(30.0, 120.0))
    request_timeout: float = 5.0
    max_nodes: int = 256
    max_cidrs_per_node: int = 16
    max_url_length: int = 2048
    max_concurrent_bootstraps: int = 8
    peer_networks: tuple[IPNetwork, ...] = ()
    min_prefix_v4: int = 32
    min_prefix_v6: int = 128
    backoff_initial: float = 1.0
    backoff_max: float = 900.0
    init_session_min_interval: float = 10.0
    #: this node's human name, sent with its registrations (``clustering.node_name`` resolved)
    node_name: str | None = None

    def __post_init__(self) -> None:
        if not self.network_cidrs:
            raise ValueError("at least one network_cidr is needed")
        for family, iface in self.node_addresses.items():
            net = self.network_cidrs.get(family)
            if net is None or iface.ip not in net:
                raise ValueError(f"node address {iface} is not inside the {family} network_cidr")
        if self.groom_interval <= 0 or self.request_timeout <= 0:
            raise ValueError("groom_interval and request_timeout must be positive")
        if self.bootstrap_retry_initial <= 0 or self.bootstrap_retry_interval <= 0 or self.join_pass_min_interval < 0:
            raise ValueError("bootstrap retry timings must be positive")
        if self.max_concurrent_bootstraps < 1 or self.max_nodes < 1:
            raise ValueError("max_concurrent_bootstraps and max_nodes must be positive")

    @property
    def registration_timeout(self) -> float:
        return max(self.request_timeout, self.registration_request_timeout)

    @property
    def bounds(self) -> Bounds:
        return Bounds(self.max_nodes, self.max_cidrs_per_node, self.max_url_length)

    def local_info(self, node_id: str) -> NodeInfo:
        """This node's NodeInfo (what it registers with)."""
        return NodeInfo(
            id=node_id,
            listen_url=check_url(self.advertise_url, self.max_url_length, "advertise_url"),
            network_addresses=dict(self.network_cidrs),
            node_addresses=dict(self.node_addresses),
            name=self.node_name,
        )

    def timing_for(self, node_addresses: Mapping[str, IPInterface]) -> tuple[str, PeerTiming]:
        """A peer is ``local`` when one of its node addresses lies inside our node_address_cidr subnet; a
        dynamically addressed family (no node_address_cidr) has the whole network_cidr as its subnet, as
        its TUN address has the network's prefix (docs/addressing.md)."""
        for family, iface in node_addresses.items():
            ours = self.node_addresses.get(family)
            subnet = ours.network if ours is not None else self.network_cidrs.get(family)
            if subnet is not None and iface.ip in subnet:
                return "local", self.local_timing
        return "mesh", self.mesh_timing

    @classmethod
    def from_config(cls, cfg: Any) -> MeshSettings:
        """Read the attribute tree of :mod:`tunmesh.config` (its keys: docs/configuration.md)."""
        clustering = cfg.clustering
        timing = cfg.process.timing
        regs = timing.registrations
        nets: dict[str, IPNetwork] = {"ipv4": cfg.networking.ipv4.network_cidr}
        # A family without node_address_cidr is addressed dynamically (AddressClaimer): no local subnet.
        addrs: dict[str, IPInterface] = {}
        if cfg.networking.ipv4.node_address_cidr is not None:
            addrs["ipv4"] = cfg.networking.ipv4.node_address_cidr
        if getattr(cfg.networking, "ipv6", None) is not None:
            nets["ipv6"] = cfg.networking.ipv6.network_cidr
            if cfg.networking.ipv6.node_address_cidr is not None:
                addrs["ipv6"] = cfg.networking.ipv6.node_address_cidr
        groups = tuple(
            BootstrapGroupSpec(name, tuple(g.bootstrap_node_urls), int(g.bootstrap_retries))
            for name, g in (clustering.bootstrap_groups or {}).items()
        )
        limits = clustering.limits
        return cls(
            advertise_url=clustering.control_api_advertise_url,
            network_cidrs=nets,
            node_addresses=addrs,
            bootstrap_groups=groups,
            reload_config_on_bootstrap=bool(clustering.reload_config_on_bootstrap),
            groom_interval=float(regs.groom_interval),
            startup_grace=float(regs.startup_grace),
            bootstrap_retry_interval=float(regs.bootstrap_retry_interval),
            local_timing=PeerTiming(float(regs.local.reregistration_interval), float(regs.local.stale_threshold)),
            mesh_timing=PeerTiming(float(regs.mesh.reregistration_interval), float(regs.mesh.stale_threshold)),
            request_timeout=float(timing.request_timeout),
            max_nodes=int(limits.max_nodes),
            max_cidrs_per_node=int(limits.max_cidrs_per_node),
            max_url_length=int(limits.max_url_length),
            max_concurrent_bootstraps=int(limits.max_concurrent_bootstraps),
            peer_networks=tuple(ipaddress.ip_network(n) for n in limits.peer_networks),
            node_name=resolve_node_name(getattr(clustering, "node_name", None), os.environ),
        )

    def groups_from_config(self, cfg: Any) -> tuple[BootstrapGroupSpec, ...]:
        """The bootstrap groups of a (reloaded) config."""
        return MeshSettings.from_config(cfg).bootstrap_groups
