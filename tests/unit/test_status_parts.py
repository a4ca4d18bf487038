"""The parts behind ``tunmesh status`` (issue 8): names, the contact log, link stats and RTT, per-peer drops,
the peer_info metric, the hints and the status document built from real membership and link objects."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.mesh_support import MeshTestCase, Node, advance
from tests.unit.support import ConfigTestMixin, Pair, minimal_data, set_key
from tunmesh.admin.hints import failure_hint, inbound_hint, link_hint
from tunmesh.admin.render import render_peers
from tunmesh.admin.status import StatusReporter
from tunmesh.dataplane.drops import DropCounter
from tunmesh.dataplane.linkstats import LinkStats
from tunmesh.mesh.contacts import ContactLog
from tunmesh.mesh.structs import Bounds, NodeInfo, Registration
from tunmesh.metrics import Metrics, PeerInfo
from tunmesh.names import resolve_node_name, sanitize, valid_name
from tunmesh.testing import FakeMetrics, FakeNetwork

N1 = "https://n1.test:4567"


class NameTests(SynchronousTestCase):
    def test_configured_name_wins_then_pod_name_then_hostname(self) -> None:
        self.assertEqual(resolve_node_name("web-1", {"POD_NAME": "pod-0"}, lambda: "host"), "web-1")
        self.assertEqual(resolve_node_name(None, {"POD_NAME": "pod-0"}, lambda: "host"), "pod-0")
        self.assertEqual(resolve_node_name(None, {}, lambda: "host.example"), "host.example")
        self.assertEqual(resolve_node_name(None, {"POD_NAME": ""}, lambda: "h"), "h")

    def test_unusable_sources_are_sanitized_or_skipped(self) -> None:
        self.assertEqual(sanitize("my host!\x1b[31m"), "my-host---31m")
        self.assertEqual(sanitize("x" * 80), "x" * 63)
        self.assertIsNone(sanitize("..."))
        self.assertEqual(resolve_node_name(None, {"POD_NAME": "___"}, lambda: "h1"), "h1")

        def broken() -> str:
            raise OSError("no hostname")

        self.assertEqual(resolve_node_name(None, {}, broken), "unnamed")

    def test_valid_names(self) -> None:
        self.assertTrue(valid_name("a"))
        self.assertTrue(valid_name("tunmesh-0.ns_1"))
        for bad in ("", "-a", "a b", "a\nb", "é", "x" * 64, 5, None):
            self.assertFalse(valid_name(bad), bad)

    def test_name_travels_in_the_registration_and_is_optional(self) -> None:
        info = NodeInfo("n-1", "https://a:1", {"ipv4": ipaddress.ip_network("100.64.0.0/24")},
                        {"ipv4": ipaddress.ip_interface("100.64.0.5/24")}, name="alpha")
        body = Registration(info, (), 1, 1).to_json()
        self.assertEqual(json.loads(body)["local"]["name"], "alpha")
        self.assertEqual(Registration.from_json(body, Bounds()).local.name, "alpha")
        unnamed = Registration(NodeInfo("n-1", "https://a:1", info.network_addresses, info.node_addresses), (), 1, 1)
        self.assertNotIn("name", json.loads(unnamed.to_json())["local"])  # older nodes see what they always saw
        self.assertIsNone(Registration.from_json(unnamed.to_json(), Bounds()).local.name)

    def test_an_unusable_gossiped_name_is_ignored_not_refused(self) -> None:
        info = NodeInfo("n-1", "https://a:1", {"ipv4": ipaddress.ip_network("100.64.0.0/24")},
                        {"ipv4": ipaddress.ip_interface("100.64.0.5/24")})
        data = Registration(info, (), 1, 1).to_dict()
        for bad in ("\x1b[2Jevil", 42, "x" * 100):
            data["local"]["name"] = bad
            parsed = Registration.from_json(json.dumps(data).encode(), Bounds())
            self.assertIsNone(parsed.local.name)



class NameConfigTests(ConfigTestMixin, SynchronousTestCase):
    def test_node_name_and_admin_socket_options(self) -> None:
        cfg = self.load(set_key(minimal_data(), "clustering/node_name", "web-0"))
        self.assertEqual((cfg.clustering.node_name, cfg.process.admin_socket), ("web-0", "/run/tunmesh/admin.sock"))
        self.assertEqual(self.load(set_key(minimal_data(), "process/admin_socket", "")).process.admin_socket, "")
        errors = self.errors_of(set_key(minimal_data(), "clustering/node_name", "bad name"))
        self.assertEqual(len(errors), 1)
        self.assertIn("tun_mesh/clustering/node_name", errors[0])
        errors = self.errors_of(set_key(minimal_data(), "process/admin_socket", "run/admin.sock"))
        self.assertIn("must be an absolute path", errors[0])


class NamedMeshTests(MeshTestCase):
    def test_peers_learn_each_others_names_and_logs_carry_them(self) -> None:
        a = self.node(1, (), node_name="alpha")
        b = self.node(2, (N1,), node_name="bravo")
        for n in (a, b):
            n.start()
        advance(self.clock, 12)
        self.assertEqual(a.pool.get(b.id).info.name, "bravo")
        self.assertEqual(b.pool.get(a.id).info.name, "alpha")
        registered = [e for e in self.events if e.get("log_format", "").startswith("peer {peer} registered")]
        self.assertIn("bravo", {e.get("peer_name") for e in registered})


class ContactLogTests(SynchronousTestCase):
    def test_consecutive_failures_then_recovery_keeps_the_history(self) -> None:
        clock = Clock()
        log = ContactLog(clock.seconds)
        log.peer_failed("p", "register", "transport", "refused", 0)
        clock.advance(2)
        log.peer_failed("p", "register", "status_401", "401", 401)
        record = log.peers["p"]
        self.assertEqual((record.reason, record.status, record.failures, record.at), ("status_401", 401, 2, 2))
        clock.advance(1)
        log.peer_ok("p")
        self.assertEqual((record.failures, record.ok_at, record.reason), (0, 3, "status_401"))

    def test_urls_are_bounded_and_removal_forgets_the_peer(self) -> None:
        log = ContactLog(Clock().seconds, max_urls=2, max_removed=2)
        for i in range(3):
            log.url_failed(f"https://u{i}", "bootstrap", "timeout")
        self.assertEqual(list(log.urls), ["https://u1", "https://u2"])
        log.peer_failed("p", "session", "transport")
        for reason in ("stale", "left", "replaced"):
            log.peer_removed("p", "alpha", "https://p", reason)
        self.assertNotIn("p", log.peers)
        self.assertEqual([r.reason for r in log.removed], ["left", "replaced"])

    def test_membership_records_a_401_from_a_node_with_another_secret(self) -> None:
        net, clock = FakeNetwork(), Clock()
        clock.advance(1_700_000_000)
        a = Node(net, clock, 1)
        b = Node(net, clock, 2, (N1,), secret="another-secret-0123456789abcdefghijklmnopqrstuv")
        for n in (a, b):
            n.start()
            self.addCleanup(n.stop)
        advance(clock, 3)
        record = b.membership.contacts.urls[N1]
        self.assertEqual((record.operation, record.reason, record.status), ("bootstrap", "status_401", 401))
        self.assertGreater(a.membership.contacts.inbound.count, 0)
        self.assertIn("same cluster secret", failure_hint(record.reason, record.status, record.detail))


class LinkStatsTests(SynchronousTestCase):
    def test_rtt_from_the_echo_of_the_outstanding_probe_only(self) -> None:
        stats = LinkStats(0.0)
        opaque = stats.probe(10.0)
        self.assertFalse(stats.echoed(opaque + 1, 10.1))  # not ours
        self.assertTrue(stats.echoed(opaque, 10.2))
        self.assertAlmostEqual(stats.rtt, 0.2)
        self.assertFalse(stats.echoed(opaque, 10.3))  # answered already
        stats.echoed(stats.probe(20.0), 20.6)
        self.assertAlmostEqual(stats.rtt, 0.6)
        self.assertAlmostEqual(stats.srtt, 0.2 * 0.875 + 0.6 * 0.125)
        doc = stats.to_dict(21.0)
        self.assertEqual((doc["rtt_ms"], doc["rtt_age_s"]), (600.0, 0.4))

    def test_states_and_since(self) -> None:
        stats = LinkStats(0.0)
        stats.connecting(1.0)
        stats.up(2.0, "kid1")
        stats.up(3.0, "kid1")  # still up: since unchanged
        self.assertEqual((stats.state, stats.since, stats.connects), ("up", 2.0, 2))
        stats.failed(5.0, "connection refused")
        self.assertEqual(stats.to_dict(6.0)["since_s"], 1.0)
        self.assertEqual(stats.to_dict(6.0)["last_error"], "connection refused")

    def test_a_real_link_measures_rtt_and_counts_each_direction(self) -> None:
        pair = Pair(self)
        pair.client.start()
        pair.pump()
        self.assertEqual(pair.client.stats.state, "up")
        pair.client._keepalive()  # a probe at t, answered after 0.25 s of (fake) network time
        pair.clock.advance(0.25)
        pair.pump()
        self.assertAlmostEqual(pair.client.stats.rtt, 0.25)
        pair.client.send_batch([b"\x45" + b"x" * 99] * 3)
        pair.pump()
        self.assertEqual(pair.client.stats.packets, 3)
        rx = pair.server.rx_stats[pair.client.node_id]
        self.assertEqual((rx.state, rx.packets, rx.kid), ("up", 3, "kid1"))
        self.assertGreater(rx.bytes, 300)

    def test_a_refused_connection_is_the_links_last_error(self) -> None:
        pair = Pair(self)
        pair.fail_connect = True
        pair.client.start()
        doc = pair.client.stats.to_dict(pair.clock.seconds())
        self.assertEqual(doc["state"], "connecting")
        self.assertIn("connection refused", doc["last_error"])
        self.assertIn("listens on the port", link_hint(doc["last_error"]))


class DropsByPeerTests(SynchronousTestCase):
    def test_drops_by_peer_and_reason_forgotten_with_the_peer(self) -> None:
        drops = DropCounter(FakeMetrics())
        drops.add("queue_full", 3, "p1")
        drops.add("queue_full", 2, "p1")
        drops.add("expired", 1, "p1")
        drops.add("no_route", 4)
        self.assertEqual(drops.by_peer, {"p1": {"queue_full": 5, "expired": 1}})
        drops.forget("p1")
        self.assertEqual(drops.by_peer, {})


class PeerInfoTests(SynchronousTestCase):
    def samples(self, metrics: Metrics) -> list[dict[str, str]]:
        return [s.labels for f in metrics.collector_registry().collect() for s in f.samples
                if s.name == "tunmesh_peer_info"]

    def test_one_series_per_peer_following_membership(self) -> None:
        metrics = Metrics("me", process_metrics=False)
        names = {"p1": "alpha"}
        info = PeerInfo(metrics, max_peers=8, name_of=names.get)
        info.peer_up("p1", "https://a:1", [ipaddress.ip_network("100.64.0.2/32")])
        info.peer_up("p1", "https://a:2", [ipaddress.ip_network("100.64.0.2/32")])  # moved: one series still
        info.peer_up("p2", "https://b:1", [])
        labels = self.samples(metrics)
        self.assertEqual(len(labels), 2)
        p1 = [entry for entry in labels if entry["peer_id"] == "p1"][0]
        self.assertEqual((p1["peer_name"], p1["url"], p1["addresses"]), ("alpha", "https://a:2", "100.64.0.2/32"))
        info.peer_down("p1")
        info.peer_down("p1")
        self.assertEqual([entry["peer_id"] for entry in self.samples(metrics)], ["p2"])


class HintTests(SynchronousTestCase):
    def test_hints(self) -> None:
        self.assertIn("same cluster secret", failure_hint("status_401", 401))
        self.assertIn("NTP", failure_hint("response_auth", 200, "clock_skew"))
        self.assertIn("cluster secret", failure_hint("response_auth", 200, "bad_signature"))
        self.assertIn("listens on the port", failure_hint("transport", 0, "https://x: connection refused (...)"))
        self.assertIn("firewalls", failure_hint("timeout", 0, "https://x"))
        self.assertIn("certificates", failure_hint("tls", 0, "TLS handshake failed"))
        proof = failure_hint("channel_binding", 0, "https://x: the server did not prove the TLS session (bad_signature)")
        self.assertIn("same cluster secret", proof)
        self.assertIn("relay", proof)
        self.assertIn("NTP", failure_hint("channel_binding", 0, "https://x: ... (expired)"))
        self.assertIn("max_nodes", failure_hint("status_503", 503))
        self.assertIn("NTP", inbound_hint("clock_skew"))
        self.assertIn("another cluster secret", inbound_hint("bad_signature"))
        self.assertEqual(link_hint(""), "")


class FakeLinks:
    def __init__(self) -> None:
        self.links: dict[str, dict[str, Any]] = {}

    def link_status(self, peer_id: str) -> dict[str, Any]:
        return self.links.get(peer_id, {"out": None, "in": None, "drops": {}})


def link(state: str, error: str = "", rtt: float | None = 0.5) -> dict[str, Any]:
    stats = LinkStats(0.0)
    if state == "up":
        stats.up(1.0, "k")
        if rtt is not None:
            stats.echoed(stats.probe(2.0), 2.0 + rtt / 1000)
    else:
        stats.failed(3.0, error)
    return stats.to_dict(10.0)


class StatusReporterTests(MeshTestCase):
    def reporter(self, node: Node, links: FakeLinks) -> StatusReporter:
        return StatusReporter(
            node_id=node.id, name=node.settings.node_name or "", version="9.9", advertise_url=node.url,
            addresses=lambda: {"ipv4": node.address}, started=self.clock.seconds() - 100, membership=node.membership,
            links=links, health=node.health, monotonic=self.clock.seconds,
        )

    def test_document_for_a_mesh_with_one_peer_up_and_one_unreachable(self) -> None:
        a = self.node(1, (), node_name="alpha")
        b = self.node(2, (N1,), node_name="bravo")
        c = self.node(3, (N1,), node_name="charlie")
        for n in (a, b, c):
            n.start()
        advance(self.clock, 12)
        links = FakeLinks()
        links.links[b.id] = {"out": link("up"), "in": link("up"), "drops": {"queue_full": 2}}
        links.links[c.id] = {"out": link("connecting", "connection refused (is tunmesh listening on that port?)"),
                             "in": None, "drops": {}}
        reporter = self.reporter(a, links)
        doc = reporter.status()
        self.assertEqual(doc["node"]["name"], "alpha")
        self.assertTrue(doc["node"]["ready"])
        self.assertEqual(doc["node"]["uptime_s"], 100)
        self.assertEqual([p["name"] for p in doc["peers"]], ["bravo", "charlie"])
        bravo, charlie = doc["peers"]
        self.assertEqual((bravo["state"], bravo["hint"], bravo["drops"]), ("up", "", {"queue_full": 2}))
        self.assertEqual(bravo["addresses"], ["100.64.1.2/32"])
        self.assertIsNotNone(bravo["sessions"]["out"]["kid"])
        self.assertEqual(charlie["state"], "connecting")
        self.assertIn("listens on the port", charlie["hint"])

        # charlie crashes: the renewals fail with "connection refused", which status shows with its hint.
        c.crash()
        self.net.down.add("n3.test:4567")
        advance(self.clock, 12)
        charlie = {p["id"]: p for p in reporter.status()["peers"]}[c.id]
        self.assertEqual(charlie["state"], "unreachable")
        self.assertIn("nothing listens there", charlie["hint"])
        self.assertEqual(charlie["last_failure"]["operation"], "register")
        self.assertGreaterEqual(charlie["last_failure"]["failures"], 1)
        json.dumps(doc)  # JSON-ready

    def test_the_datagram_path_of_a_link_is_shown(self) -> None:
        a = self.node(1, (), node_name="alpha")
        b = self.node(2, (N1,), node_name="bravo")
        for n in (a, b):
            n.start()
        advance(self.clock, 12)
        links = FakeLinks()
        out = link("up")
        out["datagram_path"] = {"state": "proven", "address": "198.18.0.2:4567"}
        links.links[b.id] = {"out": out, "in": link("up"), "drops": {}}
        lines = render_peers(self.reporter(a, links).status()["peers"])
        self.assertIn("  datagram path: proven, UDP 198.18.0.2:4567 (small packets as datagrams)", lines)
        out["datagram_path"] = {"state": "offered", "address": "198.18.0.2:4567"}
        lines = render_peers(self.reporter(a, links).status()["peers"])
        self.assertIn("  datagram path: offered, UDP 198.18.0.2:4567 (not answering: all packets on the link)", lines)
        out["datagram_path"] = None
        self.assertFalse([x for x in render_peers(self.reporter(a, links).status()["peers"]) if "datagram" in x])

    def test_not_ready_with_the_reason_and_the_failing_bootstrap_url(self) -> None:
        lonely = self.node(5, ("https://nowhere.test:4567",))
        lonely.start()
        advance(self.clock, 3)
        doc = self.reporter(lonely, FakeLinks()).status()
        self.assertFalse(doc["node"]["ready"])
        self.assertEqual([r["check"] for r in doc["node"]["not_ready"]], ["mesh"])
        self.assertIn("not joined", doc["node"]["not_ready"][0]["hint"])
        (url,) = doc["urls"]
        self.assertEqual((url["url"], url["bootstrap"], url["operation"]), ("https://nowhere.test:4567", True,
                                                                               "bootstrap"))
        self.assertGreaterEqual(url["failures"], 1)

    def test_removed_peers_are_listed_with_the_reason(self) -> None:
        a = self.node(1, (), node_name="alpha")
        b = self.node(2, (N1,), node_name="bravo")
        for n in (a, b):
            n.start()
        advance(self.clock, 12)
        a.membership.remove_peer(b.id, "left")
        doc = self.reporter(a, FakeLinks()).status()
        self.assertEqual(doc["peers"], [])
        self.assertEqual([(r["name"], r["reason"]) for r in doc["removed"]], [("bravo", "left")])



class LinkErrorTests(SynchronousTestCase):
    def test_a_link_refused_for_want_of_a_session_says_so_not_just_lost(self) -> None:
        pair = Pair(self, install_inbound=False)
        pair.client.start()
        pair.pump()
        doc = pair.client.stats.to_dict(pair.clock.seconds())
        self.assertNotEqual(doc["state"], "up")
        self.assertIn("refused our link", doc["last_error"])
        self.assertIn("sessions are being set up", link_hint(doc["last_error"]))

    def test_a_link_lost_after_it_was_up(self) -> None:
        pair = Pair(self)
        pair.client.start()
        pair.pump()
        pair.clock.advance(3)
        assert pair.server_proto.transport is not None
        pair.server_proto.transport.loseConnection()
        pair.pump()
        doc = pair.client.stats.to_dict(pair.clock.seconds())
        self.assertEqual(doc["state"], "connecting")
        self.assertTrue(doc["last_error"].startswith("link lost: "), doc["last_error"])
