"""The /tunmesh/ routes: statuses, constant bodies, signed responses, counted 401 reasons, limits."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.web.http_headers import Headers

from tests.unit.mesh_support import SECRET, Node, RouteTestCase, advance, info, node_id, reg_body
from tunmesh.api.server import RequestHead, RouteLimits
from tunmesh.auth.cluster import ClusterAuthority
from tunmesh.auth.kex import KexInitiator
from tunmesh.auth.tokens import TYP_BOOTSTRAP
from tunmesh.mesh.api import MAX_INIT_SESSION_BODY, MAX_REGISTRATION_BODY
from tunmesh.mesh.exchange import (
    INIT_SESSION_PATH,
    LEAVE_PATH,
    PEERS_PATH,
    REGISTER_PATH,
    leave_body,
    leave_path,
)
from tunmesh.mesh.structs import NodeInfo

START = 1_700_000_000.0
N1 = "https://n1.test:4567"


class RegistrationRouteTests(RouteTestCase):
    def test_bootstrap_registration_signed_response(self) -> None:
        body = reg_body(info(7), stamp=1, seq=1)
        response, content, signed = self.register_as_stranger(body, TYP_BOOTSTRAP)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"Content-Type"), [b"application/json"])
        token = self.stranger.verify_response(
            response.headers.getRawHeaders(b"Authorization")[0], None, signed, content
        )
        self.assertEqual(token.iss, self.n1.id)
        payload = json.loads(content)
        self.assertEqual(payload["local"]["id"], self.n1.id)
        self.assertEqual(payload["local"]["listen_url"], N1)
        self.assertIn(node_id(7), self.n1.peer_ids())
        self.assertEqual(self.n1.observer.routes[node_id(7)], (ipaddress.ip_network("100.64.1.7/32"),))

    def test_unknown_fields_tolerated(self) -> None:
        body = reg_body(dict(info(7), extension={"a": 1}), stamp=1, seq=1, future="x")
        response, _, _ = self.register_as_stranger(body)
        self.assertEqual(response.code, 200)

    def test_bad_json_400(self) -> None:
        response, content, _ = self.register_as_stranger(b"{nope")
        self.assertEqual((response.code, content), (400, b"Bad Request"))

    def test_cidr_outside_network_400(self) -> None:
        response, _, _ = self.register_as_stranger(reg_body(info(7, "10.9.9.9/24")))
        self.assertEqual(response.code, 400)
        self.assertNotIn(node_id(7), self.n1.peer_ids())
        self.assertEqual(
            self.n1.counter("tunmesh_mesh_registrations_total", direction="in", result="cidr_outside_network"), 1
        )

    def test_issuer_must_be_the_registrant(self) -> None:
        response, _, _ = self.register_as_stranger(reg_body(info(8)))
        self.assertEqual(response.code, 400)
        self.assertNotIn(node_id(8), self.n1.peer_ids())

    def test_self_registration_421(self) -> None:
        me = ClusterAuthority(SECRET, self.n1.id, self.clock)
        body = reg_body(info(1))
        signed = me.sign_request("bootstrap", "POST", REGISTER_PATH, body, typ=TYP_BOOTSTRAP)
        response, content = self.request("POST", REGISTER_PATH, body, signed.header_value)
        self.assertEqual((response.code, content), (421, b"Misdirected Request"))

    def test_conflicting_live_claim_409(self) -> None:
        body = reg_body(info(7, "100.64.1.2/24"))
        response, content, _ = self.register_as_stranger(body)
        self.assertEqual((response.code, content), (409, b"Conflict"))
        self.assertEqual(self.n1.pool.holder(ipaddress.ip_network("100.64.1.2/32")), self.n2.id)
        self.assertNotIn(node_id(7), self.n1.peer_ids())
        # the holder's URL still answers as the holder: nothing is replaced
        advance(self.clock, 2)
        self.assertIn(self.n2.id, self.n1.peer_ids())

    def test_an_older_sequence_is_answered_but_superseded(self) -> None:
        """A registration older than one accepted from the same node (a request and an answer crossed,
        or it waited for a request slot) is authentic but superseded: answered, not applied."""
        self.assertEqual(self.register_as_stranger(reg_body(info(7), seq=5))[0].code, 200)
        hint = dict(info(9), id=node_id(99), listen_url="https://hint.test:4567")
        response, content, _ = self.register_as_stranger(reg_body(info(7), [hint], seq=4))
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(content)["local"]["id"], self.n1.id)
        peer = self.n1.pool.get(node_id(7))
        assert peer is not None
        self.assertEqual((peer.last_seq, peer.hints), (5, ()))
        self.assertEqual(self.n1.counter("tunmesh_mesh_registrations_total", direction="in", result="superseded"), 1)
        self.assertEqual(self.register_as_stranger(reg_body(info(7), [hint], seq=6))[0].code, 200)
        self.assertEqual([h.id for h in peer.hints], [node_id(99)])

    def test_gossip_entry_never_becomes_a_route(self) -> None:
        ghost = dict(info(9, "100.64.1.99/24"), id=node_id(99), listen_url="https://ghost.test:4567")
        response, _, _ = self.register_as_stranger(reg_body(info(7), [ghost]))
        self.assertEqual(response.code, 200)
        advance(self.clock, 30)
        self.assertNotIn(node_id(99), self.n1.peer_ids())
        self.assertIsNone(self.n1.pool.holder(ipaddress.ip_network("100.64.1.99/32")))
        self.assertNotIn(("up", node_id(99)), self.n1.observer.events)
        self.assertNotIn(node_id(99), self.n1.observer.routes)
        # the hint was followed up with an authenticated bootstrap of its URL, which failed
        self.assertGreaterEqual(self.n1.counter("tunmesh_mesh_bootstrap_attempts_total", result="transport"), 1)

    def test_wrong_content_type_415_and_parameters_accepted(self) -> None:
        body = reg_body(info(7))
        signed = self.stranger.sign_request(self.n1.id, "POST", REGISTER_PATH, body)
        response, content = self.request("POST", REGISTER_PATH, body, signed.header_value, b"text/plain")
        self.assertEqual((response.code, content), (415, b"Unsupported Media Type"))
        response, _ = self.request(
            "POST", REGISTER_PATH, body, signed.header_value, b"application/json; charset=utf-8"
        )
        self.assertEqual(response.code, 200)

    def test_oversized_413(self) -> None:
        body = b" " * (MAX_REGISTRATION_BODY + 1)
        signed = self.stranger.sign_request(self.n1.id, "POST", REGISTER_PATH, body)
        response, content = self.request("POST", REGISTER_PATH, body, signed.header_value)
        self.assertEqual((response.code, content), (413, b"Request Entity Too Large"))

    def test_pool_full_503(self) -> None:
        node = Node(self.net, self.clock, 5, max_nodes=1)
        body = reg_body(info(7))
        signed = self.stranger.sign_request(node.id, "POST", REGISTER_PATH, body)
        node.membership.pool.upsert(NodeInfo.from_dict(info(8), node.settings.bounds), 1)
        response, content = self.request("POST", REGISTER_PATH, body, signed.header_value, url=node.url)
        self.assertEqual((response.code, content), (503, b"Service Unavailable"))

    def test_unexpected_error_is_a_constant_500_logged_at_a_bounded_rate(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]

        def broken(*args: Any, **kw: Any) -> Any:
            raise RuntimeError("secret-detail")

        self.n1.membership.inbound.accept_registration = broken  # type: ignore[method-assign]
        for _ in range(30):
            body = reg_body(info(7))
            signed = self.stranger.sign_request(self.n1.id, "POST", REGISTER_PATH, body)
            response, content = self.request("POST", REGISTER_PATH, body, signed.header_value)
            self.assertEqual((response.code, content), (500, b"Internal Server Error"))
        self.assertEqual(self.n1.counter("tunmesh_errors_total", where="mesh"), 30)
        errors = [e for e in events if e.get("log_level") == LogLevel.error and "mesh route" in e["log_format"]]
        self.assertLess(len(errors), 10)
        self.assertNotIn("secret-detail", repr(errors))
        self.flushLoggedErrors(RuntimeError)

    def test_registrant_url_outside_peer_networks_400(self) -> None:
        node = Node(self.net, self.clock, 5, peer_networks=(ipaddress.ip_network("198.18.0.0/15"),))
        for url, code in [("https://n7.test:4567", 400), ("https://169.254.169.254:443", 400), ("https://198.18.0.7:4567", 200)]:
            body = reg_body(info(7, url=url), seq=code)
            signed = self.stranger.sign_request(node.id, "POST", REGISTER_PATH, body)
            response, _ = self.request("POST", REGISTER_PATH, body, signed.header_value, url=node.url)
            self.assertEqual(response.code, code, url)

    def test_without_peer_networks_local_and_metadata_hosts_refused(self) -> None:
        node = Node(self.net, self.clock, 5)
        cases = [
            ("https://127.0.0.1:4567", 400),
            ("https://169.254.169.254:443", 400),
            ("https://[::1]:4567", 400),
            ("https://0.0.0.0:4567", 400),
            ("https://198.18.0.7:4567", 200),
        ]
        for seq, (url, code) in enumerate(cases, 1):
            body = reg_body(info(7, url=url), seq=seq)
            signed = self.stranger.sign_request(node.id, "POST", REGISTER_PATH, body)
            response, _ = self.request("POST", REGISTER_PATH, body, signed.header_value, url=node.url)
            self.assertEqual(response.code, code, url)

    def test_unknown_route_and_method(self) -> None:
        response, content = self.request("POST", "/tunmesh/control/v0/nothing", b"{}")
        self.assertEqual((response.code, content), (404, b"Not Found"))
        response, content = self.request("GET", REGISTER_PATH)
        self.assertEqual((response.code, content), (405, b"Method Not Allowed"))

    def test_old_registrations_dump_is_gone(self) -> None:
        response, _ = self.request("GET", "/tunmesh/control/v0/registrations")
        self.assertEqual(response.code, 404)


class AuthFailureTests(RouteTestCase):
    """Every route's 401: constant body, counted by reason, same answer for unknown ids (W14)."""

    def assert401(self, response: Any, content: bytes) -> None:
        self.assertEqual((response.code, content), (401, b"Unauthorized"))
        self.assertIsNone(response.headers.getRawHeaders(b"Authorization"))

    def routes(self) -> list[tuple[str, str]]:
        return [
            ("POST", REGISTER_PATH),
            ("POST", REGISTER_PATH + "/" + self.n2.id),
            ("POST", INIT_SESSION_PATH),
            ("POST", INIT_SESSION_PATH + "/" + self.n2.id),
            ("GET", PEERS_PATH),
            ("POST", LEAVE_PATH + "/" + self.n2.id),
        ]

    def test_missing_token_every_route(self) -> None:
        for method, path in self.routes():
            before = self.failures("missing")
            self.assert401(*self.request(method, path, b"{}" if method == "POST" else b""))
            self.assertEqual(self.failures("missing"), before + 1, path)

    def test_bad_signature_every_route(self) -> None:
        forger = ClusterAuthority("another-secret-entirely-0123456789abcdef", self.n2.id, self.clock)
        for method, path in self.routes():
            body = b"{}" if method == "POST" else b""
            signed = forger.sign_request(self.n1.id, method, path, body)
            before = self.failures()
            self.assert401(*self.request(method, path, body, signed.header_value))
            self.assertEqual(self.failures(), before + 1, path)
        # cluster routes: bad HMAC; session routes: a cluster token where a session one is needed
        self.assertEqual(self.failures("bad_signature"), 3)
        self.assertEqual(self.failures("wrong_type"), 3)

    def test_unknown_sender_is_401_not_404(self) -> None:
        signed = self.n2.membership.session_auth.sign_request(self.n1.id, "POST", "/elsewhere", b"{}")
        for path in (REGISTER_PATH + "/" + node_id(77), INIT_SESSION_PATH + "/" + node_id(77)):
            response, content = self.request("POST", path, b"{}", signed.header_value)
            self.assert401(response, content)
        self.assertEqual(self.failures("unknown_peer"), 2)

    def test_wrong_path_and_replay_and_body_mismatch(self) -> None:
        body = reg_body(info(7))
        signed = self.stranger.sign_request(self.n1.id, "POST", INIT_SESSION_PATH, body)
        self.assert401(*self.request("POST", REGISTER_PATH, body, signed.header_value))
        self.assertEqual(self.failures("wrong_path"), 1)
        signed = self.stranger.sign_request(self.n1.id, "POST", REGISTER_PATH, body)
        self.assert401(*self.request("POST", REGISTER_PATH, body + b" ", signed.header_value))
        self.assertEqual(self.failures("body_mismatch"), 1)
        self.assertEqual(self.request("POST", REGISTER_PATH, body, signed.header_value)[0].code, 200)
        self.assert401(*self.request("POST", REGISTER_PATH, body, signed.header_value))
        self.assertEqual(self.failures("replay"), 1)

    def test_session_routes_accept_the_session_token(self) -> None:
        path = REGISTER_PATH + "/" + self.n2.id
        body = self.n2.membership.our_registration().to_json()
        signed = self.n2.membership.session_auth.sign_request(self.n1.id, "POST", path, body)
        response, content = self.request("POST", path, body, signed.header_value)
        self.assertEqual(response.code, 200)
        self.n2.membership.session_auth.verify_response(
            self.n1.id, response.headers.getRawHeaders(b"Authorization")[0], signed, content
        )

    def test_bootstrap_token_only_on_register(self) -> None:
        initiator = KexInitiator(self.stranger.kex_key, self.n2.id, self.n1.id)
        body = initiator.request_body()
        two = ClusterAuthority(SECRET, self.n2.id, self.clock)
        signed = two.sign_request("bootstrap", "POST", INIT_SESSION_PATH, body, typ=TYP_BOOTSTRAP)
        self.assert401(*self.request("POST", INIT_SESSION_PATH, body, signed.header_value))
        self.assertEqual(self.failures("wrong_type"), 1)


class LeaveRouteTests(RouteTestCase):
    def test_leave_with_the_senders_session_removes_it_at_once(self) -> None:
        path = leave_path(self.n2.id)
        body = leave_body(self.n2.id)
        signed = self.n2.membership.session_auth.sign_request(self.n1.id, "POST", path, body)
        response, content = self.request("POST", path, body, signed.header_value)
        self.assertEqual(response.code, 200)
        # signed with the session before it was forgotten
        self.n2.membership.session_auth.verify_response(
            self.n1.id, response.headers.getRawHeaders(b"Authorization")[0], signed, content
        )
        self.assertNotIn(self.n2.id, self.n1.peer_ids())
        self.assertIn(("down", self.n2.id), self.n1.observer.events)
        self.assertEqual(self.n1.counter("tunmesh_mesh_peers_removed_total", reason="left"), 1)

    def test_leave_naming_another_node_is_400_and_removes_nothing(self) -> None:
        path = leave_path(self.n2.id)
        body = leave_body(node_id(9))
        signed = self.n2.membership.session_auth.sign_request(self.n1.id, "POST", path, body)
        self.assertEqual(self.request("POST", path, body, signed.header_value)[0].code, 400)
        self.assertIn(self.n2.id, self.n1.peer_ids())

    def test_another_node_cannot_make_a_peer_leave(self) -> None:
        """A cluster-secret holder (or another member) cannot evict n2: it has no n2 session."""
        path = leave_path(self.n2.id)
        body = leave_body(self.n2.id)
        signed = self.stranger.sign_request(self.n1.id, "POST", path, body)
        response, content = self.request("POST", path, body, signed.header_value)
        self.assertEqual((response.code, content), (401, b"Unauthorized"))
        self.assertIn(self.n2.id, self.n1.peer_ids())

    def test_oversized_leave_413(self) -> None:
        path = leave_path(self.n2.id)
        body = b"{" + b" " * 300 + b"}"
        signed = self.n2.membership.session_auth.sign_request(self.n1.id, "POST", path, body)
        self.assertEqual(self.request("POST", path, body, signed.header_value)[0].code, 413)
        self.assertIn(self.n2.id, self.n1.peer_ids())


class InitSessionRouteTests(RouteTestCase):
    def test_init_session_then_429_with_retry_after(self) -> None:
        two = ClusterAuthority(SECRET, self.n2.id, self.clock)
        advance(self.clock, 11)
        codes = []
        for _ in range(2):
            initiator = KexInitiator(two.kex_key, self.n2.id, self.n1.id)
            body = initiator.request_body()
            signed = two.sign_request(self.n1.id, "POST", INIT_SESSION_PATH, body)
            response, content = self.request("POST", INIT_SESSION_PATH, body, signed.header_value)
            codes.append(response.code)
        self.assertEqual(codes, [200, 429])
        self.assertEqual(content, b"Too Many Requests")
        self.assertGreaterEqual(int(response.headers.getRawHeaders(b"Retry-After")[0]), 1)
        self.assertEqual(self.failures("rate_limited"), 1)

    def test_init_session_from_unregistered_caller_401(self) -> None:
        initiator = KexInitiator(self.stranger.kex_key, node_id(7), self.n1.id)
        body = initiator.request_body()
        signed = self.stranger.sign_request(self.n1.id, "POST", INIT_SESSION_PATH, body)
        response, content = self.request("POST", INIT_SESSION_PATH, body, signed.header_value)
        self.assertEqual((response.code, content), (401, b"Unauthorized"))
        self.assertEqual(self.failures("unknown_peer"), 1)

    def test_bad_public_key_400(self) -> None:
        two = ClusterAuthority(SECRET, self.n2.id, self.clock)
        advance(self.clock, 11)
        for body in (b'{"public_key": "AAAA"}', b"[]", b'{"public_key": "' + b"A" * 43 + b'"}'):
            signed = two.sign_request(self.n1.id, "POST", INIT_SESSION_PATH, body)
            response, content = self.request("POST", INIT_SESSION_PATH, body, signed.header_value)
            self.assertEqual((response.code, content), (400, b"Bad Request"), body)


class PeersRouteTests(RouteTestCase):
    def test_full_view_needs_cluster_token(self) -> None:
        self.assertEqual(self.request("GET", PEERS_PATH, content_type=None)[0].code, 401)
        signed = self.stranger.sign_request(self.n1.id, "GET", PEERS_PATH, b"")
        response, content = self.request("GET", PEERS_PATH, auth=signed.header_value, content_type=None)
        self.assertEqual(response.code, 200)
        self.stranger.verify_response(response.headers.getRawHeaders(b"Authorization")[0], self.n1.id, signed, content)
        view = json.loads(content)
        self.assertEqual(view["id"], self.n1.id)
        peer = view["peers"][self.n2.id]
        self.assertEqual(peer["listen_url"], self.n2.url)
        self.assertEqual(peer["addresses"], ["100.64.1.2/32"])
        self.assertIsNotNone(peer["outbound_session_age"])
        self.assertFalse(peer["stale"])


class LimitsTests(RouteTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.limits = RouteLimits()
        self.n1.api.register_limits(self.limits)

    def head(self, method: bytes, path: str, auth: str | None) -> RequestHead:
        headers = Headers()
        if auth is not None:
            headers.addRawHeader(b"Authorization", auth.encode())
        return RequestHead(method=method, path=path, headers=headers, peer_host="127.0.0.1")

    def test_body_limits(self) -> None:
        self.assertEqual(self.limits.lookup(b"POST", REGISTER_PATH)[0], MAX_REGISTRATION_BODY)
        self.assertEqual(self.limits.lookup(b"POST", REGISTER_PATH + "/" + self.n2.id)[0], MAX_REGISTRATION_BODY)
        self.assertEqual(self.limits.lookup(b"POST", INIT_SESSION_PATH)[0], MAX_INIT_SESSION_BODY)
        self.assertEqual(self.limits.lookup(b"POST", INIT_SESSION_PATH + "/" + self.n2.id)[0], MAX_INIT_SESSION_BODY)
        self.assertEqual(self.limits.lookup(b"GET", PEERS_PATH)[0], 0)

    def test_pre_auth_refuses_before_body(self) -> None:
        for method, path in [
            (b"POST", REGISTER_PATH),
            (b"POST", REGISTER_PATH + "/" + node_id(77)),
            (b"POST", INIT_SESSION_PATH),
            (b"POST", INIT_SESSION_PATH + "/" + self.n2.id),
            (b"GET", PEERS_PATH),
        ]:
            _, pre_auth = self.limits.lookup(method, path)
            self.assertIsNotNone(pre_auth, path)
            assert pre_auth is not None
            self.assertEqual(pre_auth(self.head(method, path, None)), 401, path)
        self.assertEqual(self.failures("missing"), 5)

    def test_pre_auth_passes_good_heads(self) -> None:
        body = reg_body(info(7))
        signed = self.stranger.sign_request("bootstrap", "POST", REGISTER_PATH, body, typ=TYP_BOOTSTRAP)
        _, pre_auth = self.limits.lookup(b"POST", REGISTER_PATH)
        assert pre_auth is not None
        self.assertIsNone(pre_auth(self.head(b"POST", REGISTER_PATH, signed.header_value)))
        # the head check did not burn the jti: the full request still succeeds once
        self.assertEqual(self.request("POST", REGISTER_PATH, body, signed.header_value)[0].code, 200)
        path = REGISTER_PATH + "/" + self.n2.id
        signed = self.n2.membership.session_auth.sign_request(self.n1.id, "POST", path, b"{}")
        _, pre_auth = self.limits.lookup(b"POST", path)
        assert pre_auth is not None
        self.assertIsNone(pre_auth(self.head(b"POST", path, signed.header_value)))
