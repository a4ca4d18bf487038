"""In-memory mesh harness for the mesh tests: nodes behind a fake network map, no sockets.

Every node has its own `Membership`, `MeshAPI` mounted on a real `ControlAPI`, and a `MeshClient`
whose HTTP client is `tunmesh.testing.FakeNetwork`: a `treq.testing.StubTreq` over a resource that dispatches
on the request's Host header to the node (or "load balancer") registered for that URL. All nodes share one
`task.Clock` (reactor time, JWT time and the monotonic clock). :class:`MeshTestCase` starts such nodes;
:class:`RouteTestCase` posts raw requests to node 1's routes (as an outsider holding the secret), with bodies
from :func:`info` and :func:`reg_body`. This module holds no tests.
"""

from __future__ import annotations

import ipaddress
import json
import random
import uuid
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tunmesh.api.app import ControlAPI
from tunmesh.auth.cluster import ClusterAuthority, ClusterKeyring
from tunmesh.auth.sessions import SessionStore
from tunmesh.auth.tokens import TYP_BOOTSTRAP
from tunmesh.health import HealthRegistry
from tunmesh.mesh.addressing import AddressClaimer, AddressSeed
from tunmesh.mesh.api import MeshAPI
from tunmesh.mesh.client import MeshClient
from tunmesh.mesh.exchange import REGISTER_PATH
from tunmesh.mesh.membership import Membership
from tunmesh.mesh.service import MeshService
from tunmesh.mesh.settings import BootstrapGroupSpec, MeshSettings, PeerTiming
from tunmesh.metrics import Metrics
from tunmesh.node import NodeIdentity
from tunmesh.testing import FakeNetwork, RecordingObserver

SECRET = "k3y-for-tests-0123456789abcdefghijklmnopqrstuvwxyz"
NETWORK = ipaddress.ip_network("100.64.0.0/16")


def node_id(n: int) -> str:
    return str(uuid.UUID(int=n))


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
        self.client = MeshClient(net, clock, timeout=self.settings.request_timeout, metrics=self.metrics)
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
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]

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


# -- registration bodies and raw requests -----------------------------------------------------------


def info(n: int, address: str | None = None, url: str | None = None) -> dict:
    return {
        "id": node_id(n),
        "listen_url": url or f"https://n{n}.test:4567",
        "network_addresses": {"ipv4": {"cidr": "100.64.0.0/16"}},
        "node_addresses": {"ipv4": {"cidr": address or f"100.64.1.{n}/24"}},
    }


def reg_body(local: dict, remote: list | None = None, stamp: int = 1, seq: int | None = 1, **extra: object) -> bytes:
    value: dict = {"local": local, "remote": remote or [], "stamp": stamp}
    if seq is not None:
        value["seq"] = seq
    value.update(extra)
    return json.dumps(value).encode()


class RouteTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.net = FakeNetwork()
        self.n1 = Node(self.net, self.clock, 1)
        self.n2 = Node(self.net, self.clock, 2, (N1,))
        for n in (self.n1, self.n2):
            n.start()
            self.addCleanup(n.stop)
        advance(self.clock, 3)
        self.assertIn(self.n2.id, self.n1.peer_ids())
        # an outsider holding the cluster secret, as node 7 (not on the network)
        self.stranger = ClusterAuthority(SECRET, node_id(7), self.clock)

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        auth: str | None = None,
        content_type: bytes | None = b"application/json",
        url: str = N1,
    ) -> tuple[Any, bytes]:
        headers: dict[bytes, list[bytes]] = {}
        if auth is not None:
            headers[b"Authorization"] = [auth.encode()]
        if content_type is not None:
            headers[b"Content-Type"] = [content_type]
        response = self.successResultOf(self.net.stub.request(method, url + path, headers=headers, data=body))
        content = self.successResultOf(self.net.stub.content(response))
        return response, content

    def register_as_stranger(self, body: bytes, typ: str | None = None, n: int = 7) -> tuple[Any, bytes, Any]:
        authority = self.stranger if n == 7 else ClusterAuthority(SECRET, node_id(n), self.clock)
        if typ == TYP_BOOTSTRAP:
            signed = authority.sign_request("bootstrap", "POST", REGISTER_PATH, body, typ=TYP_BOOTSTRAP)
        else:
            signed = authority.sign_request(self.n1.id, "POST", REGISTER_PATH, body)
        response, content = self.request("POST", REGISTER_PATH, body, signed.header_value)
        return response, content, signed

    def failures(self, reason: str | None = None) -> float:
        if reason is None:
            return self.n1.counter("tunmesh_auth_failures_total")
        return self.n1.counter("tunmesh_auth_failures_total", reason=reason)
