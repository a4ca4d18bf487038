"""Cross-key checks: what each key accepts alone can still make an unusable node together.

``load_config`` runs every rule, so the daemon refuses exactly what ``tunmesh check-config`` refuses. Each rule
has a one-line description that the reference docs list.
"""

from __future__ import annotations

import itertools
import math
import string
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from tunmesh.config.errors import ConfigError
from tunmesh.config.tree import ROOT_KEY, TunMeshConfig

MIN_SECRET_CHARS = 32
MIN_SECRET_BITS = 128.0

Rule = Callable[[TunMeshConfig], Iterator[ConfigError]]


@attrs.frozen
class LintRule:
    name: str
    description: str
    check: Rule


RULES: list[LintRule] = []


def _rule(name: str, description: str) -> Callable[[Rule], Rule]:
    def deco(check: Rule) -> Rule:
        RULES.append(LintRule(name, description, check))
        return check

    return deco


def _p(*keys: str) -> str:
    return "/".join((ROOT_KEY, *keys))


# ---------------------------------------------------------------------------------------------- secret strength

_CLASSES = (
    (string.ascii_lowercase, 26),
    (string.ascii_uppercase, 26),
    (string.digits, 10),
    (string.punctuation + " ", 33),
)
_ZLIB_EMPTY = len(zlib.compress(b"", 9))


def _compressed_size(data: bytes) -> int:
    return max(len(zlib.compress(data, 9)) - _ZLIB_EMPTY, 0)


def secret_entropy_bits(secret: str) -> float:
    """A deliberately pessimistic estimate of the bits of entropy in a secret.

    bits = effective length x bits per character, where
      * bits per character is the smaller of log2(size of the character classes used: lower 26, upper 26,
        digits 10, ASCII punctuation and space 33, anything else 128) and the Shannon entropy of the
        secret's own character frequencies (so 'abababab...' counts 1 bit per character);
      * effective length is the smallest of the length, the zlib-compressed size in bytes (minus zlib's
        fixed overhead), and 1 + the compressed size of the differences between neighbouring characters, so
        repeated blocks ('abcdefgh' * 5) count once and runs ('abcdef...', '13579...') count as one step.
    """
    if not secret:
        return 0.0
    alphabet = 0
    for chars, size in _CLASSES:
        if any(c in chars for c in secret):
            alphabet += size
    if any(ord(c) > 127 for c in secret):
        alphabet += 128
    counts = Counter(secret)
    n = len(secret)
    shannon = max(0.0, -sum((k / n) * math.log2(k / n) for k in counts.values()))
    per_char = min(math.log2(alphabet), shannon)
    deltas = bytes((ord(b) - ord(a)) % 256 for a, b in itertools.pairwise(secret))
    effective = min(n, _compressed_size(secret.encode("utf-8")), 1 + _compressed_size(deltas))
    return effective * per_char


def secret_problem(secret: str) -> str | None:
    """Why a cluster secret is too weak, or None. The message never contains the secret."""
    if len(secret) < MIN_SECRET_CHARS:
        return (
            f"is too short: {len(secret)} characters, at least {MIN_SECRET_CHARS} are required "
            "(value hidden; generate one with `tunmesh gen-secret`)"
        )
    bits = secret_entropy_bits(secret)
    if bits < MIN_SECRET_BITS:
        return (
            f"is too weak: about {bits:.0f} bits of estimated entropy, at least {MIN_SECRET_BITS:.0f} are "
            "required (value hidden; avoid repeated or patterned text; generate one with `tunmesh gen-secret`)"
        )
    return None


@_rule(
    "secret-strength",
    f"Each cluster secret (secret, secret_file, or every entry of secrets) has at least {MIN_SECRET_CHARS} characters and at least {MIN_SECRET_BITS:.0f} bits of "
    "estimated entropy: the length after compressing the text and the differences between neighbouring "
    "characters (so repeats and runs like `abcd...` count once), times the smaller of the character-class "
    "entropy (lower 26, upper 26, digits 10, punctuation 33, other 128) and the entropy of the character "
    "frequencies. `tunmesh gen-secret` always passes. Two ids of secrets may not hold the same secret.",
)
def _secret_strength(cfg: TunMeshConfig) -> Iterator[ConfigError]:
    auth = cfg.clustering.auth
    if not auth.secrets:
        problem = secret_problem(auth.signing_secret)
        if problem:
            yield ConfigError(_p("clustering", "auth", "secret"), problem)
        return
    seen: dict[str, str] = {}
    for secret_id, entry in auth.secrets.items():
        problem = secret_problem(entry.secret)
        if problem:
            yield ConfigError(_p("clustering", "auth", "secrets", secret_id, "secret"), problem)
        if entry.secret in seen:
            # Two ids for one secret defeat the point of a rotation (and hint at a copy-paste slip).
            yield ConfigError(
                _p("clustering", "auth", "secrets", secret_id, "secret"),
                f"is the same secret as id {seen[entry.secret]!r} (value hidden); each id needs its own secret",
            )
        seen.setdefault(entry.secret, secret_id)


# ---------------------------------------------------------------------------------------------- addressing


def _address_problems(family: str, network: Any, node: Any) -> Iterator[ConfigError]:
    node_path = _p("networking", family, "node_address_cidr")
    if node is None:
        return  # dynamic addressing (docs/addressing.md)
    if node.ip not in network:
        yield ConfigError(node_path, f"address {node.ip} is not inside network_cidr {network}")
        return
    if node.network.prefixlen < network.prefixlen:
        yield ConfigError(
            node_path,
            f"prefix /{node.network.prefixlen} is shorter than network_cidr's /{network.prefixlen}; "
            "the local subnet must lie inside the mesh network",
        )
    if node.ip == network.network_address and network.num_addresses > 2:
        yield ConfigError(node_path, f"address {node.ip} is the network address of {network}")
    if network.version == 4 and node.ip == network.broadcast_address and network.num_addresses > 2:
        yield ConfigError(node_path, f"address {node.ip} is the broadcast address of {network}")


@_rule(
    "node-address",
    "Each node_address_cidr that is set (IPv4, and IPv6 when set) lies inside its network_cidr, its prefix is at least as "
    "long as the network's, and the address is not the network's network (or IPv4 broadcast) address.",
)
def _node_address(cfg: TunMeshConfig) -> Iterator[ConfigError]:
    net = cfg.networking
    yield from _address_problems("ipv4", net.ipv4.network_cidr, net.ipv4.node_address_cidr)
    if net.ipv6 is not None:
        yield from _address_problems("ipv6", net.ipv6.network_cidr, net.ipv6.node_address_cidr)


@_rule("ipv6-mtu", "When networking.ipv6 is set, networking.mtu is at least 1280 (the IPv6 minimum).")
def _ipv6_mtu(cfg: TunMeshConfig) -> Iterator[ConfigError]:
    if cfg.networking.ipv6 is not None and cfg.networking.mtu < 1280:
        yield ConfigError(_p("networking", "mtu"), f"{cfg.networking.mtu} is below 1280, the IPv6 minimum MTU")


# ---------------------------------------------------------------------------------------------- timing


@_rule(
    "stale-after-reregistration",
    "For local and mesh peers, stale_threshold is greater than reregistration_interval (else live peers "
    "are dropped between two registrations).",
)
def _stale(cfg: TunMeshConfig) -> Iterator[ConfigError]:
    regs = cfg.process.timing.registrations
    for name, group in (("local", regs.local), ("mesh", regs.mesh)):
        if group.stale_threshold <= group.reregistration_interval:
            yield ConfigError(
                _p("process", "timing", "registrations", name, "stale_threshold"),
                f"{group.stale_threshold:g} s must be greater than reregistration_interval "
                f"({group.reregistration_interval:g} s)",
            )


@_rule(
    "token-windows",
    "validity_window is greater than early_validity_window, and session_max_age is at least twice "
    "validity_window (a session must outlive its own rotation margin).",
)
def _windows(cfg: TunMeshConfig) -> Iterator[ConfigError]:
    auth = cfg.process.timing.auth
    base = ("process", "timing", "auth")
    if auth.validity_window <= auth.early_validity_window:
        yield ConfigError(
            _p(*base, "validity_window"),
            f"{auth.validity_window:g} s must be greater than early_validity_window ({auth.early_validity_window:g} s)",
        )
    if auth.session_max_age < 2 * auth.validity_window:
        yield ConfigError(
            _p(*base, "session_max_age"),
            f"{auth.session_max_age:g} s must be at least twice validity_window ({auth.validity_window:g} s)",
        )


# ---------------------------------------------------------------------------------------------- process and limits


@_rule("no-root", "process.uid is not 0, and process.gid is not 0 when set: the node never keeps root.")
def _no_root(cfg: TunMeshConfig) -> Iterator[ConfigError]:
    if cfg.process.uid == 0:
        yield ConfigError(_p("process", "uid"), "must not be 0 (root): choose the unprivileged user to run as")
    if cfg.process.gid == 0:
        yield ConfigError(_p("process", "gid"), "must not be 0 (root group): choose an unprivileged group")


@_rule(
    "connection-limits",
    "control_api.limits.max_connections_per_peer is at most control_api.limits.max_connections.",
)
def _connection_limits(cfg: TunMeshConfig) -> Iterator[ConfigError]:
    limits = cfg.control_api.limits
    if limits.max_connections_per_peer > limits.max_connections:
        yield ConfigError(
            _p("control_api", "limits", "max_connections_per_peer"),
            f"{limits.max_connections_per_peer} is above max_connections ({limits.max_connections})",
        )


@_rule(
    "url-length",
    "The advertise URL and every bootstrap URL fit clustering.limits.max_url_length (peers refuse longer ones).",
)
def _url_length(cfg: TunMeshConfig) -> Iterator[ConfigError]:
    limit = cfg.clustering.limits.max_url_length
    if len(cfg.clustering.control_api_advertise_url) > limit:
        yield ConfigError(
            _p("clustering", "control_api_advertise_url"), f"is longer than limits.max_url_length ({limit})"
        )
    for name, grp in cfg.clustering.bootstrap_groups.items():
        for i, url in enumerate(grp.bootstrap_node_urls):
            if len(url) > limit:
                yield ConfigError(
                    _p("clustering", "bootstrap_groups", name, "bootstrap_node_urls", str(i)),
                    f"is longer than limits.max_url_length ({limit})",
                )


def lint(cfg: TunMeshConfig) -> list[ConfigError]:
    """Every cross-key problem of a loaded config (empty when it is usable)."""
    return [problem for rule in RULES for problem in rule.check(cfg)]

