"""Mesh flows between 2-5 in-memory nodes: join, gossip, restart, grooming, sessions, fallback, LB."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from twisted.application.internet import TimerService
from twisted.internet.defer import succeed
from twisted.logger import LogLevel

from tests.unit.mesh_support import N1, MeshTestCase, Node, advance, node_id
from tunmesh.auth.errors import AuthError
from tunmesh.auth.tokens import SignedRequest
from tunmesh.clockwatch import CHECK_INTERVAL, ClockStepWatch
from tunmesh.mesh.bootstrap import GroupState
from tunmesh.mesh.settings import BootstrapGroupSpec, PeerTiming
from tunmesh.testing import SteppedWall, host_key


class JoinTests(MeshTestCase):
    def test_join_via_one_node_propagates_to_all(self) -> None:
        nodes = self.mesh(5)
        self.assertFullMesh(nodes)
        for n in nodes:
            self.assertTrue(n.membership.ready())
            self.assertEqual(n.health.readiness(), {"mesh": True})
            self.assertEqual(n.health.liveness(), {"mesh_groom": True})
        # n2..n5 only ever named n1: the rest came from gossip hints followed by authenticated bootstraps
        self.assertGreaterEqual(nodes[4].counter("tunmesh_mesh_bootstrap_attempts_total", result="ok"), 3)
        self.assertEqual(nodes[0].counter("tunmesh_mesh_peers"), 4)
        self.assertEqual(nodes[0].counter("tunmesh_auth_failures_total"), 0)

    def test_renewals_keep_peers_alive_for_long(self) -> None:
        nodes = self.mesh(3)
        advance(self.clock, 300)
        self.assertFullMesh(nodes)
        for n in nodes:
            # One exchange per pair renews both directions (Renewal.answered): a node renews a
            # peer, or answers that peer's renewal, every interval.
            self.assertGreater(n.counter("tunmesh_mesh_registrations_total", result="ok"), 20)
            self.assertEqual(n.counter("tunmesh_mesh_peers_removed_total"), 0)
            self.assertEqual(n.counter("tunmesh_mesh_registrations_total", direction="out", result="fallback"), 0)

    def test_not_ready_until_joined_and_ready_without_bootstrap(self) -> None:
        alone = self.node(1, ())
        self.assertTrue(alone.membership.ready())
        joiner = self.node(2, ("https://n9.test:4567",))
        joiner.start()
        advance(self.clock, 20)
        self.assertFalse(joiner.membership.ready())
        self.assertEqual(joiner.health.readiness(), {"mesh": False})
        self.assertGreater(joiner.counter("tunmesh_mesh_bootstrap_attempts_total", result="transport"), 0)

    def test_ready_during_startup_grace_then_not_until_joined(self) -> None:
        """The original's startup_grace: a first node whose bootstrap URL cannot answer yet (a load
        balancer routing only to ready pods) is ready for the grace period."""
        first = self.node(1, ("https://lb.test:4567",), startup_grace=10.0)
        first.start()
        advance(self.clock, 9)
        self.assertTrue(first.membership.ready())
        advance(self.clock, 2)
        self.assertFalse(first.membership.ready())
        self.assertEqual(len(self.logged("startup grace of {grace}s is over")), 1)
        advance(self.clock, 20)
        self.assertEqual(len(self.logged("startup grace of {grace}s is over")), 1)  # once
        # a peer joins through it: ready again, for good
        joiner = self.node(2, (first.url,))
        joiner.start()
        advance(self.clock, 5)
        self.assertTrue(first.membership.ready())
        self.assertTrue(joiner.membership.ready())

    def test_bootstrap_to_own_url_is_skipped(self) -> None:
        n1 = self.node(1, (N1,))
        n1.start()
        advance(self.clock, 20)
        self.assertEqual(n1.counter("tunmesh_mesh_bootstrap_attempts_total"), 0)
        self.assertEqual(self.net.log, [])
        # The seed of a mesh whose nodes share one list: expected, so not a warning every pass.
        quiet = self.logged("no URL could be tried")
        self.assertTrue(quiet)
        self.assertEqual({e["log_level"] for e in quiet}, {LogLevel.debug})


class RestartTests(MeshTestCase):
    def test_restart_with_new_id_replaces_old_entry_once_its_url_answers(self) -> None:
        """The new id's claim is refused (409) until the URL, probed at once, answers with it (W6)."""
        nodes = self.mesh(3)
        old = nodes[2]
        old.crash()
        self.nodes.remove(old)
        new = self.node(3, (N1,), ident=node_id(33))
        self.assertEqual(new.url, old.url)
        new.start()
        self.clock.advance(0)
        self.clock.advance(0)
        n1 = nodes[0]
        # n1 probed the URL, which answered as the new id: old id dropped (routes, sessions, observers)
        self.assertNotIn(old.id, n1.peer_ids())
        self.assertIn(new.id, n1.peer_ids())
        self.assertIn(("down", old.id), n1.observer.events)
        self.assertNotIn(old.id, n1.sessions.peers())
        self.assertEqual(n1.pool.holder(ipaddress.ip_network("100.64.1.3/32")), new.id)
        self.assertEqual(n1.counter("tunmesh_mesh_peers_removed_total", reason="restarted"), 1)
        # well before any stale threshold (30 s) every node has only the new id
        advance(self.clock, 12)
        self.assertFullMesh([nodes[0], nodes[1], new])
        for n in nodes[:2]:
            self.assertEqual(n.counter("tunmesh_mesh_peers_removed_total", reason="stale"), 0)

    def test_a_url_that_refuses_our_tokens_is_asked_who_answers_before_the_entry_goes_stale(self) -> None:
        """A survivor the restarted node does not contact: its renewal's session token is refused (401:
        another process answers there), and one bootstrap of the URL re-registers it with whoever answers
        there, here the new id, far below the stale threshold (30 s). A cluster-token request addressed to
        the old id used to come first (stop 19), refused by the new process (``wrong_audience``), then the
        probe."""
        nodes = self.mesh(3)
        n2, old = nodes[1], nodes[2]
        old.crash()
        self.nodes.remove(old)
        new = self.node(3, (N1,), ident=node_id(33))
        new.membership.bootstrapper.gossip = lambda: None  # type: ignore[method-assign]  # it meets n1 only
        new.start()
        advance(self.clock, 15)  # the old entry's renewal (every 5 s on 5 s ticks), refused, then the URL
        self.assertNotIn(old.id, n2.peer_ids())
        self.assertIn(new.id, n2.peer_ids())
        self.assertEqual(n2.counter("tunmesh_mesh_peers_removed_total", reason="restarted"), 1)
        self.assertEqual(n2.counter("tunmesh_mesh_peers_removed_total", reason="stale"), 0)
        self.assertEqual(new.counter("tunmesh_auth_failures_total", reason="wrong_audience"), 0)
        self.assertTrue(self.logged("re-registering through its URL"))

    def test_a_gossiped_new_id_at_the_url_of_a_peer_without_a_link_is_asked_about(self) -> None:
        """n2 renews nobody (its renewals are backing off, say) and the restarted node meets n1 only:
        n1's table names the new id at the old URL, and n2, with no packet link to the old id, asks
        the URL who answers: the new id, far below the stale threshold."""
        nodes = self.mesh(3)
        n1, n2, old = nodes
        n2.membership.renewal.renew = lambda peer_id: succeed(None)  # type: ignore[method-assign]
        old.crash()
        self.nodes.remove(old)
        new = self.node(3, (N1,), ident=node_id(33))
        new.membership.bootstrapper.gossip = lambda: None  # type: ignore[method-assign]  # it meets n1 only
        new.start()
        advance(self.clock, 15)  # n1 takes the new id at once and tells n2 at its next renewal of n2
        self.assertIn(new.id, n1.peer_ids())
        self.assertNotIn(old.id, n2.peer_ids())
        self.assertIn(new.id, n2.peer_ids())
        self.assertEqual(n2.counter("tunmesh_mesh_peers_removed_total", reason="restarted"), 1)
        # a hint naming some other id at a URL whose holder's link is up is not asked about
        n2.membership.link_age = lambda peer_id: 0.0
        stale_hint = replace(n1.membership.local, id=node_id(99), listen_url=new.url)
        self.assertFalse(n2.membership.bootstrapper.has_new_hints((stale_hint,)))
        n2.membership.link_age = lambda peer_id: None
        self.assertTrue(n2.membership.bootstrapper.has_new_hints((stale_hint,)))

    def test_no_renewal_or_session_setup_while_its_url_is_asked_who_answers(self) -> None:
        """While a bootstrap of a peer's URL is in flight (a probe: that URL may be another process now),
        the groom tick starts no renewal or session setup with the id we hold there."""
        n1, n2 = self.mesh(2)
        n1.membership.renewal.renew = lambda peer_id: succeed(None)  # type: ignore[method-assign]  # n2 renews
        sent = lambda: sum(  # noqa: E731
            n2.counter("tunmesh_mesh_control_requests_total", kind=kind, direction="out")
            for kind in ("register", "init_session")
        )
        before = sent()
        self.net.hang.add(host_key(n1.url))
        n2.membership.bootstrapper.probe_url(n1.url)
        self.clock.advance(0)
        self.assertTrue(n2.membership.bootstrapper.asking(n1.url))
        advance(self.clock, 25)  # five renewal intervals, within the stale threshold (30 s)
        self.assertEqual(sent(), before + 1)  # the probe (a registration through the bootstrap route)
        self.assertIn(n1.id, n2.peer_ids())
        self.net.hang.clear()
        for d in self.net.hanging:
            d.cancel()
        advance(self.clock, 12)
        self.assertGreater(sent(), before)  # the usual renewals are back

    def test_old_url_answering_with_new_id_removes_holder(self) -> None:
        """The new process is reached at another URL, but the old holder's URL now answers as it."""
        nodes = self.mesh(2)
        n1, old = nodes
        old.crash()
        new = self.node(2, (N1,), ident=node_id(22), url="https://n2-new.test:4567")
        self.net.add(old.url, new.resource)  # the old URL now reaches the new process
        new.start()
        advance(self.clock, 3)
        self.assertNotIn(old.id, n1.peer_ids())
        self.assertIn(new.id, n1.peer_ids())
        self.assertEqual(n1.pool.get(new.id).url, "https://n2-new.test:4567")
        self.assertGreaterEqual(
            n1.counter("tunmesh_mesh_peers_removed_total", reason="restarted")
            + n1.counter("tunmesh_mesh_peers_removed_total", reason="replaced"),
            1,
        )
        self.assertEqual(n1.counter("tunmesh_mesh_registrations_total", direction="in", result="address_conflict"), 1)


class LeaveTests(MeshTestCase):
    def test_clean_stop_removes_the_node_everywhere_at_once(self) -> None:
        nodes = self.mesh(3)
        gone = nodes[2]
        d = gone.stop()
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(d), 2)
        for n in nodes[:2]:
            self.assertNotIn(gone.id, n.peer_ids())
            self.assertIn(("down", gone.id), n.observer.events)
            self.assertNotIn(gone.id, n.sessions.peers())
            self.assertEqual(n.counter("tunmesh_mesh_peers_removed_total", reason="left"), 1)
        self.assertEqual(len(self.logged("peer {peer} left the mesh")), 2)
        self.assertEqual(len(self.logged("left the mesh: {acked} of {total}")), 1)
        # a stopped node refuses late registrations (gossip hints) instead of being re-admitted
        self.net.down.add("n3.test:4567")
        advance(self.clock, 40)
        self.assertFullMesh(nodes[:2])

    def test_stop_result_comes_from_the_reactor_loop_not_from_a_protocol_callback(self) -> None:
        """twistd continues its shutdown (``disconnectAll``) synchronously when the stop Deferred fires;
        fired from inside the last acknowledgement's ``dataReceived`` that tore down the TLS connection
        under its own feet (``'NoneType' object has no attribute 'bio_read'``)."""
        lone = self.node(1, ())
        lone.start()
        d = lone.stop()  # no peers: the leave itself completes at once
        self.assertNoResult(d)
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(d), 0)

    def test_successor_at_a_new_url_takes_the_address_at_once(self) -> None:
        """A rescheduled pod: new id, new underlay IP, same overlay address, old pod stopped cleanly."""
        nodes = self.mesh(3)
        old = nodes[2]
        old.stop()
        self.clock.advance(0)
        self.nodes.remove(old)
        self.net.down.add("n3.test:4567")
        new = self.node(3, (N1,), ident=node_id(33), url="https://n3-new.test:4567")
        new.start()
        advance(self.clock, 5)
        self.assertFullMesh([nodes[0], nodes[1], new])
        for n in nodes[:2]:
            self.assertEqual(
                n.counter("tunmesh_mesh_registrations_total", direction="in", result="address_conflict"), 0
            )

    def test_unreachable_peers_do_not_hold_up_the_stop(self) -> None:
        nodes = self.mesh(3)
        self.net.hang.add("n1.test:4567")
        d = nodes[2].stop()
        self.clock.advance(0)
        self.assertNoResult(d)
        advance(self.clock, 3)
        self.assertEqual(self.successResultOf(d), 1)  # n2 acknowledged; n1 never answered
        self.assertIn(nodes[2].id, nodes[0].peer_ids())  # n1 will groom it


class GroomTests(MeshTestCase):
    def test_stale_peer_groomed_with_all_its_state(self) -> None:
        nodes = self.mesh(3)
        dead = nodes[2]
        dead.crash()
        self.net.down.add("n3.test:4567")
        advance(self.clock, 25)
        self.assertIn(dead.id, nodes[0].peer_ids())
        advance(self.clock, 15)
        for n in nodes[:2]:
            self.assertNotIn(dead.id, n.peer_ids())
            self.assertIn(("down", dead.id), n.observer.events)
            self.assertNotIn(dead.id, n.observer.routes)
            self.assertNotIn(dead.id, n.sessions.peers())
            self.assertIsNone(n.pool.holder(ipaddress.ip_network("100.64.1.3/32")))
            self.assertEqual(n.counter("tunmesh_mesh_peers_removed_total", reason="stale"), 1)
        self.assertFullMesh(nodes[:2])
        self.assertEqual(len(self.logged("removing stale peer")), 2)

    def test_gossip_of_departed_node_is_backed_off_not_hammered(self) -> None:
        nodes = self.mesh(3)
        self.net.down.add("n3.test:4567")
        nodes[2].stop()
        advance(self.clock, 200)
        for n in nodes[:2]:
            self.assertNotIn(nodes[2].id, n.peer_ids())
            # gossip hints for n3 die out once both survivors groomed it; backoff spaces the tries
            self.assertLess(n.counter("tunmesh_mesh_bootstrap_attempts_total", result="transport"), 8)
        self.assertFullMesh(nodes[:2])

    def test_one_slow_peer_does_not_block_the_loop(self) -> None:
        nodes = self.mesh(3)
        self.net.hang.add("n3.test:4567")
        advance(self.clock, 30)
        # renewals with n2 kept going while n3 hung; each hung request was cut at the request timeout
        self.assertIn(nodes[1].id, nodes[0].peer_ids())
        self.assertTrue(nodes[0].service.alive())
        self.assertTrue(self.net.hanging)
        # hung requests were cancelled at the 2 s request timeout; at most the latest tick's are open
        self.assertLessEqual(len([d for d in self.net.hanging if not d.called]), 2)
        self.assertTrue(self.logged("re-registration with {peer_id} failed"))
        self.assertGreater(nodes[0].counter("tunmesh_mesh_registrations_total", direction="out", result="ok"), 2)

    def test_stop_cancels_in_flight(self) -> None:
        self.net.add(N1, object())
        self.net.hang.add("n1.test:4567")
        n2 = self.node(2)
        n2.start()
        self.clock.advance(0)
        self.assertEqual(n2.client.in_flight, 1)
        n2.stop()
        self.assertEqual(n2.client.in_flight, 0)
        self.assertFalse(n2.service.alive())

    def test_the_groom_loop_is_a_timer_service_on_the_node_clock(self) -> None:
        alone = self.node(1, ())
        self.assertIsInstance(alone.service, TimerService)
        alone.start()
        first = alone.membership.last_groom
        assert first is not None  # first tick at start
        interval = alone.membership.settings.groom_interval
        self.clock.advance(interval)
        self.assertEqual(alone.membership.last_groom, first + interval)
        self.assertTrue(alone.service.alive())

    def test_a_tick_that_raises_stops_the_loop_with_one_line(self) -> None:
        alone = self.node(1, ())
        alone.start()

        def broken() -> None:
            raise RuntimeError("boom")

        alone.membership.groom = broken  # type: ignore[method-assign]
        self.clock.advance(alone.membership.settings.groom_interval)
        self.assertFalse(alone.service.alive())
        [event] = self.logged("groom loop stopped")
        self.assertEqual(event["log_failure"].type, RuntimeError)
        self.flushLoggedErrors(RuntimeError)
        self.clock.advance(10 * alone.membership.settings.groom_interval)
        self.assertEqual(len(self.logged("groom loop stopped")), 1)  # no tick after it
        d = alone.stop()
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(d), 0)

    def test_stop_before_start_still_leaves(self) -> None:
        d = self.node(1, ()).stop()
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(d), 0)

    def test_max_concurrent_bootstraps(self) -> None:
        urls = tuple(f"https://h{i}.test:4567" for i in range(6))
        for u in urls:
            self.net.add(u, object())
            self.net.hang.add(u.split("//")[1])
        n1 = self.node(1, urls, max_concurrent_bootstraps=2)
        n1.start()
        self.clock.advance(0)
        self.assertEqual(n1.client.in_flight, 2)
        self.assertEqual(len(self.net.hanging), 2)


class SessionTests(MeshTestCase):
    def test_rotation_is_not_starved_by_renewals_due_at_every_tick(self) -> None:
        # reregistration_interval == groom_interval: a renewal is due at every tick; the session must still
        # rotate at its age (it waited for a tick without a renewal, which never came: only at most one
        # rotation per session lifetime by chance; CI saw 1 rotation in 6 s at 1.5 s session_max_age).
        timing = {"groom_interval": 1.0, "local_timing": PeerTiming(1.0, 30.0), "session_max_age": 20.0}
        n1 = self.node(1, (), **timing)
        n2 = self.node(2, (N1,), **timing)
        n1.start()
        n2.start()
        advance(self.clock, 5)
        def rotations() -> list[float]:
            return [n.counter("tunmesh_mesh_session_setups_total", kind="rotate", result="ok") for n in (n1, n2)]

        before = rotations()
        advance(self.clock, 200)
        # each node's outbound sessions rotate every 18-20 s, the renewing node's too
        self.assertEqual([a - b >= 8 for a, b in zip(rotations(), before, strict=True)], [True, True], (before, rotations()))
        renewals = sum(n.counter("tunmesh_mesh_registrations_total", direction="out", result="ok") for n in (n1, n2))
        self.assertGreater(renewals, 100)  # the pair renews at (nearly) every tick all along

    def test_rotation_under_continuous_requests_loses_none(self) -> None:
        n1 = self.node(1, (), session_max_age=300.0)
        n2 = self.node(2, (N1,), session_max_age=300.0)
        n1.start()
        n2.start()
        advance(self.clock, 5)
        path = "/tunmesh/control/v0/packet/rx/" + n1.id
        in_flight: list[tuple[SignedRequest, bytes]] = []
        accepted = 0
        kids = set()
        for second in range(1500):
            # a request signed now, verified one second later (in flight across a rotation)
            body = b"packet %d" % second
            signed = n1.membership.session_auth.sign_request(n2.id, "POST", path, body)
            kids.add(signed.kid)
            in_flight.append((signed, body))
            if len(in_flight) > 1:
                old, old_body = in_flight.pop(0)
                pending = n2.membership.session_auth.verify_request_head(n1.id, old.header_value, "POST", path)
                pending.verify_body(old_body)
                accepted += 1
            self.clock.advance(1)
        self.assertEqual(accepted, 1499)
        self.assertGreaterEqual(len(kids), 5)  # initial + at least 4 rotations in 1500 s at 270-300 s
        self.assertGreaterEqual(n1.counter("tunmesh_mesh_session_setups_total", kind="rotate", result="ok"), 4)
        self.assertEqual(n2.counter("tunmesh_auth_failures_total"), 0)
        self.assertEqual(n1.counter("tunmesh_auth_failures_total"), 0)
        self.assertFullMesh([n1, n2])

    def test_init_session_rate_limited(self) -> None:
        n1, n2 = self.mesh(2)
        before = n1.counter("tunmesh_mesh_inbound_sessions_total", kind="init", result="rate_limited")
        advance(self.clock, 11)
        for attempt in range(2):
            n2.sessions.invalidate_outbound(n1.id, n2.sessions.outbound(n1.id).kid)  # type: ignore[union-attr]
            n2.membership.session_setup.backoff.success(n1.id)
            d = n2.membership.session_setup.ensure_session(n1.id)
            if attempt == 0:
                self.successResultOf(d)
        failure = self.failureResultOf(d)
        self.assertEqual(failure.value.status, 429)
        self.assertGreaterEqual(failure.value.retry_after, 1)
        self.assertEqual(
            n1.counter("tunmesh_mesh_inbound_sessions_total", kind="init", result="rate_limited"), before + 1
        )
        # the inbound key n1 holds for n2 was not replaced by the refused init
        self.assertIsNone(n2.sessions.outbound(n1.id))
        advance(self.clock, 25)
        self.assertIsNotNone(n2.sessions.outbound(n1.id))

    def test_fallback_to_cluster_auth_when_peer_forgot_us(self) -> None:
        n1, n2 = self.mesh(2)
        # n1 forgets n2 entirely (as after a partition longer than the stale threshold on n1 only)
        n1.membership.remove_peer(n2.id, "test")
        self.assertNotIn(n2.id, n1.peer_ids())
        advance(self.clock, 12)
        self.assertIn(n2.id, n1.peer_ids())
        self.assertGreaterEqual(
            n2.counter("tunmesh_mesh_registrations_total", direction="out", result="fallback"), 1
        )
        self.assertGreaterEqual(n1.counter("tunmesh_auth_failures_total", reason="unknown_peer"), 1)
        warns = self.logged("does not know us")
        self.assertTrue(warns)
        self.assertEqual(warns[0]["log_level"].name, "warn")
        self.assertFullMesh([n1, n2])

    def test_sessions_forgotten_peer_token_refused(self) -> None:
        n1, n2 = self.mesh(2)
        n1.membership.remove_peer(n2.id, "test")
        signed = n2.membership.session_auth.sign_request(n1.id, "POST", "/x", b"")
        exc = self.assertRaises(
            AuthError, n1.membership.session_auth.verify_request_head, n2.id, signed.header_value, "POST", "/x"
        )
        self.assertEqual(exc.reason, "unknown_peer")


class LoadBalancerTests(MeshTestCase):
    def test_bootstrap_through_alternating_balancer_converges(self) -> None:
        lb = "https://lb.test:443"
        n1 = self.node(1, (lb,))
        n2 = self.node(2, (lb,))
        self.net.add_balancer(lb, [n1.url, n2.url])
        n3 = self.node(3, (lb,))
        n4 = self.node(4, (lb,))
        for n in (n1, n2, n3, n4):
            n.start()
        advance(self.clock, 40)
        nodes = [n1, n2, n3, n4]
        self.assertFullMesh(nodes)
        for n in nodes:
            # only the signed listen_url is ever used, never the balancer's
            self.assertNotIn(lb, {p.url for p in n.pool})
        self.assertGreaterEqual(
            sum(n.counter("tunmesh_mesh_bootstrap_attempts_total", result="self") for n in (n1, n2)), 1
        )


class ReloadTests(MeshTestCase):
    def test_reload_before_bootstrap_pass(self) -> None:
        calls = []

        def reload() -> list[BootstrapGroupSpec]:
            calls.append(1)
            if len(calls) == 1:
                raise OSError("config unreadable")
            return [BootstrapGroupSpec("default", (N1,))]

        n1 = self.node(1, ())
        n2 = self.node(2, ("https://n9.test:4567",), reload=reload, reload_config_on_bootstrap=True)
        n1.start()
        n2.start()
        self.assertEqual(n2.membership.bootstrapper.groups[0].spec.urls, ("https://n9.test:4567",))
        self.assertTrue(self.logged("config reload before bootstrap failed"))
        advance(self.clock, 6)
        self.assertEqual(n2.membership.bootstrapper.groups[0].spec.urls, (N1,))
        self.assertIn(n1.id, n2.peer_ids())
        calls_after_join = len(calls)
        advance(self.clock, 30)
        self.assertEqual(len(calls), calls_after_join)  # bootstrapped groups are not reloaded

    def test_group_retries_exhausted(self) -> None:
        n2 = self.node(2, ("https://n9.test:4567",))
        n2.membership.bootstrapper.groups = [GroupState(BootstrapGroupSpec("g", ("https://n9.test:4567",), retries=1))]
        n2.start()
        advance(self.clock, 200)
        group = n2.membership.bootstrapper.groups[0]
        self.assertEqual(group.attempts, 2)
        self.assertTrue(n2.membership.bootstrapper.group_bootstrapped(group))


class WallClockStepTests(MeshTestCase):
    """Issue 13: one node's wall clock steps while its timers (this ``Clock``) run on; the mesh never
    needs a restart. Tokens carry wall time; every timer, age and staleness is on the timers' clock."""

    def stepped_mesh(self) -> tuple[list[Node], SteppedWall]:
        wall = SteppedWall(self.clock)
        nodes = [self.node(1, ()), self.node(2), self.node(3, wall=wall, session_max_age=40.0)]
        # Node 3's step watch, wired as makeService wires it.
        watch = ClockStepWatch(self.clock, wall=wall.seconds, monotonic=self.clock.seconds)
        watch.add_observer(nodes[2].membership.clock_stepped)
        watch.startService()
        self.addCleanup(watch.stopService)
        for n in nodes:
            n.start()
        advance(self.clock, 12)
        self.assertFullMesh(nodes)
        return nodes, wall

    def auth_failures(self, nodes: list[Node]) -> float:
        return sum(n.counter("tunmesh_auth_failures_total") for n in nodes)

    def test_steps_within_the_leeway_change_nothing(self) -> None:
        nodes, wall = self.stepped_mesh()
        for step in (+10, -10, -10, +10):
            wall.step(step)
            advance(self.clock, 30)
            self.assertFullMesh(nodes)
        self.assertEqual(self.auth_failures(nodes), 0)
        self.assertEqual(sum(n.counter("tunmesh_mesh_peers_removed_total") for n in nodes), 0)

    def test_large_steps_recover_by_themselves_within_one_stale_threshold(self) -> None:
        nodes, wall = self.stepped_mesh()
        n3 = nodes[2]
        stale = n3.settings.local_timing.stale_threshold
        for step in (+3600, -3600, +86400, -86400):
            sent_before = n3.counter("tunmesh_mesh_registrations_total", direction="out")
            wall.step(step)
            advance(self.clock, stale + 10)
            # Its timers ran all along: it kept registering (refused: its tokens are off by the step).
            self.assertGreater(n3.counter("tunmesh_mesh_registrations_total", direction="out") + n3.counter(
                "tunmesh_mesh_bootstrap_attempts_total"), sent_before)
            self.assertGreater(nodes[0].counter("tunmesh_auth_failures_total", reason="clock_skew"), 0)
            wall.step(-step)  # NTP puts it back: the watch sees it, node 3 retries at once
            advance(self.clock, 8)
            self.assertFullMesh(nodes)
            self.assertTrue(n3.membership.ready())
            self.assertTrue(n3.service.alive())
        skews = [e for e in self.logged("check NTP")]
        self.assertTrue(any(abs(abs(e["skew"]) - 3600) < 5 for e in skews))

    def test_a_detected_step_forgets_backoff_so_peers_are_retried_at_once(self) -> None:
        nodes, wall = self.stepped_mesh()
        m3 = nodes[2].membership
        for peer in m3.pool:
            # renewed just now, so the groom tick the step triggers has no renewal due (one with the stepped
            # clock would be refused and back off again): what is checked here is the reset itself
            peer.last_renewal = self.clock.seconds()
        for _ in range(8):  # failures while the clock was wrong: about a minute of backoff
            m3.bootstrapper.url_backoff.failure(N1)
            m3.renewal.backoff.failure(nodes[0].id)
        self.assertFalse(m3.bootstrapper.url_backoff.allowed(N1))
        wall.step(-3600)
        self.clock.advance(CHECK_INTERVAL)
        self.assertTrue(m3.bootstrapper.url_backoff.allowed(N1))
        self.assertTrue(m3.renewal.backoff.allowed(nodes[0].id))
        self.assertEqual(len(self.logged("retrying peers and bootstrap URLs now")), 1)
