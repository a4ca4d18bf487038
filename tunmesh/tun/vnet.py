"""The ``virtio_net_hdr`` that prefixes every packet on a TUN opened with ``IFF_VNET_HDR``.

With offload the kernel hands us TCP "super-packets" (up to 64 KiB) that it has not segmented nor
checksummed; the 10-byte header in front of each read says how to finish the job (``gso_type``,
``gso_size``, ``csum_start``/``csum_offset``). Writing such a packet back, with its header, lets the
receiving kernel do the segmentation. Layout (``struct virtio_net_hdr``, ``linux/virtio_net.h``):

    flags u8, gso_type u8, hdr_len u16, gso_size u16, csum_start u16, csum_offset u16

TUN uses native byte order unless ``TUNSETVNETLE`` is set; :mod:`tunmesh.tun.device` sets little-endian
on big-endian hosts, so the header is always little-endian, on the device and on the wire between nodes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VNET_HDR_LEN = 10
_HDR = struct.Struct("<BBHHHH")

# flags
F_NEEDS_CSUM = 0x01
F_DATA_VALID = 0x02
F_RSC_INFO = 0x04

# gso_type
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

ZERO_HDR = bytes(VNET_HDR_LEN)


class VnetHeaderError(ValueError):
    """A virtio header is too short or holds an out-of-range field."""


@dataclass(frozen=True, slots=True)
class VirtioNetHdr:
    """One ``virtio_net_hdr``; the zero value means "a plain, fully checksummed packet"."""

    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def __post_init__(self) -> None:
        for name in ("flags", "gso_type"):
            if not 0 <= getattr(self, name) <= 0xFF:
                raise VnetHeaderError(f"{name} out of range: {getattr(self, name)!r}")
        for name in ("hdr_len", "gso_size", "csum_start", "csum_offset"):
            if not 0 <= getattr(self, name) <= 0xFFFF:
                raise VnetHeaderError(f"{name} out of range: {getattr(self, name)!r}")

    def pack(self) -> bytes:
        """The 10 wire bytes."""
        return _HDR.pack(
            self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start, self.csum_offset
        )

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> VirtioNetHdr:
        """Parse the first 10 bytes of ``data``."""
        if len(data) < VNET_HDR_LEN:
            raise VnetHeaderError(f"need {VNET_HDR_LEN} bytes for a virtio header, got {len(data)}")
        return cls(*_HDR.unpack_from(data, 0))

    @property
    def needs_csum(self) -> bool:
        """The L4 checksum is partial (pseudo-header only) and must be completed."""
        return bool(self.flags & F_NEEDS_CSUM)

    @property
    def gso_kind(self) -> int:
        """``gso_type`` without the ECN bit."""
        return self.gso_type & ~GSO_ECN

    @property
    def is_gso(self) -> bool:
        """The packet is a super-packet that needs segmenting."""
        return self.gso_kind != GSO_NONE


def split_header(packet: bytes) -> tuple[VirtioNetHdr, bytes]:
    """Separate the virtio header from the IP packet that follows it."""
    return VirtioNetHdr.unpack(packet), packet[VNET_HDR_LEN:]
