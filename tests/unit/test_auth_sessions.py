"""Session store, rotation (make-before-break), session tokens and link hellos (W1, W11, W12)."""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tunmesh.auth import kex
from tunmesh.auth.cluster import ClusterAuthority
from tunmesh.auth.errors import AuthError
from tunmesh.auth.keys import cert_thumbprint
from tunmesh.auth.sessions import SessionAuthority, SessionStore

SECRET = "x" * 43
NOW = 1_700_000_000.0
PATH = "/tunmesh/dataplane/v0/packets"


class Pair:
    """Nodes a and b sharing a clock; a sends to b."""

    def __init__(self, seed: int = 1) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.cluster = ClusterAuthority(SECRET, "node-a", self.clock)
        self.a = SessionStore("node-a", self.clock, self.clock.seconds, rng=random.Random(seed))
        self.b = SessionStore("node-b", self.clock, self.clock.seconds, rng=random.Random(seed + 1))
        self.sa = SessionAuthority(self.a)
        self.sb = SessionAuthority(self.b)

    def establish(self) -> str:
        """The a -> b exchange: a asks, b answers and keeps the inbound key."""
        initiator = kex.KexInitiator(self.cluster.kex_key, "node-a", "node-b")
        result = kex.respond(self.cluster.kex_key, initiator.request_body(), "node-a", "node-b")
        self.b.install_inbound("node-a", result.kid, result.secret)
        kid, secret = initiator.complete(result.body)
        self.a.install_outbound("node-b", kid, secret)
        return kid


class SessionTokenTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.p = Pair()
        self.kid = self.p.establish()

    def send(self, body: bytes = b"pkts", peer: str | None = "node-a") -> Any:
        req = self.p.sa.sign_request("node-b", "POST", PATH, body)
        return req, self.p.sb.verify_request_head(peer, req.header_value, "POST", PATH).verify_body(body)

    def reason(self, header: Any, peer: str | None = "node-a", body: bytes = b"pkts", **kw: Any) -> str:
        with self.assertRaises(AuthError) as ctx:
            self.p.sb.verify_request_head(peer, header, kw.get("method", "POST"), kw.get("path", PATH),
                                          cnf=kw.get("cnf")).verify_body(body)
        return ctx.exception.reason

    def test_round_trip_and_counter(self) -> None:
        for expected in range(3):
            req, token = self.send(peer=None if expected else "node-a")
            self.assertEqual((token.ctr, token.kid, token.iss), (expected, self.kid, "node-a"))
        resp = self.p.sb.sign_response(token, b"ok")
        verified = self.p.sa.verify_response("node-b", resp, req, b"ok")
        self.assertEqual((verified.rid, verified.iss), (2, "node-b"))

    def test_replayed_and_old_ctr(self) -> None:
        reqs = [self.p.sa.sign_request("node-b", "POST", PATH, b"pkts") for _ in range(8200)]
        self.p.sb.verify_request_head("node-a", reqs[5].header_value, "POST", PATH).verify_body(b"pkts")
        self.assertEqual(self.reason(reqs[5].header_value), "replay")
        # out of order within the window: accepted once
        self.p.sb.verify_request_head("node-a", reqs[3].header_value, "POST", PATH).verify_body(b"pkts")
        self.assertEqual(self.reason(reqs[3].header_value), "replay")
        self.p.sb.verify_request_head("node-a", reqs[8199].header_value, "POST", PATH).verify_body(b"pkts")
        self.assertEqual(self.reason(reqs[7].header_value), "replay")  # 8199 - 7 >= 8192: too old
        self.p.sb.verify_request_head("node-a", reqs[8].header_value, "POST", PATH).verify_body(b"pkts")

    def test_tampered_body_does_not_burn_ctr(self) -> None:
        req = self.p.sa.sign_request("node-b", "POST", PATH, b"pkts")
        self.assertEqual(self.reason(req.header_value, body=b"pktz"), "body_mismatch")
        self.p.sb.verify_request_head("node-a", req.header_value, "POST", PATH).verify_body(b"pkts")

    def test_binding_and_identity(self) -> None:
        req = self.p.sa.sign_request("node-b", "POST", PATH, b"pkts", cnf=cert_thumbprint(b"b cert"))
        self.assertEqual(self.reason(req.header_value, path="/tunmesh/other"), "wrong_path")
        self.assertEqual(self.reason(req.header_value, method="PUT"), "wrong_method")
        self.assertEqual(self.reason(req.header_value, cnf=cert_thumbprint(b"relay")), "channel_binding")
        self.assertEqual(self.reason(req.header_value, peer="node-c"), "unknown_peer")
        self.assertEqual(self.reason(None), "missing")
        # another node holding no session with us
        c = SessionStore("node-c", self.p.clock, self.p.clock.seconds)
        with self.assertRaises(AuthError) as ctx:
            SessionAuthority(c).verify_request_head(None, req.header_value, "POST", PATH)
        self.assertEqual(ctx.exception.reason, "unknown_peer")
        self.p.sb.verify_request_head("node-a", req.header_value, "POST", PATH,
                                      cnf=cert_thumbprint(b"b cert")).verify_body(b"pkts")

    def test_time_checks(self) -> None:
        req = self.p.sa.sign_request("node-b", "POST", PATH, b"pkts")
        self.p.clock.advance(90)
        self.assertEqual(self.reason(req.header_value), "clock_skew")

    def test_cluster_token_on_session_verifier_and_reverse(self) -> None:
        cluster_req = self.p.cluster.sign_request("node-b", "POST", PATH, b"pkts")
        self.assertEqual(self.reason(cluster_req.header_value), "wrong_type")
        session_req = self.p.sa.sign_request("node-b", "POST", PATH, b"pkts")
        b_cluster = ClusterAuthority(SECRET, "node-b", self.p.clock)
        with self.assertRaises(AuthError) as ctx:
            b_cluster.verify_request_head(session_req.header_value, "POST", PATH)
        self.assertEqual(ctx.exception.reason, "wrong_type")

    def test_response_is_not_a_request(self) -> None:
        req, token = self.send()
        resp = self.p.sb.sign_response(token, b"pkts")
        self.assertEqual(self.reason(resp), "wrong_type")
        hello = self.p.sa.sign_link_hello("node-b")
        self.assertEqual(self.reason(hello.header_value), "wrong_type")

    def test_response_checks(self) -> None:
        req, token = self.send()
        other, _ = self.send()
        resp = self.p.sb.sign_response(token, b"ok")

        def reason(*args: Any) -> str:
            with self.assertRaises(AuthError) as ctx:
                self.p.sa.verify_response(*args)
            return ctx.exception.reason

        self.assertEqual(reason("node-b", resp, other, b"ok"), "wrong_request")
        self.assertEqual(reason("node-b", resp, req, b"no"), "body_mismatch")
        self.assertEqual(reason("node-c", resp, req, b"ok"), "unknown_key")
        self.assertEqual(reason("node-b", req.header_value, req, b"pkts"), "wrong_type")

    def test_link_hello(self) -> None:
        hello = self.p.sa.sign_link_hello("node-b", b"hi", cnf=cert_thumbprint(b"b cert"))
        token = self.p.sb.verify_link_hello(None, hello.header_value.split(" ", 1)[1], b"hi",
                                            cnf=cert_thumbprint(b"b cert"))
        inbound = self.p.b.inbound(token.iss, token.kid)
        outbound = self.p.a.outbound("node-b")
        assert inbound is not None and outbound is not None
        self.assertEqual(inbound.frame_key, outbound.frame_key)
        with self.assertRaises(AuthError) as ctx:
            self.p.sb.verify_link_hello("node-a", hello.header_value, b"hi")
        self.assertEqual(ctx.exception.reason, "replay")
        req = self.p.sa.sign_request("node-b", "POST", PATH, b"")
        with self.assertRaises(AuthError) as ctx:
            self.p.sb.verify_link_hello("node-a", req.header_value)
        self.assertEqual(ctx.exception.reason, "wrong_type")
        for bad in (b"", b"\xff"):
            self.assertRaises(AuthError, self.p.sb.verify_link_hello, "node-a", bad)

    def test_no_outbound(self) -> None:
        with self.assertRaises(AuthError) as ctx:
            self.p.sb.sign_request("node-a", "POST", PATH, b"")
        self.assertEqual(ctx.exception.reason, "unknown_peer")


class RotationTests(SynchronousTestCase):
    def test_make_before_break_over_several_periods(self) -> None:
        p = Pair()
        p.establish()
        for _period in range(4):
            self.assertFalse(p.a.needs_rotation("node-b"))
            old = p.sa.sign_request("node-b", "POST", PATH, b"x")
            p.clock.advance(3240)  # 0.9 * 3600: rotation is due at 3240..3600 s
            while not p.a.needs_rotation("node-b"):
                p.clock.advance(10)
            new_kid = p.establish()
            # counters restart at 0 under the new kid
            new = p.sa.sign_request("node-b", "POST", PATH, b"x")
            self.assertEqual((new.kid, new.rid), (new_kid, 0))
            self.assertNotEqual(old.kid, new_kid)
            # an in-flight token signed with the previous kid (re-signed now) still verifies...
            prev_session = p.a.outbound_for_kid("node-b", old.kid)
            self.assertIsNotNone(prev_session)
            p.sb.verify_request_head("node-a", new.header_value, "POST", PATH).verify_body(b"x")
            inflight = _sign_with(p, old.kid, ctr=10**6)
            p.clock.advance(89)
            pending = p.sb.verify_request_head("node-a", inflight, "POST", PATH)
            token = pending.verify_body(b"x")
            # ... and the answer to it is signed with the same previous kid and verifies at a
            resp = p.sb.sign_response(token, b"r")
            self.assertEqual(p.sa.verify_response("node-b", resp, _signed(old.kid, 10**6), b"r").rid, 10**6)
            # until validity + leeway after the rotation
            p.clock.advance(1)
            late = _sign_with(p, old.kid, ctr=10**6 + 1, allow_retired=True)
            with self.assertRaises(AuthError) as ctx:
                p.sb.verify_request_head("node-a", late, "POST", PATH)
            self.assertEqual(ctx.exception.reason, "unknown_key")
            self.assertIsNone(p.a.outbound_for_kid("node-b", old.kid))

    def test_jitter_within_90_to_100_percent(self) -> None:
        ages = []
        for seed in range(20):
            p = Pair(seed)
            p.establish()
            start = p.clock.seconds()
            while not p.a.needs_rotation("node-b"):
                p.clock.advance(5)
            ages.append(p.clock.seconds() - start)
        self.assertTrue(all(3240 <= age <= 3605 for age in ages), ages)
        self.assertGreater(len(set(ages)), 5)

    def test_hard_limits_without_rotation(self) -> None:
        p = Pair()
        kid = p.establish()
        p.clock.advance(3600 + 30)
        self.assertIsNone(p.a.outbound("node-b"))
        self.assertTrue(p.a.needs_rotation("node-b"))
        self.assertIsNotNone(p.b.inbound("node-a", kid))
        p.clock.advance(60)
        with self.assertRaises(AuthError) as ctx:
            p.b.lookup_inbound("node-a", kid)
        self.assertEqual(ctx.exception.reason, "session_expired")

    def test_no_previous_without_rotation(self) -> None:
        p = Pair()
        kid = p.establish()
        with self.assertRaises(AuthError) as ctx:
            p.b.lookup_inbound("node-a", "someotherkid")
        self.assertEqual(ctx.exception.reason, "unknown_key")
        self.assertRaises(ValueError, p.b.install_inbound, "node-a", kid, b"k" * 32)
        self.assertRaises(ValueError, p.b.install_inbound, "node-a", "k2", b"short")
        self.assertRaises(ValueError, p.b.install_inbound, "node-a", "cluster", b"k" * 32)
        self.assertRaises(ValueError, p.b.install_inbound, "bad id", "k2", b"k" * 32)


class StoreTests(SynchronousTestCase):
    def test_first_session_is_info_and_rotations_debug(self) -> None:
        """Hourly rotations of every peer's sessions are routine (counted in metrics): INFO stays quiet."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        store = SessionStore("node-b", Clock(), monotonic=lambda: 0.0)
        for kid in ("k1", "k2", "k3"):
            store.install_outbound("node-a", kid, b"s" * 32)
            store.install_inbound("node-a", kid, b"s" * 32)
        levels = [(e["log_format"].split()[0], e["log_level"]) for e in events if "installed" in e["log_format"]]
        self.assertEqual(
            levels,
            [("outbound", LogLevel.info), ("inbound", LogLevel.info)] + [
                ("outbound", LogLevel.debug), ("inbound", LogLevel.debug)] * 2,
        )
        store.forget("node-a")
        store.install_outbound("node-a", "k4", b"s" * 32)  # a new start with the peer
        self.assertEqual(events[-1]["log_level"], LogLevel.info)

    def test_init_rate_limit(self) -> None:
        p = Pair()
        p.b.inbound_rate_limit("node-a")  # the first is free
        p.clock.advance(4)
        with self.assertRaises(AuthError) as ctx:
            p.b.inbound_rate_limit("node-a")
        self.assertEqual((ctx.exception.reason, ctx.exception.status, ctx.exception.retry_after),
                         ("rate_limited", 429, 6))
        p.b.inbound_rate_limit("node-c")  # per peer
        p.clock.advance(6)
        p.b.inbound_rate_limit("node-a")
        self.assertRaises(AuthError, p.b.inbound_rate_limit, "node-a")

    def test_forget_removes_everything(self) -> None:
        p = Pair()
        events: list[tuple[str, str, str | None]] = []
        p.b.add_observer(lambda *e: events.append(e))
        kid = p.establish()
        p.b.inbound_rate_limit("node-a")
        p.b.forget("node-a")
        self.assertIsNone(p.b.inbound("node-a", kid))
        self.assertEqual(p.b.peers(), frozenset())
        p.b.inbound_rate_limit("node-a")  # the limiter forgot too
        self.assertEqual(events, [("node-a", "inbound", kid), ("node-a", "inbound", None),
                                  ("node-a", "outbound", None)])
        p.a.forget("node-b")
        self.assertIsNone(p.a.outbound("node-b"))
        p.a.forget("node-b")  # idempotent

    def test_observer_failure_is_contained(self) -> None:
        p = Pair()
        calls: list[Any] = []

        def broken(*e: object) -> None:
            raise ZeroDivisionError("observer failed")

        p.a.add_observer(broken)
        p.a.add_observer(lambda *e: calls.append(e))
        kid = p.establish()
        self.assertEqual(calls, [("node-b", "outbound", kid)])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_invalidate_outbound(self) -> None:
        p = Pair()
        kid = p.establish()
        self.assertFalse(p.a.invalidate_outbound("node-b", "other"))
        self.assertTrue(p.a.invalidate_outbound("node-b", kid))
        self.assertIsNone(p.a.outbound("node-b"))

    def test_config_checks(self) -> None:
        clock = Clock()
        self.assertRaises(ValueError, SessionStore, "n", clock, clock.seconds, max_age=0.5)
        SessionStore("n", clock, clock.seconds, max_age=3)  # fast rotation for tests is allowed


def _signed(kid: str, ctr: int) -> Any:
    from tunmesh.auth.tokens import SignedRequest

    return SignedRequest(header_value="", kid=kid, rid=ctr, peer_id="node-b")


def _sign_with(p: Pair, kid: str, ctr: int, allow_retired: bool = False) -> str:
    """A request as a's previous session would have signed it (the in-flight case)."""
    from tunmesh.auth.tokens import TYP_REQUEST, base_claims, bearer, encode_token

    session = p.a.outbound_for_kid("node-b", kid)
    if session is None and allow_retired:
        session = p.a._peers["node-b"].outbound_previous
    assert session is not None
    claims = base_claims("node-a", "node-b", p.clock.seconds(), 30, b"x")
    claims.update(htm="POST", htu=PATH, ctr=ctr)
    return bearer(encode_token(session.request_key, TYP_REQUEST, kid, claims))
