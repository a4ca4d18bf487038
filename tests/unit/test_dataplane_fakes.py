"""Test doubles and packet builders shared by the data-plane tests (no tests here)."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any


class FakeChild:
    def __init__(self) -> None:
        self.value = 0.0
        self.observed: list[float] = []

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value

    def observe(self, value: float) -> None:
        self.observed.append(value)


class FakeCollector(FakeChild):
    def __init__(self, labelnames: tuple[str, ...]) -> None:
        super().__init__()
        self.labelnames = labelnames
        self.children: dict[tuple[str, ...], FakeChild] = {}

    def labels(self, *args: str, **kwargs: str) -> FakeChild:
        key = tuple(args) if args else tuple(kwargs[n] for n in self.labelnames)
        assert len(key) == len(self.labelnames), (key, self.labelnames)
        return self.children.setdefault(key, FakeChild())

    def remove(self, *labels: str) -> None:
        del self.children[tuple(labels)]


class FakeMetrics:
    """Create-or-get collectors like tunmesh.metrics.Metrics; values readable by tests."""

    def __init__(self) -> None:
        self.collectors: dict[str, FakeCollector] = {}

    def _get(self, name: str, labelnames: Any) -> FakeCollector:
        c = self.collectors.get(name)
        if c is None:
            c = self.collectors[name] = FakeCollector(tuple(labelnames))
        assert c.labelnames == tuple(labelnames)
        return c

    def counter(self, name: str, doc: str, labelnames: Any = ()) -> FakeCollector:
        return self._get(name, labelnames)

    def gauge(self, name: str, doc: str, labelnames: Any = ()) -> FakeCollector:
        return self._get(name, labelnames)

    def histogram(self, name: str, doc: str, labelnames: Any = (), buckets: Any = ()) -> FakeCollector:
        return self._get(name, labelnames)

    def value(self, name: str, *labels: str) -> float:
        c = self.collectors.get(name)
        if c is None:
            return 0.0
        if not labels:
            return c.value
        child = c.children.get(tuple(labels))
        return child.value if child is not None else 0.0

    def drops(self) -> dict[str, float]:
        c = self.collectors.get("dropped_packets_total")
        if c is None:
            return {}
        return {k[0]: v.value for k, v in c.children.items() if v.value}


class FakeRateLimitedLog:
    def __init__(self) -> None:
        self.events: list[tuple[object, str, dict[str, object]]] = []
        self.levels: list[Any] = []

    def emit(self, key: object, level: Any, format: str, **fields: object) -> bool:
        self.events.append((key, format, fields))
        self.levels.append(level)
        return True


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
