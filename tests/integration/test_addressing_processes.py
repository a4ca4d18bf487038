"""Dynamic addressing with real processes: 10 ``twistd tunmesh`` nodes in 10 namespaces, one config shape
without any node address, get 10 distinct addresses on their TUN devices and a full mesh that carries
ping; two of them are forced onto the same first candidate and one moves (through the address helper);
a node restarted with the same identity gets its address back."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.integration.cluster import PORT, Cluster, node_config
from tests.netns import NetnsError, Underlay, requires_root_netns, start_node

NODES = 10
BOOT = ["https://198.18.0.1:4567/"]
#: nodes 9 and 10 both ask for index 3 (100.64.0.4): the rule must move one of them
FORCED = {9: "3", 10: "3"}


def dynamic_config(i: int) -> str:
    """The cluster test config with every node_address_cidr line removed: one shape for all replicas."""
    text = node_config(i, bootstrap=BOOT)
    return "\n".join(line for line in text.splitlines() if "node_address_cidr" not in line) + "\n"


def pod_env(i: int) -> dict[str, str]:
    """A Deployment-like pod name (no ordinal: the advertise host seeds the address), or a forced index."""
    if i in FORCED:
        return {"TUNMESH_NODE_INDEX": FORCED[i], "HOSTNAME": f"web-5f7c9-n{i}"}
    suffix = "".join(random.Random(i).choice("bcdfghjklmnpqrstvwxz") for _ in range(5))
    return {"HOSTNAME": f"web-5f7c9-{suffix}"}


def wait_meshed(cluster: Cluster, timeout: float) -> None:
    """Until every node has every other one in its pool with an outbound session (metrics over curl: cheaper
    than ten ``tunmesh peers`` interpreters per round on a busy host)."""
    deadline = time.monotonic() + timeout
    want = float(len(cluster.nodes) - 1)
    while True:
        counts = {i: (cluster.metric(i, "tunmesh_mesh_peers"), cluster.metric(i, "tunmesh_mesh_sessions"))
                  for i in cluster.nodes}
        if all(c == (want, want) for c in counts.values()):
            return
        if time.monotonic() > deadline:
            raise NetnsError(f"no full mesh after {timeout}s: (peers, sessions) {counts}\n{cluster.logs()}")
        time.sleep(0.5)


def capabilities(pid: int) -> tuple[int, int]:
    """(effective capability mask, effective uid) of a process."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["CapEff"].strip(), 16), int(fields["Uid"].split()[1])


def tun_addresses(cluster: Cluster, i: int) -> tuple[str, str]:
    out = cluster.ns(i).run(["ip", "-j", "addr", "show", "dev", "tun1"]).stdout
    infos = [a for a in json.loads(out)[0]["addr_info"] if a.get("scope") == "global"]
    v4 = [f"{a['local']}/{a['prefixlen']}" for a in infos if a["family"] == "inet"]
    v6 = [f"{a['local']}/{a['prefixlen']}" for a in infos if a["family"] == "inet6"]
    if len(v4) != 1 or len(v6) != 1:
        raise NetnsError(f"node {i}: TUN addresses {v4} {v6}")
    return v4[0], v6[0]


@requires_root_netns
class DynamicAddressingProcessTests(TestCase):
    timeout = 300

    def start(self, cluster: Cluster, i: int) -> None:
        d = cluster.workdir / f"node{i}"
        cluster.nodes[i] = start_node(
            cluster.ns(i), d / "config.yaml", f"https://198.18.0.{i}:{PORT}", log_path=d / "node.log", env=pod_env(i)
        )

    def test_ten_nodes_without_addresses(self) -> None:
        with Underlay(nodes=NODES, tag="da") as underlay:
            workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"tmt-addr-{os.getpid()}"
            cluster = Cluster(underlay, workdir, dynamic_config)
            try:
                self.run_cluster(cluster)
            finally:
                cluster.stop_all()

    def run_cluster(self, cluster: Cluster) -> None:
        began = time.monotonic()
        for i in range(1, NODES + 1):
            self.start(cluster, i)
        for node in cluster.nodes.values():
            node.wait_ready(timeout=90)  # /ready includes "address": the claim is held
        ready = time.monotonic() - began
        wait_meshed(cluster, timeout=90)
        converged = time.monotonic() - began
        ids = {i: cluster.node_id(i) for i in cluster.nodes}

        addresses = {i: tun_addresses(cluster, i) for i in ids}
        v4 = {i: a[0] for i, a in addresses.items()}
        self.assertEqual(len(set(v4.values())), NODES, v4)
        self.assertEqual(len({a[1] for a in addresses.values()}), NODES, addresses)
        # The forced pair: one kept 100.64.0.4, the other moved (the helper changed its TUN address).
        forced = sorted(v4[i] for i in FORCED)
        self.assertIn("100.64.0.4/24", forced, v4)
        moved = [i for i in FORCED if v4[i] != "100.64.0.4/24"]
        self.assertEqual(len(moved), 1)
        log = (cluster.workdir / f"node{moved[0]}" / "node.log").read_text(errors="replace")
        self.assertIn("holds 100.64.0.4 with an older claim", log)
        self.assertIn("TUN ipv4 address is now", log)

        # The node itself has no capability left; its address helper child has CAP_NET_ADMIN only.
        node_pid = cluster.nodes[9].pid
        self.assertEqual(capabilities(node_pid), (0, 65534))
        children = Path(f"/proc/{node_pid}/task/{node_pid}/children").read_text().split()
        self.assertEqual([capabilities(int(c)) for c in children], [(1 << 12, 65534)])

        # Every node's view of every peer is the address on that peer's TUN.
        view = cluster.peer_view(1)
        for i, pid in ids.items():
            if i != 1:
                self.assertEqual(
                    sorted(view["peers"][pid]["addresses"]),
                    sorted([v4[i].split("/")[0] + "/32", addresses[i][1].split("/")[0] + "/128"]),
                )
        # Ping through the overlay: a sample of pairs, including both members of the forced pair.
        for src, dst in ((1, 10), (10, 1), (9, 10), (10, 9), (4, 7), (2, 9)):
            for target in (v4[dst].split("/")[0], addresses[dst][1].split("/")[0]):
                r = cluster.ns(src).run(["ping", "-c", "1", "-w", "6", target], check=False)
                self.assertEqual(r.returncode, 0, f"ping {src} -> {dst} ({target}): {r.stdout}{r.stderr}")

        # Restart with the same identity (same pod name and advertise host): the same address.
        cluster.kill(5)
        self.start(cluster, 5)
        cluster.nodes[5].wait_ready(timeout=60)
        self.assertEqual(tun_addresses(cluster, 5), addresses[5])
        wait_meshed(cluster, timeout=60)
        self.assertNotEqual(cluster.node_id(5), ids[5])
        r = cluster.ns(1).run(["ping", "-c", "1", "-w", "6", v4[5].split("/")[0]], check=False)
        self.assertEqual(r.returncode, 0, r.stdout)
        print(f"\n10 nodes without addresses: all ready after {ready:.1f}s, full mesh with sessions after "
              f"{converged:.1f}s; addresses {sorted(v4.values())}")
