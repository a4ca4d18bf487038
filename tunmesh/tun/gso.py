"""Software GSO and checksum completion, so nodes with and without TUN offload interoperate.

A node whose TUN has offload sends the packets exactly as its kernel handed them over: a virtio header
plus possibly a 64 KiB TCP (or UDP GSO) super-packet whose L4 checksum is only partial. A receiving node
without offload cannot write that to its plain TUN, so :func:`segment` does what the kernel would have
done (as ``tcp_gso_segment``/``__udp_gso_segment`` and wireguard-go's ``gsoSplit`` do), and
:func:`strip_or_complete_checksum` finishes a single packet's checksum. The other direction, a plain packet
going to an offload TUN, only needs a zero header: :func:`add_plain_header`.

The header's ``hdr_len`` is not trusted (the kernel reports ``skb_headlen``, which may include payload);
header lengths are taken from the IP and TCP headers themselves.
"""

from __future__ import annotations

import struct

from tunmesh.tun.vnet import (
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    VNET_HDR_LEN,
    ZERO_HDR,
    VirtioNetHdr,
)

_PROTO_TCP = 6
_PROTO_UDP = 17
_TCP_FIN = 0x01
_TCP_PSH = 0x08
_TCP_CWR = 0x80

__all__ = [
    "GSOError",
    "add_plain_header",
    "adapt_for_device",
    "checksum",
    "segment",
    "strip_or_complete_checksum",
    "fits_mtu",
]


class GSOError(ValueError):
    """A packet cannot be segmented or completed; ``reason`` is a short label fit for a metric."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def ones_complement_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The folded 16-bit one's-complement sum of ``data`` (big-endian words, odd length zero-padded).

    Uses ``2**16 == 1 (mod 0xffff)``: the sum of the words is the big integer modulo 0xffff, computed in C.
    """
    raw = bytes(data)
    if len(raw) % 2:
        raw += b"\x00"
    n = int.from_bytes(raw, "big") + initial
    if n == 0:
        return 0
    r = n % 0xFFFF
    return r if r else 0xFFFF


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The Internet checksum (RFC 1071) of ``data`` with an extra ``initial`` sum."""
    return ~ones_complement_sum(data, initial) & 0xFFFF


def _pseudo_sum(version: int, src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Sum of the IPv4/IPv6 pseudo-header for an L4 checksum."""
    if version == 4:
        extra = struct.pack("!BBH", 0, proto, length)
    else:
        extra = struct.pack("!IxxxB", length, proto)
    return ones_complement_sum(src + dst + extra)


def add_plain_header(packet: bytes) -> bytes:
    """Prefix a zero virtio header: a complete, checksummed packet going to an offload TUN."""
    return ZERO_HDR + packet


def _l3(ip: bytes, hdr: VirtioNetHdr) -> tuple[int, int, int]:
    """(version, L4 offset, L4 protocol) after checking the IP header agrees with the virtio header."""
    if len(ip) < 20:
        raise GSOError("truncated", f"IP packet of {len(ip)} bytes")
    version = ip[0] >> 4
    if version == 4:
        ihl = (ip[0] & 0x0F) * 4
        if ihl < 20 or ihl > len(ip):
            raise GSOError("bad_ihl", str(ihl))
        return 4, ihl, ip[9]
    if version == 6:
        if len(ip) < 40:
            raise GSOError("truncated", f"IPv6 packet of {len(ip)} bytes")
        if hdr.csum_start != 40:
            raise GSOError("ipv6_extension_headers", f"csum_start {hdr.csum_start}")
        return 6, 40, ip[6]
    raise GSOError("bad_version", str(version))


def _complete(ip: bytearray, csum_start: int, csum_offset: int) -> None:
    """Finish a partial checksum in place: the field holds the pseudo-header sum; fold over the rest."""
    at = csum_start + csum_offset
    if csum_start >= len(ip) or at + 2 > len(ip):
        raise GSOError("bad_csum_offset", f"start {csum_start} offset {csum_offset} len {len(ip)}")
    value = checksum(memoryview(ip)[csum_start:])
    if value == 0 and csum_offset == 6:  # UDP: 0 means "no checksum"; send 0xffff instead
        value = 0xFFFF
    ip[at : at + 2] = value.to_bytes(2, "big")


def strip_or_complete_checksum(packet_with_vnet_hdr: bytes) -> bytes:
    """The plain IP packet for a non-offload TUN, its checksum completed when ``NEEDS_CSUM`` is set."""
    hdr = VirtioNetHdr.unpack(packet_with_vnet_hdr)
    if hdr.is_gso:
        raise GSOError("gso_needs_segmenting", f"gso_type {hdr.gso_type}")
    if not hdr.needs_csum:
        return packet_with_vnet_hdr[VNET_HDR_LEN:]
    ip = bytearray(packet_with_vnet_hdr[VNET_HDR_LEN:])
    _complete(ip, hdr.csum_start, hdr.csum_offset)
    return bytes(ip)


def segment(packet_with_vnet_hdr: bytes) -> list[bytes]:
    """Split a packet read from an offload TUN into plain, checksummed IP packets of at most ``gso_size``
    payload bytes each. A non-GSO packet gives one packet (checksum completed if needed)."""
    hdr = VirtioNetHdr.unpack(packet_with_vnet_hdr)
    kind = hdr.gso_kind
    if kind == GSO_NONE:
        return [strip_or_complete_checksum(packet_with_vnet_hdr)]
    if kind not in (GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4):
        raise GSOError("unsupported_gso_type", str(hdr.gso_type))
    ip = packet_with_vnet_hdr[VNET_HDR_LEN:]
    version, l4_off, proto = _l3(ip, hdr)
    if (kind == GSO_TCPV4 and version != 4) or (kind == GSO_TCPV6 and version != 6):
        raise GSOError("gso_type_mismatch", f"gso_type {hdr.gso_type} on IPv{version}")
    if hdr.gso_size == 0:
        raise GSOError("zero_gso_size")
    if kind == GSO_UDP_L4:
        if proto != _PROTO_UDP:
            raise GSOError("proto_mismatch", f"UDP GSO on protocol {proto}")
        l4_len = 8
    else:
        if proto != _PROTO_TCP:
            raise GSOError("proto_mismatch", f"TCP GSO on protocol {proto}")
        if len(ip) < l4_off + 20:
            raise GSOError("truncated", "TCP header")
        l4_len = (ip[l4_off + 12] >> 4) * 4
        if l4_len < 20:
            raise GSOError("bad_tcp_offset", str(l4_len))
    hdr_total = l4_off + l4_len
    if hdr_total > len(ip):
        raise GSOError("truncated", f"headers {hdr_total} > packet {len(ip)}")
    if version == 4:
        total_length = int.from_bytes(ip[2:4], "big")
        if total_length != len(ip) and total_length != 0:  # BIG TCP would send 0; TUN caps at 64 KiB
            if total_length < hdr_total or total_length > len(ip):
                raise GSOError("bad_total_length", f"{total_length} for {len(ip)} bytes")
            ip = ip[:total_length]
    payload = memoryview(ip)[hdr_total:]

    src = ip[12:16] if version == 4 else ip[8:24]
    dst = ip[16:20] if version == 4 else ip[24:40]
    ip_id = int.from_bytes(ip[4:6], "big") if version == 4 else 0
    seq = int.from_bytes(ip[l4_off + 4 : l4_off + 8], "big") if kind != GSO_UDP_L4 else 0
    tcp_flags = ip[l4_off + 13] if kind != GSO_UDP_L4 else 0
    headers = ip[:hdr_total]
    step = hdr.gso_size
    count = max(1, (len(payload) + step - 1) // step)  # a bare header (no payload) is one packet
    out: list[bytes] = []
    for i in range(count):
        chunk = payload[i * step : (i + 1) * step]
        seg = bytearray(headers)
        seg += chunk
        l4_length = l4_len + len(chunk)
        if version == 4:
            seg[2:4] = (hdr_total + len(chunk)).to_bytes(2, "big")
            seg[4:6] = ((ip_id + i) & 0xFFFF).to_bytes(2, "big")
            seg[10:12] = b"\x00\x00"
            seg[10:12] = checksum(memoryview(seg)[:l4_off]).to_bytes(2, "big")
        else:
            seg[4:6] = (l4_off - 40 + l4_length).to_bytes(2, "big")
        if kind == GSO_UDP_L4:
            seg[l4_off + 4 : l4_off + 6] = l4_length.to_bytes(2, "big")
            csum_at = l4_off + 6
        else:
            seg[l4_off + 4 : l4_off + 8] = ((seq + i * step) & 0xFFFFFFFF).to_bytes(4, "big")
            flags = tcp_flags
            if i != count - 1:
                flags &= ~(_TCP_FIN | _TCP_PSH)
            if i != 0:
                flags &= ~_TCP_CWR
            seg[l4_off + 13] = flags
            csum_at = l4_off + 16
        seg[csum_at : csum_at + 2] = b"\x00\x00"
        value = checksum(memoryview(seg)[l4_off:], _pseudo_sum(version, src, dst, proto, l4_length))
        if value == 0 and kind == GSO_UDP_L4:
            value = 0xFFFF
        seg[csum_at : csum_at + 2] = value.to_bytes(2, "big")
        out.append(bytes(seg))
    return out


def fits_mtu(packet_with_vnet_hdr: bytes, mtu: int) -> bool:
    """Whether a packet (virtio header included) can be written to a TUN of ``mtu``: for a super-packet
    each resulting segment must fit (headers + ``gso_size``), otherwise the whole IP packet must."""
    hdr = VirtioNetHdr.unpack(packet_with_vnet_hdr)
    ip_len = len(packet_with_vnet_hdr) - VNET_HDR_LEN
    if not hdr.is_gso:
        return ip_len <= mtu
    if hdr.gso_size == 0 or ip_len > 65535:
        return False
    ip = packet_with_vnet_hdr[VNET_HDR_LEN:]
    try:
        version, l4_off, _proto = _l3(ip, hdr)
    except GSOError:
        return False
    if hdr.gso_kind == GSO_UDP_L4:
        l4_len = 8
    elif len(ip) >= l4_off + 20:
        l4_len = (ip[l4_off + 12] >> 4) * 4
    else:
        return False
    return l4_off + l4_len + hdr.gso_size <= mtu


def adapt_for_device(packet: bytes, *, has_vnet_hdr: bool, device_offload: bool) -> list[bytes]:
    """Turn a packet received from a peer into what this node's TUN accepts.

    ``has_vnet_hdr``: the packet carries a virtio header (the sender's TUN has offload).
    ``device_offload``: this node's TUN was opened with ``IFF_VNET_HDR``.
    """
    if has_vnet_hdr == device_offload:
        if has_vnet_hdr:
            VirtioNetHdr.unpack(packet)  # length check only
        return [packet]
    if device_offload:
        return [add_plain_header(packet)]
    return segment(packet)
