"""Virtio header and software GSO: hand-built packets checked against a word-by-word RFC 1071 reference."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tunmesh.tun import gso
from tunmesh.tun.vnet import (
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    VNET_HDR_LEN,
    ZERO_HDR,
    VirtioNetHdr,
    VnetHeaderError,
    split_header,
)

SRC4, DST4 = IPv4Address("100.64.0.1").packed, IPv4Address("100.64.0.2").packed
SRC6, DST6 = IPv6Address("fd00::1").packed, IPv6Address("fd00::2").packed


def ref_sum(data: bytes) -> int:
    """RFC 1071 one's-complement sum, one 16-bit word at a time (the reference)."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ref_checksum(data: bytes) -> int:
    return ~ref_sum(data) & 0xFFFF


def pseudo(version: int, src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if version == 4:
        return src + dst + bytes([0, proto]) + struct.pack("!H", length)
    return src + dst + struct.pack("!I", length) + b"\x00\x00\x00" + bytes([proto])


def ipv4_header(payload_len: int, proto: int, ident: int = 0x1234) -> bytearray:
    h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, ident, 0x4000, 64, proto, 0, SRC4, DST4))
    h[10:12] = struct.pack("!H", ref_checksum(bytes(h)))
    return h


def ipv6_header(payload_len: int, proto: int) -> bytearray:
    return bytearray(struct.pack("!IHBB16s16s", 6 << 28, payload_len, proto, 64, SRC6, DST6))


def tcp_header(seq: int, flags: int) -> bytearray:
    return bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, seq, 7, 5 << 4, flags, 65000, 0, 0))


def kernel_tcp_superpacket(version: int, payload: bytes, gso_size: int, seq: int = 1000, flags: int = 0x18,
                           ecn: bool = False) -> bytes:
    """What a TSO-enabled TUN read returns: vnet header + super-packet with a partial (pseudo) checksum."""
    tcp = tcp_header(seq, flags)
    l4_len = len(tcp) + len(payload)
    if version == 4:
        ip = ipv4_header(l4_len, 6)
        src, dst, gso_type = SRC4, DST4, GSO_TCPV4
    else:
        ip = ipv6_header(l4_len, 6)
        src, dst, gso_type = SRC6, DST6, GSO_TCPV6
    partial = ref_sum(pseudo(version, src, dst, 6, l4_len))
    tcp[16:18] = struct.pack("!H", partial)
    hdr = VirtioNetHdr(
        flags=F_NEEDS_CSUM, gso_type=gso_type | (GSO_ECN if ecn else 0), hdr_len=len(ip) + 20,
        gso_size=gso_size, csum_start=len(ip), csum_offset=16,
    )
    return hdr.pack() + bytes(ip) + bytes(tcp) + payload


def kernel_udp_superpacket(version: int, payload: bytes, gso_size: int) -> bytes:
    udp = bytearray(struct.pack("!HHHH", 5000, 6000, 8 + len(payload), 0))
    l4_len = 8 + len(payload)
    ip = ipv4_header(l4_len, 17) if version == 4 else ipv6_header(l4_len, 17)
    src, dst = (SRC4, DST4) if version == 4 else (SRC6, DST6)
    udp[6:8] = struct.pack("!H", ref_sum(pseudo(version, src, dst, 17, l4_len)))
    hdr = VirtioNetHdr(flags=F_NEEDS_CSUM, gso_type=GSO_UDP_L4, hdr_len=len(ip) + 8, gso_size=gso_size,
                       csum_start=len(ip), csum_offset=6)
    return hdr.pack() + bytes(ip) + bytes(udp) + payload


class Parsed:
    """Fields of one plain output segment, with checksums verified by the reference."""

    def __init__(self, test: SynchronousTestCase, packet: bytes, proto: int) -> None:
        version = packet[0] >> 4
        if version == 4:
            test.assertEqual(ref_sum(packet[:20]), 0xFFFF, "IPv4 header checksum")
            test.assertEqual(struct.unpack("!H", packet[2:4])[0], len(packet))
            self.ident = struct.unpack("!H", packet[4:6])[0]
            l4 = packet[20:]
            src, dst = packet[12:16], packet[16:20]
        else:
            test.assertEqual(struct.unpack("!H", packet[4:6])[0], len(packet) - 40)
            self.ident = None
            l4 = packet[40:]
            src, dst = packet[8:24], packet[24:40]
        test.assertEqual(ref_sum(pseudo(version, src, dst, proto, len(l4)) + l4), 0xFFFF, "L4 checksum")
        if proto == 6:
            self.seq = struct.unpack("!I", l4[4:8])[0]
            self.flags = l4[13]
            self.payload = l4[(l4[12] >> 4) * 4:]
        else:
            test.assertEqual(struct.unpack("!H", l4[4:6])[0], len(l4))
            test.assertNotEqual(l4[6:8], b"\x00\x00")
            self.payload = l4[8:]


class VnetHeaderTests(SynchronousTestCase):
    def test_roundtrip(self) -> None:
        hdr = VirtioNetHdr(flags=1, gso_type=GSO_TCPV4, hdr_len=52, gso_size=1448, csum_start=20, csum_offset=16)
        raw = hdr.pack()
        self.assertEqual(len(raw), VNET_HDR_LEN)
        self.assertEqual(raw, bytes([1, 1]) + struct.pack("<HHHH", 52, 1448, 20, 16))
        self.assertEqual(VirtioNetHdr.unpack(raw), hdr)
        self.assertTrue(hdr.needs_csum)
        self.assertTrue(hdr.is_gso)

    def test_zero(self) -> None:
        hdr = VirtioNetHdr.unpack(ZERO_HDR + b"\x45")
        self.assertEqual(hdr, VirtioNetHdr())
        self.assertFalse(hdr.is_gso)
        self.assertFalse(hdr.needs_csum)

    def test_ecn_bit(self) -> None:
        hdr = VirtioNetHdr(gso_type=GSO_TCPV6 | GSO_ECN)
        self.assertEqual(hdr.gso_kind, GSO_TCPV6)
        self.assertTrue(hdr.is_gso)

    def test_short(self) -> None:
        self.assertRaises(VnetHeaderError, VirtioNetHdr.unpack, b"\x00" * 9)

    def test_out_of_range(self) -> None:
        self.assertRaises(VnetHeaderError, VirtioNetHdr, flags=256)
        self.assertRaises(VnetHeaderError, VirtioNetHdr, gso_size=65536)
        self.assertRaises(VnetHeaderError, VirtioNetHdr, csum_start=-1)

    def test_split(self) -> None:
        hdr, ip = split_header(VirtioNetHdr(gso_size=5).pack() + b"abc")
        self.assertEqual((hdr.gso_size, ip), (5, b"abc"))


class ChecksumTests(SynchronousTestCase):
    @given(st.binary(max_size=3000), st.integers(0, 0xFFFF))
    def test_matches_reference(self, data: bytes, initial: int) -> None:
        self.assertEqual(gso.checksum(data), ref_checksum(data))
        padded = data + (b"\x00" if len(data) % 2 else b"")
        self.assertEqual(gso.checksum(data, initial), ref_checksum(padded + struct.pack("!H", initial)))

    def test_known_vector(self) -> None:
        # RFC 1071 section 3 example: words 0001 f203 f4f5 f6f7 sum to ddf2.
        self.assertEqual(gso.checksum(bytes.fromhex("0001f203f4f5f6f7")), ~0xDDF2 & 0xFFFF)


class SegmentTCPTests(SynchronousTestCase):
    def check(self, version: int, payload_len: int, gso_size: int, flags: int = 0x18 | 0x01) -> list[Parsed]:
        payload = bytes((i * 7) & 0xFF for i in range(payload_len))
        out = gso.segment(kernel_tcp_superpacket(version, payload, gso_size, seq=0xFFFFF000, flags=flags))
        parsed = [Parsed(self, p, 6) for p in out]
        self.assertEqual(len(parsed), -(-payload_len // gso_size))
        self.assertEqual(b"".join(p.payload for p in parsed), payload)
        for i, p in enumerate(parsed):
            self.assertEqual(p.seq, (0xFFFFF000 + i * gso_size) & 0xFFFFFFFF)
            self.assertLessEqual(len(p.payload), gso_size)
            if version == 4:
                self.assertEqual(p.ident, 0x1234 + i)
        return parsed

    def test_ipv4(self) -> None:
        parsed = self.check(4, 10000, 1448)
        for p in parsed[:-1]:
            self.assertEqual(p.flags, 0x10)  # ACK only: PSH and FIN only on the last segment
        self.assertEqual(parsed[-1].flags, 0x19)

    def test_ipv6(self) -> None:
        self.check(6, 5000, 1428)

    def test_exact_multiple(self) -> None:
        self.check(4, 1448 * 3, 1448)

    def test_single_segment(self) -> None:
        self.check(4, 100, 1448)

    def test_cwr_only_on_first(self) -> None:
        parsed = self.check(4, 3000, 1000, flags=0x80 | 0x10)
        self.assertEqual([p.flags for p in parsed], [0x90, 0x10, 0x10])

    def test_ecn_gso_type(self) -> None:
        payload = b"x" * 3000
        out = gso.segment(kernel_tcp_superpacket(4, payload, 1000, ecn=True))
        self.assertEqual(len(out), 3)

    def test_no_payload(self) -> None:
        out = gso.segment(kernel_tcp_superpacket(4, b"", 1448, flags=0x10))
        self.assertEqual(len(out), 1)
        Parsed(self, out[0], 6)

    @settings(max_examples=40, deadline=None)
    @given(st.sampled_from([4, 6]), st.integers(1, 20000), st.integers(1, 9000))
    def test_property(self, version: int, payload_len: int, gso_size: int) -> None:
        self.check(version, payload_len, gso_size)


class SegmentUDPTests(SynchronousTestCase):
    def test_udp_l4(self) -> None:
        for version in (4, 6):
            payload = bytes(range(256)) * 10
            out = gso.segment(kernel_udp_superpacket(version, payload, 1200))
            parsed = [Parsed(self, p, 17) for p in out]
            self.assertEqual([len(p.payload) for p in parsed], [1200, 1200, 160])
            self.assertEqual(b"".join(p.payload for p in parsed), payload)


class SegmentRejectsTests(SynchronousTestCase):
    def reason(self, packet: bytes) -> str:
        return self.assertRaises(gso.GSOError, gso.segment, packet).reason

    def good(self) -> bytearray:
        return bytearray(kernel_tcp_superpacket(4, b"y" * 3000, 1000))

    def test_short_header(self) -> None:
        self.assertRaises(VnetHeaderError, gso.segment, b"\x00" * 5)

    def test_zero_gso_size(self) -> None:
        p = self.good()
        p[4:6] = b"\x00\x00"
        self.assertEqual(self.reason(bytes(p)), "zero_gso_size")

    def test_type_mismatch(self) -> None:
        p = self.good()
        p[1] = GSO_TCPV6
        self.assertEqual(self.reason(bytes(p)), "gso_type_mismatch")

    def test_legacy_ufo(self) -> None:
        p = self.good()
        p[1] = GSO_UDP
        self.assertEqual(self.reason(bytes(p)), "unsupported_gso_type")

    def test_proto_mismatch(self) -> None:
        p = bytearray(kernel_udp_superpacket(4, b"z" * 3000, 1000))
        p[1] = GSO_TCPV4
        self.assertEqual(self.reason(bytes(p)), "proto_mismatch")
        q = self.good()
        q[1] = GSO_UDP_L4
        self.assertEqual(self.reason(bytes(q)), "proto_mismatch")

    def test_truncated_ip(self) -> None:
        self.assertEqual(self.reason(bytes(self.good()[: VNET_HDR_LEN + 12])), "truncated")

    def test_truncated_tcp(self) -> None:
        self.assertEqual(self.reason(bytes(self.good()[: VNET_HDR_LEN + 30])), "truncated")

    def test_bad_tcp_offset(self) -> None:
        p = self.good()
        p[VNET_HDR_LEN + 20 + 12] = 0x20
        self.assertEqual(self.reason(bytes(p)), "bad_tcp_offset")

    def test_bad_ihl(self) -> None:
        p = self.good()
        p[VNET_HDR_LEN] = 0x44
        self.assertEqual(self.reason(bytes(p)), "bad_ihl")

    def test_bad_version(self) -> None:
        p = self.good()
        p[VNET_HDR_LEN] = 0x55
        self.assertEqual(self.reason(bytes(p)), "bad_version")

    def test_bad_total_length(self) -> None:
        p = self.good()
        p[VNET_HDR_LEN + 2 : VNET_HDR_LEN + 4] = struct.pack("!H", 30)
        self.assertEqual(self.reason(bytes(p)), "bad_total_length")

    def test_total_length_truncates_trailer(self) -> None:
        p = bytes(self.good()) + b"TRAILER"
        out = gso.segment(p)
        self.assertEqual(b"".join(Parsed(self, s, 6).payload for s in out), b"y" * 3000)

    def test_ipv6_extension_headers(self) -> None:
        p = bytearray(kernel_tcp_superpacket(6, b"y" * 3000, 1000))
        p[6:8] = struct.pack("<H", 48)
        self.assertEqual(self.reason(bytes(p)), "ipv6_extension_headers")


class CompleteChecksumTests(SynchronousTestCase):
    def test_completes_tcp(self) -> None:
        packet = kernel_tcp_superpacket(4, b"hello", 1448)
        hdr = VirtioNetHdr.unpack(packet)
        non_gso = VirtioNetHdr(flags=F_NEEDS_CSUM, csum_start=hdr.csum_start, csum_offset=16).pack()
        plain = gso.strip_or_complete_checksum(non_gso + packet[VNET_HDR_LEN:])
        self.assertEqual(Parsed(self, plain, 6).payload, b"hello")

    def test_completes_udp(self) -> None:
        packet = kernel_udp_superpacket(6, b"dns?", 1200)
        non_gso = VirtioNetHdr(flags=F_NEEDS_CSUM, csum_start=40, csum_offset=6).pack()
        plain = gso.strip_or_complete_checksum(non_gso + packet[VNET_HDR_LEN:])
        self.assertEqual(Parsed(self, plain, 17).payload, b"dns?")

    def test_plain_stripped_unchanged(self) -> None:
        self.assertEqual(gso.strip_or_complete_checksum(ZERO_HDR + b"\x45abc"), b"\x45abc")

    def test_rejects_gso(self) -> None:
        e = self.assertRaises(gso.GSOError, gso.strip_or_complete_checksum, kernel_tcp_superpacket(4, b"x", 10))
        self.assertEqual(e.reason, "gso_needs_segmenting")

    def test_bad_offset(self) -> None:
        bad = VirtioNetHdr(flags=F_NEEDS_CSUM, csum_start=20, csum_offset=100).pack() + bytes(ipv4_header(0, 6))
        e = self.assertRaises(gso.GSOError, gso.strip_or_complete_checksum, bad)
        self.assertEqual(e.reason, "bad_csum_offset")

    def test_segment_of_non_gso(self) -> None:
        self.assertEqual(gso.segment(ZERO_HDR + b"\x45abc"), [b"\x45abc"])


class AdaptTests(SynchronousTestCase):
    def test_plain_to_offload(self) -> None:
        self.assertEqual(gso.add_plain_header(b"\x45x"), ZERO_HDR + b"\x45x")
        self.assertEqual(gso.adapt_for_device(b"\x45x", has_vnet_hdr=False, device_offload=True), [ZERO_HDR + b"\x45x"])

    def test_same_kind_passthrough(self) -> None:
        sp = kernel_tcp_superpacket(4, b"a" * 5000, 1448)
        self.assertEqual(gso.adapt_for_device(sp, has_vnet_hdr=True, device_offload=True), [sp])
        self.assertEqual(gso.adapt_for_device(b"\x45", has_vnet_hdr=False, device_offload=False), [b"\x45"])

    def test_offload_to_plain_segments(self) -> None:
        sp = kernel_tcp_superpacket(4, b"a" * 5000, 1448)
        self.assertEqual(len(gso.adapt_for_device(sp, has_vnet_hdr=True, device_offload=False)), 4)

    def test_short_header_rejected(self) -> None:
        self.assertRaises(VnetHeaderError, gso.adapt_for_device, b"\x00", has_vnet_hdr=True, device_offload=True)


class FitsMtuTests(SynchronousTestCase):
    def test_superpacket_segments_fit(self) -> None:
        sp = kernel_tcp_superpacket(4, b"a" * 60000, 1460)
        self.assertTrue(gso.fits_mtu(sp, 1500))
        self.assertFalse(gso.fits_mtu(sp, 1499))

    def test_plain(self) -> None:
        self.assertTrue(gso.fits_mtu(ZERO_HDR + b"\x45" * 1500, 1500))
        self.assertFalse(gso.fits_mtu(ZERO_HDR + b"\x45" * 1501, 1500))

    def test_malformed_superpacket(self) -> None:
        sp = bytearray(kernel_tcp_superpacket(4, b"a" * 3000, 1000))
        sp[VNET_HDR_LEN] = 0x75
        self.assertFalse(gso.fits_mtu(bytes(sp), 1500))
        sp2 = bytearray(kernel_tcp_superpacket(4, b"a" * 3000, 1000))
        sp2[4:6] = b"\x00\x00"
        self.assertFalse(gso.fits_mtu(bytes(sp2), 1500))

    def test_gso_none_constant(self) -> None:
        self.assertEqual(GSO_NONE, 0)
