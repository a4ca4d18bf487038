"""Untrusted input never raises past a parser (issue 12, defect 1; contract W18).

Every decoder of bytes from the network is total: any input ends in a counted refusal (400 or a
constant 401 on HTTP, HELLO_ERR or a closed link on packet links), never in an exception that reaches
Twisted. The property tests drive arbitrary bytes and arbitrary JSON (deep, huge numbers, odd types)
through each entry point: the JSON decoder, token decoding, the HTTP pre-auth check, every JSON route
(signed, so the body reaches its parser) and HELLO/REKEY/DATA/PING frames on a link.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from tests.unit.mesh_support import SECRET, RouteTestCase, advance, info, reg_body
from tests.unit.support import Pair
from tunmesh import strictjson
from tunmesh.api.server import RequestHead
from tunmesh.auth import keys
from tunmesh.auth.tokens import CLUSTER_KID, TYP_REQUEST, base_claims, bearer, encode_token
from tunmesh.dataplane import frames as F
from tunmesh.mesh.exchange import INIT_SESSION_PATH, LEAVE_PATH, REGISTER_PATH

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**500), max_value=10**500)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)


def json_text(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8")


class StrictJSONTests(SynchronousTestCase):
    def test_deep_nesting_refused_not_recursion_error(self) -> None:
        for levels in (33, 1100, 100_000):
            with self.assertRaises(strictjson.StrictJSONError) as cm:
                strictjson.loads(deep(levels))
            self.assertEqual(cm.exception.reason, "too_deep")
        self.assertEqual(strictjson.loads(deep(32)), [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]])

    def test_brackets_inside_strings_do_not_count(self) -> None:
        self.assertEqual(strictjson.loads(json_text({"a": "[" * 100})), {"a": "[" * 100})

    def test_huge_and_noncanonical_numbers_refused(self) -> None:
        for text, reason in [
            (b"1" * 400, "number_too_long"),
            (b"-" + b"9" * 21, "number_too_long"),
            (b"-0", "negative_zero"),
            (b'{"seq": -0}', "negative_zero"),
            (b"1e999", "number_overflow"),
            (b"NaN", "constant"),
            (b"-Infinity", "constant"),
        ]:
            with self.assertRaises(strictjson.StrictJSONError) as cm:
                strictjson.loads(text)
            self.assertEqual(cm.exception.reason, reason, text)
        self.assertEqual(strictjson.loads(b"18446744073709551615"), 2**64 - 1)
        self.assertEqual(strictjson.loads(b"0"), 0)
        self.assertEqual(strictjson.loads(b"-0.0"), 0.0)

    def test_ambiguous_documents_refused(self) -> None:
        for text, reason in [
            (b'{"a":1,"a":2}', "duplicate_key"),
            (b"\xef\xbb\xbf{}", "bom"),
            (b'"\xff"', "not_utf8"),
            (b"{", "syntax"),
            (b"", "syntax"),
        ]:
            with self.assertRaises(strictjson.StrictJSONError) as cm:
                strictjson.loads(text)
            self.assertEqual(cm.exception.reason, reason, text)

    @FUZZ
    @given(st.binary(max_size=300))
    def test_any_bytes_decode_or_refuse(self, data: bytes) -> None:
        try:
            strictjson.loads(data)
        except strictjson.StrictJSONError:
            pass

    @FUZZ
    @given(json_values)
    def test_any_json_value_decodes_or_is_refused(self, value: Any) -> None:
        try:
            strictjson.loads(json_text(value))
        except strictjson.StrictJSONError as exc:
            self.assertIn(exc.reason, {"number_too_long", "too_deep", "negative_zero"})


class HeadHelpers(RouteTestCase):
    """Route tests that also call the early (pre-auth) check directly."""

    def limits_lookup(self, method: str, path: str) -> Any:
        from tunmesh.api.server import RouteLimits

        limits = RouteLimits()
        self.n1.api.register_limits(limits)
        return limits.lookup(method.encode(), path)

    def head(self, method: str, path: str, *auth: str) -> RequestHead:
        headers = Headers()
        for value in auth:
            headers.addRawHeader(b"Authorization", value.encode())
        return RequestHead(method=method.encode(), path=path, headers=headers, peer_host="127.0.0.1")


class TokenDecodeTests(HeadHelpers):
    """Tokens on the HTTP API: a refusal is a constant 401 counted as ``malformed``, never a 500."""

    def signed_cluster_token(self, extra: dict[str, Any], header: dict[str, Any] | None = None) -> str:
        key = keys.derive_key(SECRET, keys.CLUSTER_REQUEST)
        claims = base_claims(self.stranger.node_id, self.n1.id, self.clock.seconds(), 30.0, b"", None)
        claims.update(htm="GET", htu="/tunmesh/control/v0/peers", jti=keys.random_id())
        claims.update(extra)
        token = encode_token(key, TYP_REQUEST, CLUSTER_KID, claims)
        if header is not None:
            parts = token.split(".")
            token = ".".join([_b64(json_text(header)), parts[1], parts[2]])
        return token

    def test_deeply_nested_header_is_401_malformed(self) -> None:
        token = ".".join([_b64(deep(1100)), _b64(b"{}"), "sig"])
        _, pre_auth = self.limits_lookup("GET", "/tunmesh/control/v0/peers")
        self.assertEqual(pre_auth(self.head("GET", "/tunmesh/control/v0/peers", bearer(token))), 401)
        response, content = self.request("GET", "/tunmesh/control/v0/peers", auth=bearer(token))
        self.assertEqual((response.code, content), (401, b"Unauthorized"))
        self.assertEqual(self.failures("malformed"), 2)
        self.assertEqual(self.n1.counter("tunmesh_errors_total"), 0)

    def test_huge_integer_claim_with_the_secret_is_401_not_500(self) -> None:
        token = self.signed_cluster_token({"iat": 10**400})
        response, _ = self.request("GET", "/tunmesh/control/v0/peers", auth=bearer(token))
        self.assertEqual(response.code, 401)
        self.assertEqual(self.failures("malformed"), 1)

    @FUZZ
    @given(st.text(max_size=200), json_values, json_values)
    def test_any_token_is_a_counted_401(self, raw: str, header: Any, claims: Any) -> None:
        for token in (raw, ".".join([_b64(json_text(header)), _b64(json_text(claims)), "c2ln"])):
            _, pre_auth = self.limits_lookup("GET", "/tunmesh/control/v0/peers")
            try:
                status = pre_auth(self.head("GET", "/tunmesh/control/v0/peers", "Bearer " + token))
            except Exception as exc:  # pragma: no cover - the failure this test exists for
                self.fail(f"{type(exc).__name__} escaped the pre-auth check for {token[:60]!r}")
            self.assertIn(status, (401, None))

    @FUZZ
    @given(json_values)
    def test_signed_tokens_with_any_claim_values_are_refused_cleanly(self, value: Any) -> None:
        for claim in ("iat", "exp", "jti", "htu", "aud", "bh", "cnf"):
            try:
                token = self.signed_cluster_token({claim: value})
            except ValueError:  # larger than any token we would send: refused by size instead
                continue
            _, pre_auth = self.limits_lookup("GET", "/tunmesh/control/v0/peers")
            self.assertIn(pre_auth(self.head("GET", "/tunmesh/control/v0/peers", bearer(token))), (401, None))


class DuplicateAuthorizationTests(HeadHelpers):
    """Two ``Authorization`` headers: refused before and at the handler (issue 12, defect 5)."""

    def test_two_authorization_headers_refused_at_pre_auth(self) -> None:
        good = self.stranger.sign_request(self.n1.id, "GET", "/tunmesh/control/v0/peers", b"").header_value
        _, pre_auth = self.limits_lookup("GET", "/tunmesh/control/v0/peers")
        self.assertIsNone(pre_auth(self.head("GET", "/tunmesh/control/v0/peers", good)))
        self.assertEqual(pre_auth(self.head("GET", "/tunmesh/control/v0/peers", good, "Bearer x.y.z")), 401)
        self.assertEqual(pre_auth(self.head("GET", "/tunmesh/control/v0/peers", "Bearer x.y.z", good)), 401)

    def test_two_authorization_headers_refused_by_the_route(self) -> None:
        body = reg_body(info(7))
        good = self.stranger.sign_request(self.n1.id, "POST", REGISTER_PATH, body).header_value
        headers = {
            b"Authorization": [b"Bearer x.y.z", good.encode()],
            b"Content-Type": [b"application/json"],
        }
        response = self.successResultOf(self.net.stub.request("POST", self.n1.url + REGISTER_PATH, headers=headers, data=body))
        self.assertEqual(response.code, 401)
        self.assertEqual(self.failures("malformed"), 1)


class MediaTypeAndNumberTests(RouteTestCase):
    """Issue 12, defect 7: only UTF-8 JSON is read, and ``-0`` is not a sequence number."""

    def test_json_with_another_charset_is_415(self) -> None:
        body = reg_body(info(7))
        for content_type, status in [
            (b"application/json; charset=utf-16", 415),
            (b"application/json; charset=latin-1", 415),
            (b"application/json; boundary=x", 415),
            (b'application/json; charset="UTF-8"', 200),
        ]:
            signed = self.stranger.sign_request(self.n1.id, "POST", REGISTER_PATH, body)
            response, _ = self.request("POST", REGISTER_PATH, body, signed.header_value, content_type)
            self.assertEqual(response.code, status, content_type)

    def test_negative_zero_sequence_is_400(self) -> None:
        body = reg_body(info(7), stamp=1, seq=5).replace(b'"seq": 5', b'"seq": -0')
        self.assertIn(b'"seq": -0', body)
        signed = self.stranger.sign_request(self.n1.id, "POST", REGISTER_PATH, body)
        response, content = self.request("POST", REGISTER_PATH, body, signed.header_value)
        self.assertEqual((response.code, content), (400, b"Bad Request"))


class RouteBodyFuzzTests(RouteTestCase):
    """Arbitrary bodies, correctly signed, through every JSON route: 4xx or 200, never 500."""

    def routes(self) -> list[tuple[str, Any]]:
        session_path = REGISTER_PATH + "/" + self.n2.id
        init_path = INIT_SESSION_PATH + "/" + self.n2.id
        leave = LEAVE_PATH + "/" + self.n2.id
        cluster = self.stranger
        session = self.n2.membership.session_auth
        return [
            (REGISTER_PATH, lambda p, b: cluster.sign_request(self.n1.id, "POST", p, b)),
            (INIT_SESSION_PATH, lambda p, b: cluster.sign_request(self.n1.id, "POST", p, b)),
            (session_path, lambda p, b: session.sign_request(self.n1.id, "POST", p, b)),
            (init_path, lambda p, b: session.sign_request(self.n1.id, "POST", p, b)),
            (leave, lambda p, b: session.sign_request(self.n1.id, "POST", p, b)),
        ]

    def setUp(self) -> None:
        super().setUp()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]

    def post_everywhere(self, body: bytes) -> None:
        for path, sign in self.routes():
            if path.startswith(LEAVE_PATH):
                continue  # a well-formed leave would remove n2 and end the other routes' sessions
            response, _ = self.request("POST", path, body, sign(path, body).header_value)
            self.assertNotEqual(response.code, 500, (path, body[:80]))
        self.assertEqual(self.n1.counter("tunmesh_errors_total"), 0)
        self.assertEqual([e for e in self.events if e.get("log_level") == LogLevel.critical], [])

    @FUZZ
    @given(st.binary(max_size=400))
    def test_any_bytes(self, body: bytes) -> None:
        self.post_everywhere(body)

    @FUZZ
    @given(json_values)
    def test_any_json(self, value: Any) -> None:
        self.post_everywhere(json_text(value))

    @FUZZ
    @given(json_values, st.sampled_from(["local", "remote", "stamp", "seq", "id", "public_key", "kid"]))
    def test_any_value_in_a_real_field(self, value: Any, field: str) -> None:
        obj = json.loads(reg_body(info(7), stamp=1, seq=1))
        target = obj["local"] if field in ("id",) else obj
        target[field] = value
        self.post_everywhere(json_text(obj))

    def test_leave_route_with_garbage(self) -> None:
        for body in (deep(60), b"1" * 100, b'{"id": -0}', b"\xff"):
            path, sign = self.routes()[-1]
            response, _ = self.request("POST", path, body, sign(path, body).header_value)
            self.assertEqual(response.code, 400)


class LinkFrameFuzzTests(SynchronousTestCase):
    """Arbitrary frames on a packet link, before and after HELLO: refused and counted, never raised."""

    def test_deeply_nested_hello_token_gets_hello_err(self) -> None:
        pair = Pair(self)
        proto = pair.server.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        token = ".".join([_b64(deep(1100)), _b64(b"{}"), "c2ln"])
        proto.dataReceived(F.encode_hello(token, os.urandom(F.RANDOM_LEN), 1))
        self.assertEqual(F.decode_hello_err(transport.value()), F.ERR_BAD_TOKEN)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(pair.metrics_b.value("link_hello_failures_total", "auth_malformed"), 1)

    def test_unexpected_error_in_hello_is_a_counted_refusal(self) -> None:
        pair = Pair(self)
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]

        def broken(*args: Any, **kw: Any) -> Any:
            raise RecursionError("deep")

        pair.auth_b.verify_link_hello = broken  # type: ignore[method-assign]
        for _ in range(20):
            proto = pair.server.buildProtocol(None)
            transport = StringTransport()
            proto.makeConnection(transport)
            proto.dataReceived(F.encode_hello("a.b.c", os.urandom(F.RANDOM_LEN), 1))
            self.assertEqual(F.decode_hello_err(transport.value()), F.ERR_PROTOCOL)
        self.assertEqual(pair.metrics_b.value("link_hello_failures_total", "internal_error"), 20)
        lines = [e for e in events if e.get("log_level") == LogLevel.error]
        self.assertLessEqual(len(lines), 6)  # rate limited: a burst of 5, then a summary at most

    @FUZZ
    @given(st.lists(st.binary(max_size=120), max_size=6), st.booleans())
    def test_any_frames(self, bodies: list[bytes], after_hello: bool) -> None:
        pair = Pair(self)
        if after_hello:
            pair.client.start()
            pair.pump()
            self.assertTrue(pair.client.ready)
            proto = pair.server_proto
        else:
            proto = pair.server.buildProtocol(None)
            proto.makeConnection(StringTransport())
        kinds = [F.HELLO, F.DATA, F.REKEY, F.PING, F.PONG, 0, 255]
        for i, body in enumerate(bodies):
            frame_body = bytes([kinds[i % len(kinds)]]) + body
            proto.dataReceived(len(frame_body).to_bytes(4, "big") + frame_body)
        proto.dataReceived(b"".join(bodies))


class GossipEntryTests(RouteTestCase):
    """Issue 12, defect 4: one gossip entry this node refuses is dropped and counted, not a 400."""

    def test_bad_gossip_entries_dropped_alone(self) -> None:
        good_hint = info(8)
        bad = [
            dict(info(9), listen_url="ftp://n9.test:4567"),
            dict(info(10), listen_url="https://user@n10.test:4567"),
            dict(info(11), listen_url="https://n11.test:4567/path"),
            dict(info(12), listen_url="https://" + ("a" * 60 + ".") * 40 + "test:4567"),
            dict(info(13), node_addresses={"ipv4": {"cidr": "not-a-cidr"}}),
            "not an object",
        ]
        body = reg_body(info(7), remote=[bad[0], good_hint, *bad[1:]])
        signed = self.stranger.sign_request(self.n1.id, "POST", REGISTER_PATH, body)
        response, _ = self.request("POST", REGISTER_PATH, body, signed.header_value)
        self.assertEqual(response.code, 200)
        self.assertIn(info(7)["id"], self.n1.peer_ids())
        self.assertEqual(self.n1.counter("tunmesh_mesh_gossip_entries_dropped_total"), len(bad))
        self.assertEqual(self.n1.counter("tunmesh_mesh_gossip_entries_dropped_total", reason="bad_url"), 4)

    def test_sender_entry_stays_strict(self) -> None:
        body = reg_body(dict(info(7), listen_url="ftp://n7.test:4567"), remote=[info(8)])
        signed = self.stranger.sign_request(self.n1.id, "POST", REGISTER_PATH, body)
        response, _ = self.request("POST", REGISTER_PATH, body, signed.header_value)
        self.assertEqual(response.code, 400)


class InsiderEvictionTests(RouteTestCase):
    """Issue 12, defect 2 (W6): a new id at a live node's URL is refused until the URL answers as it."""

    def test_claim_for_a_live_nodes_url_is_409_and_never_evicts(self) -> None:
        victim = self.n2
        route = ipaddress.ip_network(victim.address.split("/")[0] + "/32")
        for attempt in range(5):
            claim = dict(info(7), listen_url=victim.url)
            body = reg_body(claim, stamp=attempt + 1, seq=attempt + 1)
            signed = self.stranger.sign_request(self.n1.id, "POST", REGISTER_PATH, body)
            response, _ = self.request("POST", REGISTER_PATH, body, signed.header_value)
            self.assertEqual(response.code, 409)
            advance(self.clock, 1)
            # the probe of the URL reached the live victim, which answered with its own id
            self.assertIn(victim.id, self.n1.peer_ids())
            self.assertNotIn(info(7)["id"], self.n1.peer_ids())
            self.assertEqual(self.n1.pool.holder(route), victim.id)
        self.assertNotIn(("down", victim.id), self.n1.observer.events)
        self.assertEqual(self.n1.counter("tunmesh_mesh_peers_removed_total"), 0)
        self.assertEqual(self.n1.counter("tunmesh_mesh_registrations_total", direction="in", result="url_conflict"), 5)


class ClockSkewDiagnosticsTests(RouteTestCase):
    """Issue 12, defect 7: a time refusal logs the skew the token showed."""

    def test_future_token_logs_the_skew(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        self.clock.advance(3600)  # the stranger's clock (this Clock) runs an hour ahead of...
        body = reg_body(info(7))
        signed = self.stranger.sign_request(self.n1.id, "POST", REGISTER_PATH, body)
        self.clock.advance(-3600)  # ...node 1's, which checks the token now
        response, _ = self.request("POST", REGISTER_PATH, body, signed.header_value)
        self.assertEqual(response.code, 401)
        self.assertEqual(self.failures("clock_skew"), 1)
        lines = [e for e in events if "check NTP" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        self.assertAlmostEqual(lines[0]["skew"], 3600.0, delta=1)
