"""Gossip digests (tunmesh.mesh.gossip): at rest a registration leaves the peer table out when the
recipient holds it, older nodes still get it whole, and one exchange per pair renews both directions."""

from __future__ import annotations

import ipaddress

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from tests.netns import bench_script
from tunmesh.mesh.errors import InvalidRegistration
from tunmesh.mesh.gossip import RECENT_TABLES, GossipDigests, apply_delta, holds_entries, table_digest
from tunmesh.mesh.pool import REST_RENEWAL
from tunmesh.mesh.settings import PeerTiming
from tunmesh.mesh.structs import Bounds, NodeInfo, Registration

from .mesh_support import MeshTestCase, Node, advance

BOUNDS = Bounds()


def info(n: int) -> NodeInfo:
    return NodeInfo(
        f"node-{n}",
        f"https://n{n}.test:4567",
        {"ipv4": ipaddress.ip_network("100.64.0.0/16")},
        {"ipv4": ipaddress.ip_interface(f"100.64.1.{n}/24")},
    )


def registration(remote: tuple[NodeInfo, ...]) -> Registration:
    return Registration(info(1), remote, 1000, 1)


def renewals_of(node: Node) -> list[str]:
    """The ids ``node`` starts a renewal with from now on, in order."""
    calls: list[str] = []
    renew = node.membership.renewal.renew

    def counting(peer_id: str) -> Deferred[None]:
        calls.append(peer_id)
        return renew(peer_id)

    node.membership.renewal.renew = counting  # type: ignore[method-assign]
    return calls


class WireTests(SynchronousTestCase):
    def test_a_registration_without_digests_is_the_older_wire_format(self) -> None:
        body = registration((info(2),)).to_json()
        self.assertNotIn(b"digest", body)
        parsed = Registration.from_json(body, BOUNDS)
        self.assertFalse(parsed.elided)
        self.assertEqual([i.id for i in parsed.remote], ["node-2"])

    def test_an_elided_registration_has_no_table_on_the_wire_and_parses_as_elided(self) -> None:
        digests = GossipDigests()
        table = (info(2), info(3))
        digest = digests.digest(table)
        digests.accepted("node-9", Registration(info(9), (), 1, 1, known_digest=digest))
        out = digests.outgoing(registration(table), "node-9")
        body = out.to_json()
        self.assertNotIn(b'"remote"', body)
        parsed = Registration.from_json(body, BOUNDS)
        self.assertTrue(parsed.elided)
        self.assertEqual(parsed.remote_digest, digest)

    def test_a_table_is_sent_whole_to_an_unknown_recipient_and_to_one_that_holds_another(self) -> None:
        digests = GossipDigests()
        table = (info(2),)
        self.assertFalse(digests.outgoing(registration(table), None).elided)
        digests.accepted("node-9", Registration(info(9), (), 1, 1, known_digest="00" * 12))
        self.assertFalse(digests.outgoing(registration(table), "node-9").elided)

    def test_the_digest_does_not_depend_on_order_and_changes_with_an_entry(self) -> None:
        self.assertEqual(table_digest((info(2), info(3))), table_digest((info(3), info(2))))
        self.assertNotEqual(table_digest((info(2), info(3))), table_digest((info(2),)))

    def test_an_unusable_digest_is_ignored(self) -> None:
        body = registration(()).to_json().replace(b'"seq":1', b'"seq":1,"remote_digest":"../x","known_digest":7')
        parsed = Registration.from_json(body, BOUNDS)
        self.assertIsNone(parsed.remote_digest)
        self.assertIsNone(parsed.known_digest)
        self.assertFalse(parsed.elided)

    def test_an_elided_table_the_receiver_does_not_hold_leaves_no_hints_and_is_asked_for_again(self) -> None:
        digests = GossipDigests()
        elided = Registration(info(2), (), 1, 1, remote_digest="ab" * 12, elided=True)
        self.assertEqual(digests.incoming("node-2", elided, (info(3),)), ())
        digests.accepted("node-2", elided)
        # our next registration to node-2 names no table of its: it sends the whole table again
        self.assertIsNone(digests.outgoing(registration(()), "node-2").known_digest)


def holding(digests: GossipDigests, peer: str, table: tuple[NodeInfo, ...]) -> str:
    """``peer`` says it holds ``table`` of ours (its known_digest); returns the table's digest."""
    digest = digests.digest(table)
    digests.accepted(peer, Registration(info(9), (), 1, 1, known_digest=digest))
    return digest


class HoldsEntriesTests(SynchronousTestCase):
    """``holds_entries``: whether a peer's own table (the last it sent us) names every entry of ours."""

    def test_a_table_naming_every_entry_but_the_holders_own_holds_them_whatever_else_it_names(self) -> None:
        ours = (info(2), info(3), info(4))
        # node 2 does not list itself; it lists us (node 1) and a node 5 we do not know
        self.assertTrue(holds_entries(ours, (info(1), info(4), info(3), info(5)), "node-2"))
        self.assertTrue(holds_entries((), (), "node-2"))

    def test_a_missing_entry_or_another_version_of_one_is_news(self) -> None:
        ours = (info(2), info(3), info(4))
        self.assertFalse(holds_entries(ours, (info(1), info(3)), "node-2"))
        moved = NodeInfo("node-4", "https://elsewhere.test:4567", info(4).network_addresses, info(4).node_addresses)
        self.assertFalse(holds_entries(ours, (info(3), moved), "node-2"))
        self.assertTrue(holds_entries(ours, (info(3), info(4)), "node-2"))  # equal entries, not the same objects


class DeltaTests(SynchronousTestCase):
    """While the membership changes, a peer that holds one of our recent tables gets what changed."""

    def test_a_peer_holding_an_older_table_gets_only_the_changes_and_rebuilds_the_table(self) -> None:
        sender, receiver = GossipDigests(), GossipDigests()
        old = (info(2), info(3), info(4), info(5))
        first = Registration.from_json(sender.outgoing(registration(old), "node-9").to_json(), BOUNDS)
        held = receiver.incoming("node-1", first, ())
        receiver.accepted("node-1", first)
        base = holding(sender, "node-9", old)
        moved = NodeInfo("node-3", "https://n3.test:4568", info(3).network_addresses, info(3).node_addresses)
        new = (info(2), moved, info(4), info(6))
        out = sender.outgoing(registration(new), "node-9")
        self.assertEqual((out.base_digest, out.removed, [i.id for i in out.remote]), (base, ("node-5",), ["node-3", "node-6"]))
        self.assertEqual(sender.deltas, 1)
        body = out.to_json()
        self.assertNotIn(b"n2.test", body)
        parsed = Registration.from_json(body, BOUNDS)
        self.assertEqual((parsed.base_digest, parsed.removed), (base, ("node-5",)))
        rebuilt = receiver.incoming("node-1", parsed, held)
        receiver.accepted("node-1", parsed)
        self.assertEqual(sorted(i.wire for i in rebuilt), sorted(i.wire for i in new))
        # the receiver now names the new table: the next registration to it leaves the table out
        self.assertEqual(receiver.outgoing(registration(()), "node-1").known_digest, table_digest(new))

    def test_a_delta_on_a_base_the_receiver_does_not_hold_asks_for_the_whole_table(self) -> None:
        receiver = GossipDigests()
        delta = Registration(info(1), (info(6),), 1, 1, remote_digest="ab" * 12, base_digest="cd" * 12, removed=("node-5",))
        self.assertEqual([i.id for i in receiver.incoming("node-1", delta, (info(5), info(2)))], ["node-2", "node-6"])
        receiver.accepted("node-1", delta)
        self.assertIsNone(receiver.outgoing(registration(()), "node-1").known_digest)

    def test_the_same_delta_twice_keeps_the_table_it_built(self) -> None:
        receiver = GossipDigests()
        whole = Registration(info(1), (info(2), info(5)), 1, 1, remote_digest="cd" * 12)
        held = receiver.incoming("node-1", whole, ())
        receiver.accepted("node-1", whole)
        delta = Registration(info(1), (info(6),), 1, 2, remote_digest="ab" * 12, base_digest="cd" * 12, removed=("node-5",))
        for _ in range(2):  # our request and our answer to its request crossed: both carry it
            held = receiver.incoming("node-1", delta, held)
            receiver.accepted("node-1", delta)
        self.assertEqual([i.id for i in held], ["node-2", "node-6"])
        self.assertEqual(receiver.outgoing(registration(()), "node-1").known_digest, "ab" * 12)

    def test_the_whole_table_goes_when_the_peer_holds_none_of_our_recent_tables_or_the_delta_is_no_smaller(self) -> None:
        digests = GossipDigests()
        holding(digests, "node-9", (info(2),))
        for n in range(3, 4 + RECENT_TABLES):
            digests.digest(tuple(info(i) for i in range(2, n)))
        table = tuple(info(i) for i in range(2, 10))
        self.assertIsNone(digests.outgoing(registration(table), "node-9").base_digest)
        holding(digests, "node-9", (info(2), info(3)))
        out = digests.outgoing(registration((info(4), info(5))), "node-9")
        self.assertIsNone(out.base_digest)
        self.assertEqual(len(out.remote), 2)

    def test_a_delta_replaces_an_entry_whose_new_version_the_receiver_drops(self) -> None:
        body = registration((info(3),)).to_json().replace(
            b'"seq":1', b'"seq":1,"remote_digest":"' + b"ab" * 12 + b'","remote_base":"' + b"cd" * 12 + b'","removed":[]'
        ).replace(b"https://n3.test:4567", b"ftp://n3.test")
        parsed = Registration.from_json(body, BOUNDS)
        self.assertEqual((parsed.remote, parsed.dropped_ids), ((), ("node-3",)))
        self.assertEqual(apply_delta((info(2), info(3)), parsed), (info(2),))

    def test_a_delta_this_node_cannot_read_is_refused(self) -> None:
        good = b'"remote_digest":"' + b"ab" * 12 + b'","remote_base":"' + b"cd" * 12 + b'"'
        for extra in (
            b'"remote_base":"' + b"cd" * 12 + b'"',  # no remote_digest
            good.replace(b"cd" * 12, b"../x"),
            good + b',"removed":"node-5"',
            good + b',"removed":["bootstrap"]',
        ):
            body = registration(()).to_json().replace(b'"seq":1', b'"seq":1,' + extra)
            with self.assertRaises(InvalidRegistration, msg=extra):
                Registration.from_json(body, BOUNDS)


class MeshGossipTests(MeshTestCase):
    def _register_bodies(self, node: object) -> list[bytes]:
        seen: list[bytes] = []
        inbound = node.membership.inbound  # type: ignore[attr-defined]
        accept = inbound.accept_registration

        def recording(iss: str, body: bytes, direction: str = "in") -> object:
            seen.append(body)
            return accept(iss, body, direction)

        inbound.accept_registration = recording
        return seen

    def test_at_rest_registrations_leave_the_table_out_and_every_node_keeps_its_hints(self) -> None:
        nodes = self.mesh(5)
        bodies = self._register_bodies(nodes[2])
        advance(self.clock, 60)
        self.assertFullMesh(nodes)
        self.assertGreater(len(bodies), 5)
        self.assertTrue(all(b'"remote"' not in b for b in bodies[-5:]), bodies[-5:])
        for n in nodes:
            for peer in n.pool:
                self.assertEqual(len(peer.hints), 4, f"{n.id} holds {len(peer.hints)} hints of {peer.id}")

    def test_a_member_joining_a_mesh_at_rest_is_gossiped_as_a_delta(self) -> None:
        nodes = self.mesh(6)
        advance(self.clock, 30)
        bodies = self._register_bodies(nodes[2])
        late = self.node(7)
        late.start()
        advance(self.clock, 30)
        self.assertFullMesh([*nodes, late])
        from_peers = [Registration.from_json(b, BOUNDS) for b in bodies]
        from_peers = [r for r in from_peers if r.local.id != late.id]
        self.assertTrue(any(r.base_digest is not None for r in from_peers))
        # what the others tell node 3 is node 7 at most (node 7's own first registration carries its table)
        self.assertLessEqual(max(len(r.remote) for r in from_peers), 1, [len(r.remote) for r in from_peers])
        for n in [*nodes, late]:
            for peer in n.pool:
                self.assertEqual(len(peer.hints), 6, f"{n.id} holds {len(peer.hints)} hints of {peer.id}")

    def test_a_node_without_digests_always_gets_the_whole_table(self) -> None:
        nodes = [self.node(1, ()), self.node(2), self.node(3)]
        old = nodes[1]

        class Legacy(GossipDigests):
            """An older node: sends no digests, always keeps the table it gets."""

            def outgoing(self, registration: Registration, recipient: str | None) -> Registration:
                return registration

            def incoming(self, sender: str, registration: Registration, held: tuple[NodeInfo, ...]) -> tuple[NodeInfo, ...]:
                return registration.remote

        old.membership.gossip = Legacy()
        bodies = self._register_bodies(old)
        for n in nodes:
            n.start()
        advance(self.clock, 60)
        self.assertFullMesh(nodes)
        self.assertGreater(len(bodies), 3)
        self.assertTrue(all(b'"remote"' in b for b in bodies))

    def test_one_exchange_per_pair_renews_both_directions(self) -> None:
        nodes = self.mesh(4)
        before = sum(n.counter("tunmesh_mesh_control_requests_total", kind="register", direction="out") for n in nodes)
        advance(self.clock, 100)
        after = sum(n.counter("tunmesh_mesh_control_requests_total", kind="register", direction="out") for n in nodes)
        pairs, interval = 6, 10.0  # local peers are renewed every 10 s in this harness
        self.assertLessEqual(after - before, pairs * (100 / interval + 1))
        self.assertGreaterEqual(after - before, pairs * (100 / interval - 1))
        self.assertFullMesh(nodes)
        for n in nodes:
            self.assertEqual(n.counter("tunmesh_mesh_peers_removed_total"), 0)


class JoinExchangeTests(MeshTestCase):
    """What a join costs per pair: a bootstrap counts as the pair's registration exchange, and a queued
    bootstrap of a gossiped URL is dropped once the node behind it registered with us."""

    def test_a_bootstrap_is_the_pairs_exchange_and_the_next_renewal_waits_a_full_interval(self) -> None:
        first = self.node(1, ())
        first.start()
        second = self.node(2)
        by_first, by_second = renewals_of(first), renewals_of(second)
        second.start()
        advance(self.clock, 0.5)
        peer = second.pool.get(first.id)
        assert peer is not None
        self.assertTrue(peer.registered_with)
        advance(self.clock, 9)  # two groom ticks, less than the usual interval (10 s in this harness)
        self.assertEqual(by_second, [])  # the bootstrap was its exchange with the first node
        # The first node, which only answered, renews once (its request acknowledges its own claims);
        # that exchange renews both directions.
        self.assertEqual(by_first, [second.id])
        advance(self.clock, 20)
        self.assertLessEqual(len(by_first) + len(by_second), 3)

    def test_a_gossiped_url_held_by_a_pool_peer_is_not_bootstrapped_a_configured_one_is(self) -> None:
        nodes = self.mesh(3)
        a, b = nodes[1], nodes[2]
        url = b.membership.local.listen_url
        before = a.counter("tunmesh_mesh_control_requests_total", direction="out")
        self.assertEqual(self.successResultOf(a.membership.bootstrapper.bootstrap(url, gossiped=True)), b.id)
        self.assertEqual(a.counter("tunmesh_mesh_control_requests_total", direction="out"), before)
        self.assertEqual(a.counter("tunmesh_mesh_bootstrap_attempts_total", result="known"), 1)
        # a probe of a known URL (is its holder still there?) and a configured URL do go out
        self.assertEqual(self.successResultOf(a.membership.bootstrapper.bootstrap(url)), b.id)
        self.assertEqual(a.counter("tunmesh_mesh_control_requests_total", direction="out"), before + 1)


class LinkRelaxedRenewalTests(MeshTestCase):
    """A peer with a packet link up (its frames are authenticated contact) that holds our table is renewed
    every ``stale_threshold`` instead of every ``reregistration_interval``; one that got our table lately,
    every ``stale_threshold`` (docs/performance.md, "Scale"); a change of the table, or a link going
    down, brings back the usual interval."""

    def links_up(self, nodes: list[Node], up: set[str]) -> None:
        for n in nodes:
            n.membership.link_age = lambda peer_id: 0.0 if peer_id in up else None

    def register_out(self, nodes: list[Node]) -> float:
        return sum(n.counter("tunmesh_mesh_control_requests_total", kind="register", direction="out") for n in nodes)

    def test_peers_with_a_live_link_and_our_table_are_renewed_once_per_rest_interval(self) -> None:
        nodes = self.mesh(4)
        self.links_up(nodes, {n.id for n in nodes})
        advance(self.clock, 30)  # every peer holds every table
        before = self.register_out(nodes)
        advance(self.clock, 600)
        pairs, rest = 6, REST_RENEWAL * 30.0  # stale_threshold 30 s in this harness (reregistration 10 s)
        self.assertLessEqual(self.register_out(nodes) - before, pairs * (600 / rest + 1))
        self.assertGreaterEqual(self.register_out(nodes) - before, pairs * (600 / (rest + 5) - 1))
        self.assertFullMesh(nodes)
        for n in nodes:
            self.assertEqual(n.counter("tunmesh_mesh_peers_removed_total"), 0)

    def test_a_new_member_still_reaches_every_table_within_the_usual_interval(self) -> None:
        nodes = self.mesh(3)
        self.links_up(nodes, {n.id for n in nodes})
        advance(self.clock, 60)
        late = self.node(4)
        late.start()
        nodes.append(late)
        self.links_up(nodes, {n.id for n in nodes})
        advance(self.clock, 12)  # one usual interval (10 s) and a groom tick, not the relaxed 30 s
        self.assertFullMesh(nodes)

    def test_while_members_keep_joining_a_pair_with_a_live_link_exchanges_once_per_relaxed_interval(self) -> None:
        """A join of many nodes changes every table every few seconds; with live links, a peer that got our
        table (or a delta) less than a relaxed interval ago is not renewed after each change."""
        among = self.members_keep_joining(links=True)
        # 6 pairs of the first 4 nodes over 70 s: one exchange per 30-35 s (not per 5-10 s: about 50)
        self.assertLessEqual(len(among), 6 * (70 / 30 + 1), among)

    def test_while_members_keep_joining_a_pair_without_a_link_exchanges_once_its_contact_ages(self) -> None:
        """The same without packet links (not up yet, as while a join saturates the machine): the pair is
        not renewed after each change either, only once its last contact is half a stale_threshold old
        (``Peer.renewal_due``), so it is never groomed for it."""
        among = self.members_keep_joining(links=False)
        # 6 pairs over 70 s: one exchange per 15-20 s (not per 5-10 s: 42-84)
        self.assertLessEqual(len(among), 6 * (70 / 15 + 1), among)
        self.assertGreaterEqual(len(among), 6 * (70 / 20 - 1), among)

    def members_keep_joining(self, links: bool) -> list[str]:
        """Four nodes at rest, then a member joining every 5 s for 60 s; returns the renewals among the
        first four (each the id renewed), after checking that every table reached every peer."""
        timing = PeerTiming(5.0, 30.0)  # usual interval 5 s, relaxed 30 s (the stale_threshold)
        nodes = [self.node(1, (), local_timing=timing)] + [self.node(i, local_timing=timing) for i in range(2, 5)]
        for n in nodes:
            n.start()
        if links:
            self.links_up(nodes, {n.id for n in nodes})
        advance(self.clock, 60)
        originals = {n.id for n in nodes}
        calls = [renewals_of(n) for n in nodes]
        for k in range(5, 17):  # a member every 5 s for 60 s
            late = self.node(k, local_timing=timing)
            late.start()
            nodes.append(late)
            if links:
                self.links_up(nodes, {n.id for n in nodes})
            advance(self.clock, 5)
        advance(self.clock, 10)
        self.assertFullMesh(nodes)  # every newcomer registered with every node itself
        renewed = [peer_id for made in calls for peer_id in made if peer_id in originals]
        advance(self.clock, 35)  # and every table reached every peer within a relaxed interval and a tick
        for n in nodes:
            self.assertEqual(len(n.peer_ids()), 15)
            self.assertEqual(n.counter("tunmesh_mesh_peers_removed_total"), 0)
            for peer in n.pool:
                self.assertEqual(len(peer.hints), 15, f"{n.id} holds {len(peer.hints)} hints of {peer.id}")
        return renewed

    def test_a_peer_whose_table_names_all_of_ours_is_renewed_once_per_rest_interval(self) -> None:
        """It need not hold our table itself (here its record is forgotten; in a join, the pair learned
        of each newcomer first-hand): a renewal would tell it nothing, so with a link up it waits for
        the rest interval as when it holds our table."""
        nodes = self.mesh(3)
        self.links_up(nodes, {n.id for n in nodes})
        advance(self.clock, 30)  # every peer holds every table
        a, b = nodes[0], nodes[1]
        a.membership.gossip.forget(b.id)  # a no longer knows which table of its own b holds
        renewed = renewals_of(a)
        advance(self.clock, 60)  # six usual intervals, half the rest interval
        self.assertNotIn(b.id, renewed)
        a.membership.pool.upsert(info(8), 1)  # a's table now names a node b's does not
        advance(self.clock, 11)
        # a member of less than a stale_threshold is registering with every node itself: not news yet
        self.assertNotIn(b.id, renewed)
        advance(self.clock, 25)  # it has been in a's pool for a stale_threshold (30 s), b's table lacks it
        self.assertIn(b.id, renewed)  # before the rest interval (120 s after the last exchange)

    def test_a_link_that_goes_down_brings_back_the_usual_interval(self) -> None:
        nodes = self.mesh(4)
        self.links_up(nodes, {n.id for n in nodes})
        advance(self.clock, 30)
        self.links_up(nodes, set())
        before = self.register_out(nodes)
        advance(self.clock, 100)
        pairs, interval = 6, 10.0
        self.assertGreaterEqual(self.register_out(nodes) - before, pairs * (100 / interval - 1))

    def test_link_keepalives_sparser_than_the_stale_threshold_do_not_get_live_peers_groomed(self) -> None:
        """stale_threshold 5 s, the link's frames every 10 s (its keepalive): at rest the pair renews
        whenever the last contact is half a stale_threshold old, so nobody is groomed (CI saw a live peer
        groomed this way when the rest interval alone applied)."""
        timing = PeerTiming(1.0, 5.0)
        nodes = [self.node(1, (), local_timing=timing)] + [self.node(i, local_timing=timing) for i in (2, 3)]
        for n in nodes:
            n.start()
        for n in nodes:
            n.membership.link_age = lambda peer_id: (self.clock.seconds() + 3.0) % 10.0
        advance(self.clock, 120)
        self.assertFullMesh(nodes)
        for n in nodes:
            self.assertEqual(n.counter("tunmesh_mesh_peers_removed_total"), 0)

    def test_link_contact_counts_as_contact_at_its_own_age_never_younger(self) -> None:
        nodes = self.mesh(2)
        a, b = nodes
        peer = a.pool.get(b.id)
        assert peer is not None
        now = self.clock.seconds()
        peer.last_contact = now - 20
        a.pool.touch(b.id, 25)  # older than what we know: changes nothing
        self.assertEqual(peer.last_contact, now - 20)
        a.pool.touch(b.id, 4)
        self.assertEqual(peer.last_contact, now - 4)
        # the groom tick reads the link's age: a link that heard from B 2 s ago keeps B alive
        peer.last_contact = now - 29
        a.membership.link_age = lambda peer_id: 2.0 if peer_id == b.id else None
        a.membership.groom()
        self.assertEqual(peer.last_contact, now - 2)


class ScaleSimulationTests(SynchronousTestCase):
    """contrib/bench/scale_sim.py at small N: the growth it reports for 200 and 500 nodes, checked at 4 and 8."""

    def test_messages_grow_linearly_and_registration_size_does_not_grow_with_n(self) -> None:
        sim = bench_script("scale_sim")
        small = sim.simulate(4, rest=150, settle=90)
        large = sim.simulate(8, rest=150, settle=90)
        for result in (small, large):
            self.assertIsNotNone(result.join_seconds)
            self.assertLess(result.join_seconds, 30)
            # at most one renewal per peer per 5 s interval (and its answer), from every node
            self.assertLessEqual(result.rest_requests_per_node_minute, 12 * (result.nodes - 1) * 1.1)
            self.assertGreater(result.rest_requests_per_node_minute, 0)
        self.assertLessEqual(large.rest_register_bytes_per_message, small.rest_register_bytes_per_message * 1.1)

    def test_a_seeded_mesh_rests_as_a_joined_one(self) -> None:
        """``--seeded`` (the converged state built directly, for 500 nodes) measures what a real join
        leaves: the same registrations per node per minute at rest, of the same size, and nothing else."""
        sim = bench_script("scale_sim")
        seeded = sim.simulate(6, rest=480, settle=30, seeded=True)
        joined = sim.simulate(6, rest=480, settle=90)
        # 5 peers, one exchange per pair per 120-125 s, started by either side: ≈ 1.2 sent per node per minute
        for result in (seeded, joined):
            self.assertGreaterEqual(result.rest_requests_per_node_minute, 5 * 60 / 125 / 2 * 0.7)
            self.assertLessEqual(result.rest_requests_per_node_minute, 5 * 60 / 120 / 2 * 1.3)
        self.assertLessEqual(
            abs(seeded.rest_register_bytes_per_message - joined.rest_register_bytes_per_message),
            0.1 * joined.rest_register_bytes_per_message,
        )

    def test_live_links_relax_the_renewals_at_rest(self) -> None:
        sim = bench_script("scale_sim")
        with_links = sim.simulate(4, rest=480, links=True)
        without = sim.simulate(4, rest=120, links=False)
        # without links: a pair's exchange every 5-10 s (interval 5 s, groom ticks 5 s); with: every
        # 120-125 s (REST_RENEWAL x stale_threshold 30 s)
        self.assertGreaterEqual(without.rest_requests_per_node_minute, 3 * 60 / 10 / 2)
        self.assertLessEqual(with_links.rest_requests_per_node_minute, 3 * (60 / 120 + 60 / 480) / 2 * 1.1)
        self.assertLess(with_links.rest_requests_per_node_minute, without.rest_requests_per_node_minute / 10)
