"""Wire structures, settings, node pool rules and backoff of tunmesh.mesh."""

from __future__ import annotations

import ipaddress
import json
import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.mesh_support import info, make_settings, node_id, reg_body
from tunmesh.mesh.backoff import Backoff
from tunmesh.mesh.errors import InvalidRegistration, PoolFull, RegistrationConflict
from tunmesh.mesh.pool import ClaimConflict, NodePool
from tunmesh.mesh.settings import MeshSettings
from tunmesh.mesh.structs import Bounds, NodeInfo, Registration, check_url

BOUNDS = Bounds(max_nodes=4, max_cidrs_per_node=16, max_url_length=64)


class RegistrationParsingTests(SynchronousTestCase):
    def test_round_trip_keeps_original_shape(self) -> None:
        body = reg_body(info(2), [info(3)], stamp=17, seq=5)
        reg = Registration.from_json(body, BOUNDS)
        self.assertEqual(reg.local.id, node_id(2))
        self.assertEqual(reg.local.node_addresses["ipv4"], ipaddress.ip_interface("100.64.1.2/24"))
        self.assertEqual((reg.stamp, reg.seq), (17, 5))
        again = json.loads(reg.to_json())
        self.assertEqual(again["local"]["node_addresses"], {"ipv4": {"cidr": "100.64.1.2/24"}})
        self.assertEqual(again["local"]["network_addresses"], {"ipv4": {"cidr": "100.64.0.0/16"}})
        self.assertEqual(Registration.from_json(reg.to_json(), BOUNDS), reg)

    def test_seq_defaults_to_stamp_for_upstream_peers(self) -> None:
        reg = Registration.from_json(reg_body(info(2), stamp=1715000000, seq=None), BOUNDS)
        self.assertEqual(reg.seq, 1715000000)

    def test_unknown_fields_are_tolerated(self) -> None:
        local = dict(info(2), future_field={"x": 1})
        reg = Registration.from_json(reg_body(local, future=[1, 2]), BOUNDS)
        self.assertEqual(reg.local.id, node_id(2))

    def test_host_routes(self) -> None:
        reg = Registration.from_json(reg_body(info(2)), BOUNDS)
        self.assertEqual(reg.local.host_routes(), (ipaddress.ip_network("100.64.1.2/32"),))

    def assertBad(self, body: bytes, reason: str) -> None:
        exc = self.assertRaises(InvalidRegistration, Registration.from_json, body, BOUNDS)
        self.assertEqual(exc.reason, reason)
        self.assertEqual(exc.status, 400)

    def test_bad_json(self) -> None:
        self.assertBad(b"{not json", "bad_json")
        self.assertBad(b"\xff\xfe", "bad_json")
        self.assertBad(b'{"local": NaN}', "bad_json")
        self.assertBad(b'{"stamp": 1, "stamp": 2}', "bad_json")
        self.assertBad(b"[" * 100000 + b"]" * 100000, "bad_json")

    def test_bad_types(self) -> None:
        self.assertBad(b"[]", "bad_type")
        self.assertBad(reg_body(info(2), stamp=-1), "bad_type")
        self.assertBad(reg_body(info(2), stamp=True), "bad_type")
        self.assertBad(reg_body(info(2), seq="3"), "bad_type")  # type: ignore[arg-type]
        self.assertBad(json.dumps({"local": info(2), "remote": {}, "stamp": 1}).encode(), "bad_type")
        self.assertBad(json.dumps({"local": "x", "stamp": 1}).encode(), "bad_type")

    def test_bad_ids(self) -> None:
        self.assertBad(reg_body(dict(info(2), id="")), "bad_node_id")
        self.assertBad(reg_body(dict(info(2), id="a/b")), "bad_node_id")
        self.assertBad(reg_body(dict(info(2), id="bootstrap")), "bad_node_id")
        self.assertBad(reg_body(dict(info(2), id=7)), "bad_node_id")

    def test_bad_urls(self) -> None:
        for url in [
            "http://n2.test:4567",
            "https://user:pw@n2.test:4567",
            "https://n2.test:4567/?q=1",
            "https://n2.test:4567/#frag",
            "https://n2.test:4567/path",
            "https://:4567",
            "https://n2.test:99999",
            "https://n2.test:4567/" + "a" * 80,
            "https://n2.test\n:4567",
            "ftp://n2.test",
        ]:
            self.assertBad(reg_body(dict(info(2), listen_url=url)), "bad_url")

    def test_url_normalised(self) -> None:
        self.assertEqual(check_url("https://n2.test:4567/", 100), "https://n2.test:4567")

    def test_bad_cidrs(self) -> None:
        self.assertBad(reg_body(dict(info(2), node_addresses={"ipv4": {"cidr": "nonsense"}})), "bad_cidr")
        self.assertBad(reg_body(dict(info(2), node_addresses={"ipv4": {"cidr": "100.64.1.2"}})), "bad_cidr")
        self.assertBad(reg_body(dict(info(2), node_addresses={"ipv4": {"cidr": "fd00::1/64"}})), "bad_cidr")
        self.assertBad(reg_body(dict(info(2), node_addresses={"ipv4": "100.64.1.2/24"})), "bad_type")
        self.assertBad(reg_body(dict(info(2), node_addresses={})), "bad_cidr")

    def test_too_many_remote_nodes(self) -> None:
        self.assertBad(reg_body(info(2), [info(i) for i in range(3, 9)]), "too_many_nodes")

    def test_too_many_cidrs(self) -> None:
        bounds = Bounds(max_nodes=4, max_cidrs_per_node=1, max_url_length=64)
        local = dict(info(2), node_addresses={"ipv4": {"cidr": "100.64.1.2/24"}, "ipv6": {"cidr": "fd00::2/64"}})
        exc = self.assertRaises(InvalidRegistration, Registration.from_json, reg_body(local), bounds)
        self.assertEqual(exc.reason, "too_many_cidrs")

    def test_node_info_from_dict(self) -> None:
        parsed = NodeInfo.from_dict(info(3), BOUNDS)
        self.assertEqual(parsed.listen_url, "https://n3.test:4567")


class SettingsTests(SynchronousTestCase):
    def test_node_address_must_be_inside_network(self) -> None:
        self.assertRaises(ValueError, make_settings, "https://a.test:1", "10.0.0.1/24")

    def test_local_and_mesh_class(self) -> None:
        s = make_settings("https://a.test:1", "100.64.1.1/24")
        self.assertEqual(s.timing_for({"ipv4": ipaddress.ip_interface("100.64.1.9/24")})[0], "local")
        self.assertEqual(s.timing_for({"ipv4": ipaddress.ip_interface("100.64.2.9/24")})[0], "mesh")

    def test_from_config(self) -> None:
        from pathlib import Path

        from tunmesh.config import load_config_data

        base = Path(self.mktemp())
        base.mkdir()
        (base / "c.pem").write_text("x")
        (base / "k.pem").write_text("x")
        data = {
            "tun_mesh": {
                "config_version": "1.1",
                "clustering": {
                    "control_api_advertise_url": "https://n1.test:4567",
                    "auth": {"secret": "Zq3vR8pLm2XwT9kYb4NcHd7Gf1Js6Ae0Uu5Io_Pl-Kx"},
                    "bootstrap_groups": {"default": {"bootstrap_node_urls": ["https://n2.test:4567"]}},
                },
                "networking": {
                    "ipv4": {"network_cidr": "100.64.0.0/16", "node_address_cidr": "100.64.1.1/24"},
                },
                "control_api": {"ssl": {"cert_file_path": "c.pem", "key_file_path": "k.pem"}},
                "process": {"uid": 1000},
            }
        }
        s = MeshSettings.from_config(load_config_data(data, base))
        self.assertEqual(s.bootstrap_groups[0].urls, ("https://n2.test:4567",))
        self.assertEqual(s.bootstrap_groups[0].retries, -1)
        self.assertEqual(s.node_addresses["ipv4"], ipaddress.ip_interface("100.64.1.1/24"))
        self.assertEqual(s.max_nodes, 256)
        self.assertEqual(s.local_info("n1").listen_url, "https://n1.test:4567")


class PoolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.settings = make_settings("https://n1.test:4567", "100.64.1.1/24", max_nodes=3)
        self.pool = NodePool(self.settings, node_id(1), self.clock.seconds)

    def node(self, n: int, address: str | None = None, url: str | None = None, ident: int | None = None) -> NodeInfo:
        d = info(n, address, url)
        if ident is not None:
            d["id"] = node_id(ident)
        return NodeInfo.from_dict(d, self.settings.bounds)

    def test_insert_and_routes(self) -> None:
        result = self.pool.upsert(self.node(2), 1)
        self.assertTrue(result.created)
        self.assertEqual(self.pool.holder(ipaddress.ip_network("100.64.1.2/32")), node_id(2))
        self.assertEqual(result.peer.peer_class, "local")

    def test_claims_outside_network_or_reserved(self) -> None:
        for address, reason in [
            ("10.1.1.1/24", "cidr_outside_network"),
            ("100.64.0.0/24", "cidr_reserved"),
            ("100.64.255.255/24", "cidr_reserved"),
        ]:
            exc = self.assertRaises(InvalidRegistration, self.pool.upsert, self.node(2, address), 1)
            self.assertEqual(exc.reason, reason)

    def test_min_prefix(self) -> None:
        pool = NodePool(make_settings("https://n1.test:4567", "100.64.1.1/24", min_prefix_v4=33), node_id(1))
        exc = self.assertRaises(InvalidRegistration, pool.upsert, self.node(2), 1)
        self.assertEqual(exc.reason, "cidr_too_wide")

    def test_claim_of_our_own_address(self) -> None:
        exc = self.assertRaises(RegistrationConflict, self.pool.upsert, self.node(2, "100.64.1.1/24"), 1)
        self.assertEqual(exc.reason, "address_conflict")

    def test_live_conflict_409_and_stale_holder_replaced(self) -> None:
        self.pool.upsert(self.node(2), 1)
        exc = self.assertRaises(ClaimConflict, self.pool.upsert, self.node(3, "100.64.1.2/24"), 1)
        self.assertEqual(exc.status, 409)
        self.assertEqual(exc.holder.id, node_id(2))
        self.clock.advance(31)
        result = self.pool.upsert(self.node(3, "100.64.1.2/24"), 1)
        self.assertEqual([p.id for p in result.replaced], [node_id(2)])
        self.assertNotIn(node_id(2), self.pool)
        self.assertEqual(self.pool.holder(ipaddress.ip_network("100.64.1.2/32")), node_id(3))

    def test_new_id_at_a_live_url_needs_evidence(self) -> None:
        """A claim alone never evicts a live node (issue 12, defect 2): 409 naming the holder to probe."""
        self.pool.upsert(self.node(2), 1)
        exc = self.assertRaises(ClaimConflict, self.pool.upsert, self.node(2, ident=9), 1)
        self.assertEqual((exc.status, exc.holder.id), (409, node_id(2)))  # same URL and address
        exc = self.assertRaises(ClaimConflict, self.pool.upsert, self.node(3, url="https://n2.test:4567"), 1)
        self.assertEqual((exc.reason, exc.holder.id), ("url_conflict", node_id(2)))
        self.assertEqual({p.id for p in self.pool}, {node_id(2)})

    def test_new_id_at_a_stale_url_replaces(self) -> None:
        self.pool.upsert(self.node(2), 1)
        self.clock.advance(31)
        result = self.pool.upsert(self.node(2, ident=9), 1)
        self.assertEqual([p.id for p in result.replaced], [node_id(2)])
        self.assertEqual({p.id for p in self.pool}, {node_id(9)})

    def test_sequence(self) -> None:
        self.pool.upsert(self.node(2), 5)
        exc = self.assertRaises(RegistrationConflict, self.pool.upsert, self.node(2), 4)
        self.assertEqual(exc.reason, "stale_seq")
        self.pool.upsert(self.node(2), 5)
        self.pool.upsert(self.node(2), 6)

    def test_live_id_changes_url_or_address(self) -> None:
        self.pool.upsert(self.node(2), 1)
        exc = self.assertRaises(RegistrationConflict, self.pool.upsert, self.node(2, url="https://x.test:1"), 2)
        self.assertEqual(exc.reason, "id_url_conflict")
        exc = self.assertRaises(RegistrationConflict, self.pool.upsert, self.node(2, "100.64.1.77/24"), 2)
        self.assertEqual(exc.reason, "address_change")
        self.clock.advance(31)
        result = self.pool.upsert(self.node(2, "100.64.1.77/24"), 3)
        self.assertTrue(result.changed)
        self.assertIsNone(self.pool.holder(ipaddress.ip_network("100.64.1.2/32")))

    def test_max_nodes(self) -> None:
        for n in (2, 3, 4):
            self.pool.upsert(self.node(n), 1)
        exc = self.assertRaises(PoolFull, self.pool.upsert, self.node(5), 1)
        self.assertEqual(exc.status, 503)
        self.pool.upsert(self.node(4), 2)  # a known peer still renews

    def test_staleness_on_monotonic_clock(self) -> None:
        self.pool.upsert(self.node(2), 1)
        self.pool.upsert(self.node(5, "100.64.2.5/24"), 1)
        self.clock.advance(25)
        self.pool.touch(node_id(2))
        self.clock.advance(25)
        self.assertEqual([p.id for p in self.pool.stale()], [])
        self.clock.advance(4)
        self.assertEqual([p.id for p in self.pool.stale()], [])
        self.clock.advance(100)
        self.assertEqual({p.id for p in self.pool.stale()}, {node_id(2), node_id(5)})

    def test_remove_drops_routes(self) -> None:
        self.pool.upsert(self.node(2), 1)
        self.pool.remove(node_id(2))
        self.assertEqual(self.pool.routes(), {})
        self.assertIsNone(self.pool.remove(node_id(2)))


class BackoffTests(SynchronousTestCase):
    def test_doubles_with_jitter_up_to_cap(self) -> None:
        clock = Clock()
        b = Backoff(1.0, 900.0, clock.seconds, random.Random(1))
        delays = [b.failure("u") for _ in range(15)]
        for i, d in enumerate(delays):
            base = min(900.0, 2.0**i)
            self.assertTrue(base * 0.5 <= d <= base, (i, d))
        self.assertFalse(b.allowed("u"))
        clock.advance(901)
        self.assertTrue(b.allowed("u"))
        b.success("u")
        self.assertEqual(b.failures("u"), 0)

    def test_at_least(self) -> None:
        b = Backoff(1.0, 900.0, Clock().seconds, random.Random(1))
        self.assertEqual(b.failure("u", at_least=30.0), 30.0)

    def test_bad_parameters(self) -> None:
        self.assertRaises(ValueError, Backoff, 0.0, 1.0)
        self.assertRaises(ValueError, Backoff, 2.0, 1.0)
