#!/usr/bin/env python3
"""Micro-benchmark of the link frame codec: MB/s of encode + stream-decode + verify.

Prints figures; not a test.  Usage: python contrib/bench/frames_bench.py [seconds-per-case]
Also compares the candidate per-frame MACs on 64 KiB frames (see docs/protocols.md).
"""

from __future__ import annotations

import hmac
import os
import sys
import time
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.poly1305 import Poly1305

from tunmesh.dataplane import frames as F
from tunmesh.dataplane.router import Router, RouteTable


class _NullMetrics:
    class _C:
        def labels(self, **kw: str) -> _NullMetrics._C:
            return self

        def inc(self, n: float = 1) -> None:
            pass

    def counter(self, *a: object, **k: object) -> _NullMetrics._C:
        return self._C()

    gauge = counter


def ipv4_packet(size: int) -> bytes:
    src, dst = IPv4Address("100.64.0.2").packed, IPv4Address("100.64.0.1").packed
    head = bytes([0x45, 0]) + size.to_bytes(2, "big") + bytes(8) + src + dst
    return head + os.urandom(size - 20)


def bench_codec(label: str, packets: list[bytes], seconds: float, chunk: int = 16384) -> None:
    key = os.urandom(32)
    sealer = F.DataSealer(1, key)
    opener = F.DataOpener()
    opener.install(1, key)
    decoder = F.FrameDecoder()
    payload = sum(map(len, packets))
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for run in F.split_batch(packets):
            frame, tag = sealer.seal(run)
            wire = frame + tag
            # deliver in TLS-record-sized chunks, as TLSMemoryBIOProtocol does
            for i in range(0, len(wire), chunk):
                for f in decoder.feed(wire[i : i + chunk]):
                    opener.open(f)
        n += 1
    dt = time.perf_counter() - t0
    print(f"{label:40s} {payload * n / dt / 1e6:8.0f} MB/s  {len(packets) * n / dt:10.0f} packets/s")


def bench_router(label: str, packets: list[bytes], seconds: float) -> None:
    table = RouteTable()
    table.set_peer("a", ["100.64.0.2/32"])
    router = Router(
        IPv4Interface("100.64.0.1/10"), None, IPv4Network("100.64.0.0/10"), None, table, _NullMetrics(),
        mtu=65535,
    )
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        router.accept_inbound("a", packets)
        n += 1
    dt = time.perf_counter() - t0
    print(f"{label:40s} {len(packets) * n / dt:10.0f} packets/s")


def bench_macs(seconds: float) -> None:
    data = os.urandom(65536)
    key = os.urandom(32)
    gcm = AESGCM(key)
    nonce = os.urandom(12)
    cases = {
        "AES-256-GCM (GMAC, empty plaintext)": lambda: gcm.encrypt(nonce, b"", data),
        "HMAC-SHA256 (hmac.digest)": lambda: hmac.digest(key, data, "sha256"),
        "Poly1305 (one-time key given)": lambda: Poly1305.generate_tag(key, data),
    }
    for name, fn in cases.items():
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn()
            n += 1
        dt = time.perf_counter() - t0
        print(f"MAC {name:36s} {len(data) * n / dt / 1e6:8.0f} MB/s")


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    bench_macs(seconds)
    bench_codec("codec: 4 x 64 KiB super-packets", [ipv4_packet(65535)] * 4, seconds)
    bench_codec("codec: 64 x 1400-byte packets", [ipv4_packet(1400)] * 64, seconds)
    bench_codec("codec: 64 x 64-byte packets", [ipv4_packet(64)] * 64, seconds)
    bench_router("router inbound: 64 x 1400-byte packets", [ipv4_packet(1400)] * 64, seconds)


if __name__ == "__main__":
    main()
