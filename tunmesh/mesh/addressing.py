"""Dynamic overlay addressing: a node without ``node_address_cidr`` picks, claims and defends its own address.

The rule (docs/addressing.md):

* **Candidates.** The usable addresses of ``network_cidr`` (without the network and broadcast addresses) are
  walked in order from a start offset: ``index`` when the node has one (``$TUNMESH_NODE_INDEX``, or a
  StatefulSet ordinal, the 1-4 digit ``-N`` suffix of the hostname), else ``SHA-256(seed) mod size``
  where the seed is the advertise URL. The same identity therefore starts at the same address after a
  restart. Addresses that a known peer holds, that a gossip hint names, or that this node lost within
  ``lost_memory`` seconds are skipped.
* **Claims.** A claim is the address plus ``since``, the wall-clock millisecond at which it was made; it is
  sent with every registration (``address_claims``) and never changes while the claim lasts. An explicit
  (configured) address has no claim and counts as ``since = 0``: it always wins.
* **Conflicts.** When a registration claims our current address, both sides compute the same total order
  ``(since, node id)``; the smaller one keeps the address. The loser moves to its next free candidate at
  once; the winner refuses the registration (409) and the caller makes sure the loser sees the winner's
  claim. Neither input changes during a claim, so both ends always agree and nobody flaps back.
* **Held.** A claim is *held* once a peer accepted a registration carrying it, or after ``settle`` seconds
  without any peer (the first node of a cluster). Readiness follows :meth:`AddressClaimer.held`.
* **Exhaustion.** No free candidate left: state ``exhausted``, one ERROR line, not ready. The node stops
  defending the lost address (it accepts the holders, so it learns every taken address) and every tick
  looks again, so an address freed by a departed node is taken without operator action.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from twisted.logger import Logger

from tunmesh.config.tree import NODE_INDEX_ENV
from tunmesh.mesh.structs import IPInterface, IPNetwork, NodeInfo

#: A StatefulSet pod is ``<name>-<ordinal>``; a Deployment pod ends in a 5-character random suffix, so an
#: ordinal of at most 4 digits is never confused with it.
_ORDINAL = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?-(0|[1-9][0-9]{0,3})$")

Observer = Callable[[Mapping[str, IPInterface]], None]


class ClaimState(enum.Enum):
    """Where one family's claim stands."""

    CLAIMING = "claiming"  #: made, not yet acknowledged by a peer
    HELD = "held"  #: acknowledged (or alone long enough): the node is ready on this address
    EXHAUSTED = "exhausted"  #: lost, and every candidate is taken: not ready, looking again each tick


class Verdict(enum.Enum):
    """What :meth:`AddressClaimer.resolve` decided for one registration."""

    NO_CONFLICT = "no_conflict"
    WE_KEEP = "we_keep"  #: the other node loses: refuse it, make it see our claim
    WE_MOVED = "we_moved"  #: we lost and moved: accept the registration
    EXHAUSTED = "exhausted"  #: we lost and have nowhere to go: accept it, we are not ready


@dataclass(frozen=True)
class AddressSeed:
    """Where a node's candidate sequence starts: an index, or a text hashed into an offset."""

    text: str
    index: int | None = None
    source: str = "advertise URL"

    def offset(self, network: IPNetwork) -> int:
        """The start offset inside ``network``'s usable addresses (family and size mixed into the hash)."""
        _first, count = usable_range(network)
        if self.index is not None:
            return self.index % count
        digest = hashlib.sha256(f"tunmesh address v1|{network}|{self.text}".encode()).digest()
        return int.from_bytes(digest[:16], "big") % count


def address_seed(env: Mapping[str, str], hostname: str, advertise_url: str) -> AddressSeed:
    """The node's address seed: ``$TUNMESH_NODE_INDEX``, else a StatefulSet ordinal, else the advertise URL.

    Raises ``ValueError`` for an index that is not a non-negative integer (a typo must not silently fall
    back to a hashed address).
    """
    raw = env.get(NODE_INDEX_ENV, "").strip()
    if raw:
        if not raw.isdigit():
            raise ValueError(f"{NODE_INDEX_ENV}={raw!r} is not a non-negative integer")
        return AddressSeed(text=raw, index=int(raw), source=NODE_INDEX_ENV)
    match = _ORDINAL.match(hostname.lower())
    if match:
        return AddressSeed(text=hostname, index=int(match.group(2)), source=f"StatefulSet ordinal of {hostname}")
    host = urlsplit(advertise_url).hostname or advertise_url
    return AddressSeed(text=host, source=f"advertise host {host}")


def usable_range(network: IPNetwork) -> tuple[int, int]:
    """``(first, count)`` of the addresses a node may claim: not the network nor the broadcast address
    (the registration checks refuse those, ``NodePool.check_claims``)."""
    first = int(network.network_address)
    count = network.num_addresses
    if network.prefixlen < network.max_prefixlen - 1:
        return first + 1, count - 2
    return first, count


def candidate(network: IPNetwork, offset: int) -> IPInterface:
    """The usable address at ``offset`` (modulo the range), with the network's prefix length."""
    first, count = usable_range(network)
    address = ipaddress.ip_address(first + offset % count)
    return ipaddress.ip_interface(f"{address}/{network.prefixlen}")


def claim_key(since: int, node_id: str) -> tuple[int, str]:
    """The total order of claims: the smaller key keeps the address."""
    return since, node_id


class FamilyClaim:
    """The dynamic address of one family: the current claim, its state, and the candidate walk."""

    def __init__(self, family: str, network: IPNetwork, start: int, since: int) -> None:
        self.family = family
        self.network = network
        self.start = start
        self.step = 0
        self.address: IPInterface = candidate(network, start)
        self.since = since
        self.state = ClaimState.CLAIMING
        self.claimed_at = 0.0
        self.lost: dict[int, float] = {}

    def next_free(self, taken: frozenset[int], now: float, avoid_lost: bool) -> tuple[int, IPInterface] | None:
        """The first candidate after the current one that nobody is known to hold; None when exhausted."""
        self.lost = {a: t for a, t in self.lost.items() if t > now} if avoid_lost else {}
        _first, count = usable_range(self.network)
        for step in range(self.step + 1, self.step + 1 + count):
            address = candidate(self.network, self.start + step)
            value = int(address.ip)
            if value not in taken and value not in self.lost:
                return step, address
        return None


class AddressClaimer:
    """This node's addresses: fixed ones from the config, dynamic ones claimed by the rule above.

    :param networks: ``network_cidr`` per family (``ipv4``, ``ipv6``).
    :param explicit: the configured (or ``$TUNMESH_NODE_ADDRESS``) addresses; these families are fixed.
    :param seed: where the candidate walk starts (:func:`address_seed`).
    :param wall: wall clock (seconds) for the claims' ``since``; ``monotonic`` times settle and lost memory.
    :param settle: seconds after which a claim that no peer contradicted is held while no peer is known.
    :param lost_memory: seconds during which an address this node lost is not tried again.
    """

    log = Logger()

    def __init__(
        self,
        node_id: str,
        networks: Mapping[str, IPNetwork],
        explicit: Mapping[str, IPInterface],
        seed: AddressSeed,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        settle: float = 15.0,
        lost_memory: float = 60.0,
    ) -> None:
        self.node_id = node_id
        self.seed = seed
        self._wall = wall
        self._monotonic = monotonic
        self.settle = settle
        self.lost_memory = lost_memory
        self._explicit = dict(explicit)
        self.networks: dict[str, IPNetwork] = {f: n for f, n in networks.items() if f not in explicit}
        self._observers: list[Observer] = []
        self._first_tick: float | None = None
        self._claims: dict[str, FamilyClaim] = {}
        now, since = monotonic(), self._now_ms()
        for family, network in networks.items():
            if family in self._explicit:
                continue
            claim = FamilyClaim(family, network, seed.offset(network), since)
            claim.claimed_at = now
            self._claims[family] = claim
        for claim in self._claims.values():
            self.log.info(
                "claiming {family} address {address} (seed: {source})",
                family=claim.family,
                address=str(claim.address),
                source=seed.source,
            )

    def _now_ms(self) -> int:
        return max(1, int(self._wall() * 1000))

    # -- what the rest of the node reads ------------------------------------------------------------

    @property
    def dynamic(self) -> bool:
        """True when at least one family is claimed dynamically."""
        return bool(self._claims)

    def addresses(self) -> dict[str, IPInterface]:
        """Every current node address, fixed and claimed, by family."""
        out = dict(self._explicit)
        out.update({f: c.address for f, c in self._claims.items()})
        return out

    def defended(self) -> dict[str, IPInterface]:
        """The addresses we defend against other claims: all but those of exhausted families (an exhausted
        node lost its address and accepts its holder; it keeps announcing it only because a registration
        needs one)."""
        out = self.addresses()
        for family, claim in self._claims.items():
            if claim.state is ClaimState.EXHAUSTED:
                del out[family]
        return out

    def claims(self) -> dict[str, int]:
        """``since`` of each dynamic family's current claim (what registrations carry)."""
        return {f: c.since for f, c in self._claims.items()}

    def state(self, family: str) -> ClaimState:
        claim = self._claims.get(family)
        return claim.state if claim is not None else ClaimState.HELD

    def held(self) -> bool:
        """Readiness: every address is held (fixed ones always are)."""
        return all(c.state is ClaimState.HELD for c in self._claims.values())

    def add_observer(self, observer: Observer) -> None:
        """``observer(addresses)`` is called after any address changed (router, TUN, membership)."""
        self._observers.append(observer)

    # -- events ---------------------------------------------------------------------------------------

    def acknowledged(self) -> None:
        """A peer accepted a registration carrying our claims."""
        for claim in self._claims.values():
            if claim.state is ClaimState.CLAIMING:
                self._hold(claim, "acknowledged by a peer")

    def tick(self, alone: bool, taken: Iterable[IPNetwork | IPInterface]) -> None:
        """Periodic: hold an uncontested claim of a lone node after ``settle``; retry after exhaustion."""
        now = self._monotonic()
        if self._first_tick is None:
            # Settling counts from the first tick (the mesh started), not from construction: a node that
            # took long to start has not asked anybody yet.
            self._first_tick = now
        for claim in list(self._claims.values()):
            since = max(claim.claimed_at, self._first_tick)
            if claim.state is ClaimState.CLAIMING and alone and now - since >= self.settle:
                self._hold(claim, f"no peer contradicted it within {self.settle:g}s")
            elif claim.state is ClaimState.EXHAUSTED:
                # Exhausted, we accept every holder's registration, so the pool knows them all: an
                # address no peer holds now is free, even one we lost before (hints may be outdated).
                self._move(claim, _values(taken, claim.network), log_exhausted=False, avoid_lost=False)

    def resolve(self, info: NodeInfo, taken: Iterable[IPNetwork | IPInterface]) -> Verdict:
        """A registration from ``info.id``: whether it claims one of our dynamic addresses, and who keeps it."""
        verdict = Verdict.NO_CONFLICT
        theirs = info.claims
        for family, claim in self._claims.items():
            other = info.node_addresses.get(family)
            if other is None or other.ip != claim.address.ip or claim.state is ClaimState.EXHAUSTED:
                continue
            their_key = claim_key(theirs.get(family, 0), info.id)
            if claim_key(claim.since, self.node_id) < their_key:
                self.log.warn(
                    "{peer} also claims {address}: our claim is older (rule: earliest claim, then node id), "
                    "we keep it",
                    peer=info.id,
                    address=str(claim.address.ip),
                )
                return Verdict.WE_KEEP
            self.log.warn(
                "{peer} holds {address} with an older claim (rule: earliest claim, then node id): moving",
                peer=info.id,
                address=str(claim.address.ip),
            )
            claim.lost[int(claim.address.ip)] = self._monotonic() + self.lost_memory
            used = _values(taken, claim.network) | {int(other.ip)}
            verdict = Verdict.WE_MOVED if self._move(claim, used, log_exhausted=True) else Verdict.EXHAUSTED
        return verdict

    # -- internals ------------------------------------------------------------------------------------

    def _hold(self, claim: FamilyClaim, why: str) -> None:
        claim.state = ClaimState.HELD
        self.log.info(
            "{family} address {address} held ({why})", family=claim.family, address=str(claim.address), why=why
        )

    def _move(self, claim: FamilyClaim, taken: frozenset[int], log_exhausted: bool, avoid_lost: bool = True) -> bool:
        now = self._monotonic()
        found = claim.next_free(taken, now, avoid_lost)
        if found is None:
            if claim.state is not ClaimState.EXHAUSTED or log_exhausted:
                _first, count = usable_range(claim.network)
                self.log.error(
                    "no free {family} address left in {network} ({count} usable, all held or lost): "
                    "not ready; looking again every groom tick (enlarge network_cidr or remove nodes)",
                    family=claim.family,
                    network=str(claim.network),
                    count=count,
                )
            if claim.state is not ClaimState.EXHAUSTED:
                claim.state = ClaimState.EXHAUSTED
                self._notify()
            return False
        old = claim.address
        claim.step, claim.address = found
        claim.since = self._now_ms()
        claim.claimed_at = now
        claim.state = ClaimState.CLAIMING
        self.log.warn(
            "{family} address moved from {old} to {new}", family=claim.family, old=str(old), new=str(claim.address)
        )
        self._notify()
        return True

    def _notify(self) -> None:
        addresses = self.addresses()
        for observer in list(self._observers):
            try:
                observer(addresses)
            except Exception:
                self.log.failure("address observer failed")


def _values(items: Iterable[IPNetwork | IPInterface], network: IPNetwork) -> frozenset[int]:
    out = set()
    for item in items:
        ip = item.network_address if isinstance(item, (ipaddress.IPv4Network, ipaddress.IPv6Network)) else item.ip
        if ip in network:
            out.add(int(ip))
    return frozenset(out)


__all__ = [
    "NODE_INDEX_ENV",
    "AddressClaimer",
    "AddressSeed",
    "ClaimState",
    "Verdict",
    "address_seed",
    "candidate",
    "claim_key",
    "usable_range",
]
