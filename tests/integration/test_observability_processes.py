"""Metrics and logs of real nodes (issue 8, parts 5 and 6): two IPv4-only ``twistd tunmesh`` processes
in two namespaces, node 1 writing text logs, node 2 JSON logs.

- The scrape of a real node has every metric the Grafana dashboard and the alert rules use, no
  ``_created`` series, and no label naming the node's random id except ``tunmesh_node_info``; with
  promtool installed, ``promtool check metrics`` finds nothing to say about it.
- JSON logs: one event per line, each line round-trips (``eventFromJSON`` formats to its ``text``).
- Per-peer series (``tunmesh_peer_info``, ``tunmesh_peer_link_*``) go when the peer leaves.
- Steady state is quiet: no Twisted factory chatter at all, and nothing at INFO or above over
  :data:`STEADY` seconds while traffic flows (IPv6 sent into the IPv4-only node's TUN included:
  counted as ``ipv6_disabled``, never a WARN).

With ``TUNMESH_SCRAPE_SUMMARY=PATH`` the summary and node 1's whole scrape are also written to PATH.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.logger import eventFromJSON, formatEvent
from twisted.trial.unittest import TestCase

from tests import promql
from tests.integration.cluster import BOOT, SLOW_STALE, node_config, overlay_v4, running_cluster, wait_until
from tests.netns import Underlay, requires_root_netns

#: Seconds of steady state watched for log lines.
STEADY = 15.0
_TEXT_LINE = re.compile(r"^\S+ \[(?P<system>[^\]#]*)(?:#(?P<level>\w+))?\] (?P<message>.*)$")
_LOUD = {"info", "warn", "error", "critical"}


def config(i: int) -> str:
    # IPv4 only (a node refuses peers advertising CIDRs outside its networks: all alike).
    text = re.sub(r"    ipv6:\n(      .*\n)+", "", node_config(i, bootstrap=BOOT, timing=SLOW_STALE))
    assert "ipv6" not in text
    text = text.replace("  clustering:\n", f"  clustering:\n    node_name: obs-{i}\n", 1)
    if i == 2:
        text = text.replace("  logging:\n    level: info\n", "  logging:\n    level: info\n    format: json\n")
    return text


def scrape_names(body: str) -> tuple[set[str], set[str], list[Any]]:
    """(sample names, names declared by a family even without samples, samples)."""
    samples: list[Any] = []
    declared: set[str] = set()
    for family in text_string_to_metric_families(body):
        declared.add(family.name)
        if family.type == "counter":
            declared.add(family.name + "_total")
        if family.type == "histogram":
            declared.update(family.name + s for s in ("_bucket", "_sum", "_count"))
        samples.extend(family.samples)
    return {s.name for s in samples}, declared, samples


@requires_root_netns
class ObservabilityTests(TestCase):
    timeout = 240

    def test_scrape_and_logs_of_real_nodes(self) -> None:
        with Underlay(nodes=2, tag="o") as underlay:
            workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"tmt-obs-{os.getpid()}"
            with running_cluster(underlay, workdir, config) as cluster:
                ids = cluster.wait_full_mesh(timeout=60)
                # The first keepalive PONG (10 s after the link is up) gives the first RTT.
                wait_until(
                    lambda: "tunmesh_peer_link_rtt_seconds{" in cluster.nodes[1].metrics(),
                    30, "a link RTT on node 1", cluster.logs,
                )
                self.check_steady_state_logs(cluster)
                self.check_scrape(cluster, ids)
                self.check_json_log(cluster.nodes[2].log_path.read_text())
                self.check_text_log(cluster.nodes[1].log_path.read_text())
                # Node 2 leaves: node 1's per-peer series go with it (bounded by the pool).
                cluster.stop(2)
                wait_until(lambda: ids[2] not in cluster.nodes[1].metrics(), 20, "node 2's series to go", cluster.logs)
                self.assertEqual(cluster.metric(1, "tunmesh_mesh_peers"), 0)

    # -- logs ---------------------------------------------------------------------------------------

    def check_steady_state_logs(self, cluster: Any) -> None:
        sizes = {i: node.log_path.stat().st_size for i, node in cluster.nodes.items()}
        ns2 = cluster.ns(2)
        tun = json.loads(ns2.run(["ip", "-j", "link", "show", "type", "tun"]).stdout)[0]["ifname"]
        ns2.run(["ip", "-6", "addr", "add", "fd99::2/64", "dev", tun, "nodad"])
        started = time.monotonic()
        while time.monotonic() - started < STEADY:
            # Overlay traffic both ways, and IPv6 into the IPv4-only node's TUN.
            cluster.ns(1).run(["ping", "-c", "3", "-i", "0.2", "-W", "1", overlay_v4(2)], check=False)
            ns2.run(["ping", "-6", "-c", "3", "-i", "0.2", "-W", "1", "fd99::9"], check=False)
            time.sleep(1)
        ipv6_drops = cluster.metric(2, "tunmesh_dropped_packets_total", reason="ipv6_disabled")
        self.assertGreaterEqual(ipv6_drops, 9)
        loud = {}
        for i, node in cluster.nodes.items():
            with open(node.log_path, "rb") as f:
                f.seek(sizes[i])
                new = f.read().decode("utf-8", errors="replace")
            loud[i] = [line for line in new.splitlines() if self.level_of(line) in _LOUD]
        self.assertEqual(loud, {1: [], 2: []}, "steady state logged at INFO or above")
        self.summary_lines = [
            f"steady state: {STEADY:.0f} s of pings over the mesh and IPv6 into the IPv4-only node's TUN: "
            f"0 log lines at INFO or above on both nodes; {ipv6_drops:.0f} IPv6 packets counted as "
            "tunmesh_dropped_packets_total{reason=\"ipv6_disabled\"}, none logged above debug"
        ]

    @staticmethod
    def level_of(line: str) -> str | None:
        if line.startswith("{"):
            return str(json.loads(line).get("level"))
        m = _TEXT_LINE.match(line)
        return m.group("level") if m else None

    def check_json_log(self, text: str) -> None:
        lines = text.splitlines()
        self.assertGreater(len(lines), 5)
        events = []
        for line in lines:
            record = json.loads(line)  # every line is one JSON object
            event = eventFromJSON(line)
            self.assertEqual(formatEvent(event), record["text"], line)
            self.assertIn(record["level"], {"debug", "info", "warn", "error", "critical"})
            events.append(record)
        links = [e for e in events if e.get("log_format", "").startswith("packet link to {") and "peer_id" in e]
        self.assertTrue(links, "no 'packet link up' event with its fields")
        self.assertRegex(links[0]["peer_id"], r"^[0-9a-f-]{36}$")
        self.assertIn("obs-1", links[0]["text"])  # named by its peer's name
        self.assertNotIn("Starting factory", text)
        self.assertNotIn("Traceback", text)

    def check_text_log(self, text: str) -> None:
        self.assertIn("packet link to", text)
        self.assertNotIn("Starting factory", text)
        self.assertNotIn("Stopping factory", text)
        self.assertNotIn("Traceback", text)

    # -- scrape -------------------------------------------------------------------------------------

    def check_scrape(self, cluster: Any, ids: dict[int, str]) -> None:
        lines = list(getattr(self, "summary_lines", []))
        used = promql.used_names()
        bodies = {}
        for i in (1, 2):
            body = bodies[i] = cluster.nodes[i].metrics()
            names, declared, samples = scrape_names(body)
            self.assertNotIn("_created", body)
            own = ids[i]
            carrying_id = sorted({s.name for s in samples if own in s.labels.values()})
            self.assertEqual(carrying_id, ["tunmesh_node_info"], f"node {i}: its id labels other series")
            self.assertEqual(
                sorted({s.name for s in samples if "node_id" in s.labels}), ["tunmesh_node_info"], f"node {i}"
            )
            info = [s for s in samples if s.name == "tunmesh_node_info"]
            self.assertEqual(len(info), 1)
            self.assertEqual(info[0].labels["advertise_url"], f"https://198.18.0.{i}:4567/")
            self.assertEqual(info[0].labels["node_name"], f"obs-{i}")
            peers = [s for s in samples if s.name == "tunmesh_peer_info"]
            self.assertEqual([p.labels["peer_id"] for p in peers], [ids[3 - i]])
            self.assertEqual(peers[0].labels["peer_name"], f"obs-{3 - i}")
            self.assertEqual(peers[0].labels["addresses"].split(",")[0], f"{overlay_v4(3 - i)}/32")
            for s in samples:  # base_labels still on every series
                self.assertEqual(s.labels.get("env_name"), "netns_test", s.name)
            missing = {where: sorted(n for n in want if n not in names | declared) for where, want in used.items()}
            self.assertEqual(missing, {"dashboard": [], "rules": []}, f"node {i}")
            if promql.promtool() is not None:
                # Prometheus' own linter of an exposition (HELP, types, naming, units): no complaint.
                lint = subprocess.run(
                    [str(promql.promtool()), "check", "metrics"], input=body, capture_output=True, text=True,
                    timeout=60, check=False,
                )
                self.assertEqual((lint.returncode, lint.stdout + lint.stderr), (0, ""), f"node {i}")
                lints = "promtool check metrics: no problem"
            else:
                lints = "promtool not installed: exposition not linted"
            unsampled = sorted({n for want in used.values() for n in want if n not in names})
            lines.append(
                f"node {i} (IPv4-only, {'text' if i == 1 else 'JSON'} logs): "
                f"{len(samples)} series in {len(body)} bytes; _created series: 0; "
                f"series labelled with the node's id {own}: tunmesh_node_info only; "
                f"labels on every series: env_name (base_labels) only; {lints}"
            )
            lines.append(
                f"  dashboard check: {len(used['dashboard'])} metric names in contrib/grafana/tunmesh.json, "
                f"{len(used['rules'])} in contrib/prometheus/tunmesh-alerts.yaml: all present "
                f"({len(unsampled)} declared without a sample yet: {', '.join(unsampled) or 'none'})"
            )
            if i == 1:
                lines.append("  sample lines:")
                for line in body.splitlines():
                    if line.startswith(("tunmesh_node_info", "tunmesh_peer_info", "tunmesh_peer_link",
                                        "tunmesh_link_rtt_seconds_count", "tunmesh_ready ")):
                        lines.append("    " + line)
        summary = "\n".join(lines)
        print("\n" + summary)
        target = os.environ.get("TUNMESH_SCRAPE_SUMMARY")
        if target:
            Path(target).write_text(f"{summary}\n\n--- the whole scrape of node 1\n{bodies[1]}")
