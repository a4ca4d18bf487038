"""Membership with real processes: 3 ``twistd tunmesh`` nodes in 3 namespaces form a full mesh through
gossip (they only know node 1), a killed node is groomed by the others, a cleanly stopped one is removed at
once (it announces that it leaves), and a restarted one (new node id, same URL and address) is re-admitted
and replaces its old entry."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.integration.cluster import SLOW_STALE, started_mesh, wait_until
from tests.netns import requires_root_netns

FAST = {"local": {"reregistration_interval": 1, "stale_threshold": 5}, "mesh": {"reregistration_interval": 1, "stale_threshold": 5}}


@requires_root_netns
class ThreeNodeMembershipTests(TestCase):
    timeout = 240

    def test_converge_groom_and_readmit(self) -> None:
        with started_mesh(3, "m", FAST) as (cluster, ids):
            self.assertEqual(len(set(ids.values())), 3)
            view = cluster.peer_view(2)
            self.assertEqual(view["peers"][ids[3]]["addresses"][:1], ["100.64.0.3/32"])
            # every control connection is channel-bound (W5(a)): each node logged it for both of its peers
            for i in (1, 2, 3):
                log = cluster.nodes[i].log_path.read_text(errors="replace")
                self.assertGreaterEqual(log.count("are bound to their TLS session"), 2, cluster.logs())
                self.assertNotIn("channel_binding", log, cluster.logs())

            # Node 3 is killed: the others groom it (no authenticated contact past stale_threshold).
            cluster.kill(3)
            wait_until(
                lambda: ids[3] not in cluster.peers_of(1) and ids[3] not in cluster.peers_of(2),
                30, "node 3 to be groomed", cluster.logs,
            )
            self.assertEqual(cluster.metric(1, "tunmesh_mesh_peers_removed_total", reason="stale"), 1)

            # Restarted with a new id at the same URL and address: re-admitted by both.
            cluster.start(3).wait_ready(timeout=60)
            new_ids = cluster.wait_full_mesh(timeout=60)
            self.assertNotEqual(new_ids[3], ids[3])
            self.assertEqual(new_ids[1], ids[1])
            self.assertNotIn(ids[3], cluster.peers_of(1))

    def test_clean_stop_is_announced_and_removed_at_once(self) -> None:
        """SIGTERM: the node tells its peers it leaves; they drop it far below the stale threshold."""
        with started_mesh(3, "l", SLOW_STALE) as (cluster, ids):
            log_path = cluster.nodes[3].log_path
            cluster.stop(3)
            for i in (1, 2):
                self.assertNotIn(ids[3], cluster.peers_of(i))
                self.assertEqual(cluster.metric(i, "tunmesh_mesh_peers_removed_total", reason="left"), 1)
            self.assertIn("left the mesh: 2 of 2 peers acknowledged", log_path.read_text(errors="replace"))
            # Each SIGTERM'd node leaves without a traceback (the stop used to fire from inside the last
            # acknowledgement's dataReceived, and the reactor cut that TLS connection under it).
            logs = {3: log_path}
            for i in (2, 1):
                logs[i] = cluster.nodes[i].log_path
                cluster.stop(i)
            for i, path in logs.items():
                text = path.read_text(errors="replace") + path.with_suffix(".stdout").read_text(errors="replace")
                self.assertIn("Main loop terminated", text, f"node {i}")
                for bad in ("Unhandled Error", "Traceback"):
                    self.assertNotIn(bad, text, f"node {i} log:\n{text[-3000:]}")

    def test_restart_replaces_old_entry_before_it_goes_stale(self) -> None:
        with started_mesh(2, "r", SLOW_STALE) as (cluster, ids):
            cluster.kill(2)  # no leave announced: node 1 must notice the restart itself
            cluster.start(2).wait_ready(timeout=60)
            # Far below the 120 s stale threshold, node 1 has swapped the old id for the new one.
            new = cluster.wait_full_mesh(timeout=30)
            self.assertNotEqual(new[2], ids[2])
            self.assertEqual(cluster.peers_of(1), {new[2]})
            self.assertEqual(cluster.metric(1, "tunmesh_mesh_peers_removed_total", reason="left"), 0)
