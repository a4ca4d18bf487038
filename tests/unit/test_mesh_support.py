"""In-memory mesh harness for the mesh tests: nodes behind a fake network map, no sockets.

Every node has its own `Membership`, `MeshAPI` mounted on a real `ControlAPI`, and a `MeshClient`
whose HTTP client is `FakeNetwork`: a `treq.testing.StubTreq` over a resource that dispatches on the
request's Host header to the node (or "load balancer") registered for that URL. All nodes share one
`task.Clock` (reactor time, JWT time and the monotonic clock). This module holds no tests.
"""

from __future__ import annotations

import ipaddress
import itertools
import random
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from tunmesh.api.app import ControlAPI
from tunmesh.auth.cluster import ClusterAuthority, ClusterKeyring
from tunmesh.auth.sessions import SessionStore
from tunmesh.health import HealthRegistry
from tunmesh.mesh.addressing import AddressClaimer, AddressSeed
from tunmesh.mesh.api import MeshAPI
from tunmesh.mesh.client import MeshClient
from tunmesh.mesh.membership import Membership
from tunmesh.mesh.service import MeshService
from tunmesh.mesh.settings import BootstrapGroupSpec, MeshSettings, PeerTiming
from tunmesh.mesh.structs import IPNetwork
from tunmesh.metrics import Metrics
from tunmesh.node import NodeIdentity

SECRET = "k3y-for-tests-0123456789abcdefghijklmnopqrstuvwxyz"
NETWORK = ipaddress.ip_network("100.64.0.0/16")


def node_id(n: int) -> str:
    return str(uuid.UUID(int=n))


def host_key(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 443}"


class _Dispatch(Resource):
    """Leaf resource: hand the whole request to the resource behind its Host header."""

    isLeaf = True

    def __init__(self, net: FakeNetwork) -> None:
        super().__init__()
        self._net = net

    def render(self, request: Any) -> Any:
        host = request.getHeader(b"host").decode("ascii")
        if ":" not in host:
            host += ":443"
        target = self._net.resolve(host)
        self._net.log.append((host, request.method, request.path))
        request.postpath = list(request.prepath) + list(request.postpath)
        request.prepath = []
        return target.render(request)


class FakeNetwork:
    """URL host:port -> resource; `down` hosts refuse connections, `hang` hosts never answer."""

    def __init__(self) -> None:
        self._targets: dict[str, Any] = {}
        self.down: set[str] = set()
        self.hang: set[str] = set()
        self.hanging: list[Deferred[Any]] = []
        self.log: list[tuple[str, bytes, bytes]] = []
        self._stub = StubTreq(_Dispatch(self))

    def add(self, url: str, resource: Any) -> None:
        self._targets[host_key(url)] = resource

    def add_balancer(self, url: str, urls: Sequence[str]) -> None:
        """A load balancer that alternates between the resources registered for `urls`."""
        cycle = itertools.cycle([host_key(u) for u in urls])
        self._targets[host_key(url)] = lambda: self._targets[next(cycle)]

    def resolve(self, host: str) -> Any:
        target = self._targets[host]
        return target() if callable(target) and not hasattr(target, "render") else target

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        key = host_key(url)
        if key in self.down or key not in self._targets:
            return fail(ConnectionRefusedError(key))
        if key in self.hang:
            d: Deferred[Any] = Deferred()
            self.hanging.append(d)
            return d
        return self._stub.request(method, url, **kwargs)

    def collect(self, response: Any, collector: Any) -> Deferred[None]:
        return self._stub.collect(response, collector)

    # direct access for tests that post raw requests
    @property
    def stub(self) -> StubTreq:
        return self._stub


class RecordingObserver:
    """Records peer_up/peer_down and keeps the current routes, like the data plane would."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.routes: dict[str, tuple[IPNetwork, ...]] = {}

    def peer_up(self, peer_id: str, url: str, cidrs: Sequence[IPNetwork]) -> None:
        self.events.append(("up", peer_id))
        self.routes[peer_id] = tuple(cidrs)

    def peer_down(self, peer_id: str) -> None:
        self.events.append(("down", peer_id))
        self.routes.pop(peer_id, None)


def make_settings(url: str, address: str, bootstrap: Sequence[str] = (), **overrides: Any) -> MeshSettings:
    values: dict[str, Any] = dict(
        advertise_url=url,
        network_cidrs={"ipv4": NETWORK},
        node_addresses={"ipv4": ipaddress.ip_interface(address)},
        bootstrap_groups=(BootstrapGroupSpec("default", tuple(bootstrap)),) if bootstrap else (),
        groom_interval=5.0,
        bootstrap_retry_interval=5.0,
        local_timing=PeerTiming(10.0, 30.0),
        mesh_timing=PeerTiming(30.0, 120.0),
        request_timeout=2.0,
    )
    values.update(overrides)
    return MeshSettings(**values)


class Node:
    """One in-memory node: membership + routes + service, registered on the fake network."""

    def __init__(
        self,
        net: FakeNetwork,
        clock: Clock,
        n: int,
        bootstrap: Sequence[str] = (),
        *,
        ident: str | None = None,
        url: str | None = None,
        address: str | None = None,
        session_max_age: float = 3600.0,
        secret: str | ClusterKeyring = SECRET,
        reload: Any = None,
        wall: Any = None,
        seed: AddressSeed | None = None,
        settle: float = 15.0,
        **overrides: Any,
    ) -> None:
        self.net = net
        self.clock = clock
        #: the wall clock tokens and stamps use; by default the same ``Clock`` as the timers
        self.wall = wall if wall is not None else clock
        self.id = ident or node_id(n)
        self.url = url or f"https://n{n}.test:4567"
        self.address = address or f"100.64.1.{n}/24"
        if seed is not None:
            overrides.setdefault("node_addresses", {})
        self.settings = make_settings(self.url, self.address, bootstrap, **overrides)
        #: dynamic addressing (docs/addressing.md) when a seed is given; every address it moved to
        self.addressing: AddressClaimer | None = None
        self.moves: list[str] = []
        if seed is not None:
            self.addressing = AddressClaimer(
                self.id,
                self.settings.network_cidrs,
                self.settings.node_addresses,
                seed,
                wall=self.wall.seconds,
                monotonic=clock.seconds,
                settle=settle,
            )
            self.addressing.add_observer(lambda a: self.moves.append(str(a["ipv4"].ip)))
        self.metrics = Metrics(self.id, process_metrics=False)
        self.cluster = ClusterAuthority(secret, self.id, self.wall)
        self.sessions = SessionStore(
            self.id, self.wall, monotonic=clock.seconds, max_age=session_max_age, rng=random.Random(n)
        )
        self.client = MeshClient(net, clock, timeout=self.settings.request_timeout)
        self.membership = Membership(
            self.settings,
            self.id,
            self.cluster,
            self.sessions,
            self.client,
            clock,
            self.metrics,
            monotonic=clock.seconds,
            wall=self.wall.seconds,
            rng=random.Random(100 + n),
            reload=reload,
            addressing=self.addressing,
        )
        self.observer = RecordingObserver()
        self.membership.add_observer(self.observer)
        self.api = MeshAPI(self.membership)
        self.health = HealthRegistry(clock)
        identity = NodeIdentity(node_id=self.id, advertise_url=self.url, started_at=0, started_monotonic=0)
        self.control = ControlAPI(identity, self.health, self.metrics, False)
        self.api.mount_on(self.control)
        self.resource = self.control.resource()
        net.add(self.url, self.resource)
        self.service = MeshService(self.membership, clock)
        self.service.register_health(self.health)

    def current_address(self) -> str:
        """This node's IPv4 overlay address as it registers it."""
        return str(self.membership.local.node_addresses["ipv4"].ip)

    def ready(self) -> bool:
        return all(self.health.readiness().values())

    @property
    def pool(self) -> Any:
        return self.membership.pool

    def peer_ids(self) -> set[str]:
        return {p.id for p in self.pool}

    def start(self) -> None:
        self.service.startService()

    def stop(self) -> Any:
        return self.service.stopService()

    def crash(self) -> None:
        """Stop without telling the peers, as a killed process does."""
        self.membership.leave = lambda timeout=0.0: succeed(0)  # type: ignore[method-assign]
        self.service.stopService()

    def counter(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        for family in self.metrics.collector_registry().collect():
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += float(sample.value)
        return total


class SteppedWall:
    """A node's wall clock: the timers' ``Clock`` plus the steps its host made (NTP, VM resume)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.offset = 0.0

    def seconds(self) -> float:
        return self.clock.seconds() + self.offset

    def step(self, seconds: float) -> None:
        self.offset += seconds


def advance(clock: Clock, seconds: float, step: float = 1.0) -> None:
    """Advance in small steps so every timer (groom ticks, callLater(0)) runs in order."""
    elapsed = 0.0
    while elapsed < seconds:
        clock.advance(0)
        clock.advance(step)
        elapsed += step
    clock.advance(0)


N1 = "https://n1.test:4567"
START = 1_700_000_000.0


class MeshTestCase(SynchronousTestCase):
    """In-memory nodes on one ``FakeNetwork`` and ``Clock`` (at ``START``), with the log events captured."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.net = FakeNetwork()
        self.nodes: list[Node] = []
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def node(self, n: int, bootstrap: tuple[str, ...] = (N1,), **kw: object) -> Node:
        node = Node(self.net, self.clock, n, bootstrap, **kw)  # type: ignore[arg-type]
        self.nodes.append(node)
        self.addCleanup(node.stop)
        return node

    def mesh(self, count: int) -> list[Node]:
        nodes = [self.node(1, ())] + [self.node(i) for i in range(2, count + 1)]
        for n in nodes:
            n.start()
        advance(self.clock, 12)
        return nodes

    def assertFullMesh(self, nodes: list[Node]) -> None:
        ids = {n.id for n in nodes}
        for n in nodes:
            self.assertEqual(n.peer_ids(), ids - {n.id}, f"pool of {n.id}")
            for other in nodes:
                if other is not n:
                    self.assertIsNotNone(n.sessions.outbound(other.id), f"{n.id} -> {other.id}")
                    self.assertEqual(
                        n.observer.routes[other.id], (ipaddress.ip_network(other.address.split("/")[0] + "/32"),)
                    )

    def logged(self, fragment: str) -> list[dict]:
        return [e for e in self.events if fragment in str(e.get("log_format", ""))]
