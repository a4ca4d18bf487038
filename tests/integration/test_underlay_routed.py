"""The routed underlay of the namespace harness (``Underlay(routed=True)``), used by the scale benchmark."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.netns import HUB_ADDRESS, Underlay, requires_root_netns


@requires_root_netns
class RoutedUnderlayTests(SynchronousTestCase):
    """Nodes reach each other through the hub and resolve no neighbour but the hub."""

    def test_nodes_reach_each_other_through_the_hub_and_hold_one_neighbour_each(self) -> None:
        with Underlay(nodes=3, tag="rt", routed=True) as u:
            u.wait_reachable()
            a, b, c = u.nodes
            self.assertEqual(b.run(["ping", "-c", "1", "-W", "2", c.address or ""]).returncode, 0)
            self.assertEqual(c.run(["ping", "-c", "1", "-W", "2", a.address or ""]).returncode, 0)
            for ns in (a, b, c):
                neighbours = {
                    line.split()[0] for line in ns.run(["ip", "-4", "neigh", "show"]).stdout.splitlines() if line
                }
                self.assertEqual(neighbours, {HUB_ADDRESS}, ns.name)
            route = b.run(["ip", "-4", "route", "get", c.address or ""]).stdout
            self.assertIn(f"via {HUB_ADDRESS}", route)

    def test_the_shared_link_resolves_every_peer(self) -> None:
        """The default (one link) is what the routed one avoids: a node holds an entry per peer it talked to."""
        with Underlay(nodes=3, tag="rs") as u:
            u.wait_reachable()
            a, b, c = u.nodes
            self.assertEqual(a.run(["ping", "-c", "1", "-W", "2", c.address or ""]).returncode, 0)
            neighbours = {line.split()[0] for line in a.run(["ip", "-4", "neigh", "show"]).stdout.splitlines() if line}
            self.assertTrue({b.address, c.address} <= neighbours, neighbours)
