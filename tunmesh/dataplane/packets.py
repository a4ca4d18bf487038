"""Fast checks of raw IP packets, looking only at the few header bytes routing needs.

Packets come from the TUN device (or from a peer link) as ``bytes``.  When TUN offload is on
(``IFF_VNET_HDR``), each packet starts with a 10-byte ``virtio_net_hdr`` that stays attached: the
IP header starts at ``offset``.  Nothing here allocates per packet beyond the small ints returned;
nothing raises on bad input: a drop reason is returned instead so the caller can count per batch.
"""

from __future__ import annotations

import struct
from typing import Final

#: Size of ``struct virtio_net_hdr`` (without ``num_buffers``) as TUN hands it over by default.
VNET_HDR_LEN: Final = 10

# virtio_net_hdr.flags / gso_type values (linux/virtio_net.h).
VNET_F_NEEDS_CSUM: Final = 1
VNET_F_DATA_VALID: Final = 2
GSO_NONE: Final = 0
GSO_TCPV4: Final = 1
GSO_UDP: Final = 3
GSO_TCPV6: Final = 4
GSO_UDP_L4: Final = 5
GSO_ECN: Final = 0x80

#: The largest IP packet: IPv4 total_length and IPv6 payload_length (+40) are 16-bit.  A TSO
#: super-packet from TUN is at most this long (the kernel's "BIG TCP" > 64 KiB needs a
#: gso_max_size the TUN device does not advertise, and is refused here).
MAX_IP_PACKET: Final = 65535 + 40

# Drop reasons (label values of tunmesh_dropped_packets_total).
MALFORMED: Final = "malformed"
UNSUPPORTED_PROTOCOL: Final = "unsupported_protocol"
OVERSIZE: Final = "oversize"

# The virtio header is host-endian in TUN (little-endian on every platform we run on).
_VNET = struct.Struct("<BBHHHH")
_U16 = struct.Struct(">H")
_IPV4_ADDRS = struct.Struct(">II")
_IPV6_ADDRS = struct.Struct(">QQQQ")


def check_ip(
    packet: bytes, offset: int, max_len: int
) -> tuple[str | None, int, int, int, int]:
    """Validate the IP header of ``packet[offset:]`` and return the routing fields.

    Returns ``(reason, version, src, dst, end)``: ``reason`` is ``None`` when the packet is
    acceptable, else a drop-reason string (and the other fields are meaningless).  ``src`` and
    ``dst`` are the addresses as ints (32 or 128 bits).  ``end`` is the index one past the IP
    packet's declared end; when it is shorter than ``len(packet)`` the caller truncates the
    trailing bytes (as WireGuard does).  ``max_len`` bounds the IP packet length (the MTU for
    ordinary packets, :data:`MAX_IP_PACKET` for GSO super-packets).
    """
    n = len(packet) - offset
    if n < 20:
        return MALFORMED, 0, 0, 0, 0
    first = packet[offset]
    version = first >> 4
    if version == 4:
        ihl = (first & 0x0F) * 4
        if ihl < 20 or ihl > n:
            return MALFORMED, 4, 0, 0, 0
        (total,) = _U16.unpack_from(packet, offset + 2)
        if total < ihl or total > n:
            return MALFORMED, 4, 0, 0, 0
        if total > max_len:
            return OVERSIZE, 4, 0, 0, 0
        src, dst = _IPV4_ADDRS.unpack_from(packet, offset + 12)
        return None, 4, src, dst, offset + total
    if version == 6:
        if n < 40:
            return MALFORMED, 6, 0, 0, 0
        (payload,) = _U16.unpack_from(packet, offset + 4)
        total = payload + 40
        if total > n:
            return MALFORMED, 6, 0, 0, 0
        if total > max_len:
            return OVERSIZE, 6, 0, 0, 0
        s1, s2, d1, d2 = _IPV6_ADDRS.unpack_from(packet, offset + 8)
        return None, 6, (s1 << 64) | s2, (d1 << 64) | d2, offset + total
    return MALFORMED, version, 0, 0, 0


def check_vnet(packet: bytes, version: int) -> str | None:
    """Check a ``virtio_net_hdr`` in front of a packet received from a peer.

    The header is written back to our TUN, and the kernel trusts parts of it (it has had bugs
    with odd GSO fields), so only the shapes TUN itself produces are accepted: no GSO, or TCP
    segmentation matching the IP version with a non-zero segment size, and checksum offsets that
    lie inside the packet.  Returns ``None`` or a drop reason.
    """
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = _VNET.unpack_from(packet, 0)
    length = len(packet) - VNET_HDR_LEN
    if flags & ~(VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID):
        return MALFORMED
    kind = gso_type & ~GSO_ECN
    if kind != GSO_NONE:
        if gso_size == 0 or hdr_len > length:
            return MALFORMED
        if kind == GSO_TCPV4:
            if version != 4:
                return MALFORMED
        elif kind == GSO_TCPV6:
            if version != 6:
                return MALFORMED
        elif kind != GSO_UDP_L4:
            return MALFORMED
    if flags & VNET_F_NEEDS_CSUM and csum_start + csum_offset + 2 > length:
        return MALFORMED
    return None


def is_gso(packet: bytes) -> bool:
    """Whether a packet carrying a ``virtio_net_hdr`` is a GSO super-packet."""
    return packet[1] != GSO_NONE


def needs_offload(packet: bytes) -> bool:
    """Whether a packet with a ``virtio_net_hdr`` cannot be written to a TUN without one.

    A GSO super-packet would have to be segmented and a NEEDS_CSUM packet carries a partial
    checksum; both need the receiving kernel's offload.
    """
    return packet[1] != GSO_NONE or bool(packet[0] & VNET_F_NEEDS_CSUM)


#: A virtio_net_hdr meaning "no offload" (prepended when a plain packet goes to an offload TUN).
PLAIN_VNET_HDR: Final = bytes(VNET_HDR_LEN)
