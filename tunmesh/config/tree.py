"""The whole tunmesh config tree (format 1.1), declared once.

Every key of the original Tun Mesh 1.1 config is here with the same name and meaning, so existing configs load
unchanged; tunmesh's additions are optional with safe defaults. The loader, the example config, the reference
docs and the dump are all generated from these classes.
"""

from __future__ import annotations

import ipaddress
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attrs import frozen

from tunmesh.auth.tokens import DEFAULT_SECRET_ID, SECRET_ID_PATTERN
from tunmesh.config.schema import (
    Bool,
    Enum,
    File,
    GroupType,
    Int,
    IPAddress,
    ListOf,
    LoadContext,
    MapOf,
    NetAddress,
    String,
    Timing,
    UInt,
    Url,
    Version,
    group,
    option,
    subgroup,
)
from tunmesh.names import MAX_NAME, NAME_HELP, NAME_PATTERN, POD_NAME_ENV

SECRET_ENV = "TUNMESH_CLUSTER_SECRET"
ADVERTISE_URL_ENV = "TUNMESH_ADVERTISE_URL"
NODE_ADDRESS_ENV = "TUNMESH_NODE_ADDRESS"
NODE_ADDRESS6_ENV = "TUNMESH_NODE_ADDRESS6"
#: read by tunmesh.mesh.addressing (not a config key): the node's index for dynamic addressing
NODE_INDEX_ENV = "TUNMESH_NODE_INDEX"


# ---------------------------------------------------------------------------------------------------- clustering


@group("Settings for one group of bootstrap nodes.")
@frozen(kw_only=True)
class BootstrapGroup:
    bootstrap_node_urls: tuple[str, ...] = option(
        ListOf(Url()),
        "Control API URLs used to join the mesh.",
        (
            "The advertise URLs of existing nodes, or one load-balanced URL in front of them.",
            "The key must be present; null or an empty list means this group has no nodes yet.",
        ),
        required=True,
    )
    bootstrap_retries: int = option(
        Int(min=-1),
        "Bootstrap attempts before giving up on this group.",
        ("-1 retries forever, 0 makes a single attempt, N makes N retries.",),
        default=-1,
    )


@group("Resource limits for mesh membership (bounded state against fake registrations).")
@frozen(kw_only=True)
class ClusteringLimits:
    max_nodes: int = option(
        UInt(min=1, max=65536),
        "Maximum number of peer nodes kept.",
        ("Registrations beyond this are refused; metrics stop being labelled per node above it.",),
        default=256,
    )
    max_cidrs_per_node: int = option(
        UInt(min=1, max=1024), "Maximum number of addresses (CIDRs) one node may register.", default=16
    )
    max_url_length: int = option(
        UInt(min=64, max=8192), "Maximum length of a node URL accepted from peers.", default=2048
    )
    max_concurrent_bootstraps: int = option(
        UInt(min=1, max=256), "Maximum number of new bootstraps run at the same time per groom pass.", default=8
    )
    peer_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = option(
        ListOf(NetAddress(None, interface=False)),
        "Networks that peer URL hosts must resolve into.",
        (
            "An allow-list for the addresses of peer URLs learned from the mesh, for example the underlay",
            "network. Empty means any host except literal loopback, link-local, unspecified and multicast",
            "addresses. When set, peer URL hosts must be literal IP addresses inside one of these networks.",
        ),
        default=(),
    )


# DEFAULT_SECRET_ID: the id of the secret given as ``secret``/``secret_file`` (tokens: ``kid = "cluster"``,
# as always); SECRET_ID_PATTERN: the shape of an id. Both are the token layer's, declared once there.
SECRET_ID_HELP = "1-32 letters, digits, '_' or '-', starting with a letter or digit"


def _read_secret_file(secret_path: Path, path: str, ctx: LoadContext) -> Any:
    try:
        text = secret_path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return ctx.fail(path, f"{secret_path}: is not UTF-8 text")
    except OSError as e:
        return ctx.fail(path, f"{secret_path}: cannot be read: {e.strerror}")
    secret = text.rstrip("\r\n")
    if not secret:
        return ctx.fail(path, f"{secret_path}: is empty")
    return secret


def _resolve_secret_entry(values: dict[str, Any], present: frozenset[str], path: str, ctx: LoadContext) -> Any:
    """Exactly one of secret / secret_file per entry; the file is read now (and on every reload)."""
    if {"secret", "secret_file"} <= present:
        return ctx.fail(path, "set only one of secret and secret_file")
    if values["secret"] is None and values["secret_file"] is not None:
        secret = _read_secret_file(values["secret_file"], f"{path}/secret_file", ctx)
        if not secret:
            return secret
        values["secret"] = secret
    return values


@group(
    "One cluster secret of clustering.auth.secrets, under its id (the map key).",
    (
        "The id travels in every token signed with this secret (JWT kid `cluster.<id>`, or `cluster` for the id",
        "`default`); it is not secret.",
        "Give exactly one of secret and secret_file.",
    ),
    resolve=_resolve_secret_entry,
)
@frozen(kw_only=True)
class ClusterSecret:
    secret: str = option(
        String(min_length=1),
        "The secret.",
        ("Needs at least 32 characters and 128 bits of estimated entropy (`tunmesh gen-secret`).",),
        required=True,
        secret=True,
        alternatives=("secret_file",),
    )
    secret_file: Path | None = option(
        File(),
        "File holding the secret (instead of secret).",
        (
            "Trailing newlines are removed. Relative paths start at the config file's directory.",
            "Re-read on SIGHUP (as process.uid, which must be able to read it).",
        ),
    )


def _resolve_auth(values: dict[str, Any], present: frozenset[str], path: str, ctx: LoadContext) -> Any:
    """Either the single-secret form (secret / secret_file, overridden by the env variable) or the
    secrets map with signing_secret_id; never both."""
    env_path = f"{path}/secret"
    from_env = ctx.env_sources.get(env_path)
    if values["secrets"]:
        if from_env is not None:
            return ctx.fail(
                f"{path}/secrets",
                f"the environment variable {from_env} gives the single secret; with secrets, give every "
                "secret as an entry (unset the variable)",
            )
        if present & {"secret", "secret_file"}:
            return ctx.fail(path, "set either secrets (with signing_secret_id) or secret / secret_file, not both")
        signing = values["signing_secret_id"]
        if signing is None:
            return ctx.fail(
                f"{path}/signing_secret_id",
                f"missing: with secrets, name the one this node signs with (one of {', '.join(values['secrets'])})",
            )
        if signing not in values["secrets"]:
            return ctx.fail(
                f"{path}/signing_secret_id",
                f"{signing!r} is not an id under secrets (ids: {', '.join(values['secrets'])})",
            )
        return values
    if values["signing_secret_id"] is not None and values["signing_secret_id"] != DEFAULT_SECRET_ID:
        return ctx.fail(
            f"{path}/signing_secret_id",
            f"{values['signing_secret_id']!r} names no secret: the single secret's id is {DEFAULT_SECRET_ID!r}",
        )
    return _resolve_secret_entry(values, present, path, ctx)


@group(
    "Cluster authentication.",
    (
        "The shared cluster secret is the root of trust: every node of the mesh must accept the secret its",
        "peers sign with. Either one secret (secret or secret_file, id `default`), or several under ids",
        "(secrets, with signing_secret_id) to rotate it without downtime: docs/security.md, \"Rotating the",
        "cluster secret\".",
    ),
    resolve=_resolve_auth,
)
@frozen(kw_only=True)
class Auth:
    secret: str | None = option(
        String(min_length=1),
        "Shared cluster secret (the single-secret form; its id is `default`).",
        (
            "Must be the same on every node. Generate one with `tunmesh gen-secret`.",
            "Needs at least 32 characters and 128 bits of estimated entropy.",
            "Give exactly one of secret, secret_file and secrets; the environment variable",
            f"{SECRET_ENV}, when set and non-empty, overrides secret and secret_file.",
        ),
        required=True,
        secret=True,
        env=SECRET_ENV,
        alternatives=("secret_file", "secrets"),
    )
    secret_file: Path | None = option(
        File(),
        "File holding the shared cluster secret (instead of secret).",
        (
            "Trailing newlines are removed. Relative paths start at the config file's directory.",
            "Re-read on SIGHUP (as process.uid, which must be able to read it).",
        ),
    )
    secrets: Mapping[str, ClusterSecret] = option(
        MapOf(
            GroupType(ClusterSecret),
            key_pattern=SECRET_ID_PATTERN,
            key_help=SECRET_ID_HELP,
            max_items=8,
        ),
        "Several cluster secrets accepted at once, by id (instead of secret / secret_file).",
        (
            "Tokens name the secret they are signed with; a token under an id not listed here is refused",
            "(401, reason unknown_key). Used to rotate the secret with no downtime: add the new secret on every",
            "node, then switch signing_secret_id to it on every node, then remove the old one.",
            f"The id `{DEFAULT_SECRET_ID}` is the same secret id as the single-secret form.",
        ),
        default=types.MappingProxyType({}),
    )
    signing_secret_id: str | None = option(
        String(pattern=SECRET_ID_PATTERN, pattern_help=SECRET_ID_HELP),
        "The id under secrets this node signs its requests with (required with secrets).",
        (
            "Responses are signed with the secret of the request they answer; new sessions are salted with",
            "this secret.",
        ),
    )
    pub_key_size: int = option(
        UInt(min=2048),
        "Accepted for compatibility; unused.",
        ("The original used RSA keys of this size; tunmesh exchanges session keys with X25519.",),
        default=2048,
        unused=True,
    )

    @property
    def accepted_secrets(self) -> Mapping[str, str]:
        """Every accepted secret by id (the single-secret form: one, under ``default``)."""
        if self.secrets:
            return types.MappingProxyType({k: v.secret for k, v in self.secrets.items()})
        assert self.secret is not None
        return types.MappingProxyType({DEFAULT_SECRET_ID: self.secret})

    @property
    def signing_id(self) -> str:
        """The id of the secret this node signs with."""
        return self.signing_secret_id if self.secrets and self.signing_secret_id else DEFAULT_SECRET_ID

    @property
    def signing_secret(self) -> str:
        """The secret this node signs with."""
        return self.accepted_secrets[self.signing_id]


@group("Cluster membership settings.")
@frozen(kw_only=True)
class Clustering:
    control_api_advertise_url: str = option(
        Url(),
        "This node's externally reachable control API URL.",
        (
            "Peers connect to this URL; it must be unique per node (not load balanced).",
            f"The environment variable {ADVERTISE_URL_ENV}, when set and non-empty, overrides it.",
        ),
        required=True,
        env=ADVERTISE_URL_ENV,
    )
    node_name: str | None = option(
        String(max_length=MAX_NAME, pattern=NAME_PATTERN, pattern_help=NAME_HELP),
        "A human name for this node, shown in logs, `tunmesh status` and metrics.",
        (
            f"Default: the environment variable {POD_NAME_ENV} (set it from the pod's metadata.name), then the",
            "hostname. Gossiped with the registration; names need not be unique (the node id is the identity).",
        ),
    )
    reload_config_on_bootstrap: bool = option(
        Bool(),
        "Re-read the config file before each bootstrap pass.",
        (
            "Picks up externally templated bootstrap URL lists; other settings are not changed at runtime.",
            "The reload runs as process.uid, so the config file and the files it names must be readable by",
            "that uid (checked at start, by check-config and the daemon).",
        ),
        default=False,
    )
    bootstrap_groups: Mapping[str, BootstrapGroup] = option(
        MapOf(
            GroupType(BootstrapGroup),
            key_pattern=r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}",
            key_help="1-64 letters, digits, '_', '.' or '-', starting with a letter or digit",
        ),
        "Named groups of nodes to bootstrap from.",
        ("The key must be present; null or an empty mapping means this node starts a new mesh.",),
        required=True,
    )
    auth: Auth = subgroup(Auth)
    limits: ClusteringLimits = subgroup(ClusteringLimits)


# ---------------------------------------------------------------------------------------------------- control_api


@group("TLS settings of the control API (the one HTTPS port that carries the API and the data links).")
@frozen(kw_only=True)
class Ssl:
    cert_file_path: Path = option(
        File(),
        "Server certificate file (PEM).",
        ("May be shared by all nodes; self-signed certificates are allowed.",),
        required=True,
    )
    key_file_path: Path = option(
        File(),
        "Server private key file (PEM).",
        ("It is read before privileges are dropped; a restart is needed to pick up a renewed key.",),
        required=True,
    )
    ca_file_path: Path | None = option(
        File(),
        "CA bundle used to verify peers.",
        ("When unset, the certificate file itself is the only trust anchor.",),
    )
    verify_hostname: bool = option(
        Bool(), "Verify the peer certificate's names against the URL host.", default=False
    )


def _timing(default: float, short: str, long: tuple[str, ...] = (), **bounds: float) -> Any:
    return option(Timing(**bounds), short, long, default=default)


@group("Limits and deadlines of the control API server.")
@frozen(kw_only=True)
class ControlApiLimits:
    header_timeout: float = _timing(10.0, "Seconds a client has to send the request line and headers.", max=300)
    body_timeout: float = _timing(30.0, "Seconds a client has to send the request body.", max=300)
    max_connections_per_peer: int = option(
        UInt(min=1, max=65535), "Maximum simultaneous connections from one source address.", default=32
    )
    max_connections: int = option(
        UInt(min=1, max=1_000_000), "Maximum simultaneous connections in total.", default=1024
    )
    requests_per_second: int = option(
        UInt(min=1, max=100_000),
        "Node-to-node API requests per second allowed from one source address; more get 429.",
        (
            "A token bucket per address for paths under /tunmesh/ (health, readiness and metrics are "
            "not limited). Raise it when many nodes bootstrap through one load balancer that "
            "hides their addresses.",
        ),
        default=20,
    )
    request_burst: int = option(
        UInt(min=1, max=100_000),
        "Requests one source address may send at once before requests_per_second applies.",
        default=5,
    )


@group("Control API (HTTPS) settings.")
@frozen(kw_only=True)
class ControlApi:
    listen_address: str = option(
        IPAddress(), "Address the control API listens on.", ("Use :: to listen on all IPv6 and IPv4 addresses.",),
        default="0.0.0.0",
    )
    listen_port: int = option(UInt(min=1, max=65535), "Port the control API listens on.", default=4567)
    max_batch_size: int = option(
        UInt(min=1, max=1024), "Maximum number of packets sent in one batch.", default=64
    )
    ssl: Ssl = subgroup(Ssl)
    limits: ControlApiLimits = subgroup(ControlApiLimits)


# ---------------------------------------------------------------------------------------------------- logging / monitoring


@group("Logging settings.")
@frozen(kw_only=True)
class Logging:
    level: str = option(
        Enum(
            {
                "error": "Errors only.",
                "warn": "Errors and warnings.",
                "info": "Normal operational messages.",
                "debug": "Verbose diagnostics.",
            }
        ),
        "Minimum level of logged events.",
        default="info",
    )
    format: str = option(
        Enum(
            {
                "text": "One line per event: time, [namespace#level], message.",
                "json": "One JSON object per line: every field of the event as a key, plus text (the "
                "formatted message), level, log_namespace and log_time (Unix time).",
            }
        ),
        "How log lines are written.",
        (
            "Errors carrying an exception are one line ending in the exception's type and message "
            "(exception_type, exception_message in JSON); the traceback follows at debug level.",
        ),
        default="text",
    )


@group("Prometheus exposition settings.")
@frozen(kw_only=True)
class Prometheus:
    base_labels: Mapping[str, str] = option(
        MapOf(
            String(max_length=256),
            key_pattern=r"[a-zA-Z_][a-zA-Z0-9_]*",
            key_help="a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)",
            reserved_keys=(
                "node_id", "node_name", "advertise_url", "peer_id", "peer_name", "url", "addresses", "le", "quantile",
            ),
        ),
        "Extra labels added to every metric.",
        (
            "Prometheus' target labels (instance, job) already name the node; these are for what the target "
            "labels do not say (cluster, environment). The node's id, name and URL are the labels of "
            "tunmesh_node_info, and node_id, node_name, advertise_url, peer_id, peer_name, url and addresses "
            "are reserved.",
        ),
        default=types.MappingProxyType({}),
    )


@group("Monitoring settings.")
@frozen(kw_only=True)
class Monitoring:
    method: str = option(
        Enum({"none": "No metrics endpoint.", "prometheus": "Expose Prometheus metrics at /metrics."}),
        "How metrics are exposed.",
        default="none",
    )
    enable_node_packet_metrics: bool = option(
        Bool(),
        "Per-peer packet and byte counters (series labelled by peer node id).",
        ("No latency histogram: the original's compared two hosts' wall clocks.",),
        default=False,
    )
    metric_ttl: float = _timing(3600.0, "Idle seconds after which per-peer metric series are dropped.")
    prometheus: Prometheus = subgroup(Prometheus)


# ---------------------------------------------------------------------------------------------------- networking


@group("IPv4 overlay addressing.")
@frozen(kw_only=True)
class Ipv4:
    network_cidr: ipaddress.IPv4Network = option(
        NetAddress(4, interface=False),
        "The whole mesh IPv4 range.",
        ("The TUN device routes all of it into the mesh. Must be the same on every node.",),
        required=True,
    )
    node_address_cidr: ipaddress.IPv4Interface | None = option(
        NetAddress(4, interface=True),
        "This node's IPv4 address with its local subnet prefix; leave it out to pick one dynamically.",
        (
            "The address must lie inside network_cidr; the prefix (the same size as network_cidr or smaller)",
            "defines the local subnet, whose peers use the local timing settings.",
            "Without it the node claims a free address in network_cidr and defends it through the mesh,",
            f"the same one after a restart with the same {NODE_INDEX_ENV}, StatefulSet ordinal or advertise",
            "host (docs/addressing.md); one config then serves every replica.",
            f"The environment variable {NODE_ADDRESS_ENV}, when set and non-empty, overrides it.",
        ),
        env=NODE_ADDRESS_ENV,
    )
    enable_broadcast: bool = option(
        Bool(), "Carry 255.255.255.255 and mesh broadcast traffic.", default=False
    )


@group("IPv6 overlay addressing (new in tunmesh).", ("Leave the group out for an IPv4-only mesh.",))
@frozen(kw_only=True)
class Ipv6:
    network_cidr: ipaddress.IPv6Network = option(
        NetAddress(6, interface=False), "The whole mesh IPv6 range.", required=True
    )
    node_address_cidr: ipaddress.IPv6Interface | None = option(
        NetAddress(6, interface=True),
        "This node's IPv6 address with its local subnet prefix; leave it out to pick one dynamically.",
        (
            "The address must lie inside network_cidr. Without it the node claims one, as for IPv4.",
            f"The environment variable {NODE_ADDRESS6_ENV}, when set and non-empty, overrides it.",
        ),
        env=NODE_ADDRESS6_ENV,
    )


@group("Overlay network settings.")
@frozen(kw_only=True)
class Networking:
    tun_device_id: str = option(
        String(
            min_length=1,
            max_length=15,
            pattern=r"(?!\.\.?$)[A-Za-z0-9_.-]+",
            pattern_help="a Linux interface name: letters, digits, '_', '.' and '-' (not '.' or '..')",
        ),
        "Name of the TUN device.",
        default="tun1",
    )
    mtu: int = option(
        UInt(min=576, max=65535),
        "MTU of the TUN device.",
        (
            "Frames travel inside one TLS stream per peer, so the overlay has no underlay MTU to fit;",
            "the conservative default suits most hosts. 576 is the IPv4 minimum; IPv6 needs at least 1280.",
        ),
        default=1400,
    )
    offload: bool = option(
        Bool(),
        "Use TUN offload (IFF_VNET_HDR, TSO/GSO) when the kernel allows it.",
        ("Large segments then cross the mesh as one frame; falls back to plain packets if unsupported.",),
        default=True,
    )
    datagrams: bool = option(
        Bool(),
        "Send lone small packets to a peer as encrypted UDP datagrams when UDP reaches it (lower latency).",
        (
            "UDP uses the same port number as control_api.listen_port. A peer is used this way only after a",
            "probe proves the path; bulk traffic, and everything where UDP does not pass, uses the TLS links.",
        ),
        default=True,
    )
    poll_window: float = option(
        Timing(min=0.0, max=0.01),
        "Seconds the node keeps polling, instead of sleeping, after a lone small packet (0: never).",
        (
            "For nodes with a core of their own: an answer that arrives within the window is read by an awake",
            "process, at the cost of up to the window of CPU per request. Polling stops by itself while other",
            "work preempts the node; on shared cores it measured no reliable gain, hence off by default.",
        ),
        default=0.0,
    )
    ipv4: Ipv4 = subgroup(Ipv4)
    ipv6: Ipv6 | None = subgroup(Ipv6, absent_is_none=True)


# ---------------------------------------------------------------------------------------------------- process


@group("Accepted for compatibility; unused.", ("The original used SysV message queues; tunmesh runs one process.",))
@frozen(kw_only=True)
class IpcGroup:
    max_init_attempts: int = option(UInt(), "Unused.", default=3, unused=True)
    key_range_min: int = option(UInt(max=0xFFFFFFFF, base=16), "Unused.", default=0x80000000, unused=True)
    key_range_max: int = option(UInt(max=0xFFFFFFFF, base=16), "Unused.", default=0x8FFFFFF0, unused=True)


@group("Accepted for compatibility; unused.")
@frozen(kw_only=True)
class Ipc:
    group: IpcGroup = subgroup(IpcGroup)


@group("Session authentication timing.")
@frozen(kw_only=True)
class AuthTiming:
    session_max_age: float = _timing(
        3600.0, "Seconds a session key is used before it is rotated.", ("Rotation is jittered to 90-100 %.",)
    )
    early_validity_window: float = _timing(
        5.0, "Clock-skew tolerance: tokens are valid from this many seconds before their issue time."
    )
    validity_window: float = _timing(
        30.0,
        "Seconds a token stays valid after it is issued; also the session rotation margin.",
        ("Should be at least 3 x groom_interval.",),
    )


@group("Timing of registrations with local-subnet peers.")
@frozen(kw_only=True)
class LocalRegistrationTiming:
    reregistration_interval: float = _timing(
        5.0,
        "Seconds between registrations with each local peer; stale_threshold if longer while the membership "
        "is changing (it got our peer table lately), 4 x stale_threshold while a packet link with the peer is "
        "up and it holds our peer table (at rest).",
    )
    stale_threshold: float = _timing(30.0, "Seconds without contact after which a local peer is dropped.")


@group("Timing of registrations with all other peers.")
@frozen(kw_only=True)
class MeshRegistrationTiming:
    reregistration_interval: float = _timing(
        30.0,
        "Seconds between registrations with each mesh peer; stale_threshold if longer while the membership "
        "is changing (it got our peer table lately), 4 x stale_threshold while a packet link with the peer is "
        "up and it holds our peer table (at rest).",
    )
    stale_threshold: float = _timing(120.0, "Seconds without contact after which a mesh peer is dropped.")


@group("Membership timing.")
@frozen(kw_only=True)
class RegistrationTiming:
    groom_interval: float = _timing(5.0, "Seconds between membership maintenance passes.")
    startup_grace: float = _timing(
        0.0,
        "Seconds after start during which the node reports ready before it has joined the mesh.",
        (
            "For a first node whose bootstrap URL is a load balancer that only routes to ready pods. "
            "0 (the default) turns the grace period off.",
        ),
        min=0.0,
    )
    bootstrap_retry_interval: float = _timing(
        15.0,
        "Longest wait between bootstrap passes of a group that has not joined: the first retry comes after"
        " 0.5 s, doubling up to this, times a random 0.5-1 (and never before the URL's own backoff allows).",
    )
    local: LocalRegistrationTiming = subgroup(LocalRegistrationTiming)
    mesh: MeshRegistrationTiming = subgroup(MeshRegistrationTiming)


@group("Packet queue timing towards local-subnet peers.")
@frozen(kw_only=True)
class LocalNetworkTiming:
    packet_expiration: float = _timing(0.1, "Maximum seconds a packet waits in a send queue.", min=0.01)


@group("Packet queue timing towards all other peers.")
@frozen(kw_only=True)
class MeshNetworkTiming:
    packet_expiration: float = _timing(0.1, "Maximum seconds a packet waits in a send queue.", min=0.01)


@group("Packet queue timing.")
@frozen(kw_only=True)
class NetworkTiming:
    local: LocalNetworkTiming = subgroup(LocalNetworkTiming)
    mesh: MeshNetworkTiming = subgroup(MeshNetworkTiming)


@group("TUN device handler timing.")
@frozen(kw_only=True)
class TunHandlerTiming:
    heartbeat_interval: float = _timing(1.0, "Seconds between TUN handler health heartbeats.")
    fault_delay: float = _timing(1.0, "Seconds to wait before reopening the TUN device after a failure.")


@group("Timing settings.")
@frozen(kw_only=True)
class ProcessTiming:
    request_timeout: float = _timing(1.0, "Seconds before a request to a peer times out.")
    auth: AuthTiming = subgroup(AuthTiming)
    registrations: RegistrationTiming = subgroup(RegistrationTiming)
    network: NetworkTiming = subgroup(NetworkTiming)
    tun_handler: TunHandlerTiming = subgroup(TunHandlerTiming)


def _socket_path_problem(text: str) -> str | None:
    if text and not text.startswith("/"):
        return "must be an absolute path (or empty for no admin socket)"
    if text.endswith("/"):
        return "must name a file, not a directory"
    return None


@group("Process settings.")
@frozen(kw_only=True)
class Process:
    uid: int = option(
        UInt(max=0xFFFFFFFE),
        "Non-root user ID the node switches to after opening the TUN device.",
        ("Must not be 0.",),
        required=True,
    )
    gid: int | None = option(
        UInt(max=0xFFFFFFFE),
        "Group ID the node switches to (new in tunmesh).",
        ("Must not be 0. Supplementary groups are always dropped.",),
    )
    admin_socket: str = option(
        String(max_length=107, check=_socket_path_problem),
        "UNIX socket of the local admin endpoint (`tunmesh status`, `tunmesh reload`); empty: none.",
        (
            "Created at start (as root, before the privilege drop) owned by process.uid/gid with mode 0600; its",
            "directory is created (mode 0755) when missing. Needs no cluster secret: access to the file is the",
            "permission (docs/security.md). With readOnlyRootFilesystem, mount an emptyDir on its directory.",
            "Nodes sharing a filesystem (several on one host) need one path each.",
        ),
        default="/run/tunmesh/admin.sock",
    )
    ipc: Ipc = subgroup(Ipc)
    timing: ProcessTiming = subgroup(ProcessTiming)


# ---------------------------------------------------------------------------------------------------- root


@group("tunmesh configuration.", ("All settings live under the top-level tun_mesh key.",))
@frozen(kw_only=True)
class TunMeshConfig:
    config_version: str = option(Version(), "Config format version.", ("Must be 1.1.",), required=True)
    clustering: Clustering = subgroup(Clustering)
    control_api: ControlApi = subgroup(ControlApi)
    logging: Logging = subgroup(Logging)
    monitoring: Monitoring = subgroup(Monitoring)
    networking: Networking = subgroup(Networking)
    process: Process = subgroup(Process)


ROOT_KEY = "tun_mesh"

__all__ = [
    "ADVERTISE_URL_ENV",
    "NODE_ADDRESS_ENV",
    "NODE_ADDRESS6_ENV",
    "NODE_INDEX_ENV",
    "ROOT_KEY",
    "SECRET_ENV",
    "Auth",
    "AuthTiming",
    "BootstrapGroup",
    "ClusterSecret",
    "Clustering",
    "ClusteringLimits",
    "ControlApi",
    "ControlApiLimits",
    "Ipc",
    "IpcGroup",
    "Ipv4",
    "Ipv6",
    "Logging",
    "Monitoring",
    "Networking",
    "Process",
    "ProcessTiming",
    "Prometheus",
    "RegistrationTiming",
    "Ssl",
    "TunMeshConfig",
]
