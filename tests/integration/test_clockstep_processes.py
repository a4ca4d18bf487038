"""A wall-clock step must never stall a node (issue 13): one real node's wall clock is stepped by +1 h
and back at run time with libfaketime (Debian ``faketime``; its monotonic clock untouched, as an NTP step
or a VM resume does), while the test records a timeline of that node's outbound registrations, its
``/health`` and whether node 1 lists it.

Wanted: it keeps registering all along (its timers are monotonic), stays live, and after the clock is put
back it is in node 1's view again within one stale threshold, without a restart.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.integration.cluster import PORT, Cluster, node_config, running_cluster
from tests.netns import NetnsError, Underlay, requires_root_netns, start_node

BOOT = ["https://198.18.0.1:4567/"]
TIMING = {
    "local": {"reregistration_interval": 1, "stale_threshold": 6},
    "mesh": {"reregistration_interval": 1, "stale_threshold": 6},
}
STALE = 6.0
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")


def require_faketime() -> None:
    if not LIBFAKETIME.exists():
        raise NetnsError(f"{LIBFAKETIME} is missing: install the Debian package faketime")


@requires_root_netns
class WallClockStepProcessTests(TestCase):
    timeout = 240

    def sample(self, cluster: Cluster, ids: dict[int, str], phase: str, t0: float) -> dict[str, object]:
        node = cluster.nodes[2]
        code, _ = node.get("/health")
        out = cluster.metric(2, "tunmesh_mesh_registrations_total", direction="out")
        # Proof that node 2 kept trying during the step: its requests that node 1 refused for time, and the
        # control connections node 2 refused itself because node 1's proof of the TLS session (W5) was
        # outside its validity on node 2's clock (nothing is sent then).
        refused = cluster.metric(1, "tunmesh_auth_failures_total", reason="clock_skew")
        unproven = cluster.metric(2, "tunmesh_mesh_request_duration_seconds_count", result="channel_binding")
        listed = ids[2] in cluster.peers_of(1)
        row = {
            "t": round(time.monotonic() - t0, 1), "phase": phase, "health_2": code, "reg_ok_out_2": out,
            "refused_by_1_clock_skew": refused, "proof_refused_by_2": unproven, "2_in_view_of_1": listed,
        }
        self.timeline.append(row)
        return row

    def test_plus_one_hour_and_back_without_restart(self) -> None:
        require_faketime()
        self.timeline: list[dict[str, object]] = []
        with Underlay(nodes=3, tag="c") as underlay:
            workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"tmt-clock-{os.getpid()}"
            self.addCleanup(shutil.rmtree, workdir, True)
            make = lambda i: node_config(i, bootstrap=BOOT, timing=TIMING)  # noqa: E731
            with running_cluster(underlay, workdir, make, start=False) as cluster:
                offset_file = workdir / "faketime.rc"
                offset_file.write_text("+0\n")
                offset_file.chmod(0o644)
                cluster.start(1)
                d = workdir / "node2"
                cluster.nodes[2] = start_node(
                    cluster.ns(2), d / "config.yaml", f"https://198.18.0.2:{PORT}", log_path=d / "node.log",
                    env={
                        "LD_PRELOAD": str(LIBFAKETIME),
                        "FAKETIME_TIMESTAMP_FILE": str(offset_file),
                        "FAKETIME_CACHE_DURATION": "1",
                        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                    },
                )
                cluster.start(3)
                for i in (1, 2, 3):
                    cluster.nodes[i].wait_ready(60)
                ids = cluster.wait_full_mesh(60)
                t0 = time.monotonic()
                self.sample(cluster, ids, "before", t0)

                offset_file.write_text("+3600\n")
                for _ in range(8):
                    time.sleep(2)
                    self.sample(cluster, ids, "+1h", t0)
                during = [r for r in self.timeline if r["phase"] == "+1h"]

                offset_file.write_text("+0\n")
                back_at = time.monotonic()
                recovered_after = None
                while time.monotonic() - back_at < 3 * STALE + 10:
                    time.sleep(1)
                    row = self.sample(cluster, ids, "back", t0)
                    if row["2_in_view_of_1"] and row["health_2"] == 200 and recovered_after is None:
                        recovered_after = time.monotonic() - back_at
                        break
                report = "\n".join(str(r) for r in self.timeline)
                print(f"\nwall-clock step timeline (node 2):\n{report}\nrecovered {recovered_after}s after the step back")

                log = (d / "node.log").read_text(errors="replace")
                self.assertIn("wall clock stepped by +3600", log, report)
                # Its timers ran on: it kept trying (node 1 refusing its +1 h tokens, or node 2 refusing node
                # 1's session proofs as outside their validity) and stayed live.
                tries = [
                    float(r["refused_by_1_clock_skew"]) + float(r["proof_refused_by_2"])  # type: ignore[arg-type]
                    for r in during
                ]
                self.assertGreater(tries[-1], tries[len(tries) // 2], report)
                self.assertTrue(all(r["health_2"] == 200 for r in during), report)
                # Back in node 1's view within one stale threshold (plus the sampling and renewal slack).
                self.assertIsNotNone(recovered_after, report)
                assert recovered_after is not None
                self.assertLess(recovered_after, STALE + 10, report)
                self.assertEqual(cluster.nodes[2].proc.poll(), None)  # never restarted
