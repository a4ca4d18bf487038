"""docs/metrics.md, the HELP strings, and the dashboard and alert rules in contrib/ against the metrics a
node defines (a node built by makeService: nothing runs; the real-process check is in
tests.integration.test_observability_processes)."""

from __future__ import annotations

import re

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests import promql
from tests.metrics_doc import REGENERATE, built_node_metrics, render

REPO = promql.REPO


def exposed_names(describe: list[tuple[str, str, tuple[str, ...], str]]) -> set[str]:
    """Every sample name the catalog's metrics can expose (histograms: _bucket, _sum, _count)."""
    names = set()
    for name, kind, _labels, _doc in describe:
        names.add(name)
        if kind == "histogram":
            names.update(name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


class MetricsDocTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.metrics = built_node_metrics()
        self.describe = self.metrics.describe()

    def test_committed_page_is_current(self) -> None:
        committed = (REPO / "docs" / "metrics.md").read_text()
        self.assertEqual(committed, render(self.metrics), f"docs/metrics.md is stale: run `{REGENERATE}`")

    def test_every_metric_is_listed_with_its_labels(self) -> None:
        page = (REPO / "docs" / "metrics.md").read_text()
        self.assertGreater(len(self.describe), 30)
        for name, kind, labels, _doc in self.describe:
            row = next((line for line in page.splitlines() if line.startswith(f"| `{name}` |")), None)
            self.assertIsNotNone(row, name)
            assert row is not None
            self.assertIn(f"| {kind} |", row)
            for label in labels:
                self.assertIn(f"`{label}`", row, name)

    def test_help_strings_name_their_labels(self) -> None:
        """A HELP that does not say what its labels mean leaves dashboard authors guessing."""
        for name, _kind, labels, doc in self.describe:
            for label in labels:
                self.assertRegex(doc, rf"\b{re.escape(label)}\b", f"{name}: HELP does not mention {label!r}")

    def test_no_label_names_the_node(self) -> None:
        """Only tunmesh_node_info carries the node's id; base labels are for what targets do not say."""
        for name, _kind, labels, _doc in self.describe:
            if name != "tunmesh_node_info":
                self.assertNotIn("node_id", labels, name)

    def test_dashboard_and_rules_use_only_defined_metrics(self) -> None:
        defined = exposed_names(self.describe)
        for where, names in promql.used_names().items():
            tunmesh = {n for n in names if n.startswith("tunmesh_")}
            self.assertGreater(len(tunmesh), 5, where)
            self.assertEqual(tunmesh - defined, set(), f"{where} uses metrics no node defines")

    def test_metric_names_are_read_structurally(self) -> None:
        names = promql.metric_names(
            'sum by (instance, reason) (rate(tunmesh_a_total{reason!~"tunmesh_not_a_metric"}[5m])) '
            "* on(instance, peer_id) group_left(peer_name) tunmesh_peer_info"
        )
        self.assertEqual(names, {"tunmesh_a_total", "tunmesh_peer_info"})


class PromtoolTests(SynchronousTestCase):
    """With promtool (Debian package ``prometheus``): the rules load, fire as their tests say, and every
    dashboard query parses."""

    def setUp(self) -> None:
        if promql.promtool() is None:
            raise SkipTest("promtool not installed (apt-get install prometheus); names are checked without it")

    def test_rules_load(self) -> None:
        r = promql.run_promtool("check", "rules", str(promql.RULES))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("SUCCESS: 6 rules found", r.stdout)

    def test_rules_fire_as_their_unit_tests_say(self) -> None:
        r = promql.run_promtool("test", "rules", str(promql.RULES_TEST))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_dashboard_queries_parse(self) -> None:
        r = promql.check_dashboard_with_promtool()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
