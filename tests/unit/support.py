"""Helpers shared by the unit tests (no tests here); the fakes of tunmesh's seams are in
:mod:`tunmesh.testing`.

- config: a minimal valid config (:func:`minimal_data`, :data:`SAMPLE_YAML` in the original's format)
  with real files (:func:`make_files`), :func:`set_key`/:func:`del_key`, :class:`ConfigTestMixin`;
- packet builders: :func:`ipv4`, :func:`ipv6`, :func:`vnet` (a virtio header in front), :func:`addr`;
- peer links: :class:`Pair` (node A's link client to node B's server, in memory, real session stores),
  :func:`samples` (a metric's samples by peer).

The in-memory mesh harness is :mod:`tests.unit.mesh_support`, TLS helpers :mod:`tests.unit.tls_support`.
"""

from __future__ import annotations

import copy
import os
import random
import struct
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from tunmesh.auth.sessions import SessionAuthority, SessionStore
from tunmesh.config import ConfigError, load_config_data
from tunmesh.config.tree import TunMeshConfig
from tunmesh.dataplane.drops import DropCounter
from tunmesh.dataplane.link import LinkClient, LinkMetrics, LinkServerFactory
from tunmesh.metrics import Metrics
from tunmesh.testing import FakeMetrics
from tunmesh.tls.certs import write_self_signed

# -- config ----------------------------------------------------------------------------------------

SECRET = "Qx7vR2mN9pL4kT8wZ3yB6cF1hJ5dG0sAe"

# Like etc/test_config/config.1.yaml of the original (upstream-behaviour.md 1.4 "Minimal valid config").
SAMPLE_YAML = """\
---
tun_mesh:
  config_version: 1.1
  clustering:
    control_api_advertise_url: https://tunmesh1.local:4567
    bootstrap_groups:
      default:
        bootstrap_node_urls:
          - https://tunmesh2.local:4567
          - https://tunmesh3.local:4567
    auth:
      secret: SECRET_PLACEHOLDER
  control_api:
    ssl:
      cert_file_path: ssl/cert.pem
      key_file_path: ssl/key.pem
  logging:
    level: debug
  monitoring:
    method: prometheus
    prometheus:
      base_labels:
        env_name: local_test
  networking:
    ipv4:
      network_cidr: 192.168.129.0/24
      node_address_cidr: 192.168.129.10/26
  process:
    uid: 1000
""".replace("SECRET_PLACEHOLDER", SECRET)


def make_files(base: Path) -> None:
    """The cert and key files the sample refers to: a real pair, since ``check-config`` parses them."""
    (base / "ssl").mkdir(exist_ok=True)
    write_self_signed(base / "ssl" / "cert.pem", base / "ssl" / "key.pem", hostnames=("node1.example",), days=365)


def minimal_data() -> dict[str, Any]:
    """A fresh minimal valid document (paths relative to a base dir prepared by ``make_files``)."""
    return copy.deepcopy(
        {
            "tun_mesh": {
                "config_version": 1.1,
                "clustering": {
                    "control_api_advertise_url": "https://node1.example:4567",
                    "bootstrap_groups": {"default": {"bootstrap_node_urls": ["https://node2.example:4567"]}},
                    "auth": {"secret": SECRET},
                },
                "control_api": {"ssl": {"cert_file_path": "ssl/cert.pem", "key_file_path": "ssl/key.pem"}},
                "networking": {
                    "ipv4": {"network_cidr": "10.10.0.0/16", "node_address_cidr": "10.10.1.5/24"}
                },
                "process": {"uid": 1000},
            }
        }
    )


class ConfigTestMixin:
    """Gives each test a temp dir with files, and helpers that load a modified minimal config."""

    base: Path

    def setUp(self) -> None:
        self.base = Path(self.mktemp()).absolute()  # type: ignore[attr-defined]
        self.base.mkdir(parents=True)
        make_files(self.base)

    def load(self, data: dict[str, Any], env: dict[str, str] | None = None, seed: int = 1) -> TunMeshConfig:
        return load_config_data(data, self.base, env=env, rng=random.Random(seed))

    def errors_of(self, data: Any, env: dict[str, str] | None = None) -> list[str]:
        """The error lines a load produces (the test fails if it loads)."""
        try:
            load_config_data(data, self.base, env=env, rng=random.Random(1))
        except ConfigError as e:
            return [str(x) for x in e.errors]
        raise AssertionError("config loaded but errors were expected")  # pragma: no cover


def set_key(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set ``a/b/c`` below tun_mesh (creating groups), returning the document."""
    node = data["tun_mesh"]
    keys = path.split("/")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return data


def del_key(data: dict[str, Any], path: str) -> dict[str, Any]:
    node = data["tun_mesh"]
    keys = path.split("/")
    for key in keys[:-1]:
        node = node[key]
    del node[keys[-1]]
    return data


# -- packets -----------------------------------------------------------------------------------------


def ipv4(
    src: str,
    dst: str,
    payload: bytes = b"x" * 8,
    *,
    ihl: int = 5,
    total: int | None = None,
    version: int = 4,
    proto: int = 17,
) -> bytes:
    options = b"\x01" * (ihl * 4 - 20) if ihl > 5 else b""
    length = 20 + len(options) + len(payload) if total is None else total
    head = struct.pack(
        ">BBHHHBBH4s4s",
        (version << 4) | ihl,
        0,
        length,
        0,
        0,
        64,
        proto,
        0,
        IPv4Address(src).packed,
        IPv4Address(dst).packed,
    )
    return head + options + payload


def ipv6(src: str, dst: str, payload: bytes = b"y" * 8, *, plen: int | None = None) -> bytes:
    n = len(payload) if plen is None else plen
    head = struct.pack(">IHBB16s16s", 6 << 28, n, 17, 64, IPv6Address(src).packed, IPv6Address(dst).packed)
    return head + payload


def vnet(
    packet: bytes,
    *,
    flags: int = 0,
    gso_type: int = 0,
    hdr_len: int = 0,
    gso_size: int = 0,
    csum_start: int = 0,
    csum_offset: int = 0,
) -> bytes:
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) + packet


def addr(text: str) -> int:
    return int(ip_address(text))


# -- peer links ------------------------------------------------------------------------------------

A = "node-a"
B = "node-b"
NOW = 1_700_000_000.0


class Pair:
    """Node A (link client) and node B (link server) with real session stores, in memory."""

    def __init__(self, test: SynchronousTestCase, *, install_inbound: bool = True, **client_kw: Any) -> None:
        self.clock = task.Clock()
        self.clock.advance(NOW)
        mono = self.clock.seconds
        self.store_a = SessionStore(A, self.clock, monotonic=mono)
        self.store_b = SessionStore(B, self.clock, monotonic=mono)
        self.secret = os.urandom(32)
        self.store_a.install_outbound(B, "kid1", self.secret)
        if install_inbound:
            self.store_b.install_inbound(A, "kid1", self.secret)
        self.auth_a = SessionAuthority(self.store_a)
        self.auth_b = SessionAuthority(self.store_b)
        self.metrics_a, self.metrics_b = FakeMetrics(), FakeMetrics()
        self.received: list[tuple[str, list[bytes], bool]] = []
        self.known = {A}
        self.server = LinkServerFactory(
            B,
            self.store_b,
            self.auth_b,
            self.known.__contains__,
            lambda peer, pkts, vnet: self.received.append((peer, pkts, vnet)),
            self.clock,
            LinkMetrics(self.metrics_b, DropCounter(self.metrics_b)),
        )
        self.pumps: list[iosim.IOPump] = []
        self.connects: list[float] = []
        self.fail_connect = False
        self.client = LinkClient(
            A,
            B,
            "https://b.example:4567/",
            self.connector,
            self.store_a,
            self.auth_a,
            self.clock,
            LinkMetrics(self.metrics_a, DropCounter(self.metrics_a)),
            rng=lambda: 1.0,
            **client_kw,
        )

    def connector(self, url: str, proto: Any) -> defer.Deferred[Any]:
        self.connects.append(self.clock.seconds())
        if self.fail_connect:
            return defer.fail(ConnectionRefusedError())
        server = self.server.buildProtocol(None)
        self.server_proto = server
        pump = iosim.connect(
            server, iosim.makeFakeServer(server), proto, iosim.makeFakeClient(proto), greet=False
        )
        self.pumps.append(pump)
        return defer.succeed(proto)

    def pump(self) -> None:
        for _ in range(3):
            for p in list(self.pumps):
                p.flush()

    def packets(self) -> list[bytes]:
        out = []
        for _, pkts, _ in self.received:
            out.extend(pkts)
        return out


def samples(metrics: Metrics, name: str) -> dict[str | None, float]:
    """The samples of ``name`` by peer (its ``source_node_id`` or ``dest_node_id`` label)."""
    out: dict[str | None, float] = {}
    for family in metrics.collector_registry().collect():
        for s in family.samples:
            if s.name == name:
                out[s.labels.get("source_node_id") or s.labels.get("dest_node_id")] = s.value
    return out
