"""Traffic through a real mesh: 3 ``twistd tunmesh`` nodes in 3 namespaces, apps in the same namespaces.

- every pair pings both ways, IPv4 and IPv6;
- a 200 MB TCP transfer arrives intact (SHA-256) while session keys rotate every few seconds;
- a packet with a spoofed source, sent into a link by a compromised peer, is dropped and counted;
- a node killed and restarted carries traffic again;
- a node without TUN offload and one with it exchange bulk TCP (software segmentation).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.integration.cluster import Cluster, node_config, overlay_v4, overlay_v6
from tests.netns import REPO_ROOT, NetnsError, Underlay, requires_root_netns

BOOT = ["https://198.18.0.1:4567/"]
FAST = {"local": {"reregistration_interval": 1, "stale_threshold": 5}}

RECEIVER = r"""
import hashlib, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5201)); s.listen(1)
print("listening", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 20)
    if not b: break
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)
"""

SENDER = r"""
import hashlib, random, socket, sys, time
total = int(sys.argv[2]); rng = random.Random(20261123); h = hashlib.sha256()
seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0  # spread the transfer over at least this long
s = socket.create_connection((sys.argv[1], 5201), timeout=30); sent = 0; start = time.monotonic()
while sent < total:
    chunk = rng.randbytes(min(1 << 20, total - sent)); s.sendall(chunk); h.update(chunk); sent += len(chunk)
    ahead = start + seconds * sent / total - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)
s.shutdown(socket.SHUT_WR); s.recv(1); s.close()
print(sent, h.hexdigest(), flush=True)
"""


def ping(cluster: Cluster, i: int, address: str, count: int = 3) -> bool:
    argv = ["ping", "-c", str(count), "-i", "0.2", "-W", "2", address]
    if ":" in address:
        argv.insert(1, "-6")
    return cluster.ns(i).run(argv, check=False, timeout=30).returncode == 0


def wait_ping(cluster: Cluster, i: int, address: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not ping(cluster, i, address, count=1):
        if time.monotonic() > deadline:
            raise NetnsError(f"node {i} cannot ping {address} after {timeout}s\n{cluster.logs()}")
        time.sleep(0.5)


def transfer(test: TestCase, cluster: Cluster, src: int, dst: int, size: int, seconds: float = 0.0) -> None:
    """Send ``size`` random bytes over TCP from node ``src``'s namespace to node ``dst``'s overlay
    address (spread over at least ``seconds``) and check that the receiver got exactly them (length
    and SHA-256)."""
    receiver = cluster.ns(dst).popen(
        [sys.executable, "-c", RECEIVER, overlay_v4(dst)], stdout=-1, stderr=-1, text=True
    )
    try:
        test.assertEqual(receiver.stdout.readline().strip(), "listening")
        sender = cluster.ns(src).run(
            [sys.executable, "-c", SENDER, overlay_v4(dst), str(size), str(seconds)], check=False, timeout=300
        )
        received, _ = receiver.communicate(timeout=60)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    test.assertEqual(sender.returncode, 0, sender.stderr + cluster.logs())
    test.assertEqual(received.split(), sender.stdout.split())
    test.assertEqual(int(received.split()[0]), size)


def workdir(name: str) -> Path:
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"tmt-{name}-{os.getpid()}"


@requires_root_netns
class ThreeNodeTrafficTests(TestCase):
    timeout = 400

    def test_ping_every_pair_both_ways_ipv4_and_ipv6(self) -> None:
        with Underlay(nodes=3, tag="p") as underlay:
            cluster = Cluster(
                underlay, workdir("ping"), lambda i: node_config(i, BOOT, timing=FAST, packet_metrics=True)
            )
            try:
                cluster.start_all()
                cluster.wait_full_mesh()
                failures = []
                for i in (1, 2, 3):
                    for j in (1, 2, 3):
                        if i == j:
                            continue
                        wait_ping(cluster, i, overlay_v4(j))
                        for address in (overlay_v4(j), overlay_v6(j)):
                            if not ping(cluster, i, address):
                                failures.append((i, address))
                self.assertEqual(failures, [], cluster.logs())
                # every packet link is channel-bound (W5): 3 nodes x 2 outbound links
                logs = "\n".join(n.log_path.read_text(errors="replace") for n in cluster.nodes.values())
                self.assertGreaterEqual(logs.count("up (bound to its TLS session)"), 6, cluster.logs())
                self.assertNotIn("up (no TLS)", logs)
                # per-peer packet metrics (monitoring.enable_node_packet_metrics), by authenticated peer
                ids = cluster.wait_full_mesh()
                for j in (2, 3):
                    self.assertGreater(
                        cluster.metric(
                            1, "tunmesh_remote_rx_packets_by_source_node_total", source_node_id=ids[j]
                        ),
                        0,
                    )
            finally:
                cluster.stop_all()

    def test_200mb_transfer_intact_while_keys_rotate(self) -> None:
        size = 200 * 1024 * 1024
        with Underlay(nodes=2, tag="t") as underlay:
            cluster = Cluster(
                underlay, workdir("xfer"), lambda i: node_config(i, BOOT, timing=FAST, session_max_age=1.5)
            )
            try:
                cluster.start_all()
                cluster.wait_full_mesh()
                wait_ping(cluster, 2, overlay_v4(1))
                rotations_before = cluster.metric(1, "tunmesh_mesh_inbound_sessions_total", kind="rotate", result="ok")
                started = time.monotonic()
                # At least 6 s, so that several rotations (every ~1.4 s) happen whatever the link speed.
                transfer(self, cluster, 2, 1, size, seconds=6.0)
                elapsed = time.monotonic() - started
                rotations = (
                    cluster.metric(1, "tunmesh_mesh_inbound_sessions_total", kind="rotate", result="ok")
                    - rotations_before
                )
                # Keys of the 2->1 direction rotate about every 1.4 s (1.5 s x U(0.9, 1)), checked each groom tick.
                self.assertGreaterEqual(rotations, 2, f"{rotations} rotations during a {elapsed:.1f}s transfer")
                self.assertEqual(cluster.metric(1, "tunmesh_link_frames_dropped_total"), 0)
            finally:
                cluster.stop_all()

    def test_offload_node_and_plain_node_exchange_bulk_tcp(self) -> None:
        """Node 1 runs without TUN offload, node 2 with it: node 2's TSO super-packets are segmented
        in software at node 1, and bulk TCP works both ways."""
        size = 20 * 1024 * 1024
        with Underlay(nodes=2, tag="o") as underlay:
            cluster = Cluster(
                underlay, workdir("mixed"), lambda i: node_config(i, BOOT, timing=FAST, offload=i != 1)
            )
            try:
                cluster.start_all()
                cluster.wait_full_mesh()
                wait_ping(cluster, 2, overlay_v4(1))
                transfer(self, cluster, 2, 1, size)
                transfer(self, cluster, 1, 2, size)
                self.assertGreater(cluster.metric(1, "tunmesh_software_offload_packets_total"), 0)
                self.assertEqual(
                    cluster.metric(1, "tunmesh_dropped_packets_total", reason="offload_mismatch"), 0
                )
            finally:
                cluster.stop_all()

    def test_spoofed_source_from_a_compromised_peer_is_dropped_and_counted(self) -> None:
        with Underlay(nodes=3, tag="s") as underlay:
            cluster = Cluster(underlay, workdir("spoof"), lambda i: node_config(i, BOOT, timing=FAST))
            try:
                cluster.start(1)
                cluster.start(2)
                # Node 3 holds the cluster secret but is compromised: its own transmit-side source check is
                # disabled (tests/integration/rogue_node.py), so it forwards whatever its namespace sends.
                d = cluster.workdir / "node3"
                cluster.nodes[3] = _start_rogue(cluster, 3, d)
                for node in cluster.nodes.values():
                    node.wait_ready(timeout=60)
                ids = cluster.wait_full_mesh()
                wait_ping(cluster, 3, overlay_v4(1))
                before = cluster.metric(1, "tunmesh_dropped_packets_total", reason="source_not_peer")
                # From node 3's namespace: UDP to node 1 claiming to come from node 2's overlay address.
                cluster.ns(3).run(
                    [sys.executable, "-c", SPOOF, overlay_v4(2), overlay_v4(1), "20"], timeout=30
                )
                deadline = time.monotonic() + 10
                while cluster.metric(1, "tunmesh_dropped_packets_total", reason="source_not_peer") - before < 20:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
                self.assertEqual(
                    cluster.metric(1, "tunmesh_dropped_packets_total", reason="source_not_peer") - before, 20,
                    cluster.logs(),
                )
                # The link and the honest traffic survive.
                self.assertTrue(ping(cluster, 3, overlay_v4(1)))
                self.assertTrue(ping(cluster, 2, overlay_v4(1)))
                self.assertIn(ids[3], cluster.peers_of(1))
            finally:
                cluster.stop_all()

    def test_killed_and_restarted_node_resumes_traffic(self) -> None:
        with Underlay(nodes=2, tag="k") as underlay:
            cluster = Cluster(underlay, workdir("kill"), lambda i: node_config(i, BOOT, timing=FAST))
            try:
                cluster.start_all()
                cluster.wait_full_mesh()
                wait_ping(cluster, 1, overlay_v4(2))
                cluster.nodes[2].proc.kill()
                cluster.nodes[2].proc.wait()
                cluster.nodes.pop(2)
                self.assertFalse(ping(cluster, 1, overlay_v4(2), count=1))
                cluster.start(2).wait_ready(timeout=60)
                cluster.wait_full_mesh()
                wait_ping(cluster, 1, overlay_v4(2), timeout=30)
                wait_ping(cluster, 2, overlay_v6(1), timeout=30)
            finally:
                cluster.stop_all()


SPOOF = r"""
import socket, struct, sys
src, dst, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
payload = b"spoofed"
udp = struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for _ in range(count):
    s.sendto(ip + udp, (dst, 0))
"""


def _start_rogue(cluster: Cluster, i: int, d: Path):
    import subprocess

    from tests.netns import NodeProcess

    log = d / "node.log"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    out = open(log.with_suffix(".stdout"), "wb")
    try:
        proc = cluster.ns(i).popen(
            [sys.executable, str(REPO_ROOT / "tests" / "integration" / "rogue_node.py"), "-n", "--pidfile=",
             f"--logfile={log}", "tunmesh", "--config", str(d / "config.yaml")],
            cwd=str(REPO_ROOT), env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    finally:
        out.close()
    return NodeProcess(cluster.ns(i), d / "config.yaml", log, f"https://198.18.0.{i}:4567", proc)
