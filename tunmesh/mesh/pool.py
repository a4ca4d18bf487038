"""The node pool: what this node believes about each peer, and the rules for changing it (W6, W7, W10).

A peer's URL and addresses come only from its OWN authenticated registration (the caller checks
``iss == local.id``); gossiped ``remote`` entries are kept per peer as hints and never become routes.
Freshness is the time of the last authenticated contact on the receiver's monotonic clock; the sender's
stamp/seq only orders its registrations.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from twisted.logger import Logger

from tunmesh.mesh.errors import InvalidRegistration, PoolFull, RegistrationConflict
from tunmesh.mesh.settings import MeshSettings, PeerTiming
from tunmesh.mesh.structs import IPInterface, IPNetwork, NodeInfo

#: A pair at rest (a packet link up, and the peer holds our current table) renews once per this many
#: ``stale_threshold``s (120 s for local peers): the link's frames keep both sides alive and the digests
#: say the tables agree, so such a renewal is only a safety net; any change brings the usual interval
#: back at once. It outlives a kept control connection (45 s), so it pays a TLS handshake: measured
#: cheaper than a renewal every stale_threshold on a kept one (docs/performance.md, "Idle wake-ups").
REST_RENEWAL = 4


@dataclass
class Peer:
    """Mutable state of one peer, owned by the pool."""

    info: NodeInfo
    peer_class: str
    timing: PeerTiming
    routes: tuple[IPNetwork, ...]
    last_seq: int
    last_contact: float
    first_seen: float
    hints: tuple[NodeInfo, ...] = ()
    last_renewal: float | None = None
    registered_with: bool = False
    renewing: bool = False
    failures: int = 0
    next_attempt: float = 0.0
    session_setup: dict[str, float] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def url(self) -> str:
        return self.info.listen_url

    def age(self, now: float) -> float:
        """Seconds since the last authenticated contact."""
        return now - self.last_contact

    def is_stale(self, now: float) -> bool:
        return self.age(now) > self.timing.stale_threshold

    def renewal_due(self, now: float, relaxed: bool = False, rest: bool = False) -> bool:
        """Whether our registration with the peer is due: ``reregistration_interval`` after the last one;
        ``relaxed`` (a link with it is up and it got our table, or a delta of it, lately: the membership
        is changing), its ``stale_threshold`` after it; ``rest`` (a link with it is up and it holds
        our current table: a renewal would carry no news and the link keepalives keep both sides alive),
        :data:`REST_RENEWAL` times ``stale_threshold`` after it (docs/performance.md, "Scale").

        Neither applies once the last authenticated contact is half a ``stale_threshold`` old: the link's
        keepalives (every ``KEEPALIVE``, 10 s) do not keep a peer fresh under a ``stale_threshold`` of a
        few seconds, or when they are late, and a live peer must not be groomed for it."""
        last = self.last_renewal if self.last_renewal is not None else self.first_seen - 1e9
        interval = self.timing.reregistration_interval
        fresh = self.age(now) < self.timing.stale_threshold / 2
        if fresh and rest:
            interval = max(interval, REST_RENEWAL * self.timing.stale_threshold)
        elif fresh and relaxed:
            interval = max(interval, self.timing.stale_threshold)
        return now - last >= interval and now >= self.next_attempt


@dataclass(frozen=True)
class UpsertResult:
    """What :meth:`NodePool.upsert` did: the peer, whether it is new or its routes/URL changed, who it replaced."""

    peer: Peer
    created: bool
    changed: bool
    replaced: tuple[Peer, ...]


class NodePool:
    """Peers by id, with a route → holder index; enforces the claim rules and ``max_nodes``."""

    log = Logger()

    def __init__(
        self, settings: MeshSettings, local_id: str, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._local_id = local_id
        self._monotonic = monotonic
        self._peers: dict[str, Peer] = {}
        self._holders: dict[IPNetwork, str] = {}
        #: URL -> the one peer at it (``upsert`` keeps URLs unique), so a registration does not scan the pool
        self._urls: dict[str, str] = {}
        #: bumped whenever a peer comes or goes, or its URL or hints change: what gossip reads is unchanged
        #: while it stays the same (``Bootstrapper.gossip`` scans N peers' hints only after a change)
        self.generation = 0
        self._own_routes = frozenset(ipaddress.ip_network(i.ip) for i in settings.node_addresses.values())

    def set_own_addresses(self, addresses: Iterable[IPInterface]) -> None:
        """Our current node addresses (they change under dynamic addressing, docs/addressing.md)."""
        self._own_routes = frozenset(ipaddress.ip_network(i.ip) for i in addresses)

    def taken(self, hints: bool = True) -> list[IPNetwork | IPInterface]:
        """Every overlay address a peer holds, and with ``hints`` every address a gossip hint names
        (what a moving claim avoids)."""
        out: list[IPNetwork | IPInterface] = list(self._holders)
        for peer in self._peers.values() if hints else ():
            for hint in peer.hints:
                out.extend(hint.node_addresses.values())
        return out

    def __len__(self) -> int:
        return len(self._peers)

    def __iter__(self) -> Iterator[Peer]:
        return iter(list(self._peers.values()))

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers

    def get(self, peer_id: str) -> Peer | None:
        return self._peers.get(peer_id)

    def by_url(self, url: str) -> Peer | None:
        peer_id = self._urls.get(url)
        return None if peer_id is None else self._peers.get(peer_id)

    def holder(self, route: IPNetwork) -> str | None:
        """The peer id that holds a route (a host route claimed in its own registration)."""
        return self._holders.get(route)

    def routes(self) -> dict[IPNetwork, str]:
        return dict(self._holders)

    def check_claims(self, info: NodeInfo) -> tuple[IPNetwork, ...]:
        """The host routes a registration claims, validated against our overlay (400 when bad, W6)."""
        routes = info.host_routes()
        if len(routes) > self._settings.max_cidrs_per_node:
            raise InvalidRegistration("too_many_cidrs", info.id)
        for route in routes:
            family = "ipv4" if route.version == 4 else "ipv6"
            net = self._settings.network_cidrs.get(family)
            min_prefix = self._settings.min_prefix_v4 if route.version == 4 else self._settings.min_prefix_v6
            if net is None or not route.subnet_of(net):  # type: ignore[arg-type]
                raise InvalidRegistration("cidr_outside_network", f"{info.id} {route}")
            if route.prefixlen < min_prefix:
                raise InvalidRegistration("cidr_too_wide", f"{info.id} {route}")
            addr = route.network_address
            special = addr.is_multicast or addr.is_loopback or addr.is_unspecified or addr.is_link_local
            edge = net.prefixlen < net.max_prefixlen - 1 and addr in (
                net.network_address,
                net.broadcast_address,
            )
            if special or edge:
                raise InvalidRegistration("cidr_reserved", f"{info.id} {route}")
        return routes

    def upsert(self, info: NodeInfo, seq: int, hints: tuple[NodeInfo, ...] = ()) -> UpsertResult:
        """Record an authenticated registration of ``info`` by itself.

        Raises :exc:`RegistrationConflict` (409) for an older sequence, an id whose URL or addresses changed
        while it is live, or an address or URL held by another live peer (:exc:`ClaimConflict`: the caller
        probes the holder's URL, and a holder whose URL now answers with another id is removed as
        restarted, W6); :exc:`PoolFull` (503) at ``max_nodes``. A stale holder is replaced at once.
        """
        now = self._monotonic()
        routes = self.check_claims(info)
        existing = self._peers.get(info.id)
        if existing is not None:
            if seq < existing.last_seq:
                raise RegistrationConflict("stale_seq", f"{info.id} seq {seq} < {existing.last_seq}")
            live = not existing.is_stale(now)
            if info.listen_url != existing.url and live:
                raise RegistrationConflict(
                    "id_url_conflict", f"{info.id} live at {existing.url}, claims {info.listen_url}"
                )
            # A dynamically addressed node moves when it loses a claim (docs/addressing.md); a configured
            # address never changes while its node lives.
            if set(routes) != set(existing.routes) and live and not info.claims:
                raise RegistrationConflict("address_change", f"{info.id} {existing.routes} -> {routes}")
        replaced: dict[str, Peer] = {}
        for route in routes:
            if route in self._own_routes:
                raise RegistrationConflict("address_conflict", f"{info.id} claims our own {route}")
            holder_id = self._holders.get(route)
            if holder_id is None or holder_id == info.id:
                continue
            holder = self._peers[holder_id]
            if holder.is_stale(now):
                replaced[holder_id] = holder
            else:
                raise ClaimConflict(holder, f"{route} held by live {holder_id}, claimed by {info.id}")
        at_url = self.by_url(info.listen_url)
        if at_url is not None and at_url.id != info.id:
            # A new id at a live peer's URL is a restart only once that URL answers with the new id
            # (the caller probes it, W6); a claim alone never evicts a live node (issue 12).
            if not at_url.is_stale(now):
                raise ClaimConflict(
                    at_url, f"{info.listen_url} held by live {at_url.id}, claimed by {info.id}", "url_conflict"
                )
            replaced[at_url.id] = at_url
        if existing is None and len(self._peers) - len(replaced) >= self._settings.max_nodes:
            raise PoolFull("max_nodes", f"{len(self._peers)} peers")
        for old in replaced.values():
            self.remove(old.id)
        peer_class, timing = self._settings.timing_for(info.node_addresses)
        if existing is None:
            peer = Peer(info, peer_class, timing, routes, seq, now, now, hints)
            self._peers[info.id] = peer
            changed = True
            self.generation += 1
        else:
            peer = existing
            changed = peer.info.listen_url != info.listen_url or set(peer.routes) != set(routes)
            for route in peer.routes:
                self._holders.pop(route, None)
            if peer.info.listen_url != info.listen_url:
                if self._urls.get(peer.info.listen_url) == info.id:
                    del self._urls[peer.info.listen_url]
                self.generation += 1
            if hints is not peer.hints and hints != peer.hints:
                self.generation += 1
            # An unchanged entry keeps its object, so our gossip table digest stays cached (gossip.py).
            info = peer.info if peer.info == info else info
            peer.info, peer.peer_class, peer.timing, peer.routes = info, peer_class, timing, routes
            peer.last_seq, peer.last_contact, peer.hints = seq, now, hints
        self._urls[info.listen_url] = info.id
        for route in routes:
            self._holders[route] = info.id
        return UpsertResult(peer, existing is None, changed, tuple(replaced.values()))

    def touch(self, peer_id: str, age: float = 0.0) -> None:
        """Record authenticated contact (a verified request or response from the peer, or a frame of its
        packet link), ``age`` seconds ago; an older contact than the last one changes nothing."""
        peer = self._peers.get(peer_id)
        if peer is not None:
            peer.last_contact = max(peer.last_contact, self._monotonic() - max(age, 0.0))

    def remove(self, peer_id: str) -> Peer | None:
        """Forget a peer and its routes; the caller tears down sessions and links."""
        peer = self._peers.pop(peer_id, None)
        if peer is not None:
            self.generation += 1
            if self._urls.get(peer.url) == peer_id:
                del self._urls[peer.url]
            for route in peer.routes:
                if self._holders.get(route) == peer_id:
                    del self._holders[route]
        return peer

    def stale(self) -> list[Peer]:
        now = self._monotonic()
        return [p for p in self._peers.values() if p.is_stale(now)]


class ClaimConflict(RegistrationConflict):
    """An address claim collides with a live holder (409); ``holder`` is probed for a restart."""

    def __init__(self, holder: Peer, detail: str, reason: str = "address_conflict") -> None:
        super().__init__(reason, detail)
        self.holder = holder
