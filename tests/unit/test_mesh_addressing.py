"""Dynamic addressing (docs/addressing.md): seeds, candidates, and the claim rule between in-memory nodes."""

from __future__ import annotations

import ipaddress

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.mesh_support import MeshTestCase, Node, advance, node_id
from tunmesh.mesh.addressing import (
    NODE_INDEX_ENV,
    AddressClaimer,
    AddressSeed,
    ClaimState,
    address_seed,
    candidate,
    usable_range,
)
from tunmesh.mesh.errors import InvalidRegistration
from tunmesh.mesh.structs import Bounds, NodeInfo, Registration

SMALL = ipaddress.ip_network("100.64.0.0/29")  # 6 usable addresses


def url(n: int) -> str:
    return f"https://n{n}.test:4567"


class SeedTests(SynchronousTestCase):
    def test_node_index_from_the_environment_wins(self) -> None:
        seed = address_seed({NODE_INDEX_ENV: "7"}, "web-3", "https://10.0.0.1:4567")
        self.assertEqual((seed.index, seed.source), (7, NODE_INDEX_ENV))

    def test_a_malformed_node_index_is_refused_not_ignored(self) -> None:
        with self.assertRaises(ValueError):
            address_seed({NODE_INDEX_ENV: "seven"}, "web-3", "https://10.0.0.1:4567")

    def test_statefulset_ordinal_comes_from_the_hostname(self) -> None:
        self.assertEqual(address_seed({}, "tunmesh-12", "https://a:1").index, 12)
        self.assertEqual(address_seed({}, "tunmesh-0", "https://a:1").index, 0)

    def test_a_deployment_pod_name_is_not_an_ordinal(self) -> None:
        # ReplicaSet pods end in a 5-character random suffix, which may be all digits.
        seed = address_seed({}, "web-6d4cf56db6-24567", "https://10.0.0.9:4567/")
        self.assertIsNone(seed.index)
        self.assertEqual(seed.text, "10.0.0.9")

    def test_same_seed_same_first_address_other_seed_other_address(self) -> None:
        net = ipaddress.ip_network("100.64.0.0/10")
        a = candidate(net, AddressSeed("10.0.0.9").offset(net))
        self.assertEqual(a, candidate(net, AddressSeed("10.0.0.9").offset(net)))
        self.assertNotEqual(a, candidate(net, AddressSeed("10.0.0.10").offset(net)))
        self.assertEqual(a.network, net)

    def test_index_addresses_start_after_the_network_address(self) -> None:
        net = ipaddress.ip_network("100.64.0.0/24")
        self.assertEqual(str(candidate(net, AddressSeed("0", 0).offset(net))), "100.64.0.1/24")
        self.assertEqual(str(candidate(net, AddressSeed("253", 253).offset(net))), "100.64.0.254/24")
        self.assertEqual(str(candidate(net, AddressSeed("254", 254).offset(net))), "100.64.0.1/24")
        self.assertEqual(usable_range(ipaddress.ip_network("fd00::/126")), (int(ipaddress.ip_address("fd00::1")), 2))

    def test_claims_travel_in_registrations_and_old_peers_ignore_them(self) -> None:
        info = NodeInfo(
            "n1", "https://n1.test:4567", {"ipv4": SMALL}, {"ipv4": ipaddress.ip_interface("100.64.0.3/29")},
            {"ipv4": 1234},
        )
        parsed = Registration.from_json(Registration(info, (), 1, 1).to_json(), Bounds())
        self.assertEqual(parsed.local.claims, {"ipv4": 1234})
        body = b'{"local":{"id":"n1","listen_url":"https://n1.test","node_addresses":{"ipv4":{"cidr":"100.64.0.3/29"}},' \
            b'"address_claims":{"ipv4":{"since":-1}}},"stamp":1}'
        with self.assertRaises(InvalidRegistration):
            Registration.from_json(body, Bounds())


class AddressingTestCase(MeshTestCase):
    def node(  # type: ignore[override]
        self, n: int, bootstrap: tuple[str, ...] = (), seed: AddressSeed | None = None, **kw: object
    ) -> Node:
        kw.setdefault("settle", 3.0)
        node = Node(
            self.net, self.clock, n, bootstrap, seed=seed or AddressSeed(f"n{n}"), groom_interval=1.0,
            bootstrap_retry_interval=1.0, **kw,  # type: ignore[arg-type]
        )
        self.nodes.append(node)
        self.addCleanup(node.stop)
        return node

    def assertConverged(self, nodes: list[Node]) -> None:
        """Distinct addresses, a full mesh, every route pointing at the address its owner registers."""
        addresses = [n.current_address() for n in nodes]
        self.assertEqual(len(set(addresses)), len(nodes), addresses)
        ids = {n.id for n in nodes}
        for n in nodes:
            self.assertEqual(n.peer_ids(), ids - {n.id}, f"pool of {n.id}")
            for other in nodes:
                if other is not n:
                    self.assertEqual(
                        n.observer.routes[other.id],
                        (ipaddress.ip_network(other.current_address() + "/32"),),
                        f"route on {n.id} to {other.id}",
                    )
            self.assertTrue(n.ready(), f"{n.id} not ready: {n.health.readiness()}")

    def logged(self, fragment: str) -> list[dict]:
        return [e for e in self.events if fragment in str(e.get("log_format", ""))]


class ClaimRuleTests(AddressingTestCase):
    def test_many_nodes_without_addresses_get_distinct_ones_and_a_full_mesh(self) -> None:
        nodes = [self.node(1)] + [self.node(i, (url(1),)) for i in range(2, 13)]
        for n in nodes:
            n.start()
        advance(self.clock, 30)
        self.assertConverged(nodes)

    def test_forced_collision_one_keeps_the_others_move_once_and_never_flap(self) -> None:
        same = AddressSeed("0", index=0)
        nodes = [self.node(1, seed=same)] + [self.node(i, (url(1),), seed=same) for i in range(2, 7)]
        for n in nodes:
            n.start()
        advance(self.clock, 30)
        self.assertConverged(nodes)
        # n1 claimed first (same clock, started first, smallest id): it keeps the index-0 address.
        self.assertEqual(nodes[0].current_address(), "100.64.0.1")
        self.assertEqual(nodes[0].moves, [])
        before = [list(n.moves) for n in nodes]
        advance(self.clock, 300, step=5.0)
        self.assertEqual([list(n.moves) for n in nodes], before, "addresses changed after convergence")
        self.assertConverged(nodes)

    def test_both_families_are_claimed_and_moved_together(self) -> None:
        nets = {"ipv4": ipaddress.ip_network("100.64.0.0/16"), "ipv6": ipaddress.ip_network("fd7e:7e57::/64")}
        same = AddressSeed("2", index=2)
        nodes = [self.node(1, seed=same, network_cidrs=nets)] + [
            self.node(i, (url(1),), seed=same, network_cidrs=nets) for i in range(2, 5)
        ]
        for n in nodes:
            n.start()
        advance(self.clock, 30)
        v6 = [n.membership.local.node_addresses["ipv6"] for n in nodes]
        self.assertEqual(len(set(v6)), 4, v6)
        self.assertEqual(str(v6[0]), "fd7e:7e57::3/64")
        for n in nodes:
            for other in nodes:
                if other is not n:
                    self.assertEqual(
                        set(n.observer.routes[other.id]),
                        {ipaddress.ip_network(f"{a.ip}/{a.max_prefixlen}")
                         for a in other.membership.local.node_addresses.values()},
                    )
            self.assertTrue(n.ready())

    def test_simultaneous_claims_are_decided_by_node_id(self) -> None:
        same = AddressSeed("5", index=5)
        a, b = self.node(1, seed=same), self.node(2, (url(1),), seed=same)
        self.assertEqual(a.addressing.claims(), b.addressing.claims())  # type: ignore[union-attr]
        a.start()
        b.start()
        advance(self.clock, 15)
        self.assertConverged([a, b])
        winner, loser = (a, b) if a.id < b.id else (b, a)
        self.assertEqual(winner.current_address(), "100.64.0.6")
        self.assertEqual(winner.moves, [])
        self.assertEqual(len(loser.moves), 1)

    def test_a_configured_address_always_wins_over_a_dynamic_claim(self) -> None:
        fixed = Node(self.net, self.clock, 1, (), address="100.64.0.3/16", groom_interval=1.0)
        self.addCleanup(fixed.stop)
        dyn = self.node(2, (url(1),), seed=AddressSeed("2", index=2))
        self.assertEqual(dyn.current_address(), "100.64.0.3")
        fixed.start()
        dyn.start()
        advance(self.clock, 15)
        self.assertEqual(fixed.membership.local.node_addresses["ipv4"].ip, ipaddress.ip_address("100.64.0.3"))
        self.assertNotEqual(dyn.current_address(), "100.64.0.3")
        self.assertEqual(fixed.observer.routes[dyn.id], (ipaddress.ip_network(dyn.current_address() + "/32"),))
        self.assertTrue(dyn.ready())

    def test_partition_that_heals_with_one_address_on_both_sides(self) -> None:
        same = AddressSeed("9", index=9)
        # Side A forms first; side B a minute later, without knowing A; both hold the same address.
        a1, a2 = self.node(1), self.node(2, (url(1),), seed=same)
        a1.start()
        a2.start()
        advance(self.clock, 60)
        b3, b4 = self.node(3), self.node(4, (url(3),), seed=same)
        b3.start()
        b4.start()
        advance(self.clock, 15)
        self.assertEqual(a2.current_address(), b4.current_address())
        self.assertTrue(a2.addressing.held() and b4.addressing.held())  # type: ignore[union-attr]
        self.assertConverged([a1, a2])
        self.assertConverged([b3, b4])
        # The partition heals: one side learns the other.
        b3.membership.bootstrapper.bootstrap(url(1))
        advance(self.clock, 60)
        self.assertConverged([a1, a2, b3, b4])
        self.assertEqual(a2.current_address(), "100.64.0.10")  # the older claim keeps it
        self.assertEqual(a2.moves, [])
        self.assertEqual(len(b4.moves), 1)
        self.assertTrue(self.logged("holds {address} with an older claim"))

    def test_not_ready_until_the_claim_is_held(self) -> None:
        a = self.node(1)
        b = self.node(2, (url(1),), settle=100.0)
        self.net.down.add("n1.test:4567")
        a.start()
        b.start()
        advance(self.clock, 10)
        self.assertTrue(a.ready(), "a node with nothing to join holds its claim at once")
        self.assertEqual(b.addressing.state("ipv4"), ClaimState.CLAIMING)  # type: ignore[union-attr]
        self.assertFalse(b.health.readiness()["address"])
        self.net.down.clear()
        advance(self.clock, 20)
        self.assertConverged([a, b])

    def test_moving_on_an_answer_does_not_count_as_acknowledged(self) -> None:
        same = AddressSeed("1", index=1)
        a = self.node(1, seed=same)
        advance(self.clock, 5)
        b = self.node(2, (url(1),), seed=same, settle=100.0)
        # An answer to one of b's requests (direction "out") carries a's older claim on b's address.
        b.membership.inbound.accept_registration(a.id, a.membership.our_registration().to_json(), direction="out")
        self.assertEqual(len(b.moves), 1)
        self.assertIn(a.id, b.peer_ids())
        self.assertEqual(b.addressing.state("ipv4"), ClaimState.CLAIMING)  # type: ignore[union-attr]
        # The next accepted answer acknowledges the new claim.
        b.membership.inbound.accept_registration(a.id, a.membership.our_registration().to_json(), direction="out")
        self.assertEqual(b.addressing.state("ipv4"), ClaimState.HELD)  # type: ignore[union-attr]

    def test_a_lone_node_holds_its_claim_after_settling(self) -> None:
        b = self.node(2, (url(1),))  # its bootstrap URL does not answer
        advance(self.clock, 10)  # a slow start: settling counts from the first groom tick
        b.start()
        advance(self.clock, 2)
        self.assertFalse(b.addressing.held())  # type: ignore[union-attr]
        advance(self.clock, 3)
        self.assertTrue(b.addressing.held())  # type: ignore[union-attr]


class StabilityTests(AddressingTestCase):
    def test_restart_with_the_same_identity_gets_the_same_address(self) -> None:
        first = self.node(1)
        others = [self.node(i, (url(1),)) for i in range(2, 6)]
        for n in [first, *others]:
            n.start()
        advance(self.clock, 20)
        old = others[1]
        address = old.current_address()
        old.stop()
        self.net.down.add("n3.test:4567")
        advance(self.clock, 5)
        # Same pod identity (same seed), new process (new id), same URL.
        self.net.down.clear()
        new = self.node(3, (url(1),), ident=node_id(103))
        new.start()
        advance(self.clock, 20)
        self.assertEqual(new.current_address(), address)
        self.assertEqual(new.moves, [])
        self.assertConverged([first, others[0], new, *others[2:]])

    def test_crashed_holder_is_replaced_by_its_successor_at_the_same_url(self) -> None:
        nodes = [self.node(1)] + [self.node(i, (url(1),), seed=AddressSeed("x", index=i)) for i in range(2, 5)]
        for n in nodes:
            n.start()
        advance(self.clock, 20)
        address = nodes[2].current_address()
        nodes[2].crash()
        new = self.node(3, (url(1),), ident=node_id(104), seed=AddressSeed("x", index=3))
        new.start()
        advance(self.clock, 20)
        self.assertEqual(new.current_address(), address)
        self.assertConverged([nodes[0], nodes[1], new, nodes[3]])


class ExhaustionTests(AddressingTestCase):
    def test_exhaustion_is_an_error_and_not_ready_until_an_address_frees(self) -> None:
        same = AddressSeed("0", index=0)
        nodes = [self.node(1, seed=same, network_cidrs={"ipv4": SMALL})] + [
            self.node(i, (url(1),), seed=same, network_cidrs={"ipv4": SMALL}) for i in range(2, 8)
        ]
        for n in nodes:
            n.start()
        advance(self.clock, 60)
        exhausted = [n for n in nodes if n.addressing.state("ipv4") is ClaimState.EXHAUSTED]  # type: ignore[union-attr]
        self.assertEqual(len(exhausted), 1)
        last = exhausted[0]
        self.assertFalse(last.ready())
        self.assertTrue(self.logged("no free {family} address left"))
        holders = [n for n in nodes if n is not last]
        self.assertEqual(len({n.current_address() for n in holders}), 6)
        self.assertTrue(all(n.ready() for n in holders))
        # One node leaves the mesh: its address is free again and the exhausted node takes it.
        gone = holders[3]
        freed = gone.current_address()
        gone.crash()
        self.net.down.add(f"n{self.nodes.index(gone) + 1}.test:4567")
        advance(self.clock, 60, step=2.0)  # its peers groom it as stale (local timing: 30 s)
        self.assertEqual(last.current_address(), freed)
        self.assertConverged([n for n in nodes if n is not gone])


class ClaimerUnitTests(SynchronousTestCase):
    def test_explicit_families_are_fixed_and_count_as_held(self) -> None:
        clock = Clock()
        v4 = ipaddress.ip_interface("100.64.0.5/16")
        claimer = AddressClaimer(
            "me",
            {"ipv4": ipaddress.ip_network("100.64.0.0/16"), "ipv6": ipaddress.ip_network("fd00::/64")},
            {"ipv4": v4},
            AddressSeed("s"),
            wall=clock.seconds,
            monotonic=clock.seconds,
        )
        self.assertTrue(claimer.dynamic)
        self.assertEqual(claimer.addresses()["ipv4"], v4)
        self.assertEqual(set(claimer.claims()), {"ipv6"})
        self.assertFalse(claimer.held())
        claimer.acknowledged()
        self.assertTrue(claimer.held())
