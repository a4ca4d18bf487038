"""Rotating the cluster secret in the documented rolling order, in memory (issue 8, part 3).

Three nodes go through the three steps of docs/security.md ("Rotating the cluster secret"): add the new
secret everywhere, switch signing to it everywhere, remove the old one; one node at a time, by restart
(a new process: new node id, same URL and address) or by reload (SIGHUP's ``set_cluster_keyring``).
No node that is not being restarted ever loses a peer, and no request is refused by authentication.
A control case skips step 1 and shows what the order protects against.
"""

from __future__ import annotations

import itertools

from tests.unit.mesh_support import MeshTestCase, Node, advance, node_id
from tunmesh.auth.cluster import ClusterKeyring

OLD = "Qx7vR2mN9pL4kT8wZ3yB6cF1hJ5dG0sAe"
NEW = "Zy8wX3vU6tS1rQ4pO7nM0lK9jI2hG5fEdCbA"

START_RING = ClusterKeyring({"default": OLD})  # the single-secret form
STEPS = (
    ("add the new secret", ClusterKeyring({"default": OLD, "new": NEW}, "default")),
    ("sign with the new secret", ClusterKeyring({"default": OLD, "new": NEW}, "new")),
    ("remove the old secret", ClusterKeyring({"new": NEW}, "new")),
)
SESSION_MAX_AGE = 40.0  # sessions rotate (and are re-salted) during the steps too


class RollingRotationTests(MeshTestCase):
    def setUp(self) -> None:
        super().setUp()
        self._ids = itertools.count(100)

    def start_mesh(self) -> list[Node]:
        urls = [f"https://n{i}.test:4567" for i in (1, 2, 3)]
        nodes = [
            self.node(i, tuple(u for u in urls if u != urls[i - 1]), secret=START_RING, session_max_age=SESSION_MAX_AGE)
            for i in (1, 2, 3)
        ]
        for n in nodes:
            n.start()
        advance(self.clock, 15)
        self.assertFullMesh(nodes)
        return nodes

    def restart(self, nodes: list[Node], index: int, ring: ClusterKeyring) -> Node:
        """Stop one node (it tells its peers it leaves) and start a new process with `ring` at its URL."""
        old = nodes[index]
        old.stop()
        self.nodes.remove(old)
        self.clock.advance(0)
        n = index + 1
        others = tuple(o.url for o in nodes if o is not old)
        new = self.node(
            n, others, ident=node_id(next(self._ids)), secret=ring, session_max_age=SESSION_MAX_AGE
        )
        new.start()
        nodes[index] = new
        return new

    def auth_failures(self, nodes: list[Node]) -> float:
        return sum(n.counter("tunmesh_auth_failures_total") for n in nodes)

    def roll(self, how: str) -> tuple[list[Node], list[str]]:
        nodes = self.start_mesh()
        failures_before = self.auth_failures(nodes)
        restarted: set[str] = set()
        report = []
        for step, ring in STEPS:
            for index in range(3):
                if how == "restart" or (how == "mixed" and index == 1):
                    restarted.add(nodes[index].id)
                    self.restart(nodes, index, ring)
                else:
                    nodes[index].membership.set_cluster_keyring(ring)
                # the next node is rolled once this one is back in every view (a rolling update's
                # readiness gate), well within a stale threshold
                advance(self.clock, 8)
                self.assertFullMesh(nodes)
            advance(self.clock, 30)
            self.assertFullMesh(nodes)
            report.append(f"{step}: full mesh")
        # Every node that was not restarted kept every registration it ever had, except the
        # restarted nodes' old ids (each told its peers it left).
        for n in nodes:
            downs = {peer for kind, peer in n.observer.events if kind == "down"}
            self.assertLessEqual(downs, restarted, f"{n.id} lost a registration")
        self.assertEqual(self.auth_failures(nodes), failures_before, "a request was refused during the rotation")
        for n in nodes:
            self.assertEqual(n.cluster.secret_ids, ("new",))
            self.assertEqual(n.cluster.signing_id, "new")
            self.assertEqual(n.counter("tunmesh_cluster_secrets", secret_id="new", signing="true"), 1)
            self.assertEqual(n.counter("tunmesh_cluster_secrets", secret_id="default"), 0)
        return nodes, report

    def test_rolling_restarts_never_lose_a_registration(self) -> None:
        self.roll("restart")

    def test_rolling_reloads_never_lose_a_registration(self) -> None:
        nodes, _ = self.roll("reload")
        # No node restarted: nobody ever saw a peer leave.
        for n in nodes:
            self.assertNotIn("down", [kind for kind, _ in n.observer.events])

    def test_restarts_and_reloads_mixed(self) -> None:
        self.roll("mixed")

    def test_removing_a_secret_resalts_sessions_that_rested_on_it(self) -> None:
        nodes = self.start_mesh()
        for n in nodes:
            n.membership.set_cluster_keyring(STEPS[0][1])
        for n in nodes:
            n.membership.set_cluster_keyring(STEPS[1][1])
        advance(self.clock, 2)
        # Sessions set up before the switch were salted with the old secret and are still in use.
        salts = {salt for n in nodes for salt in n.membership.session_setup.outbound_salt.values()}
        self.assertEqual(salts, {"default"})
        kids_before = {(n.id, o.id): n.sessions.outbound(o.id).kid for n in nodes for o in nodes if o is not n}  # type: ignore[union-attr]
        for n in nodes:
            n.membership.set_cluster_keyring(STEPS[2][1])
        advance(self.clock, 2)
        salts = {salt for n in nodes for salt in n.membership.session_setup.outbound_salt.values()}
        self.assertEqual(salts, {"new"})
        for (a, b), kid in kids_before.items():
            node = next(n for n in nodes if n.id == a)
            self.assertNotEqual(node.sessions.outbound(b).kid, kid, "session not rotated")  # type: ignore[union-attr]
        self.assertFullMesh(nodes)
        self.assertEqual(self.auth_failures(nodes), 0)

    def test_metrics_say_when_the_old_secret_is_no_longer_used(self) -> None:
        """The runbook's check before step 3: no node accepts cluster tokens naming the old id any more."""
        nodes = self.start_mesh()
        for ring in (STEPS[0][1], STEPS[1][1]):
            for n in nodes:
                n.membership.set_cluster_keyring(ring)
        advance(self.clock, 2)
        self.assertEqual(
            [n.counter("tunmesh_cluster_secrets", secret_id="default", signing="false") for n in nodes], [1, 1, 1]
        )
        self.assertEqual(
            [n.counter("tunmesh_cluster_secrets", secret_id="new", signing="true") for n in nodes], [1, 1, 1]
        )
        old_tokens = [n.counter("tunmesh_cluster_tokens_accepted_total", secret_id="default") for n in nodes]
        self.assertGreater(min(old_tokens), 0)  # the mesh was built under the old secret
        new_before = sum(n.counter("tunmesh_cluster_tokens_accepted_total", secret_id="new") for n in nodes)
        # Make every node set its sessions up again with cluster tokens (as after a peer's restart).
        for a in nodes:
            for b in nodes:
                if a is not b:
                    session = a.sessions.outbound(b.id)
                    assert session is not None
                    a.sessions.invalidate_outbound(b.id, session.kid)
        advance(self.clock, 20)
        self.assertFullMesh(nodes)
        self.assertEqual(
            [n.counter("tunmesh_cluster_tokens_accepted_total", secret_id="default") for n in nodes], old_tokens
        )
        new_after = sum(n.counter("tunmesh_cluster_tokens_accepted_total", secret_id="new") for n in nodes)
        self.assertGreaterEqual(new_after - new_before, 6)  # one init_session per direction at least

    def test_skipping_step_one_splits_the_mesh(self) -> None:
        """The control case: a node that signs with a secret its peers do not hold yet is refused."""
        nodes = self.start_mesh()
        lone = self.restart(nodes, 2, ClusterKeyring({"new": NEW}, "new"))
        advance(self.clock, 40)
        self.assertNotIn(lone.id, nodes[0].peer_ids())
        self.assertNotIn(lone.id, nodes[1].peer_ids())
        self.assertGreater(sum(n.counter("tunmesh_auth_failures_total", reason="unknown_key") for n in nodes[:2]), 0)
        hints = self.logged("which this node does not accept")
        self.assertTrue(hints)
        # the old nodes name the secret they lack; the lone node, asked by an old node (a bootstrap pass
        # of its configured URLs), names the one it lacks
        self.assertIn("new", {e["secret_id"] for e in hints})
        self.assertLessEqual({e["secret_id"] for e in hints}, {"new", "default"})
        self.assertNotIn(NEW, repr(list(self.events)))
        self.assertNotIn(OLD, repr(list(self.events)))
