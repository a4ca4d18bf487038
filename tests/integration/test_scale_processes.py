"""Churn with real processes: nodes killed and restarted leave nothing behind on the survivors.

Eight ``twistd tunmesh`` processes (one namespace each, fast test timings) form a full mesh; two of them
(not node 1, everyone's bootstrap URL) are killed with SIGKILL and restarted at once with new node ids, as
pods without a state volume. The mesh must be whole again, and on every survivor the killed ids must be
gone from ``/metrics``, with its open files, reactor timers (``tunmesh_reactor_delayed_calls``), packet
links and metric series back to their level before. The bounds are generous: this is not a timing test
(``contrib/bench/scale_bench.py --churn K`` prints the figures at larger N).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.integration.cluster import (
    Cluster,
    NodeSample,
    metrics_text,
    node_config,
    start_together,
    wait_links_full_mesh,
)
from tests.netns import Underlay, requires_root_netns

NODES = 8
VICTIMS = (3, 6)


def config(i: int) -> str:
    return node_config(i, bootstrap=["https://198.18.0.1:4567/"])


def peer_series(sample: NodeSample) -> int:
    """Series with a ``peer_id`` label (one set per current peer)."""
    return sum(1 for key in sample.values if 'peer_id="' in key)


@requires_root_netns
class ChurnTests(TestCase):
    timeout = 240

    def test_killed_and_restarted_nodes_leave_no_series_timers_links_or_files_behind(self) -> None:
        with Underlay(nodes=NODES, tag="c") as underlay:
            underlay.wait_reachable(timeout=30)
            workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"tmt-churn-{os.getpid()}"
            cluster = Cluster(underlay, workdir, config)
            try:
                start_together(cluster, list(range(1, NODES + 1)), spread=1.0)
                wait_links_full_mesh(cluster, timeout=120)
                survivors = [i for i in range(1, NODES + 1) if i not in VICTIMS]
                time.sleep(3)
                before = {i: NodeSample(cluster, i) for i in survivors}
                old_ids = [cluster.node_id(i) for i in VICTIMS]
                for i in VICTIMS:
                    cluster.kill(i)
                for i in VICTIMS:
                    cluster.start(i)
                wait_links_full_mesh(cluster, timeout=90)
                deadline = time.monotonic() + 60
                while True:
                    lingering = {
                        i: [old for old in old_ids if old in metrics_text(cluster, i)] for i in survivors
                    }
                    if not any(lingering.values()) or time.monotonic() > deadline:
                        break
                    time.sleep(1)
                self.assertFalse(any(lingering.values()), f"series still name killed ids: {lingering}")
                time.sleep(3)
                after = {i: NodeSample(cluster, i) for i in survivors}
            finally:
                cluster.stop_all()

        def median(samples: dict[int, NodeSample], what: str) -> float:
            return statistics.median(
                getattr(s, what) if hasattr(s, what) else s.total(what) for s in samples.values()
            )

        report = {
            what: (median(before, what), median(after, what))
            for what in ("fds", "series", "tunmesh_reactor_delayed_calls", "tunmesh_links_connected", "rss")
        }
        report["peer_series"] = (
            statistics.median(peer_series(s) for s in before.values()),
            statistics.median(peer_series(s) for s in after.values()),
        )
        print(f"churn: survivors' medians before -> after: {report}")
        for i in survivors:
            b, a = before[i], after[i]
            self.assertEqual(a.total("tunmesh_mesh_peers"), NODES - 1, f"node {i}")
            self.assertEqual(a.total("tunmesh_links_connected", 'direction="out"'), NODES - 1, f"node {i}")
            self.assertLessEqual(a.total("tunmesh_links_connected"), b.total("tunmesh_links_connected") + 2, f"node {i}")
            self.assertLessEqual(a.fds, b.fds + 4, f"node {i}: open files {b.fds} -> {a.fds}")
            timers_b, timers_a = b.total("tunmesh_reactor_delayed_calls"), a.total("tunmesh_reactor_delayed_calls")
            self.assertLessEqual(timers_a, timers_b + 6, f"node {i}: timers {timers_b} -> {timers_a}")
            # series per peer are replaced, not piled up; counters and histograms may gain label values
            # (a removal reason, a failed request's result: a fixed set, 14 series per histogram label set)
            per_peer_b, per_peer_a = peer_series(b), peer_series(a)
            self.assertLessEqual(per_peer_a, per_peer_b, f"node {i}: per-peer series {per_peer_b} -> {per_peer_a}")
            self.assertLessEqual(a.series, b.series + 120, f"node {i}: series {b.series} -> {a.series}")
