"""Header checks (W16), longest-prefix routing, anti-spoofing and broadcast rules."""

from __future__ import annotations

import random
import struct
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.support import addr, ipv4, ipv6, vnet
from tunmesh.dataplane import packets as P
from tunmesh.dataplane.router import Router, RouteTable
from tunmesh.testing import FakeMetrics, FakeRateLimitedLog
from tunmesh.tun import gso as gso_mod

NET4 = IPv4Network("100.64.0.0/10")
NET6 = IPv6Network("fd00:64::/64")
ME4 = "100.64.0.1"
ME6 = "fd00:64::1"
PEER_A = "node-a"
PEER_B = "node-b"
A4 = "100.64.0.2"
B4 = "100.64.0.3"
A6 = "fd00:64::2"


class CheckIPTests(SynchronousTestCase):
    """`check_ip` never raises and names a reason for every malformed header."""

    def test_valid_ipv4(self) -> None:
        pkt = ipv4(ME4, A4)
        self.assertEqual(P.check_ip(pkt, 0, 1500), (None, 4, addr(ME4), addr(A4), len(pkt)))

    def test_valid_ipv4_with_options(self) -> None:
        pkt = ipv4(ME4, A4, ihl=8)
        reason, version, src, dst, end = P.check_ip(pkt, 0, 1500)
        self.assertIsNone(reason)
        self.assertEqual(end, len(pkt))

    def test_valid_ipv6(self) -> None:
        pkt = ipv6(ME6, A6)
        self.assertEqual(P.check_ip(pkt, 0, 1500), (None, 6, addr(ME6), addr(A6), len(pkt)))

    def test_offset(self) -> None:
        pkt = vnet(ipv4(ME4, A4))
        self.assertEqual(P.check_ip(pkt, 10, 1500)[:4], (None, 4, addr(ME4), addr(A4)))

    def test_trailing_bytes_give_shorter_end(self) -> None:
        pkt = ipv4(ME4, A4) + b"junk"
        self.assertEqual(P.check_ip(pkt, 0, 1500)[4], len(pkt) - 4)

    def test_malformed(self) -> None:
        good4 = ipv4(ME4, A4)
        cases = {
            "empty": b"",
            "short": good4[:19],
            "ihl 4": ipv4(ME4, A4, ihl=4),
            "ihl beyond packet": ipv4(ME4, A4, payload=b"")[:20][:0] + bytes([0x4F]) + good4[1:20],
            "total < ihl": ipv4(ME4, A4, total=19),
            "total > len": ipv4(ME4, A4, total=len(good4) + 1),
            "version 5": ipv4(ME4, A4, version=5),
            "version 0": bytes(40),
            "ipv6 short": ipv6(ME6, A6)[:39],
            "ipv6 payload > len": ipv6(ME6, A6, plen=9),
        }
        for name, pkt in cases.items():
            with self.subTest(name):
                self.assertEqual(P.check_ip(pkt, 0, 1500)[0], P.MALFORMED)

    def test_oversize(self) -> None:
        self.assertEqual(P.check_ip(ipv4(ME4, A4, b"z" * 1500), 0, 1500)[0], P.OVERSIZE)
        self.assertEqual(P.check_ip(ipv6(ME6, A6, b"z" * 1500), 0, 1500)[0], P.OVERSIZE)
        self.assertIsNone(P.check_ip(ipv4(ME4, A4, b"z" * 1480), 0, 1500)[0])

    @given(st.binary(max_size=80), st.integers(0, 12))
    @settings(max_examples=500)
    def test_random_bytes_never_raise(self, data: bytes, offset: int) -> None:
        reason, version, src, dst, end = P.check_ip(data, offset, 1500)
        if reason is None:
            self.assertIn(version, (4, 6))
            self.assertLessEqual(end, len(data))

    def test_check_vnet(self) -> None:
        tcp4 = ipv4(ME4, A4, b"t" * 100, proto=6)
        self.assertIsNone(P.check_vnet(vnet(tcp4), 4))
        self.assertIsNone(P.check_vnet(vnet(tcp4, gso_type=P.GSO_TCPV4, gso_size=1448, hdr_len=40), 4))
        self.assertIsNone(P.check_vnet(vnet(tcp4, gso_type=P.GSO_TCPV4 | P.GSO_ECN, gso_size=1448), 4))
        ok_csum = vnet(tcp4, flags=P.VNET_F_NEEDS_CSUM, csum_start=20, csum_offset=16)
        self.assertIsNone(P.check_vnet(ok_csum, 4))
        bad: dict[str, bytes] = {
            "tcpv6 on ipv4": vnet(tcp4, gso_type=P.GSO_TCPV6, gso_size=1448),
            "zero gso_size": vnet(tcp4, gso_type=P.GSO_TCPV4),
            "legacy UFO": vnet(tcp4, gso_type=P.GSO_UDP, gso_size=1400),
            "unknown flags": vnet(tcp4, flags=0x80),
            "hdr_len beyond": vnet(tcp4, gso_type=P.GSO_TCPV4, gso_size=1, hdr_len=1000),
            "csum beyond": vnet(tcp4, flags=P.VNET_F_NEEDS_CSUM, csum_start=119, csum_offset=0),
        }
        bad["tcpv4 on ipv6"] = vnet(ipv6(ME6, A6), gso_type=P.GSO_TCPV4, gso_size=1000)
        for name, pkt in bad.items():
            with self.subTest(name):
                version = 6 if "on ipv6" in name else 4
                self.assertEqual(P.check_vnet(pkt, version), P.MALFORMED)


class RouteTableTests(SynchronousTestCase):
    def test_host_and_prefix(self) -> None:
        t = RouteTable()
        t.set_peer(PEER_A, ["100.64.0.2/32", "10.1.0.0/16"])
        t.set_peer(PEER_B, ["10.1.2.0/24", "fd00:64::/64"])
        self.assertEqual(t.lookup(4, addr("100.64.0.2")), PEER_A)
        self.assertEqual(t.lookup(4, addr("10.1.9.9")), PEER_A)
        self.assertEqual(t.lookup(4, addr("10.1.2.9")), PEER_B)
        self.assertIsNone(t.lookup(4, addr("10.2.0.1")))
        self.assertEqual(t.lookup(6, addr("fd00:64::99")), PEER_B)
        self.assertIsNone(t.lookup(6, addr("fd00:65::1")))

    def test_changes_invalidate_cache(self) -> None:
        t = RouteTable()
        t.set_peer(PEER_A, ["10.0.0.0/8"])
        self.assertEqual(t.lookup(4, addr("10.1.1.1")), PEER_A)
        t.set_peer(PEER_B, ["10.1.0.0/16"])
        self.assertEqual(t.lookup(4, addr("10.1.1.1")), PEER_B)
        t.remove_peer(PEER_B)
        self.assertEqual(t.lookup(4, addr("10.1.1.1")), PEER_A)
        t.set_peer(PEER_A, ["100.64.0.2/32"])
        self.assertIsNone(t.lookup(4, addr("10.1.1.1")))
        self.assertEqual(t.cidrs(PEER_A), (ip_network("100.64.0.2/32"),))
        t.remove_peer("nobody")

    def test_moved_cidr_not_removed_by_old_owner(self) -> None:
        t = RouteTable()
        t.set_peer(PEER_A, ["100.64.0.9/32"])
        t.set_peer(PEER_B, ["100.64.0.9/32"])
        t.remove_peer(PEER_A)
        self.assertEqual(t.lookup(4, addr("100.64.0.9")), PEER_B)
        self.assertEqual(t.peers(), [PEER_B])

    @given(
        st.lists(
            st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32), st.sampled_from("abcd")),
            max_size=30,
        ),
        st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=30),
    )
    @settings(max_examples=200)
    def test_lpm_matches_brute_force(self, routes: list, probes: list[int]) -> None:
        t = RouteTable()
        owner: dict = {}
        for base, plen, peer in routes:
            net = IPv4Network((base, plen), strict=False)
            owner[net] = peer
        by_peer: dict = {}
        for net, peer in owner.items():
            by_peer.setdefault(peer, []).append(net)
        for peer, nets in by_peer.items():
            t.set_peer(peer, nets)
        for probe in probes * 2:  # twice: the second pass is served by the cache
            matches = [(n.prefixlen, p) for n, p in owner.items() if probe & int(n.netmask) == int(n.network_address)]
            expected = max(matches)[1] if matches else None
            self.assertEqual(t.lookup(4, probe), expected)


def make_router(**kw: object) -> tuple[Router, FakeMetrics, FakeRateLimitedLog]:
    metrics = FakeMetrics()
    rlog = FakeRateLimitedLog()
    table = RouteTable()
    table.set_peer(PEER_A, [f"{A4}/32", "10.9.0.0/16", f"{A6}/128"])
    table.set_peer(PEER_B, [f"{B4}/32"])
    args: dict = dict(
        local_v4=IPv4Interface(f"{ME4}/10"),
        local_v6=IPv6Interface(f"{ME6}/64"),
        network_v4=NET4,
        network_v6=NET6,
        route_table=table,
        metrics=metrics,
        mtu=1500,
        rate_limited_log=rlog,
    )
    args.update(kw)
    return Router(**args), metrics, rlog


class OutboundTests(SynchronousTestCase):
    def test_routes_by_destination(self) -> None:
        r, m, _ = make_router()
        p1, p2, p3 = ipv4(ME4, A4), ipv4(ME4, B4), ipv4(ME4, "10.9.1.1")
        p6 = ipv6(ME6, A6)
        self.assertEqual(r.route_outbound([p1, p2, p3, p6]), {PEER_A: [p1, p3, p6], PEER_B: [p2]})
        self.assertEqual(m.drops(), {})

    def test_drop_reasons_counted_per_batch(self) -> None:
        r, m, rlog = make_router()
        batch = [
            b"",  # malformed
            ipv4(ME4, A4, total=3),  # malformed
            ipv4("100.64.0.77", A4),  # source_not_local (spoofed)
            ipv4(ME4, ME4),  # destination_local
            ipv4(ME4, "100.64.9.9"),  # no_route
            ipv4(ME4, "8.8.8.8"),  # no_route (outside the mesh)
            ipv4(ME4, "224.0.0.5"),  # multicast
            ipv4(ME4, "255.255.255.255"),  # broadcast_disabled
            ipv4(ME4, "100.127.255.255"),  # broadcast_disabled (mesh broadcast)
            ipv4(ME4, A4, b"z" * 1600),  # oversize
        ]
        self.assertEqual(r.route_outbound(batch), {})
        self.assertEqual(
            m.drops(),
            {
                "malformed": 2,
                "source_not_local": 1,
                "destination_local": 1,
                "no_route": 2,
                "multicast": 1,
                "broadcast_disabled": 2,
                "oversize": 1,
            },
        )
        # one log call per reason per batch, never per packet
        self.assertEqual(len(rlog.events), 7)

    def test_ipv6_on_an_ipv4_only_node_is_counted_and_logged_at_debug_only(self) -> None:
        """The host's kernel sends IPv6 (router solicitations, MLD) on the TUN on its own: a WARN
        for each few seconds would say nothing; the counter keeps the number (issue 8)."""
        r, m, rlog = make_router(local_v6=None, network_v6=None)
        self.assertEqual(r.route_outbound([ipv6("fe80::1", "ff02::2"), ipv6(ME6, A6)]), {})
        self.assertEqual(r.accept_inbound(PEER_A, [ipv6(A6, ME6)]), [])
        self.assertEqual(m.drops(), {"ipv6_disabled": 3})
        self.assertEqual(rlog.levels, [LogLevel.debug, LogLevel.debug])

    def test_link_local_ipv6_is_counted_and_logged_at_debug_only(self) -> None:
        r, m, rlog = make_router()
        self.assertEqual(r.route_outbound([ipv6("fe80::1", "ff02::16"), ipv6("fd00:99::1", A6)]), {})
        self.assertEqual(m.drops(), {"link_local": 1, "source_not_local": 1})
        self.assertEqual(sorted(rlog.levels), [LogLevel.debug, LogLevel.warn])

    def test_broadcast_enabled(self) -> None:
        r, m, _ = make_router(enable_broadcast=True)
        b1, b2 = ipv4(ME4, "255.255.255.255"), ipv4(ME4, "100.127.255.255")
        self.assertEqual(r.route_outbound([b1, b2]), {PEER_A: [b1, b2], PEER_B: [b1, b2]})

    def test_trailing_bytes_truncated(self) -> None:
        r, _, _ = make_router()
        pkt = ipv4(ME4, A4)
        self.assertEqual(r.route_outbound([pkt + b"pad"]), {PEER_A: [pkt]})

    def test_gso_super_packet_allowed_above_mtu(self) -> None:
        r, m, _ = make_router(vnet_hdr=True)
        big = vnet(ipv4(ME4, A4, b"t" * 60000, proto=6), gso_type=P.GSO_TCPV4, gso_size=1448, hdr_len=40)
        plain_big = vnet(ipv4(ME4, A4, b"t" * 60000, proto=6))
        short = b"\x00" * 5
        self.assertEqual(r.route_outbound([big, plain_big, short]), {PEER_A: [big]})
        self.assertEqual(m.drops(), {"oversize": 1, "malformed": 1})

    def test_local_cidrs(self) -> None:
        r, m, _ = make_router(local_cidrs=[ip_network("192.168.50.0/24")])
        pkt = ipv4("192.168.50.7", A4)
        self.assertEqual(r.route_outbound([pkt]), {PEER_A: [pkt]})

    def test_moved_local_address_follows_for_sources_and_destinations(self) -> None:
        # Dynamic addressing moved us from ME4 to 100.64.0.99 (docs/addressing.md).
        r, m, _ = make_router(local_cidrs=[ip_network("192.168.50.0/24")])
        new4 = "100.64.0.99"
        r.set_local(IPv4Interface(f"{new4}/10"), IPv6Interface(f"{ME6}/64"))
        old_src, new_src, to_old, extra = ipv4(ME4, A4), ipv4(new4, A4), ipv4(new4, ME4), ipv4("192.168.50.7", A4)
        self.assertEqual(r.route_outbound([old_src, new_src, to_old, extra]), {PEER_A: [new_src, extra]})
        self.assertEqual(m.drops(), {"source_not_local": 1, "no_route": 1})
        self.assertEqual(r.accept_inbound(PEER_A, [ipv4(A4, new4), ipv4(A4, ME4)]), [ipv4(A4, new4)])

    @given(st.lists(st.binary(max_size=60), max_size=20))
    def test_garbage_never_raises(self, batch: list[bytes]) -> None:
        r, m, _ = make_router(vnet_hdr=random.random() < 0.5)
        out = r.route_outbound(batch)
        routed = sum(len(v) for v in out.values())
        self.assertEqual(routed + sum(m.drops().values()), len(batch))


class InboundTests(SynchronousTestCase):
    def test_accepts_from_owner(self) -> None:
        r, m, _ = make_router()
        p4, p6, p_prefix = ipv4(A4, ME4), ipv6(A6, ME6), ipv4("10.9.3.3", ME4)
        self.assertEqual(r.accept_inbound(PEER_A, [p4, p6, p_prefix]), [p4, p6, p_prefix])
        self.assertEqual(m.drops(), {})

    def test_anti_spoofing(self) -> None:
        r, m, rlog = make_router()
        spoofed = [ipv4(A4, ME4), ipv4("100.64.5.5", ME4), ipv4("10.9.0.1", ME4)]
        self.assertEqual(r.accept_inbound(PEER_B, spoofed), [])
        self.assertEqual(m.drops(), {"source_not_peer": 3})
        self.assertEqual(rlog.events[0][0], ("source_not_peer", PEER_B))

    def test_drop_reasons(self) -> None:
        r, m, _ = make_router()
        batch = [
            ipv4(A4, B4),  # no transit forwarding
            ipv4(A4, "255.255.255.255"),
            ipv4(A4, ME4, ihl=3),
            ipv4(A4, ME4, b"z" * 1600),
            b"\x45",
        ]
        self.assertEqual(r.accept_inbound(PEER_A, batch), [])
        self.assertEqual(m.drops(), {"destination_not_local": 2, "malformed": 2, "oversize": 1})

    def test_broadcast_delivered_when_enabled(self) -> None:
        r, _, _ = make_router(enable_broadcast=True)
        pkts = [ipv4(A4, "255.255.255.255"), ipv4(A4, "100.127.255.255")]
        self.assertEqual(r.accept_inbound(PEER_A, pkts), pkts)

    def test_vnet_adaptation(self) -> None:
        plain = ipv4(A4, ME4, b"t" * 100, proto=6)
        gso = vnet(plain, gso_type=P.GSO_TCPV4, gso_size=50, hdr_len=40)
        csum = vnet(plain, flags=P.VNET_F_NEEDS_CSUM, csum_start=20, csum_offset=16)
        # offload TUN here, plain sender: a no-offload header is prepended
        r, m, _ = make_router(vnet_hdr=True)
        self.assertEqual(r.accept_inbound(PEER_A, [plain], vnet_hdr=False), [bytes(10) + plain])
        self.assertEqual(r.accept_inbound(PEER_A, [gso], vnet_hdr=True), [gso])
        # plain TUN here, offload sender: header stripped; GSO / NEEDS_CSUM done in software
        r, m, _ = make_router(vnet_hdr=False)
        self.assertEqual(
            r.accept_inbound(PEER_A, [vnet(plain), gso, csum], vnet_hdr=True),
            [plain, *gso_mod.segment(gso), gso_mod.strip_or_complete_checksum(csum)],
        )
        self.assertEqual(m.drops(), {})
        self.assertEqual(m.value("software_offload_packets"), 3)

    def test_software_segmentation_for_a_tun_without_offload(self) -> None:
        """A TSO super-packet from an offload peer reaches a plain TUN as MTU-sized, valid segments."""
        tcp = struct.pack(">HHIIBBHHH", 40000, 5201, 1000, 0, 5 << 4, 0x18, 65535, 0, 0)
        payload = bytes(range(256)) * 12  # 3072 bytes
        ip = ipv4(A4, ME4, tcp + payload, proto=6)
        pseudo = gso_mod._pseudo_sum(4, ip[12:16], ip[16:20], 6, len(tcp) + len(payload))
        partial = (~gso_mod.checksum(b"", pseudo)) & 0xFFFF  # what the kernel leaves for NEEDS_CSUM
        ip = ip[:36] + partial.to_bytes(2, "big") + ip[38:]
        sup = vnet(
            ip, flags=P.VNET_F_NEEDS_CSUM, gso_type=P.GSO_TCPV4, hdr_len=40, gso_size=1000,
            csum_start=20, csum_offset=16,
        )
        r, m, _ = make_router(vnet_hdr=False, mtu=1040)
        out = r.accept_inbound(PEER_A, [sup], vnet_hdr=True)
        self.assertEqual([len(p) for p in out], [1040, 1040, 1040, 112])
        self.assertEqual(b"".join(p[40:] for p in out), payload)
        for i, seg in enumerate(out):
            self.assertEqual(gso_mod.checksum(seg[:20]), 0)  # IPv4 header checksum
            l4 = gso_mod._pseudo_sum(4, seg[12:16], seg[16:20], 6, len(seg) - 20)
            self.assertEqual(gso_mod.checksum(seg[20:], l4), 0)  # TCP checksum
            self.assertEqual(int.from_bytes(seg[24:28], "big"), 1000 + 1000 * i)
        self.assertEqual(m.drops(), {})
        # segments larger than our MTU are dropped as oversize; a GSO packet it cannot parse as offload_mismatch
        r, m, _ = make_router(vnet_hdr=False, mtu=1000)
        self.assertEqual(r.accept_inbound(PEER_A, [sup], vnet_hdr=True), [])
        bad = vnet(ipv4(A4, ME4, tcp + payload, proto=17), gso_type=P.GSO_TCPV4, hdr_len=40, gso_size=1000)
        self.assertEqual(r.accept_inbound(PEER_A, [bad], vnet_hdr=True), [])
        self.assertEqual(m.drops(), {"oversize": 1, "offload_mismatch": 1})

    def test_bad_vnet_header_from_peer(self) -> None:
        r, m, _ = make_router(vnet_hdr=True)
        bad = vnet(ipv4(A4, ME4), gso_type=P.GSO_TCPV6, gso_size=10)
        self.assertEqual(r.accept_inbound(PEER_A, [bad, b"\x00" * 12]), [])
        self.assertEqual(m.drops(), {"malformed": 2})

    @given(st.lists(st.binary(max_size=60), max_size=20), st.booleans(), st.booleans())
    def test_garbage_never_raises(self, batch: list[bytes], ours: bool, theirs: bool) -> None:
        r, m, _ = make_router(vnet_hdr=ours)
        accepted = r.accept_inbound(PEER_A, batch, vnet_hdr=theirs)
        self.assertEqual(len(accepted) + sum(m.drops().values()), len(batch))
