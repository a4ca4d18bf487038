"""One tunmesh node as a ``MultiService``: the table of contents of the program.

Order matters. twistd calls ``privilegedStartService`` on every child, in order, while the process is
still root, then ``startService`` (``tests/unit/test_tap.py`` checks the names and the order):

- ``clockwatch``: wall-clock step detection (``tunmesh.clockwatch``);
- ``tun``: the TUN device (opened and addressed in ``makeService``, as root, before anything else; with
  dynamic addressing the address helper is started next to it, docs/addressing.md);
- ``cert_expiry``: the expiry gauge and warnings of our certificate and the trust anchors;
- ``api``: the one TLS port: HTTP API (health, ready, metrics, node_info, /tunmesh/), the channel-bound
  control HTTP and, selected by ALPN on the same port, the packet links; bound in
  ``privilegedStartService``;
- ``mesh``: membership: bootstrap, registrations, gossip, grooming, session setup and rotation;
- ``dataplane``: TUN <-> router <-> peer links (one link service per peer);
- ``reload``: SIGHUP: re-read the TLS files, bootstrap groups and log level (``tunmesh.reload``);
- ``admin``: the local admin socket (``process.admin_socket``: ``tunmesh status``/``reload``), bound in
  ``privilegedStartService`` and given to ``process.uid``;
- ``privileges``: the drop to ``process.uid`` (last, after the device and the port are open), then a
  self-check as that uid: the node works or exits with one line naming the cause.

Before any of them, ``makeService`` runs the preflight (``tunmesh.preflight``: the checks of ``tunmesh
check-config``, same lines), so a refused config exits before the TUN device exists.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application import internet
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.python import usage

from tunmesh import __version__, logsetup
from tunmesh.admin.protocol import AdminFactory
from tunmesh.admin.service import AdminSocketService
from tunmesh.admin.status import StatusReporter
from tunmesh.api.app import ControlAPI
from tunmesh.api.server import HardenedSite, RouteLimits, SourceRateLimiter, make_server_factory, make_site
from tunmesh.clocks import use_monotonic_timers
from tunmesh.clockwatch import ClockStepWatch
from tunmesh.config import load_config, resolve_config_path
from tunmesh.config.tree import Networking, TunMeshConfig
from tunmesh.dataplane import DataPlane, Router, RouteTable, TLSLinkConnector
from tunmesh.dataplane.datagram import DatagramEndpoint, DatagramMetrics, DatagramService
from tunmesh.dataplane.settings import DataPlaneSettings
from tunmesh.health import HealthRegistry
from tunmesh.interfaces import PacketDevice
from tunmesh.metrics import Metrics, PeerInfo
from tunmesh.node import NodeIdentity
from tunmesh.preflight import PreflightFailed, error_line, load_checked, require_files, warning_line
from tunmesh.preload import preload
from tunmesh.privileges import PrivilegeDropService
from tunmesh.reload import NodeReloader, ReloadOnSignal, ReloadReport
from tunmesh.selfcheck import node_self_check
from tunmesh.tls.binding import CTL_ALPN, ChannelProofFactory, ProofSigner
from tunmesh.tls.certs import load_certificates
from tunmesh.tls.contexts import (
    CA_FILE_KEY,
    CERT_FILE_KEY,
    MeshTLSPolicy,
    ReloadableServerTLS,
    TLSConfigError,
    server_context,
)
from tunmesh.tls.expiry import CertExpiryWatch
from tunmesh.tun.addrhelper import AddressSetter

if TYPE_CHECKING:
    from tunmesh.mesh.addressing import AddressClaimer
    from tunmesh.mesh.membership import Membership
    from tunmesh.mesh.settings import BootstrapGroupSpec
    from tunmesh.mesh.structs import IPInterface, IPNetwork
    from tunmesh.tun.service import TunService

LINK_ALPN = b"tunmesh-link/1"

log = Logger(namespace="tunmesh.service")


class StartupError(Exception):
    """The node cannot start; ``str()`` is one line naming the config key involved."""


class ConfigRefused(usage.UsageError):
    """The config did not load or lint (preflight phase 1): twistd's way of refusing its options.

    ``problems`` are the one-line errors (``tunmesh: config error: <key path>: ...``); ``str()`` puts them
    on lines of their own after a heading, because twistd prints ``<command line>: <message>`` after its
    usage text. ``tunmesh run`` prints only the problem lines (:func:`tunmesh.tap.run`).
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("the config was refused:\n" + "\n".join(problems))
        self.problems = problems


def load_checked_config(path_option: str | None) -> tuple[TunMeshConfig, Path]:
    """Load and lint the config for twistd (preflight phase 1): warnings go to stderr, one line each;
    problems raise :class:`ConfigRefused`."""
    path = resolve_config_path(path_option, os.environ)
    report = load_checked(path, os.environ)
    for w in report.warnings:
        print(warning_line(w), file=sys.stderr)
    if report.config is None:
        raise ConfigRefused([error_line(e) for e in report.errors])
    return report.config, path


def _fail(message: str) -> SystemExit:
    print(f"tunmesh: startup error: {message}", file=sys.stderr)
    return SystemExit(1)


def makeService(  # noqa: N802
    cfg: TunMeshConfig,
    reactor: Any = None,
    open_tun: Callable[[Networking], PacketDevice] | None = None,
    config_path: Path | None = None,
    address_setter: AddressSetter | None = None,
) -> MultiService:
    """Build the node. ``open_tun(networking)`` defaults to the real TUN device (needs root);
    ``config_path`` is re-read before bootstrap passes when ``reload_config_on_bootstrap`` is set;
    ``address_setter`` (an ``AddressSetter``) moves the TUN address under dynamic addressing: by default
    the address helper for the real device, nothing for an injected ``open_tun``."""
    try:
        return _make_service(cfg, reactor, open_tun, config_path, address_setter)
    except PreflightFailed as e:
        for line in e.report.lines():
            print(line, file=sys.stderr)
        raise SystemExit(1) from None
    except (StartupError, TLSConfigError) as e:
        raise _fail(str(e)) from None


def _preflight(cfg: TunMeshConfig, config_path: Path | None) -> None:
    """Preflight phase 2 (``tunmesh.preflight``), the checks ``tunmesh check-config`` runs too: raises
    ``PreflightFailed``; warnings are printed like check-config prints them, and logged."""
    for warning in require_files(cfg, config_path).warnings:
        print(warning_line(warning), file=sys.stderr)
        log.warn("config warning: {path}: {message}", path=warning.path, message=warning.message)


def _make_service(
    cfg: TunMeshConfig,
    reactor: Any,
    open_tun: Callable[[Networking], PacketDevice] | None,
    config_path: Path | None,
    address_setter: AddressSetter | None,
) -> MultiService:
    # 0. PREFLIGHT, before anything is created (TUN, port, threads): a refused config leaves nothing behind.
    _preflight(cfg, config_path)

    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
        # Every timer of the node on the monotonic clock (issue 13, W10): before anything schedules one.
        use_monotonic_timers(reactor)

    from tunmesh.mesh.client import MeshClient
    from tunmesh.mesh.service import build_mesh
    from tunmesh.mesh.settings import MeshSettings

    identity = NodeIdentity.generate(cfg.clustering.control_api_advertise_url)
    metrics = build_metrics(cfg, identity)
    health = HealthRegistry()
    top = MultiService()
    # Wall-clock steps are detected and logged; they cannot move timers, which are monotonic (W10).
    clock_watch = ClockStepWatch(reactor, metrics)
    clock_watch.setServiceParent(top)
    # Timers pending on the reactor, read at scrape time: flat at rest, back to its level after churn.
    metrics.gauge(
        "reactor_delayed_calls", "Timers (callLater) pending on the reactor; a count that keeps growing is a leak."
    ).set_function(lambda: len(reactor.getDelayedCalls()))

    # 0. Our overlay addresses: configured, or claimed dynamically (docs/addressing.md).
    # The TUN and the router get the current addresses; membership keeps the config (it tells claimed
    # families from configured ones).
    addressing = build_addressing(cfg, identity.node_id)
    local_cfg = cfg
    if addressing is not None:
        local_cfg = attrs.evolve(cfg, networking=networking_with(cfg.networking, addressing.addresses()))

    # 1. TUN, opened now: we are root, and the data plane needs to know whether offload is active.
    tun_service = build_tun(local_cfg.networking, health, open_tun)
    tun_service.setServiceParent(top)
    device = tun_service.device
    assert device is not None  # opened by build_tun
    if addressing is not None and address_setter is None and open_tun is None:
        address_setter = spawn_address_helper(cfg, addressing)

    # 2. TLS material, read as root (the key may be readable by root only).
    tls = build_tls(cfg, metrics, reactor)
    tls.expiry.setServiceParent(top)
    mesh_settings = MeshSettings.from_config(cfg)
    http_client = MeshClient.with_tls(
        reactor,
        tls.http_policy,
        timeout=mesh_settings.request_timeout,
        metrics=metrics,
        # a control connection's handshake and proof get the registration deadline (a busy peer, not a dead one)
        handshake_timeout=mesh_settings.registration_timeout,
    )

    # 3. Membership and sessions.
    membership, mesh_api, mesh_service = build_mesh(
        cfg,
        identity.node_id,
        reactor,
        metrics,
        http_client,
        reload=reloader(cfg, config_path),
        monotonic=time.monotonic,
        addressing=addressing,
        settings=mesh_settings,
    )
    mesh_service.register_health(health)
    http_client.verify_channel_with(membership.cluster.verify_channel_proof)
    clock_watch.add_observer(membership.clock_stepped)
    # The node's name (clustering.node_name resolved) labels tunmesh_node_info with its id and URL.
    metrics.set_node_info(node_name=membership.local.name or "", advertise_url=identity.advertise_url)

    # 4. Data plane, fed by membership's authenticated peers.
    dataplane = build_dataplane(
        DataPlaneSettings.from_config(local_cfg), identity.node_id, device, membership, reactor, metrics, tls.link_policy
    )
    membership.add_observer(dataplane)
    dataplane.name_of = lambda peer_id: _peer_name(membership, peer_id)
    membership.link_age = dataplane.link_age
    # tunmesh_peer_info: one series per peer in the pool (bounded by max_nodes), gone with the peer.
    membership.add_observer(
        PeerInfo(metrics, max_peers=int(cfg.clustering.limits.max_nodes), name_of=dataplane.name_of)
    )
    if addressing is not None:
        follower = AddressFollower(dataplane.router, address_setter, addressing)
        follower.register_health(health)
        follower.setServiceParent(top)

    # 5. The one port: the HTTP API and, by ALPN, the packet links.
    api = ControlAPI(identity, health, metrics, cfg.monitoring.method == "prometheus")
    mesh_api.mount_on(api)
    limits = RouteLimits()
    mesh_api.register_limits(limits)
    site, port = build_api_port(
        cfg, api, limits, tls.server, dataplane.server_factory, membership.cluster.sign_channel_proof, reactor, metrics
    )
    port.setServiceParent(top)
    if dataplane.datagrams is not None:
        # The datagram path's UDP socket, on the same port number (binds in privilegedStartService too).
        DatagramService(
            dataplane.datagrams, cfg.control_api.listen_port, cfg.control_api.listen_address, reactor
        ).setServiceParent(top)
    health.add_liveness("api", lambda: bool(port.running))
    health.add_readiness("api", lambda: bool(port.running))

    mesh_service.setServiceParent(top)
    dataplane.setServiceParent(top)

    # SIGHUP: TLS files, trust, bootstrap groups and log level, without dropping a link (tunmesh.reload).
    node_reloader = NodeReloader(
        config_path,
        cfg,
        server_tls=tls.server,
        make_server_tls=make_server_tls,
        client_policies=(tls.http_policy, tls.link_policy),
        groups=membership,
        set_log_level=logsetup.set_level,
        certificates=tls.expiry,
        secrets=membership,
    )
    ReloadOnSignal(node_reloader, reactor).setServiceParent(top)

    # The local admin socket (`tunmesh status`, `tunmesh reload`): bound as root, owned by process.uid.
    admin = build_admin(cfg, identity, membership, dataplane, health, node_reloader, reactor)
    if admin is not None:
        admin.setServiceParent(top)

    # 6. Drop root last; then the node serves a few requests in memory as the new uid, or exits.
    self_check = node_self_check(site, cfg, config_path)
    PrivilegeDropService(cfg.process.uid, cfg.process.gid, preload=preload, self_check=self_check).setServiceParent(top)
    health.export(metrics)  # every check is registered by now

    log.info(
        "tunmesh {version} node {node_name} ({node_id}) advertising {url}",
        version=__version__,
        node_id=identity.node_id,
        node_name=membership.local.name,
        url=identity.advertise_url,
    )
    return top


def build_metrics(cfg: TunMeshConfig, identity: NodeIdentity) -> Metrics:
    """The node's metrics, labelled with ``monitoring.prometheus.base_labels`` (off unless ``prometheus``)."""
    monitoring = cfg.monitoring
    return Metrics(
        identity.node_id,
        dict(monitoring.prometheus.base_labels) if monitoring.prometheus is not None else {},
        enabled=monitoring.method == "prometheus",
        advertise_url=identity.advertise_url,
    )


def build_tun(
    networking: Networking, health: HealthRegistry, open_tun: Callable[[Networking], PacketDevice] | None
) -> TunService:
    """The TUN service with its device already open (as root; ``open_tun`` defaults to the real device)."""
    from tunmesh.tun.service import TunService

    tun_service = TunService(networking, health, **({"open_device": open_tun} if open_tun else {}))
    try:
        tun_service.privilegedStartService()
    except OSError as e:
        raise StartupError(f"tun_mesh/networking/tun_device_id: cannot open the TUN device: {e}") from None
    return tun_service


def spawn_address_helper(cfg: TunMeshConfig, addressing: AddressClaimer) -> AddressSetter:
    """The root helper that moves the real TUN's address later (dynamic addressing): moving it needs
    CAP_NET_ADMIN, which the node itself drops (docs/security.md)."""
    from tunmesh.tun.addrhelper import AddressChangeError, AddressHelper

    try:
        return AddressHelper.spawn(
            cfg.networking.tun_device_id, list(addressing.networks.values()), cfg.process.uid, cfg.process.gid
        )
    except AddressChangeError as e:
        raise StartupError(f"tun_mesh/networking: dynamic addressing: {e}") from None


@attrs.frozen
class NodeTLS:
    """The node's TLS, read once at start (as root) and replaced in place by a SIGHUP reload."""

    #: the port's certificate and key (ALPN: packet links, HTTP/1.1)
    server: ReloadableServerTLS
    #: client side of control requests to peers
    http_policy: MeshTLSPolicy
    #: client side of the packet links (ALPN ``tunmesh-link/1``)
    link_policy: MeshTLSPolicy
    #: the expiry metrics of our certificate and the trust anchors
    expiry: CertExpiryWatch


def build_tls(cfg: TunMeshConfig, metrics: Metrics, reactor: IReactorTime) -> NodeTLS:
    """Read ``control_api.ssl``: our certificate and key, the trust anchors (``ca_file_path``, else our
    own certificate) for both client policies, and the expiry watch of both."""
    ssl_cfg = cfg.control_api.ssl
    trust_path = ssl_cfg.ca_file_path or ssl_cfg.cert_file_path
    server_tls = ReloadableServerTLS(make_server_tls(ssl_cfg.cert_file_path, ssl_cfg.key_file_path))
    trust_key = CA_FILE_KEY if ssl_cfg.ca_file_path is not None else CERT_FILE_KEY
    # Control requests between nodes: ALPN tunmesh-ctl/1 only, the server proves the session first (W5).
    http_policy = MeshTLSPolicy(trust_path, ssl_cfg.verify_hostname, alpn=(CTL_ALPN,), trust_key=trust_key)
    expiry = CertExpiryWatch(metrics, reactor)
    expiry.set_certificates(load_certificates(ssl_cfg.cert_file_path)[0], http_policy.trust)
    return NodeTLS(server_tls, http_policy, link_tls_policy(cfg, trust_path), expiry)


def build_api_port(
    cfg: TunMeshConfig,
    api: ControlAPI,
    limits: RouteLimits,
    server_tls: ReloadableServerTLS,
    link_factory: IProtocolFactory,
    sign_channel_proof: ProofSigner,
    reactor: Any,
    metrics: Metrics,
) -> tuple[HardenedSite, internet.TCPServer]:
    """The hardened site of ``api`` and the ``api`` port serving it and, by ALPN, ``link_factory``
    (packet links) and the channel-bound control HTTP (``tunmesh-ctl/1``: the session proof signed by
    ``sign_channel_proof``, then ``api``) (``control_api`` limits and listen address); the port binds in
    ``privilegedStartService``."""
    api_limits = cfg.control_api.limits
    site = make_site(
        api.resource(),
        limits,
        reactor,
        header_timeout=float(api_limits.header_timeout),
        body_timeout=float(api_limits.body_timeout),
        metrics=metrics,
        rate_limiter=SourceRateLimiter(
            reactor, rate=float(api_limits.requests_per_second), burst=int(api_limits.request_burst)
        ),
    )
    factory = make_server_factory(
        site,
        server_tls,
        {LINK_ALPN: link_factory, CTL_ALPN: ChannelProofFactory(site, sign_channel_proof, reactor)},
        reactor,
        max_per_peer=int(api_limits.max_connections_per_peer),
        max_total=int(api_limits.max_connections),
        metrics=metrics,
    )
    port = internet.TCPServer(
        cfg.control_api.listen_port, factory, interface=cfg.control_api.listen_address, reactor=reactor
    )
    port.setName("api")
    return site, port


def _peer_name(membership: Membership, peer_id: str) -> str | None:
    peer = membership.pool.get(peer_id)
    return peer.info.name if peer is not None else None


def reload_result(report: ReloadReport) -> dict[str, list[str]]:
    """A reload report as JSON-ready lists (``tunmesh reload``)."""
    return {key: list(getattr(report, key)) for key in ("changed", "refused", "restart_needed")}


def build_admin(
    cfg: TunMeshConfig,
    identity: NodeIdentity,
    membership: Membership,
    dataplane: DataPlane,
    health: HealthRegistry,
    reloader: NodeReloader,
    reactor: Any,
) -> AdminSocketService | None:
    """The admin socket service answering ``status`` and ``reload`` (None when ``admin_socket`` is empty)."""
    if not cfg.process.admin_socket:
        return None
    reporter = StatusReporter(
        node_id=identity.node_id,
        name=membership.local.name or "",
        version=__version__,
        advertise_url=identity.advertise_url,
        addresses=lambda: {family: str(addr) for family, addr in membership.local.node_addresses.items()},
        started=identity.started_monotonic,
        membership=membership,
        links=dataplane,
        health=health,
    )
    handlers = {"status": reporter.status, "reload": lambda: reload_result(reloader.reload())}
    factory = AdminFactory(handlers, reactor, allowed_uids={0, cfg.process.uid})
    return AdminSocketService(Path(cfg.process.admin_socket), factory, reactor, cfg.process.uid, cfg.process.gid)


def build_dataplane(
    settings: DataPlaneSettings,
    node_id: str,
    device: PacketDevice,
    membership: Membership,
    reactor: Any,
    metrics: Metrics,
    link_policy: MeshTLSPolicy,
) -> DataPlane:
    """TUN <-> router <-> one TLS link per peer (ALPN ``tunmesh-link/1`` on the peers' API ports)."""
    from tunmesh.dataplane.peerstats import PeerPacketMetrics
    from tunmesh.logutil import RateLimitedLog

    router = Router(
        settings.ipv4_address,
        settings.ipv6_address,
        settings.ipv4_network,
        settings.ipv6_network,
        RouteTable(),
        metrics,
        enable_broadcast=settings.enable_broadcast,
        mtu=settings.mtu,
        rate_limited_log=RateLimitedLog(Logger(namespace="tunmesh.dataplane"), reactor),
        vnet_hdr=device.offload_active,
    )

    def context_for(hostname: str) -> IOpenSSLClientConnectionCreator:
        return link_policy.creatorForNetloc(hostname.encode("idna"), 0)

    return DataPlane(
        node_id,
        device,
        router,
        membership.sessions,
        membership.session_auth,
        TLSLinkConnector(reactor, context_for, timeout=settings.link_connect_timeout),
        reactor,
        metrics,
        packet_expiration=settings.packet_expiration,
        max_read_batch=settings.max_read_batch,
        peer_metrics=(
            PeerPacketMetrics(metrics, reactor, settings.peer_metrics_ttl)
            if settings.peer_metrics_ttl is not None
            else None
        ),
        datagrams=DatagramEndpoint(DatagramMetrics(metrics)) if settings.datagrams else None,
        poll_window=settings.poll_window,
    )


def link_tls_policy(cfg: TunMeshConfig, trust_path: Path) -> MeshTLSPolicy:
    """Client TLS of the packet links (ALPN ``tunmesh-link/1``).

    The trust bundle is read once, now, as root: link connections are made after the privilege drop
    (a SIGHUP reload replaces it, read as ``process.uid``)."""
    ssl_cfg = cfg.control_api.ssl
    trust_key = CA_FILE_KEY if ssl_cfg.ca_file_path is not None else CERT_FILE_KEY
    return MeshTLSPolicy(trust_path, ssl_cfg.verify_hostname, alpn=(LINK_ALPN,), trust_key=trust_key)


def make_server_tls(cert_path: Path, key_path: Path) -> IOpenSSLServerConnectionCreator:
    """The port's TLS: the certificate and key, offering the packet links, channel-bound control
    HTTP and plain HTTP/1.1 (probes, metrics, curl) by ALPN."""
    return server_context(cert_path, key_path, alpn=(LINK_ALPN, CTL_ALPN, b"http/1.1"))


def build_addressing(cfg: TunMeshConfig, node_id: str) -> AddressClaimer | None:
    """An ``AddressClaimer`` when a family has no configured address (docs/addressing.md), else ``None``."""
    from tunmesh.mesh.addressing import AddressClaimer, address_seed

    net = cfg.networking
    networks: dict[str, IPNetwork] = {"ipv4": net.ipv4.network_cidr}
    explicit: dict[str, IPInterface] = {}
    if net.ipv4.node_address_cidr is not None:
        explicit["ipv4"] = net.ipv4.node_address_cidr
    if net.ipv6 is not None:
        networks["ipv6"] = net.ipv6.network_cidr
        if net.ipv6.node_address_cidr is not None:
            explicit["ipv6"] = net.ipv6.node_address_cidr
    if explicit.keys() == networks.keys():
        return None
    try:
        # Container runtimes put the pod name in $HOSTNAME; fall back to the kernel's host name.
        hostname = os.environ.get("HOSTNAME") or socket.gethostname()
        seed = address_seed(os.environ, hostname, cfg.clustering.control_api_advertise_url)
    except ValueError as e:
        raise StartupError(f"dynamic addressing: {e}") from None
    groom = float(cfg.process.timing.registrations.groom_interval)
    return AddressClaimer(node_id, networks, explicit, seed, settle=max(3 * groom, 3.0))


def networking_with(networking: Networking, addresses: Mapping[str, IPInterface]) -> Networking:
    """``cfg.networking`` with the current (claimed) node addresses filled in, for the TUN and the router."""
    ipv4_address, ipv6_address = _by_family(addresses)
    ipv4 = attrs.evolve(networking.ipv4, node_address_cidr=ipv4_address)
    ipv6 = networking.ipv6
    if ipv6 is not None:
        ipv6 = attrs.evolve(ipv6, node_address_cidr=ipv6_address)
    return attrs.evolve(networking, ipv4=ipv4, ipv6=ipv6)


def _by_family(addresses: Mapping[str, IPInterface]) -> tuple[ipaddress.IPv4Interface, ipaddress.IPv6Interface | None]:
    """The ``ipv4`` and (optional) ``ipv6`` entries of an ``AddressClaimer``'s addresses, as their types."""
    ipv4, ipv6 = addresses["ipv4"], addresses.get("ipv6")
    if not isinstance(ipv4, ipaddress.IPv4Interface) or not (ipv6 is None or isinstance(ipv6, ipaddress.IPv6Interface)):
        raise TypeError(f"addresses by family expected, got {dict(addresses)!r}")
    return ipv4, ipv6


class AddressFollower(Service):
    """Makes the router and the TUN follow a moved address (dynamic addressing, docs/addressing.md).

    ``setter`` (an ``AddressSetter``, or ``None`` when the device is not ours to change) moves the TUN
    address; a failure is logged and turns the ``tun_address`` readiness check false.
    """

    name = "addressing"  # type: ignore[assignment]
    log = Logger()

    def __init__(self, router: Router, setter: AddressSetter | None, addressing: AddressClaimer) -> None:
        self.router = router
        self.setter = setter
        self.addressing = addressing
        self.applied: dict[str, IPInterface] = dict(addressing.addresses())
        self.failed = False
        addressing.add_observer(self.follow)

    def register_health(self, health: HealthRegistry) -> None:
        health.add_readiness("tun_address", lambda: not self.failed)

    def follow(self, addresses: Mapping[str, IPInterface]) -> None:
        self.router.set_local(*_by_family(addresses))
        for family, address in addresses.items():
            if self.applied.get(family) == address:
                continue
            if self.setter is not None:
                try:
                    self.setter.set_address(address)
                except Exception as e:
                    self.failed = True
                    self.log.critical("cannot move the TUN {family} address to {address}: {error}",
                                      family=family, address=str(address), error=str(e))
                    continue
            self.applied[family] = address
            self.failed = False
            self.log.info("TUN {family} address is now {address}", family=family, address=str(address))

    def stopService(self) -> Deferred[None] | None:
        if self.setter is not None:
            self.setter.close()
        return super().stopService()


def reloader(cfg: TunMeshConfig, config_path: Path | None) -> Callable[[], tuple[BootstrapGroupSpec, ...]] | None:
    """``reload_config_on_bootstrap``: re-read the file before bootstrap passes (templated URL lists).

    A file that no longer loads raises ``ConfigError``; membership keeps the previous groups and logs it.
    """
    if not cfg.clustering.reload_config_on_bootstrap or config_path is None:
        return None
    from tunmesh.mesh.settings import MeshSettings

    def reload() -> tuple[BootstrapGroupSpec, ...]:
        return MeshSettings.from_config(load_config(config_path)).bootstrap_groups

    return reload


__all__ = ["makeService", "load_checked_config", "ConfigRefused", "reloader", "StartupError", "AddressFollower", "build_addressing"]
