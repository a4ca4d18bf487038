"""Tests for L{tunmesh.metrics}."""

from __future__ import annotations

from ipaddress import ip_network

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from tunmesh import __version__
from tunmesh.metrics import (
    Metrics,
    MetricsConflictError,
    MetricsDisabledError,
    MetricsError,
    MetricsLabelError,
    PeerInfo,
)

NODE = "5b0e4a54-4c1b-4d57-8d5c-0d7f2a1e9c11"


def samples(metrics: Metrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Parse the rendered text back into name -> [(labels, value)]."""
    body, _ = metrics.render()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


class CreateOrGetTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.m = Metrics(NODE, {}, process_metrics=False)

    def test_counter_same_name_same_object(self) -> None:
        a = self.m.counter("dropped_packets", "Drops.", ("reason",))
        b = self.m.counter("dropped_packets", "Drops.", ("reason",))
        self.assertIs(a, b)
        a.labels(reason="no_route").inc()
        b.labels(reason="no_route").inc(2)
        self.assertEqual(
            samples(self.m)["tunmesh_dropped_packets_total"], [({"reason": "no_route"}, 3.0)]
        )

    def test_counter_total_suffix_is_the_same_counter(self) -> None:
        self.assertIs(self.m.counter("x", "X."), self.m.counter("x_total", "X."))

    def test_gauge_and_histogram_same_object(self) -> None:
        self.assertIs(self.m.gauge("peers", "Peers."), self.m.gauge("peers", "Peers."))
        h = self.m.histogram("lat", "Latency.", buckets=(0.1, 1.0))
        self.assertIs(h, self.m.histogram("lat", "Latency.", buckets=[0.1, 1]))

    def test_conflicting_type(self) -> None:
        self.m.counter("thing", "Thing.")
        self.assertRaises(MetricsConflictError, self.m.gauge, "thing", "Thing.")
        self.assertRaises(MetricsConflictError, self.m.histogram, "thing", "Thing.")

    def test_conflicting_labels(self) -> None:
        self.m.counter("thing", "Thing.", ("a",))
        self.assertRaises(MetricsConflictError, self.m.counter, "thing", "Thing.", ("b",))
        self.assertRaises(MetricsConflictError, self.m.counter, "thing", "Thing.")

    def test_conflicting_buckets(self) -> None:
        self.m.histogram("lat", "Latency.", buckets=(0.1, 1.0))
        self.assertRaises(MetricsConflictError, self.m.histogram, "lat", "Latency.", buckets=(0.2, 1.0))

    def test_conflicting_series_names_across_kinds(self) -> None:
        """A gauge named like a counter's _total series collides in the registry."""
        self.m.counter("packets", "Packets.")
        self.assertRaises(MetricsConflictError, self.m.gauge, "packets_created", "Packets.")

    def test_prefix_added_and_not_accepted_twice(self) -> None:
        self.m.gauge("peers", "Peers.").set(4)
        self.assertEqual(samples(self.m)["tunmesh_peers"], [({}, 4.0)])
        self.assertRaises(MetricsError, self.m.gauge, "tunmesh_peers", "Peers.")

    def test_bad_names(self) -> None:
        for bad in ("", "1abc", "a-b", "a b", "ä"):
            self.assertRaises(MetricsError, self.m.gauge, bad, "Doc.")
        self.assertRaises(MetricsError, self.m.gauge, "ok", "")

    def test_bad_buckets(self) -> None:
        self.assertRaises(MetricsError, self.m.histogram, "h1", "H.", buckets=())
        self.assertRaises(MetricsError, self.m.histogram, "h2", "H.", buckets=(1.0, 0.5))
        self.assertRaises(MetricsError, self.m.histogram, "h3", "H.", buckets=(1.0, 1.0))
        self.assertRaises(MetricsError, self.m.histogram, "h4", "H.", buckets=("a",))

    def test_histogram_exposes_buckets_with_constant_labels(self) -> None:
        self.m.histogram("lat", "Latency.", buckets=(0.1, 1.0)).observe(0.5)
        buckets = samples(self.m)["tunmesh_lat_bucket"]
        self.assertEqual(
            buckets,
            [
                ({"le": "0.1"}, 0.0),
                ({"le": "1.0"}, 1.0),
                ({"le": "+Inf"}, 1.0),
            ],
        )


class LabelValidationTests(SynchronousTestCase):
    def test_base_labels_named_like_info_labels_are_refused(self) -> None:
        for name in ("node_id", "node_name", "advertise_url", "peer_id", "peer_name", "url", "addresses"):
            self.assertRaises(MetricsLabelError, Metrics, NODE, {name: "x"}, process_metrics=False)

    def test_base_label_invalid_names(self) -> None:
        for bad in ("", "1a", "a-b", "__reserved", "le", "quantile"):
            self.assertRaises(MetricsLabelError, Metrics, NODE, {bad: "x"}, process_metrics=False)

    def test_base_label_non_string_value(self) -> None:
        self.assertRaises(MetricsLabelError, Metrics, NODE, {"cluster": 3})

    def test_base_label_colliding_with_builtin_labels(self) -> None:
        """python_info and build_info carry 'version' (and friends) themselves."""
        self.assertRaises(MetricsLabelError, Metrics, NODE, {"version": "1"})
        self.assertRaises(MetricsLabelError, Metrics, NODE, {"implementation": "x"})

    def test_metric_label_colliding_with_constant(self) -> None:
        m = Metrics(NODE, {"cluster": "c"}, process_metrics=False)
        self.assertRaises(MetricsLabelError, m.counter, "b", "B.", ("cluster",))
        self.assertRaises(MetricsLabelError, m.histogram, "c", "C.", ("le",))

    def test_metric_label_invalid(self) -> None:
        m = Metrics(NODE, process_metrics=False)
        self.assertRaises(MetricsLabelError, m.counter, "a", "A.", ("bad-name",))
        self.assertRaises(MetricsLabelError, m.counter, "b", "B.", ("x", "x"))
        self.assertRaises(MetricsLabelError, m.counter, "c", "C.", "reason")

    def test_empty_node_id(self) -> None:
        self.assertRaises(MetricsError, Metrics, "")

    def test_label_errors_are_value_errors(self) -> None:
        """Config loading reports them like any other bad value."""
        self.assertTrue(issubclass(MetricsLabelError, ValueError))
        self.assertTrue(issubclass(MetricsConflictError, ValueError))


class ExpositionTests(SynchronousTestCase):
    def test_every_sample_has_base_labels_and_none_the_node_id(self) -> None:
        m = Metrics(NODE, {"cluster": "prod", "site": "a"})
        m.counter("auth_failures", "Auth failures.", ("reason",)).labels(reason="bad_sig").inc()
        parsed = samples(m)
        self.assertIn("process_cpu_seconds_total", parsed)
        self.assertIn("python_info", parsed)
        for name, series in parsed.items():
            for labels, _ in series:
                if name != "tunmesh_node_info":
                    self.assertNotIn("node_id", labels, name)
                self.assertEqual(labels.get("cluster"), "prod", name)
                self.assertEqual(labels.get("site"), "a", name)

    def test_node_info_names_the_node_once(self) -> None:
        m = Metrics(NODE, {"cluster": "prod"}, process_metrics=False, advertise_url="https://a:4567/")
        self.assertEqual(
            samples(m)["tunmesh_node_info"],
            [({"cluster": "prod", "node_id": NODE, "node_name": "", "advertise_url": "https://a:4567/"}, 1.0)],
        )
        m.set_node_info(node_name="web-1", advertise_url="https://a:4567/")
        self.assertEqual(
            samples(m)["tunmesh_node_info"],
            [({"cluster": "prod", "node_id": NODE, "node_name": "web-1", "advertise_url": "https://a:4567/"}, 1.0)],
        )

    def test_no_created_series(self) -> None:
        """``_created`` samples double the series count for nothing a dashboard uses."""
        m = Metrics(NODE, process_metrics=False)
        m.counter("x", "X.").inc()
        m.histogram("h", "H.", buckets=(1.0,)).observe(0.5)
        m.counter("y", "Y.", ("reason",)).labels(reason="r").inc()
        body = m.render()[0].decode()
        self.assertIn("tunmesh_x_total 1.0", body)
        self.assertNotIn("_created", body)

    def test_build_info_and_start_time(self) -> None:
        m = Metrics(NODE, process_metrics=False, started_at=1234.5)
        parsed = samples(m)
        self.assertEqual(parsed["tunmesh_build_info"], [({"version": __version__}, 1.0)])
        self.assertEqual(parsed["tunmesh_start_time_seconds"], [({}, 1234.5)])

    def test_start_time_from_injected_wall_clock(self) -> None:
        m = Metrics(NODE, process_metrics=False, wall=lambda: 99.0, version="9.9")
        parsed = samples(m)
        self.assertEqual(parsed["tunmesh_start_time_seconds"], [({}, 99.0)])
        self.assertEqual(parsed["tunmesh_build_info"][0][0]["version"], "9.9")

    def test_content_type(self) -> None:
        _, content_type = Metrics(NODE, process_metrics=False).render()
        self.assertEqual(content_type, "text/plain; version=0.0.4; charset=utf-8")

    def test_registries_are_per_node(self) -> None:
        a = Metrics(NODE, process_metrics=False)
        b = Metrics("other", process_metrics=False)
        a.counter("x", "X.").inc()
        self.assertNotIn("tunmesh_x_total", samples(b))
        self.assertEqual(samples(a)["tunmesh_x_total"], [({}, 1.0)])

    def test_disabled_counts_but_does_not_render(self) -> None:
        m = Metrics(NODE, enabled=False, process_metrics=False)
        c = m.counter("x", "X.")
        c.inc()
        self.assertEqual(m.collector_registry().get_sample_value("tunmesh_x_total", {}), 1.0)
        self.assertRaises(MetricsDisabledError, m.render)


class PeerInfoTests(SynchronousTestCase):
    """``tunmesh_peer_info``: one series per peer, replaced on change, gone with the peer, bounded."""

    def test_follows_membership(self) -> None:
        m = Metrics(NODE, {"cluster": "c"}, process_metrics=False)
        info = PeerInfo(m, max_peers=2)
        info.peer_up("p1", "https://a:4567/", [ip_network("100.64.0.2/32"), ip_network("fd00::2/128")])
        self.assertEqual(
            samples(m)["tunmesh_peer_info"],
            [({"cluster": "c", "peer_id": "p1", "peer_name": "", "url": "https://a:4567/",
               "addresses": "100.64.0.2/32,fd00::2/128"}, 1.0)],
        )
        info.peer_up("p1", "https://b:4567/", [ip_network("100.64.0.2/32")], name="web-1")
        info.set_name("p1", "web-2")
        self.assertEqual(
            samples(m)["tunmesh_peer_info"],
            [({"cluster": "c", "peer_id": "p1", "peer_name": "web-2", "url": "https://b:4567/",
               "addresses": "100.64.0.2/32"}, 1.0)],
        )
        info.peer_up("p2", "https://c:4567/", [])
        info.peer_up("p3", "https://d:4567/", [])  # over max_peers: not exported
        self.assertEqual(len(info), 2)
        info.peer_down("p1")
        info.peer_down("p1")
        self.assertEqual([labels["peer_id"] for labels, _ in samples(m)["tunmesh_peer_info"]], ["p2"])

    def test_names_from_membership(self) -> None:
        m = Metrics(NODE, process_metrics=False)
        names = {"p1": "web-1"}
        info = PeerInfo(m, max_peers=4, name_of=names.get)
        info.peer_up("p1", "https://a:4567/", [])
        info.peer_up("p2", "https://b:4567/", [])
        self.assertEqual(
            sorted((labels["peer_id"], labels["peer_name"]) for labels, _ in samples(m)["tunmesh_peer_info"]),
            [("p1", "web-1"), ("p2", "")],
        )
