"""The real TUN device inside ``tmt-`` namespaces (root): plain and offload reads and writes, TCP through two
TUNs joined by an in-test relay (TSO super-packets, software segmentation for a plain peer), errors."""

from __future__ import annotations

import hashlib
import select
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Interface, IPv6Interface

from twisted.trial.unittest import SynchronousTestCase

from tests.netns import Namespace, TunPairRelay, Underlay, requires_root_netns
from tunmesh.tun.device import KEY_DEVICE, KEY_IPV6, TunDevice, TunDeviceError
from tunmesh.tun.gso import checksum
from tunmesh.tun.vnet import F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, VNET_HDR_LEN, ZERO_HDR, VirtioNetHdr

MTU = 1400

SERVER = r"""
import hashlib, socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5001)); s.listen(1)
print("listening", flush=True)
s.settimeout(30)
c, _ = s.accept(); c.settimeout(30)
h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 20)
    if not b: break
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)
"""

CLIENT = r"""
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
c = socket.create_connection((sys.argv[1], 5001), timeout=30)
block = bytes(range(256)) * 4096
for _ in range(int(sys.argv[2])): c.sendall(block)
c.close()
"""


def open_in(ns: Namespace, name: str, offload: bool, v4: str, v6: str | None = None) -> TunDevice:
    with ns.entered():
        dev = TunDevice.open(name, offload, MTU)
        try:
            dev.configure(IPv4Interface(v4), IPv6Interface(v6) if v6 else None)
        except BaseException:
            dev.close()
            raise
    return dev


def ipv4_packets(dev: TunDevice, want: int, timeout: float = 5.0) -> list[bytes]:
    """IPv4 packets (virtio header stripped) read within ``timeout``; IPv6 noise (RS, MLD) is skipped."""
    import time

    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        select.select([dev], [], [], 0.2)
        for raw in dev.read_batch():
            ip = raw[dev.vnet_hdr_len:]
            if ip and ip[0] >> 4 == 4:
                out.append(ip)
    return out


def echo_reply(request: bytes) -> bytes:
    """Turn an ICMP echo request into its reply (swap addresses, type 0, fresh checksums)."""
    ihl = (request[0] & 0x0F) * 4
    ip = bytearray(request[:ihl])
    ip[12:16], ip[16:20] = request[16:20], request[12:16]
    ip[10:12] = b"\0\0"
    ip[10:12] = struct.pack("!H", checksum(ip))
    icmp = bytearray(request[ihl:])
    icmp[0] = 0
    icmp[2:4] = b"\0\0"
    icmp[2:4] = struct.pack("!H", checksum(icmp))
    return bytes(ip + icmp)


@requires_root_netns
class SingleTunTests(SynchronousTestCase):
    """One namespace, one TUN: the test answers pings itself."""

    def setUp(self) -> None:
        self.underlay = Underlay(nodes=1).__enter__()
        self.addCleanup(self.underlay.close)
        self.ns = self.underlay.nodes[0]

    def ping_through(self, offload: bool) -> None:
        dev = open_in(self.ns, "tmt-tun0", offload, "100.64.0.1/10")
        self.addCleanup(dev.close)
        self.assertEqual(dev.offload_active, offload)
        ping = self.ns.popen(["ping", "-c", "1", "-W", "5", "100.64.0.2"], stdout=subprocess.PIPE, text=True)
        packets = [p for p in ipv4_packets(dev, 1) if p[9] == 1]
        self.assertEqual(len(packets), 1, "no ICMP packet read from the TUN")
        request = packets[0]
        self.assertEqual(request[16:20], bytes([100, 64, 0, 2]))
        self.assertEqual(request[(request[0] & 0x0F) * 4], 8)  # echo request
        reply = echo_reply(request)
        self.assertTrue(dev.write(ZERO_HDR + reply if offload else reply))
        out, _ = ping.communicate(timeout=10)
        self.assertEqual(ping.returncode, 0, out)
        self.assertIn("1 received", out)

    def test_ping_plain(self) -> None:
        self.ping_through(offload=False)

    def test_ping_offload(self) -> None:
        self.ping_through(offload=True)

    def test_offload_read_has_virtio_header(self) -> None:
        import time

        dev = open_in(self.ns, "tmt-tun0", True, "100.64.0.1/10")
        self.addCleanup(dev.close)
        ping = self.ns.popen(["ping", "-c", "1", "-W", "1", "100.64.0.2"], stdout=subprocess.DEVNULL)
        raws: list[bytes] = []
        deadline = time.monotonic() + 5
        while not any(r[VNET_HDR_LEN] >> 4 == 4 for r in raws) and time.monotonic() < deadline:
            select.select([dev], [], [], 0.2)
            raws.extend(dev.read_batch())
        ping.wait(timeout=10)
        self.assertTrue(any(r[VNET_HDR_LEN] >> 4 == 4 for r in raws), "no IPv4 packet read")
        for raw in raws:
            hdr = VirtioNetHdr.unpack(raw)
            self.assertFalse(hdr.is_gso)
            self.assertIn(raw[VNET_HDR_LEN] >> 4, (4, 6))

    def test_name_taken(self) -> None:
        dev = open_in(self.ns, "tmt-tun0", False, "100.64.0.1/10")
        self.addCleanup(dev.close)
        with self.ns.entered():
            e = self.assertRaises(TunDeviceError, TunDevice.open, "tmt-tun0", False, MTU)
        self.assertEqual(e.key, KEY_DEVICE)
        self.assertIn("is taken", e.message)

    def test_configure_sets_the_link_and_both_addresses_and_tolerates_them_again(self) -> None:
        import json

        dev = open_in(self.ns, "tmt-tun0", True, "100.64.0.1/10", "fd7e:7e57::1/64")
        self.addCleanup(dev.close)
        with self.ns.entered():
            dev.configure(IPv4Interface("100.64.0.1/10"), IPv6Interface("fd7e:7e57::1/64"))  # EEXIST: fine
        (link,) = json.loads(self.ns.run(["ip", "-j", "addr", "show", "dev", "tmt-tun0"]).stdout)
        self.assertEqual((link["mtu"], link["txqlen"]), (MTU, 1000))
        self.assertIn("UP", link["flags"])
        addrs = {(a["local"], a["prefixlen"]) for a in link["addr_info"]}
        self.assertLessEqual({("100.64.0.1", 10), ("fd7e:7e57::1", 64)}, addrs)

    def test_a_netlink_refusal_names_the_config_key(self) -> None:
        with self.ns.entered():
            dev = TunDevice.open("tmt-tun0", False, MTU)
        self.addCleanup(dev.close)
        self.ns.run(["sysctl", "-qw", "net.ipv6.conf.tmt-tun0.disable_ipv6=1"])
        with self.ns.entered():
            e = self.assertRaises(
                TunDeviceError, dev.configure, IPv4Interface("100.64.0.1/10"), IPv6Interface("fd7e:7e57::1/64")
            )
        self.assertEqual(e.key, KEY_IPV6)
        self.assertRegex(e.message, r"^cannot add address fd7e:7e57::1/64 to 'tmt-tun0': \(\d+, '.+'\)$")

    def test_name_of_other_interface(self) -> None:
        with self.ns.entered():
            e = self.assertRaises(TunDeviceError, TunDevice.open, "eth0", True, MTU)
        self.assertEqual(e.key, KEY_DEVICE)

    def test_invalid_virtio_header_refused_not_raised(self) -> None:
        dev = open_in(self.ns, "tmt-tun0", True, "100.64.0.1/10")
        self.addCleanup(dev.close)
        bad_csum = VirtioNetHdr(flags=F_NEEDS_CSUM, csum_start=200, csum_offset=16).pack() + echo_like()
        self.assertFalse(dev.write(bad_csum))
        self.assertFalse(dev.write(b"\x00" * 4))  # shorter than the virtio header
        self.assertEqual(dev.write_batch([bad_csum, ZERO_HDR + echo_like()]), (1, 1))
        self.assertEqual(dev.stats.write_errors["EINVAL"], 3)


def echo_like() -> bytes:
    """A small valid IPv4 ICMP packet from the peer to us (the kernel accepts and then answers or drops it)."""
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 1, 0, bytes([100, 64, 0, 2]),
                               bytes([100, 64, 0, 1])))
    ip[10:12] = struct.pack("!H", checksum(ip))
    icmp = bytearray(struct.pack("!BBHHH", 0, 0, 0, 1, 1))
    icmp[2:4] = struct.pack("!H", checksum(icmp))
    return bytes(ip + icmp)


@requires_root_netns
class TunPairTests(SynchronousTestCase):
    """Two namespaces, a TUN in each, the relay in this process: TCP flows end to end."""

    def setUp(self) -> None:
        self.underlay = Underlay(nodes=2).__enter__()
        self.addCleanup(self.underlay.close)
        self.a, self.b = self.underlay.nodes

    @contextmanager
    def pair(self, offload_a: bool, offload_b: bool) -> Iterator[tuple[TunDevice, TunDevice, list[tuple[str, bytes]]]]:
        da = open_in(self.a, "tmt-tun0", offload_a, "100.64.0.1/10", "fd00:64::1/64")
        self.addCleanup(da.close)
        db = open_in(self.b, "tmt-tun0", offload_b, "100.64.0.2/10", "fd00:64::2/64")
        self.addCleanup(db.close)
        headers: list[tuple[str, bytes]] = []

        def on_read(side: str, raw: bytes) -> None:
            headers.append((side, raw[:VNET_HDR_LEN] + len(raw).to_bytes(4, "big")))

        relay = TunPairRelay(da, db, on_read=on_read if offload_a else None).start()
        try:
            yield da, db, headers
        finally:
            relay.stop()
            self.assertEqual(relay.errors, [])
            self.assertEqual(relay.adapt_errors, 0)

    def transfer(self, dst: str, blocks: int = 8) -> None:
        server = self.b.popen([sys.executable, "-c", SERVER, dst], stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        self.assertEqual(server.stdout.readline().strip(), "listening")
        self.a.run([sys.executable, "-c", CLIENT, dst, str(blocks)], timeout=60)
        out, _ = server.communicate(timeout=60)
        block = bytes(range(256)) * 4096
        expected = hashlib.sha256(block * blocks).hexdigest()
        self.assertEqual(out.split(), [str(len(block) * blocks), expected])

    def superpackets(self, headers: list[tuple[str, bytes]], gso_type: int) -> list[int]:
        sizes = []
        for side, info in headers:
            hdr = VirtioNetHdr.unpack(info)
            if side == "a" and hdr.gso_kind == gso_type:
                sizes.append(int.from_bytes(info[VNET_HDR_LEN:], "big"))
        return sizes

    def test_offload_both_ends_superpackets(self) -> None:
        with self.pair(True, True) as (da, db, headers):
            self.transfer("100.64.0.2")
            self.transfer("fd00:64::2")
        v4 = self.superpackets(headers, GSO_TCPV4)
        v6 = self.superpackets(headers, GSO_TCPV6)
        self.assertTrue(v4 and max(v4) > MTU + VNET_HDR_LEN, f"no TCPv4 super-packet: {v4[:5]}")
        self.assertTrue(v6 and max(v6) > MTU + VNET_HDR_LEN, f"no TCPv6 super-packet: {v6[:5]}")
        # B's kernel accepted the super-packets as written, header included.
        self.assertEqual(dict(db.stats.write_errors), {})
        self.assertGreater(db.stats.bytes_written, 8 * 2**20)

    def test_offload_sender_plain_receiver(self) -> None:
        """Software segmentation: B's kernel checks every checksum we computed, or the transfer fails."""
        with self.pair(True, False) as (da, db, headers):
            self.assertFalse(db.offload_active)
            self.transfer("100.64.0.2")
            self.transfer("fd00:64::2")
        self.assertTrue(self.superpackets(headers, GSO_TCPV4))
        self.assertEqual(dict(db.stats.write_errors), {})
        self.assertEqual(dict(da.stats.write_errors), {})

    def test_plain_both_ends(self) -> None:
        with self.pair(False, False) as (da, db, _):
            self.transfer("100.64.0.2", blocks=2)
        self.assertEqual(dict(db.stats.write_errors), {})
        self.assertGreater(da.stats.packets_read, 2 * 2**20 // MTU)


@requires_root_netns
class HarnessTests(SynchronousTestCase):
    """The namespace harness itself: reachability, loss injection, cleanup."""

    def test_underlay_ping_loss_and_cleanup(self) -> None:
        from tests.netns import list_namespaces

        with Underlay(nodes=2) as u:
            names = {ns.name for ns in (*u.nodes, u.hub)}
            self.assertTrue(names <= set(list_namespaces()))
            u.wait_reachable()
            a, b = u.nodes
            self.assertEqual(b.run(["ping", "-c", "3", "-i", "0.01", a.address or ""]).returncode, 0)
            a.inject_loss(100)
            r = b.run(["ping", "-c", "3", "-i", "0.01", "-W", "1", a.address or ""], check=False)
            self.assertIn("100% packet loss", r.stdout)
            a.clear_loss()
            self.assertEqual(b.run(["ping", "-c", "1", "-W", "2", a.address or ""]).returncode, 0)
            sleeper = a.popen(["sleep", "60"])
        self.assertIsNotNone(sleeper.poll())
        self.assertFalse(names & set(list_namespaces()))

    def test_cleanup_stale_removes_dead_owner_only(self) -> None:
        import subprocess as sp

        from tests.netns import cleanup_stale, list_namespaces

        dead = sp.Popen(["true"])
        dead.wait()
        stale = f"tmt-{dead.pid}-n1"
        sp.run(["ip", "netns", "add", stale], check=True)
        self.addCleanup(sp.run, ["ip", "netns", "del", stale], capture_output=True)
        with Underlay(nodes=1) as u:
            removed = cleanup_stale()
            self.assertIn(stale, removed)
            self.assertIn(u.nodes[0].name, list_namespaces())

    def test_required_env_turns_skip_into_failure(self) -> None:
        from tests import netns

        self.patch(netns, "netns_unavailable_reason", lambda: "needs root (network namespaces)")
        self.patch(netns.os, "environ", {"TUNMESH_REQUIRE_NETNS": "1"})
        self.assertRaises(AssertionError, netns.require_netns)
        self.patch(netns.os, "environ", {})
        from unittest import SkipTest

        self.assertRaises(SkipTest, netns.require_netns)
