"""Helpers shared by the unit tests (no tests here); the fakes of tunmesh's seams are in
:mod:`tunmesh.testing`.

- packet builders: :func:`ipv4`, :func:`ipv6`, :func:`vnet` (a virtio header in front), :func:`addr`.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address, ip_address

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
