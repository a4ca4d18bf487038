"""Per-request work that grew with N, found by profiling ``contrib/bench/scale_sim.py`` (issue 9), and the
in-memory transport the simulation runs on: each cheaper path gives the answers of the path it replaced."""

from __future__ import annotations

import json
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from tests.unit.mesh_support import MeshTestCase, advance, info, make_settings, node_id
from tunmesh import strictjson
from tunmesh.mesh.errors import InvalidRegistration
from tunmesh.mesh.pool import NodePool
from tunmesh.mesh.structs import Bounds, NodeInfo, NodeInfoCache, Registration, dumps_json
from tunmesh.testing import FakeMetrics, FakeNetwork, HeapClock, MemoryResponse

BOUNDS = Bounds(max_nodes=8)


def depth_by_characters(text: str, max_depth: int) -> bool:
    """The character loop ``strictjson._depth_ok`` replaced: the reference it must agree with."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > max_depth:
                return False
        elif ch in "]}":
            depth -= 1
    return True


class StrictJSONDepthTests(SynchronousTestCase):
    @settings(max_examples=2000, deadline=None)
    @given(st.text(alphabet='[]{}"\\ a\n', max_size=60), st.integers(0, 6))
    def test_the_depth_check_agrees_with_the_character_loop(self, text: str, max_depth: int) -> None:
        self.assertEqual(strictjson._depth_ok(text, max_depth), depth_by_characters(text, max_depth))

    def test_a_table_of_500_entries_is_not_too_deep_and_a_deep_one_is(self) -> None:
        table = json.dumps({"remote": [info(n % 250 + 1) for n in range(500)]})
        self.assertEqual(len(strictjson.loads(table)["remote"]), 500)
        with self.assertRaises(strictjson.StrictJSONError) as cm:
            strictjson.loads(table[:-1] + ',"x":' + "[" * 40 + "]" * 40 + "}")
        self.assertEqual(cm.exception.reason, "too_deep")

    def test_a_duplicate_key_is_still_refused_at_any_depth(self) -> None:
        for text in ('{"a":1,"a":1}', '[{"b":{"a":1,"c":2,"a":3}}]'):
            with self.assertRaises(strictjson.StrictJSONError) as cm:
                strictjson.loads(text)
            self.assertEqual(cm.exception.reason, "duplicate_key")


class NodeInfoCacheTests(SynchronousTestCase):
    def test_a_cached_entry_is_what_parsing_gives_and_is_parsed_once(self) -> None:
        cache = NodeInfoCache(8)
        value = info(2)
        first = cache.parse(value, BOUNDS, "remote/0")
        self.assertEqual(first, NodeInfo.from_dict(value, BOUNDS))
        self.assertIs(cache.parse(json.loads(json.dumps(value)), BOUNDS, "remote/1"), first)
        self.assertEqual(len(cache), 1)

    def test_a_changed_entry_is_parsed_again(self) -> None:
        cache = NodeInfoCache(8)
        a = cache.parse(info(2), BOUNDS, "local")
        b = cache.parse(info(2, address="100.64.1.9/24"), BOUNDS, "local")
        self.assertEqual(str(b.node_addresses["ipv4"]), "100.64.1.9/24")
        self.assertNotEqual(a, b)

    def test_a_bad_entry_is_refused_every_time_and_not_kept(self) -> None:
        cache = NodeInfoCache(8)
        bad = info(2, url="http://n2.test:4567")
        for _ in range(2):
            with self.assertRaises(InvalidRegistration):
                cache.parse(bad, BOUNDS, "local")
        self.assertEqual(len(cache), 0)

    def test_other_bounds_start_the_cache_again(self) -> None:
        cache = NodeInfoCache(8)
        cache.parse(info(2), BOUNDS, "local")
        with self.assertRaises(InvalidRegistration):
            cache.parse(info(2), Bounds(max_url_length=10), "local")

    def test_it_never_holds_more_than_its_size(self) -> None:
        cache = NodeInfoCache(4)
        for n in range(2, 20):
            cache.parse(info(n), BOUNDS, "local")
            self.assertLessEqual(len(cache), 4)

    def test_a_registration_parsed_with_a_cache_equals_one_parsed_without(self) -> None:
        body = json.dumps(
            {"local": info(1), "remote": [info(2), info(3, url="ftp://x"), info(2)], "stamp": 5, "seq": 5}
        ).encode()
        cache = NodeInfoCache(8)
        for _ in range(2):
            self.assertEqual(Registration.from_json(body, BOUNDS, cache), Registration.from_json(body, BOUNDS))


class PoolIndexTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.settings = make_settings("https://n1.test:4567", "100.64.1.1/24", max_nodes=5)
        self.pool = NodePool(self.settings, node_id(1), self.clock.seconds)

    def node(self, n: int, url: str | None = None) -> NodeInfo:
        return NodeInfo.from_dict(info(n, url=url), self.settings.bounds)

    def test_by_url_follows_inserts_url_changes_and_removals(self) -> None:
        self.pool.upsert(self.node(2), 1)
        self.pool.upsert(self.node(3), 1)
        self.assertEqual(self.pool.by_url("https://n2.test:4567").id, node_id(2))  # type: ignore[union-attr]
        self.clock.advance(31)  # stale: it may come back at another URL
        self.pool.upsert(self.node(2, url="https://n2b.test:4567"), 2)
        self.assertIsNone(self.pool.by_url("https://n2.test:4567"))
        self.assertEqual(self.pool.by_url("https://n2b.test:4567").id, node_id(2))  # type: ignore[union-attr]
        self.pool.remove(node_id(2))
        self.assertIsNone(self.pool.by_url("https://n2b.test:4567"))
        self.assertEqual(self.pool.by_url("https://n3.test:4567").id, node_id(3))  # type: ignore[union-attr]

    def test_a_new_id_at_a_stale_peers_url_replaces_it_and_takes_the_url(self) -> None:
        self.pool.upsert(self.node(2), 1)
        self.clock.advance(31)
        result = self.pool.upsert(NodeInfo.from_dict(info(4, url="https://n2.test:4567"), self.settings.bounds), 1)
        self.assertEqual([p.id for p in result.replaced], [node_id(2)])
        self.assertEqual(self.pool.by_url("https://n2.test:4567").id, node_id(4))  # type: ignore[union-attr]

    def test_the_generation_changes_with_peers_urls_and_hints_only(self) -> None:
        seen = [self.pool.generation]

        def changed() -> bool:
            seen.append(self.pool.generation)
            return seen[-1] != seen[-2]

        self.pool.upsert(self.node(2), 1)
        self.assertTrue(changed())
        self.pool.upsert(self.node(2), 2)
        self.assertFalse(changed())  # a renewal: same entry, no hints
        hints = (self.node(3),)
        self.pool.upsert(self.node(2), 3, hints)
        self.assertTrue(changed())
        self.pool.upsert(self.node(2), 4, (self.node(3),))  # equal hints, another tuple
        self.assertFalse(changed())
        self.pool.remove(node_id(2))
        self.assertTrue(changed())


class GossipScanTests(MeshTestCase):
    def test_the_hints_are_scanned_again_only_after_the_pool_changed(self) -> None:
        nodes = self.mesh(3)
        a = nodes[0]
        stranger = NodeInfo.from_dict(info(9), a.settings.bounds)
        peer = a.pool.get(nodes[1].id)
        assert peer is not None
        bootstrapper = a.membership.bootstrapper

        def tried() -> bool:
            bootstrapper.gossip()
            self.clock.advance(0)
            return bootstrapper.url_backoff.wait("https://n9.test:4567") > 0  # n9 is not there: refused

        peer.hints = (*peer.hints, stranger)  # behind the pool's back: its generation did not move
        self.assertFalse(tried())
        a.pool.upsert(peer.info, peer.last_seq, peer.hints)  # the same hints through the pool: no change
        self.assertFalse(tried())
        a.pool.upsert(peer.info, peer.last_seq, (stranger,))
        self.assertTrue(tried())

    def test_the_session_and_peer_gauges_are_current_when_read(self) -> None:
        nodes = self.mesh(3)
        for n in nodes:
            self.assertEqual(n.counter("tunmesh_mesh_peers"), 2)
            self.assertEqual(n.counter("tunmesh_mesh_sessions"), 2)
        nodes[2].crash()
        advance(self.clock, 40)
        self.assertEqual(nodes[0].counter("tunmesh_mesh_peers"), 1)
        self.assertEqual(nodes[0].counter("tunmesh_mesh_sessions"), 1)


class _Echo(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Any] = []
        self.seen: list[tuple[bytes, bytes, bytes | None, bytes]] = []

    def render(self, request: Any) -> Any:
        self.seen.append((request.method, request.uri, request.getHeader(b"Authorization"), request.content.read()))
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Authorization", b"Bearer answer")
        if request.path.endswith(b"/later"):
            self.pending.append(request)
            return NOT_DONE_YET
        if request.path.endswith(b"/boom"):
            raise RuntimeError("boom")
        request.setResponseCode(201)
        return b'{"ok":true}'


class DirectExchangeTests(SynchronousTestCase):
    """``FakeNetwork(direct=True)`` answers as the ``StubTreq`` path does."""

    def exchange(self, direct: bool, path: str) -> tuple[_Echo, FakeNetwork, Deferred[Any]]:
        resource = _Echo()
        net = FakeNetwork(direct=direct)
        net.add("https://n1.test:4567", resource)
        headers = {b"Authorization": [b"Bearer x"], b"Content-Type": [b"application/json"]}
        return resource, net, net.request("POST", "https://n1.test:4567" + path, headers=headers, data=b"{}")

    def read(self, net: FakeNetwork, d: Deferred[Any]) -> tuple[int, bytes | None, bytes]:
        response = self.successResultOf(d)
        chunks: list[bytes] = []
        self.successResultOf(net.collect(response, chunks.append))
        return response.code, response.headers.getRawHeaders(b"Authorization", [None])[0], b"".join(chunks)

    def test_a_response_reads_the_same_on_both_paths(self) -> None:
        results = []
        for direct in (False, True):
            resource, net, d = self.exchange(direct, "/a?x=1")
            results.append((self.read(net, d), resource.seen, net.log))
        self.assertEqual(results[0], results[1])
        self.assertEqual(results[1][0], (201, b"Bearer answer", b'{"ok":true}'))

    def test_a_response_written_later_in_chunks_reads_the_same_on_both_paths(self) -> None:
        results = []
        for direct in (False, True):
            resource, net, d = self.exchange(direct, "/later")
            self.assertNoResult(d)
            request = resource.pending[0]
            request.write(b'{"a":')
            request.write(b"1}")
            request.finish()
            if not direct:
                net.stub.flush()  # StubTreq's memory connection is pumped by hand
            results.append(self.read(net, d))
        self.assertEqual(results[0], results[1])
        self.assertEqual(results[1], (200, b"Bearer answer", b'{"a":1}'))

    def test_an_exception_in_the_resource_is_a_500_on_both_paths(self) -> None:
        codes = []
        for direct in (False, True):
            _, net, d = self.exchange(direct, "/boom")
            codes.append(self.read(net, d)[0])
            self.flushLoggedErrors(RuntimeError)
        self.assertEqual(codes, [500, 500])

    def test_a_cancelled_request_is_lost_at_the_server(self) -> None:
        resource, net, d = self.exchange(True, "/later")
        finished = resource.pending[0].notifyFinish()
        d.cancel()
        self.failureResultOf(finished)
        self.failureResultOf(d)

    def test_a_collector_that_raises_fails_the_collection(self) -> None:
        _, net, d = self.exchange(True, "/a")
        response = self.successResultOf(d)
        self.assertIsInstance(response, MemoryResponse)

        def refuse(data: bytes) -> None:
            raise ValueError("too large")

        self.failureResultOf(net.collect(response, refuse), ValueError)


class FakeMetricsTests(SynchronousTestCase):
    def test_a_gauge_read_by_function_reads_the_function(self) -> None:
        metrics = FakeMetrics()
        metrics.gauge("g", "G.").set_function(lambda: 7.0)
        self.assertEqual(metrics.value("g"), 7.0)



class WireCacheTests(SynchronousTestCase):
    """``Registration.to_json`` joins the entries' cached bytes: the same bytes as encoding it whole."""

    def test_every_shape_encodes_as_the_whole_dict_would(self) -> None:
        named = dict(info(3), name="web-3", address_claims={"ipv4": {"since": 17}})
        entries = [NodeInfo.from_dict(v, BOUNDS) for v in (info(1), info(2), named)]
        for remote in ((), tuple(entries[1:])):
            for elided in (False, True):
                for digests in ((None, None), ("ab" * 12, None), ("ab" * 12, "cd" * 12)):
                    reg = Registration(entries[0], remote, 7, 9, (), digests[0], digests[1], elided)
                    self.assertEqual(reg.to_json(), dumps_json(reg.to_dict()))
                    self.assertEqual(Registration.from_json(reg.to_json(), BOUNDS).remote, () if elided else remote)
        self.assertEqual(entries[2].wire, dumps_json(entries[2].to_dict()))


class HeapClockTests(SynchronousTestCase):
    """``HeapClock`` runs what ``Clock`` runs, in the same order, at the same simulated times."""

    def run_schedule(self, clock: Clock, seed: int) -> list[tuple[float, int]]:
        rng = random.Random(seed)
        ran: list[tuple[float, int]] = []
        calls: list[Any] = []

        def fire(n: int) -> None:
            ran.append((clock.seconds(), n))
            if rng.random() < 0.3:  # calls scheduled from calls, some due at once
                calls.append(clock.callLater(rng.choice([0, 0.5, 1.0]), fire, n + 1000))

        for n in range(200):
            calls.append(clock.callLater(rng.choice([0, 0.5, 1.0, 2.0, rng.random() * 5]), fire, n))
        for _ in range(40):
            live = [c for c in calls if c.active()]
            if live and rng.random() < 0.5:
                rng.choice(live).cancel()
            live = [c for c in calls if c.active()]
            if live and rng.random() < 0.5:
                rng.choice(live).reset(rng.random() * 3 + 0.01)  # odd times: no ties with other calls
            if live and rng.random() < 0.3:
                rng.choice(live).delay(rng.random() + 0.01)
            self.assertEqual(len(clock.getDelayedCalls()), len([c for c in calls if c.active()]))
            clock.advance(0.25)
        clock.advance(100)
        self.assertEqual(clock.getDelayedCalls(), [])
        return ran

    def test_the_same_calls_run_in_the_same_order(self) -> None:
        for seed in range(20):
            self.assertEqual(self.run_schedule(HeapClock(), seed), self.run_schedule(Clock(), seed), seed)
