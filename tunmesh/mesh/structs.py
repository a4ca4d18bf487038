"""Wire structures of the mesh control API: :class:`NodeInfo` and :class:`Registration`.

The JSON shape is the original's (``{"ipv4": {"cidr": "a.b.c.d/nn"}}`` address maps, ``local``/``remote``/``stamp``)
plus optional fields: ``seq``, a per-sender sequence number (W1/W10: sender stamps are used only as
sequence numbers; when ``seq`` is absent, as from an upstream Ruby peer, ``stamp`` stands in for it),
``local.address_claims``, the claim times of dynamically chosen addresses (docs/addressing.md), and a node's
``name`` (``clustering.node_name``, issue 8: absent from older nodes, ignored when not a valid name).

Parsing is strict about structure and types (anything wrong is :exc:`InvalidRegistration`, HTTP 400) but
tolerates unknown keys (ignored), so fields can be added later without breaking older nodes; the
original's 500 on unknown keys is the opposite choice (upstream-behaviour §10). Every size is bounded
before any work is done for it (W7).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from tunmesh import strictjson
from tunmesh.mesh.errors import InvalidRegistration
from tunmesh.names import valid_name

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

FAMILIES: tuple[str, ...] = ("ipv4", "ipv6")
_FAMILY_VERSION = {"ipv4": 4, "ipv6": 6}

#: Node ids are UUIDv4 in practice; accept a conservative token syntax. "bootstrap" is reserved
#: because it is the audience of bootstrap tokens.
_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RESERVED_IDS = frozenset({"bootstrap"})

MAX_STAMP = 2**63 - 1


@dataclass(frozen=True)
class Bounds:
    """Size limits applied while parsing (W7); built from ``MeshSettings``."""

    max_nodes: int = 256
    max_cidrs_per_node: int = 16
    max_url_length: int = 2048


def check_node_id(value: object, where: str) -> str:
    """A node id string, or :exc:`InvalidRegistration`."""
    if not isinstance(value, str) or not _NODE_ID.match(value) or value in RESERVED_IDS:
        raise InvalidRegistration("bad_node_id", where)
    return value


def check_url(value: object, max_length: int, where: str = "listen_url") -> str:
    """An advertise URL: https only, a host, no userinfo, no query or fragment, path empty or ``/`` (W7).

    Returns the URL without a trailing ``/`` so equal URLs compare equal as strings.
    """
    if not isinstance(value, str) or not value:
        raise InvalidRegistration("bad_url", f"{where}: not a string")
    if len(value) > max_length:
        raise InvalidRegistration("bad_url", f"{where}: longer than {max_length}")
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in value):
        raise InvalidRegistration("bad_url", f"{where}: control or non-ASCII character")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise InvalidRegistration("bad_url", f"{where}: {exc}") from None
    if parts.scheme != "https":
        raise InvalidRegistration("bad_url", f"{where}: scheme must be https")
    if "@" in parts.netloc or parts.username is not None or parts.password is not None:
        raise InvalidRegistration("bad_url", f"{where}: userinfo not allowed")
    if not parts.hostname:
        raise InvalidRegistration("bad_url", f"{where}: no host")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise InvalidRegistration("bad_url", f"{where}: query/fragment not allowed")
    if parts.path not in ("", "/"):
        raise InvalidRegistration("bad_url", f"{where}: path must be empty or /")
    if port is not None and port == 0:
        raise InvalidRegistration("bad_url", f"{where}: port 0")
    return value.rstrip("/")


def url_host(url: str) -> str:
    """The host part of an already checked URL (IPv6 literals without brackets)."""
    return urlsplit(url).hostname or ""


def loads_json(body: bytes) -> Any:
    """Decode a JSON body with the one strict decoder (:mod:`tunmesh.strictjson`)."""
    try:
        return strictjson.loads(body)
    except strictjson.StrictJSONError as exc:
        raise InvalidRegistration("bad_json", exc.reason) from None


def dumps_json(value: Any) -> bytes:
    """Compact, deterministic JSON bytes (what is signed is exactly what is sent)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _obj(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRegistration("bad_type", f"{where}: not an object")
    return value


def _address_map(value: object, where: str, interface: bool, max_entries: int) -> dict[str, Any]:
    """Parse ``{"ipv4": {"cidr": "..."}, "ipv6": {...}}``; unknown families are ignored."""
    if value is None:
        return {}
    obj = _obj(value, where)
    out: dict[str, Any] = {}
    for family in FAMILIES:
        if family not in obj:
            continue
        entry = _obj(obj[family], f"{where}/{family}")
        cidr = entry.get("cidr")
        if not isinstance(cidr, str) or len(cidr) > 64:
            raise InvalidRegistration("bad_cidr", f"{where}/{family}/cidr")
        try:
            parsed = ipaddress.ip_interface(cidr) if interface else ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise InvalidRegistration("bad_cidr", f"{where}/{family}/cidr") from None
        if "/" not in cidr:
            raise InvalidRegistration("bad_cidr", f"{where}/{family}/cidr: prefix length missing")
        if parsed.version != _FAMILY_VERSION[family]:
            raise InvalidRegistration("bad_cidr", f"{where}/{family}/cidr: wrong address family")
        out[family] = parsed
    if len(out) > max_entries:
        raise InvalidRegistration("too_many_cidrs", where)
    return out


@dataclass(frozen=True)
class NodeInfo:
    """A node as it describes itself: id, advertise URL, overlay network and its own overlay address."""

    id: str
    listen_url: str
    network_addresses: Mapping[str, IPNetwork] = field(default_factory=dict)
    node_addresses: Mapping[str, IPInterface] = field(default_factory=dict)
    #: ``since`` (wall-clock ms) of each dynamically claimed address, by family (docs/addressing.md);
    #: empty for configured addresses, which count as ``since = 0``.
    claims: Mapping[str, int] = field(default_factory=dict)
    #: the node's human name (``clustering.node_name``); optional on the wire, not unique, never the identity
    name: str | None = None

    def host_routes(self) -> tuple[IPNetwork, ...]:
        """The routes this node claims: a host route (/32, /128) for each of its node addresses."""
        return tuple(ipaddress.ip_network(iface.ip) for iface in self.node_addresses.values())

    def to_dict(self) -> dict[str, Any]:
        """The original's JSON shape."""
        out: dict[str, Any] = {
            "id": self.id,
            "listen_url": self.listen_url,
            "network_addresses": {f: {"cidr": str(n)} for f, n in self.network_addresses.items()},
            "node_addresses": {f: {"cidr": str(n)} for f, n in self.node_addresses.items()},
            **({"name": self.name} if self.name else {}),
        }
        if self.claims:
            out["address_claims"] = {f: {"since": s} for f, s in self.claims.items()}
        return out

    @cached_property
    def wire(self) -> bytes:
        """``dumps_json(self.to_dict())``, made once: a node sends its table's entries to every peer, and
        each entry object lives as long as the entry is unchanged (``NodePool.upsert`` keeps it)."""
        return dumps_json(self.to_dict())

    @classmethod
    def from_dict(cls, value: object, bounds: Bounds, where: str = "local") -> NodeInfo:
        """Parse and bound one NodeInfo; raises :exc:`InvalidRegistration`."""
        obj = _obj(value, where)
        node_id = check_node_id(obj.get("id"), f"{where}/id")
        url = check_url(obj.get("listen_url"), bounds.max_url_length, f"{where}/listen_url")
        networks = _address_map(obj.get("network_addresses"), f"{where}/network_addresses", False, 2)
        nodes = _address_map(obj.get("node_addresses"), f"{where}/node_addresses", True, bounds.max_cidrs_per_node)
        claims = _claims(obj.get("address_claims"), f"{where}/address_claims", nodes)
        # The name is cosmetic: one this node cannot show safely is ignored, never a reason to refuse.
        name = obj.get("name")
        return cls(node_id, url, networks, nodes, claims, name if valid_name(name) else None)


class NodeInfoCache:
    """Entries parsed before, by their JSON value: one per receiver (``Inbound``).

    A peer table reaches a node from each of its peers, and a peer's own entry with each of its
    registrations, so most entries a node parses are ones it parsed before; checking one again (URL,
    CIDRs, id) cost more than all the rest of a registration at a few hundred nodes. The key is the
    ``repr`` of the decoded JSON value, which tells any two JSON values apart; only entries that
    parsed are kept (a bad one is checked, and refused, each time). At most ``size`` entries: when
    full it starts again, so it holds about one table's worth.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._bounds: Bounds | None = None
        self._entries: dict[str, NodeInfo] = {}

    def parse(self, value: object, bounds: Bounds, where: str) -> NodeInfo:
        """:meth:`NodeInfo.from_dict`, from the cache when ``value`` parsed before under ``bounds``."""
        if not isinstance(value, dict):
            return NodeInfo.from_dict(value, bounds, where)
        if bounds != self._bounds:
            self._entries.clear()
            self._bounds = bounds
        key = repr(value)
        info = self._entries.get(key)
        if info is None:
            info = NodeInfo.from_dict(value, bounds, where)
            if len(self._entries) >= self.size:
                self._entries.clear()
            self._entries[key] = info
        return info

    def __len__(self) -> int:
        return len(self._entries)


def _claims(value: object, where: str, nodes: Mapping[str, Any]) -> dict[str, int]:
    """Parse ``{"ipv4": {"since": ms}}``: only for families that have a node address; others ignored."""
    if value is None:
        return {}
    obj = _obj(value, where)
    out: dict[str, int] = {}
    for family in FAMILIES:
        if family in obj and family in nodes:
            out[family] = _count(_obj(obj[family], f"{where}/{family}").get("since"), f"{where}/{family}/since")
    return out


@dataclass(frozen=True)
class Registration:
    """What a node sends to a peer: itself (``local``), the nodes it knows (``remote``: hints), ``stamp``, ``seq``."""

    local: NodeInfo
    remote: tuple[NodeInfo, ...]
    stamp: int
    seq: int
    #: reasons of the ``remote`` entries dropped while parsing (each one counted by the receiver)
    dropped: tuple[str, ...] = ()
    #: gossip digests (`tunmesh.mesh.gossip`): of the sender's table, and of the table it holds from the
    #: recipient; optional on the wire (absent from older nodes)
    remote_digest: str | None = None
    known_digest: str | None = None
    #: ``remote`` left out on the wire: the recipient holds the table ``remote_digest`` names
    elided: bool = False
    #: a delta (``remote_base`` on the wire): ``remote`` holds only the entries new or changed since the
    #: table of this digest (one the recipient said it holds), ``removed`` the ids no longer in it
    base_digest: str | None = None
    removed: tuple[str, ...] = ()
    #: ids of the ``remote`` entries dropped while parsing (when they named one): a delta replaces them
    dropped_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"local": self.local.to_dict()}
        if not self.elided:
            out["remote"] = [n.to_dict() for n in self.remote]
        out["stamp"] = self.stamp
        out["seq"] = self.seq
        if self.remote_digest is not None:
            out["remote_digest"] = self.remote_digest
        if self.known_digest is not None:
            out["known_digest"] = self.known_digest
        if self.base_digest is not None:
            out["remote_base"] = self.base_digest
            out["removed"] = list(self.removed)
        return out

    def to_json(self) -> bytes:
        """``dumps_json(self.to_dict())``, byte for byte, from the entries' :attr:`NodeInfo.wire`."""
        parts = [b'{"local":', self.local.wire]
        if not self.elided:
            parts += [b',"remote":[', b",".join(n.wire for n in self.remote), b"]"]
        parts += [b',"stamp":', dumps_json(self.stamp), b',"seq":', dumps_json(self.seq)]
        if self.remote_digest is not None:
            parts += [b',"remote_digest":', dumps_json(self.remote_digest)]
        if self.known_digest is not None:
            parts += [b',"known_digest":', dumps_json(self.known_digest)]
        if self.base_digest is not None:
            parts += [b',"remote_base":', dumps_json(self.base_digest), b',"removed":', dumps_json(list(self.removed))]
        parts.append(b"}")
        return b"".join(parts)

    @classmethod
    def from_json(cls, body: bytes, bounds: Bounds, cache: NodeInfoCache | None = None) -> Registration:
        """Parse a registration body; every structural or bound problem is :exc:`InvalidRegistration` (400).

        With a ``cache``, entries it parsed before are taken from it (same result, far less work)."""
        parse = cache.parse if cache is not None else NodeInfo.from_dict
        obj = _obj(loads_json(body), "registration")
        local = parse(obj.get("local"), bounds, "local")
        if not local.node_addresses:
            raise InvalidRegistration("bad_cidr", "local/node_addresses: none")
        remote_digest = _digest(obj.get("remote_digest"))
        # Without "remote", a registration that names its table's digest left the table out (gossip.py).
        elided = "remote" not in obj and remote_digest is not None
        remote_raw = obj.get("remote", [])
        if remote_raw is None:
            remote_raw = []
        if not isinstance(remote_raw, list):
            raise InvalidRegistration("bad_type", "remote: not a list")
        if len(remote_raw) > bounds.max_nodes + 1:
            raise InvalidRegistration("too_many_nodes", f"remote: {len(remote_raw)} entries")
        # Gossip entries are hints about third parties: one this node refuses (a URL scheme, length or
        # host its limits do not allow, a bad CIDR) is dropped alone, so nodes whose limits differ
        # still register with each other (issue 12, defect 4). The sender's own entry stays strict.
        remote: list[NodeInfo] = []
        dropped: list[str] = []
        dropped_ids: list[str] = []
        for i, item in enumerate(remote_raw):
            try:
                remote.append(parse(item, bounds, f"remote/{i}"))
            except InvalidRegistration as exc:
                dropped.append(exc.reason)
                item_id = item.get("id") if isinstance(item, dict) else None
                if isinstance(item_id, str) and _NODE_ID.match(item_id):
                    dropped_ids.append(item_id)
        stamp = _count(obj.get("stamp"), "stamp")
        seq_raw = obj.get("seq")
        seq = stamp if seq_raw is None else _count(seq_raw, "seq")
        known_digest = _digest(obj.get("known_digest"))
        base_digest, removed = _delta(obj, remote_digest, bounds)
        return cls(
            local, tuple(remote), stamp, seq, tuple(dropped), remote_digest, known_digest, elided,
            base_digest, removed, tuple(dropped_ids),
        )


def _delta(obj: Mapping[str, Any], remote_digest: str | None, bounds: Bounds) -> tuple[str | None, tuple[str, ...]]:
    """``remote_base`` and ``removed`` of a delta registration (``(None, ())`` for a whole table).

    Unlike the digests, a delta this node cannot read is refused (400), never ignored: its ``remote``
    taken for a whole table would leave the receiver holding a table it names by the wrong digest."""
    if "remote_base" not in obj and "removed" not in obj:
        return None, ()
    base = _digest(obj.get("remote_base"))
    if base is None or remote_digest is None or "remote" not in obj:
        raise InvalidRegistration("bad_type", "remote_base: not a delta of a named table")
    removed_raw = obj.get("removed", [])
    if not isinstance(removed_raw, list):
        raise InvalidRegistration("bad_type", "removed: not a list")
    if len(removed_raw) > bounds.max_nodes + 1:
        raise InvalidRegistration("too_many_nodes", f"removed: {len(removed_raw)} entries")
    return base, tuple(check_node_id(r, f"removed/{i}") for i, r in enumerate(removed_raw))


_DIGEST = re.compile(r"^[0-9a-f]{8,64}$")


def _digest(value: object) -> str | None:
    """An optional gossip digest: one this node cannot use is ignored (the full table is exchanged)."""
    return value if isinstance(value, str) and _DIGEST.match(value) else None


def _count(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_STAMP:
        raise InvalidRegistration("bad_type", f"{where}: not a non-negative integer")
    return value
