"""Join timing in memory (task.Clock): bootstrap retries on their own timer, fast at first and backing off;
gossip hints and refused session setups followed up when their backoff ends, not on the next groom tick.

All nodes run the shipped defaults (``groom_interval`` 5 s, ``bootstrap_retry_interval`` 15 s) unless a
test says otherwise: before this schedule, a refused first bootstrap was tried again only 15 s later.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from tests.unit.mesh_support import Node, advance
from tunmesh.mesh.backoff import Backoff
from tunmesh.mesh.exchange import REGISTER_PATH
from tunmesh.mesh.timers import KeyedTimers
from tunmesh.testing import FakeNetwork

START = 1_700_000_000.0
N1 = "https://n1.test:4567"
DEFAULTS = {"groom_interval": 5.0, "bootstrap_retry_interval": 15.0}


class RecordingNetwork(FakeNetwork):
    """Records when each bootstrap registration was sent, refused connections included."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.bootstraps: list[tuple[float, str]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        if url.endswith(REGISTER_PATH):
            self.bootstraps.append((self.clock.seconds() - START, url))
        return super().request(method, url, **kwargs)

    def times(self, prefix: str = "") -> list[float]:
        return [t for t, url in self.bootstraps if url.startswith(prefix)]


class Failing(Resource):
    """Answers every request with ``status`` (and a Retry-After when given)."""

    isLeaf = True

    def __init__(self, status: int, retry_after: int | None = None) -> None:
        super().__init__()
        self.status = status
        self.retry_after = retry_after

    def render(self, request: Any) -> bytes:
        request.setResponseCode(self.status)
        if self.retry_after is not None:
            request.setHeader(b"Retry-After", str(self.retry_after).encode())
        return b"no"


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 3) for a, b in zip(times, times[1:], strict=False)]


class JoinTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.net = RecordingNetwork(self.clock)

    def node(self, n: int, bootstrap: tuple[str, ...] = (N1,), **kw: Any) -> Node:
        settings: dict[str, Any] = dict(DEFAULTS)
        settings.update(kw)
        node = Node(self.net, self.clock, n, bootstrap, **settings)
        self.addCleanup(node.stop)
        return node

    def run_for(self, seconds: float, step: float = 0.05) -> None:
        advance(self.clock, seconds, step)

    def elapsed(self) -> float:
        return self.clock.seconds() - START


class BootstrapRetryTests(JoinTestCase):
    def test_refused_first_bootstrap_is_retried_within_half_a_second(self) -> None:
        """Not 15 s later on a groom tick: the group's first wait is 0.5 s × U(0.5, 1)."""
        joiner = self.node(2)
        joiner.start()
        self.run_for(2)
        attempts = self.net.times(N1)
        self.assertGreaterEqual(len(attempts), 3, attempts)
        self.assertEqual(attempts[0], 0.0)
        self.assertGreaterEqual(attempts[1], 0.25)
        self.assertLessEqual(attempts[1], 0.5 + 0.06)

    def test_a_url_where_nothing_listens_is_retried_doubling_up_to_the_interval(self) -> None:
        """0.5 s doubling to ``bootstrap_retry_interval`` (15 s), times U(0.5, 1): a pod whose bootstrap
        Service has no endpoint yet keeps trying at least every 15 s, not every 15 min."""
        joiner = self.node(2)
        joiner.start()
        self.run_for(180, step=0.25)
        steps = gaps(self.net.times(N1))
        for i, gap in enumerate(steps):
            base = min(15.0, 0.5 * 2**i)
            self.assertGreaterEqual(gap, base / 2 - 0.26, steps)
            self.assertLessEqual(gap, base + 0.26, steps)
        self.assertGreaterEqual(len(steps), 14, steps)

    def test_node_started_a_moment_later_is_joined_within_two_seconds(self) -> None:
        """Two pods started together: the bootstrap target listens 0.3 s after the joiner's first try."""
        joiner = self.node(2)
        joiner.start()
        self.run_for(0.3)
        first = self.node(1, ())
        first.start()
        self.run_for(1.7)
        self.assertEqual(joiner.peer_ids(), {first.id})
        self.assertEqual(first.peer_ids(), {joiner.id})
        self.assertIsNotNone(joiner.sessions.outbound(first.id))
        self.assertIsNotNone(first.sessions.outbound(joiner.id))
        self.assertTrue(joiner.membership.ready())

    def test_a_url_that_answers_with_errors_backs_off_as_W7_says(self) -> None:
        """A URL that answers (here 500) keeps its own backoff (1 s doubling to 900 s): the group's
        schedule never makes it faster."""
        self.net.add(N1, Failing(500))
        joiner = self.node(2)
        joiner.start()
        self.run_for(130, step=0.25)
        steps = gaps(self.net.times(N1))
        self.assertLessEqual(len(steps), 7, steps)
        for i, gap in enumerate(steps):
            self.assertGreaterEqual(gap, 0.5 * 2**i - 0.25, steps)  # the URL backoff's lower bound
            self.assertLessEqual(gap, 2**i + 0.25, steps)  # and no slower than its upper bound

    def test_group_passes_double_up_to_the_configured_interval(self) -> None:
        """A load balancer that only ever reaches the node itself (421, no URL backoff): the group's
        own schedule paces the passes, 0.5 s doubling to ``bootstrap_retry_interval``, jittered."""
        joiner = self.node(2, ("https://lb.test:443",))
        self.net.add_balancer("https://lb.test:443", [joiner.url])
        joiner.start()
        self.run_for(120, step=0.25)
        requests = self.net.times("https://lb.test")
        # up to three requests per pass (two extra tries after a 421); a pass starts after a gap
        passes = [t for i, t in enumerate(requests) if i == 0 or t - requests[i - 1] > 0.2]
        steps = gaps(passes)
        self.assertLessEqual(steps[0], 0.5 + 0.25, steps)
        self.assertTrue(all(gap <= 15.0 + 0.25 for gap in steps), steps)
        self.assertTrue(all(gap >= 7.5 - 0.25 for gap in steps[6:]), steps)  # at the cap: 15 s × U(0.5, 1)
        self.assertGreater(joiner.counter("tunmesh_mesh_bootstrap_attempts_total", result="self"), 10)

    def test_retry_after_of_a_busy_bootstrap_node_is_honoured(self) -> None:
        self.net.add(N1, Failing(429, retry_after=20))
        joiner = self.node(2)
        joiner.start()
        self.run_for(30, step=0.25)
        attempts = self.net.times(N1)
        self.assertEqual(len(attempts), 2, attempts)
        self.assertGreaterEqual(attempts[1] - attempts[0], 20.0)

    def test_a_joined_group_stops_retrying(self) -> None:
        first = self.node(1, ())
        first.start()
        joiner = self.node(2)
        joiner.start()
        self.run_for(1)
        self.assertEqual(joiner.peer_ids(), {first.id})
        count = len(self.net.times(N1))
        self.run_for(60, step=0.5)
        self.assertEqual(len(self.net.times(N1)), count)  # bootstrapped: no more passes
        self.assertEqual(len(joiner.membership.timers), 0)

    def test_stop_cancels_every_join_timer(self) -> None:
        joiner = self.node(2)
        joiner.start()
        self.run_for(0.1)
        self.assertGreater(len(joiner.membership.timers), 0)
        joiner.stop()
        self.assertEqual(len(joiner.membership.timers), 0)
        count = len(self.net.bootstraps)
        self.run_for(60, step=0.5)
        self.assertEqual(len(self.net.bootstraps), count)


class GossipAndSessionTests(JoinTestCase):
    def test_gossip_bootstrap_that_failed_is_retried_when_its_backoff_ends(self) -> None:
        """n3 learns n2 from n1's answer while n2 is briefly unreachable: it tries n2 again as soon as
        the URL's backoff (1 s × U(0.5, 1)) allows, not on its next groom tick 5 s later."""
        first = self.node(1, ())
        second = self.node(2)
        first.start()
        second.start()
        self.run_for(1)
        self.net.down.add("n2.test:4567")
        third = self.node(3)
        third.start()
        self.run_for(0.1)
        self.assertEqual(third.peer_ids(), {first.id})
        self.net.down.discard("n2.test:4567")
        self.run_for(1.0)
        self.assertEqual(third.peer_ids(), {first.id, second.id})
        self.assertIn(third.id, second.peer_ids())
        self.assertLess(self.elapsed(), 2.5)

    def test_refused_first_session_setup_is_retried_after_its_backoff(self) -> None:
        """A 401 (the peer has not processed our registration yet) costs the backoff, not 10 s and a tick."""
        first = self.node(1, ())
        second = self.node(2)
        first.start()
        second.start()
        self.run_for(1)
        # second forgets first (as if its registration were still in flight); first starts over
        second.membership.remove_peer(first.id, "test")
        first.sessions.forget(second.id)
        first.membership.session_setup.ensure_session(second.id).addErrback(lambda f: None)
        self.clock.advance(0)
        self.assertIsNone(first.sessions.outbound(second.id))
        self.assertEqual(first.counter("tunmesh_mesh_session_setups_total", kind="init", result="status_401"), 1)
        # the registration lands; the retry follows within the backoff (1 s × U(0.5, 1))
        second.membership.bootstrapper.bootstrap(first.url).addErrback(lambda f: None)
        self.run_for(1.1)
        self.assertIsNotNone(first.sessions.outbound(second.id))

    def test_renewal_falls_back_to_the_cluster_token_while_the_session_setup_backs_off(self) -> None:
        """A session retry in its backoff must not cost the peer its renewal (and, 30 s later, its place)."""
        first = self.node(1, ())
        second = self.node(2)
        first.start()
        second.start()
        self.run_for(1)
        first.sessions.forget(second.id)
        first.membership.session_setup.backoff.failure(second.id, at_least=60.0)
        before = first.counter("tunmesh_mesh_registrations_total", direction="out", result="fallback")
        first.membership.renewal.renew(second.id).addErrback(lambda f: None)
        self.clock.advance(0)
        after = first.counter("tunmesh_mesh_registrations_total", direction="out", result="fallback")
        self.assertEqual(after, before + 1)
        peer = first.pool.get(second.id)
        assert peer is not None
        self.assertEqual(peer.last_renewal, self.clock.seconds())

    def test_failed_rotation_still_waits_the_minimum_interval(self) -> None:
        """W11: while the current key works, a failed rotation is not retried before 10 s."""
        first = self.node(1, ())
        second = self.node(2)
        first.start()
        second.start()
        self.run_for(1)
        current = first.sessions.outbound(second.id)
        assert current is not None
        self.net.down.add("n2.test:4567")
        first.sessions.outbound(second.id).rotate_after = 0  # type: ignore[union-attr]
        first.membership.session_setup.ensure_session(second.id).addErrback(lambda f: None)
        self.clock.advance(0)
        self.net.down.discard("n2.test:4567")
        self.run_for(9, step=0.25)
        self.assertIs(first.sessions.outbound(second.id), current)
        self.assertEqual(first.counter("tunmesh_mesh_session_setups_total", kind="rotate", result="ok"), 0)


class KeyedTimersTests(SynchronousTestCase):
    def test_one_call_per_key_and_the_earlier_wins(self) -> None:
        clock = Clock()
        timers = KeyedTimers(clock)
        calls: list[str] = []
        timers.call_within("k", 5.0, calls.append, "late")
        timers.call_within("k", 2.0, calls.append, "early")
        timers.call_within("k", 3.0, calls.append, "ignored")
        self.assertEqual(timers.pending("k"), 2.0)
        clock.advance(2.0)
        self.assertEqual(calls, ["early"])
        clock.advance(10)
        self.assertEqual(calls, ["early"])
        self.assertIsNone(timers.pending("k"))

    def test_cancel_and_a_failing_call_is_logged_not_raised(self) -> None:
        clock = Clock()
        timers = KeyedTimers(clock)
        timers.call_within("a", 1.0, lambda: 1 / 0)
        timers.call_within("b", 1.0, self.fail, "cancelled")
        timers.cancel("b")
        clock.advance(1.0)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(len(timers), 0)


class BackoffWaitTests(SynchronousTestCase):
    def test_wait_counts_down_to_zero(self) -> None:
        clock = Clock()
        backoff = Backoff(1.0, 900.0, clock.seconds)
        self.assertEqual(backoff.wait("u"), 0.0)
        delay = backoff.failure("u", at_least=3.0)
        self.assertEqual(backoff.wait("u"), delay)
        clock.advance(delay - 1)
        self.assertAlmostEqual(backoff.wait("u"), 1.0)
        clock.advance(5)
        self.assertEqual(backoff.wait("u"), 0.0)
