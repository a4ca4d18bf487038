"""The datagram path between real nodes: small packets over UDP on the API port number, falling back to the TLS
link when UDP stops passing, and back again (2 ``twistd tunmesh`` nodes in 2 namespaces)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.integration.cluster import Cluster, node_config, overlay_v4, overlay_v6
from tests.netns import NetnsError, Underlay, requires_root_netns

BOOT = ["https://198.18.0.1:4567/"]
BLOCK_UDP = """table inet tmt_udp {
  chain c { type filter hook input priority 0; policy accept;
    udp dport 4567 drop
  }
}
"""


def workdir(name: str) -> Path:
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"tmt-{name}-{os.getpid()}"


def wait_metric(cluster: Cluster, i: int, name: str, want: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while cluster.metric(i, name) != want:
        if time.monotonic() > deadline:
            raise NetnsError(f"node {i}: {name} is {cluster.metric(i, name)}, not {want}, after {timeout}s\n"
                             + cluster.logs())
        time.sleep(0.5)


def ping_received(cluster: Cluster, i: int, address: str, count: int) -> int:
    argv = ["ping", "-c", str(count), "-i", "0.05", "-W", "1", address]
    if ":" in address:
        argv.insert(1, "-6")
    out = cluster.ns(i).run(argv, check=False, timeout=60).stdout
    m = re.search(r"(\d+) received", out)
    return int(m.group(1)) if m else 0


@requires_root_netns
class DatagramPathTests(TestCase):
    timeout = 300

    def test_small_packets_go_over_udp_and_fall_back_to_the_link_when_it_is_blocked(self) -> None:
        with Underlay(nodes=2, tag="d") as underlay:
            cluster = Cluster(underlay, workdir("dgram"), lambda i: node_config(i, BOOT))
            try:
                cluster.start_all()
                cluster.wait_full_mesh()
                for i in (1, 2):
                    wait_metric(cluster, i, "tunmesh_link_datagram_paths", 1, 30)
                tx = cluster.metric(1, "tunmesh_link_datagrams_total", direction="tx")
                frames = cluster.metric(1, "tunmesh_link_frames_total", direction="tx")
                self.assertEqual(ping_received(cluster, 1, overlay_v4(2), 20), 20)
                self.assertEqual(ping_received(cluster, 1, overlay_v6(2), 10), 10)
                # 30 requests as datagrams from node 1, 30 answers received as datagrams by node 1
                self.assertGreaterEqual(cluster.metric(1, "tunmesh_link_datagrams_total", direction="tx") - tx, 30)
                self.assertGreaterEqual(cluster.metric(2, "tunmesh_link_datagrams_total", direction="rx"), 30)
                self.assertGreaterEqual(cluster.metric(1, "tunmesh_link_datagrams_total", direction="rx"), 30)
                self.assertLess(cluster.metric(1, "tunmesh_link_frames_total", direction="tx") - frames, 5)

                # UDP to node 2 blocked: node 1's path is lost within a keepalive period or two, and
                # the pings go over the TLS link.
                cluster.ns(2).run(["nft", "-f", "-"], input=BLOCK_UDP)
                wait_metric(cluster, 1, "tunmesh_link_datagram_paths", 0, 40)
                self.assertEqual(cluster.metric(2, "tunmesh_link_datagram_paths"), 1)  # the other way still passes
                frames = cluster.metric(1, "tunmesh_link_frames_total", direction="tx")
                self.assertEqual(ping_received(cluster, 1, overlay_v4(2), 10), 10)
                self.assertGreaterEqual(cluster.metric(1, "tunmesh_link_frames_total", direction="tx") - frames, 10)
                self.assertEqual(cluster.metric(1, "tunmesh_links_connected", direction="out"), 1)

                # Unblocked: the next probe proves the path again.
                cluster.ns(2).run(["nft", "delete", "table", "inet", "tmt_udp"])
                wait_metric(cluster, 1, "tunmesh_link_datagram_paths", 1, 40)
                self.assertEqual(ping_received(cluster, 1, overlay_v4(2), 10), 10)
                logs = cluster.logs()
                self.assertIn("datagram path to", logs)
                self.assertNotIn("Traceback", logs)
            finally:
                cluster.ns(2).run(["nft", "delete", "table", "inet", "tmt_udp"], check=False)
                cluster.stop_all()
