"""Rotating the cluster secret on a running 3-node mesh, with real processes (issue 8, part 3).

The runbook of docs/security.md ("Rotating the cluster secret"), done as a rolling update does it: for each
of the three steps (add the new secret, sign with it, remove the old one), restart one node at a time with
its new config and wait until it is back in every view before the next. Meanwhile node 1 pings node 2 over
the overlay, 20 packets a second, for the whole run.

Asserted: no node ever removes a peer except a restarting node's old process (reasons ``left``,
``restarted`` or ``replaced``; never ``stale``), no request is refused for a secret (``unknown_key``,
``bad_signature``), no packet is lost while neither end of the ping restarts, and after step 3 the old
secret opens nothing. Printed (and written to /work/secret-rotation-figures.txt): packet loss overall and
per restart.

The second test applies the same three steps with SIGHUP (no process ends): no peer removed, no packet
lost, and every node re-salts the sessions it had set up under the removed secret.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.integration.cluster import UNPRIVILEGED_UID, Cluster, node_config, overlay_v4
from tests.netns import NetnsError, Underlay, requires_root_netns
from tunmesh.cli import generate_secret

URLS = [f"https://198.18.0.{i}:4567/" for i in (1, 2, 3)]
FAST = {
    "local": {"reregistration_interval": 1, "stale_threshold": 10},
    "mesh": {"reregistration_interval": 1, "stale_threshold": 10},
}
INTERVAL = 0.05
FIGURES = Path("/work/secret-rotation-figures.txt")

AUTH_SINGLE = "    auth:\n      secret_file: ../cluster.secret\n"
AUTH_BOTH = """\
    auth:
      secrets:
        default:
          secret_file: ../cluster.secret
        new:
          secret_file: ../new.secret
      signing_secret_id: {signing}
"""
AUTH_NEW = """\
    auth:
      secrets:
        new:
          secret_file: ../new.secret
      signing_secret_id: new
"""
STEPS = (
    ("1 add the new secret", AUTH_BOTH.format(signing="default")),
    ("2 sign with the new secret", AUTH_BOTH.format(signing="new")),
    ("3 remove the old secret", AUTH_NEW),
)
ALLOWED_REMOVALS = {"left", "restarted", "replaced"}
SECRET_FAILURES = ("unknown_key", "bad_signature")


def config(i: int, auth: str = AUTH_SINGLE) -> str:
    text = node_config(i, bootstrap=[u for u in URLS if u != URLS[i - 1]], timing=FAST)
    assert AUTH_SINGLE in text
    return text.replace(AUTH_SINGLE, auth)


def record_figures(section: str, text: str) -> None:
    """Print ``text`` and keep it as one section of FIGURES (the other test's section stays)."""
    sys.stderr.write("\n" + text)
    header = f"== {section} ==\n"
    try:
        old = FIGURES.read_text() if FIGURES.exists() else ""
    except OSError:
        old = ""
    sections = [part for part in re.split(r"(?m)^(?=== )", old) if part.strip() and not part.startswith(header)]
    try:
        FIGURES.write_text("".join(sections) + header + text)
    except OSError:
        pass


def metric_samples(text: str, name: str) -> dict[str, float]:
    """``{reason: value}`` of the ``name`` samples carrying a ``reason`` label."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(rf'^{name}\{{([^}}]*)\}}\s+(\S+)$', line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            if "reason" in labels:
                out[labels["reason"]] = out.get(labels["reason"], 0.0) + float(m.group(2))
    return out


class PingLog:
    """A continuous ``ping -D`` whose replies are timed, so loss can be split by time window."""

    def __init__(self, proc: subprocess.Popen[str], path: Path) -> None:
        self.proc = proc
        self.path = path  # a file, not a pipe: a full pipe would stop ping after ~64 KiB of output
        self.output = ""

    def finish(self) -> None:
        self.proc.send_signal(2)  # SIGINT: ping prints its summary
        self.proc.wait(timeout=30)
        self.output = self.path.read_text(errors="replace")

    def replies(self) -> dict[int, float]:
        """icmp_seq -> wall time of the reply."""
        out: dict[int, float] = {}
        for m in re.finditer(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)", self.output, re.M):
            out.setdefault(int(m.group(2)), float(m.group(1)))
        return out

    def summary(self) -> tuple[int, int]:
        m = re.search(r"(\d+) packets transmitted, (\d+) received", self.output)
        if not m:
            raise NetnsError(f"no ping summary in:\n{self.output[-2000:]}")
        return int(m.group(1)), int(m.group(2))

    def lost_in(self, start: float, end: float, transmitted: int) -> tuple[int, int]:
        """(sent, lost) for the echo requests sent within [start, end): send times of lost sequence
        numbers are interpolated from the received ones around them."""
        replies = self.replies()
        if not replies:
            return 0, 0
        seqs = sorted(replies)
        times: dict[int, float] = {}
        for seq in range(1, transmitted + 1):
            if seq in replies:
                times[seq] = replies[seq]
                continue
            before = max((s for s in seqs if s < seq), default=None)
            after = min((s for s in seqs if s > seq), default=None)
            if before is not None and after is not None:
                times[seq] = replies[before] + (replies[after] - replies[before]) * (seq - before) / (after - before)
            elif before is not None:
                times[seq] = replies[before] + (seq - before) * INTERVAL
            else:
                assert after is not None
                times[seq] = replies[after] - (after - seq) * INTERVAL
        sent = [s for s, t in times.items() if start <= t < end]
        return len(sent), sum(1 for s in sent if s not in replies)


@requires_root_netns
class SecretRotationProcessTests(TestCase):
    timeout = 900

    def setUp(self) -> None:
        self.underlay = Underlay(nodes=3, tag="r").__enter__()
        self.addCleanup(self.underlay.__exit__, None, None, None)
        self.workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"tmt-secret-rotation-{os.getpid()}"
        self.cluster = Cluster(self.underlay, self.workdir, config)
        self.addCleanup(self.cluster.stop_all)
        (self.workdir / "new.secret").write_text(generate_secret() + "\n")

    def write(self, i: int, auth: str) -> None:
        (self.workdir / f"node{i}" / "config.yaml").write_text(config(i, auth))

    def scrape(self, i: int) -> dict[str, dict[str, float]]:
        text = self.cluster.nodes[i].metrics()
        return {
            "removed": metric_samples(text, "tunmesh_mesh_peers_removed_total"),
            "auth": metric_samples(text, "tunmesh_auth_failures_total"),
        }

    def wait_back(self, i: int, before: dict[int, str]) -> float:
        """Until the restarted node i is ready and every node lists every other; the seconds it took."""
        t0 = time.monotonic()
        self.cluster.nodes[i].wait_ready(timeout=90)
        ids = self.cluster.wait_full_mesh(timeout=90)
        for j, node_id in ids.items():
            if j != i:
                self.assertEqual(node_id, before[j], f"node {j} was not supposed to restart")
        return time.monotonic() - t0

    def start_meshed_with_ping(self) -> tuple[dict[int, str], PingLog]:
        """All nodes started and fully meshed, then node 1 pinging node 2 over the overlay every INTERVAL."""
        cluster = self.cluster
        cluster.start_all(ready_timeout=90)
        ids = cluster.wait_full_mesh(timeout=90)
        ping_path = self.workdir / "ping.out"
        with ping_path.open("w") as out:
            proc = cluster.ns(1).popen(
                ["ping", "-n", "-D", "-i", str(INTERVAL), "-W", "1", overlay_v4(2)],
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        ping = PingLog(proc, ping_path)

        def stop_ping() -> None:
            if ping.proc.poll() is None:
                ping.proc.kill()

        self.addCleanup(stop_ping)
        return ids, ping

    def test_three_step_rolling_rotation_keeps_every_registration(self) -> None:
        cluster = self.cluster
        ids, ping = self.start_meshed_with_ping()
        windows: list[tuple[str, int, float, float, float]] = []
        removed: dict[int, dict[str, float]] = {}  # by process: node index, then reason
        auth_failures: dict[str, float] = {}
        time.sleep(3)
        for step, auth in STEPS:
            for i in (1, 2, 3):
                # What the old process saw, just before it stops (its counters end with it).
                seen = self.scrape(i)
                for reason, value in seen["auth"].items():
                    auth_failures[reason] = auth_failures.get(reason, 0.0) + value
                removed.setdefault(i, {})
                for reason, value in seen["removed"].items():
                    removed[i][reason] = removed[i].get(reason, 0.0) + value
                self.write(i, auth)
                start = time.time()
                cluster.stop(i)
                cluster.start(i)
                back = self.wait_back(i, ids)
                ids[i] = cluster.node_id(i)
                time.sleep(2)  # settle before the next node, as a readiness gate's minReadySeconds would
                windows.append((step, i, start, time.time(), back))
        time.sleep(3)
        for i in (1, 2, 3):
            seen = self.scrape(i)
            for reason, value in seen["auth"].items():
                auth_failures[reason] = auth_failures.get(reason, 0.0) + value
            for reason, value in seen["removed"].items():
                removed[i][reason] = removed[i].get(reason, 0.0) + value
        ping_alive = ping.proc.poll() is None
        ping.finish()
        self.assertTrue(ping_alive, f"ping ended early:\n{ping.output[-3000:]}")
        transmitted, received = ping.summary()

        lines = [
            "cluster secret rotation, 3 nodes, real processes (tests/integration/test_secret_rotation_processes.py)",
            "steps: add new secret / sign with it / remove old, each a rolling restart (one node at a time)",
            f"ping node1 -> node2 over the overlay every {INTERVAL * 1000:.0f} ms for the whole rotation:",
            f"  overall: {transmitted} sent, {transmitted - received} lost "
            f"({100.0 * (transmitted - received) / max(transmitted, 1):.2f} %)",
        ]
        untouched_lost = 0
        stalled: list[str] = []
        for step, i, start, end, back in windows:
            sent, lost = ping.lost_in(start, end, transmitted)
            if sent < 0.5 * (end - start) / INTERVAL:
                stalled.append(f"{step}, node {i}")
            touches = i in (1, 2)
            if not touches:
                untouched_lost += lost
            lines.append(
                f"  step {step}, restart node {i}{' (a ping end)' if touches else ''}: "
                f"back in every view after {back:.1f} s; {sent} sent, {lost} lost ({lost * INTERVAL:.2f} s of traffic)"
            )
        end_losses = [ping.lost_in(start, end, transmitted)[1] * INTERVAL for _, i, start, end, _ in windows if i in (1, 2)]
        if end_losses:
            lines.append(
                f"  per restart of a ping end: {sum(end_losses) / len(end_losses):.2f} s of traffic lost on average "
                f"(min {min(end_losses):.2f} s, max {max(end_losses):.2f} s, {len(end_losses)} restarts); "
                f"restarts of the third node: {untouched_lost} packets lost"
            )
        lines.append(f"  peer removals by reason, per node index (over its processes): {removed}")
        lines.append(f"  auth failures by reason (all processes): {auth_failures or 'none'}")
        text = "\n".join(lines) + "\n"
        record_figures("rolling restarts", text)

        # ping kept sending through every window (a stalled probe would report no loss)
        self.assertEqual(stalled, [], text)
        # The old secret opens nothing any more: a client holding only it gets no proof of the TLS
        # session under that secret from the node (W5(a)), so it sends nothing and fails.
        r = cluster.ns(1).run(
            [sys.executable, "-m", "tunmesh", "peers", "--config", str(self.old_only_config())],
            check=False,
            timeout=60,
        )
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertIn("did not prove the TLS session under a cluster secret of this config (unknown_key)", r.stderr)
        # ... while the new one does.
        self.assertEqual(len(cluster.peers_of(1)), 2)
        # No registration lost: the only removals are of a restarting node's old process.
        for reasons in removed.values():
            self.assertLessEqual(set(reasons) - {r for r, v in reasons.items() if v == 0}, ALLOWED_REMOVALS, text)
        # Each of the 9 restarts removed one old process from each of the two other nodes' views.
        total_removed = sum(sum(r.values()) for r in removed.values())
        self.assertEqual(total_removed, 18, text)
        for reason in SECRET_FAILURES:
            self.assertEqual(auth_failures.get(reason, 0.0), 0.0, text)
        # Traffic between two nodes that are not restarting is never interrupted.
        self.assertEqual(untouched_lost, 0, text)
        self.assertGreater(received, 0)

    def test_three_step_rotation_by_sighup_loses_nothing(self) -> None:
        """The same three steps applied with SIGHUP instead of restarts: no process ends, so no peer is
        removed and no packet may be lost; the old secret's sessions are re-salted at step 3."""
        cluster = self.cluster
        # SIGHUP re-reads the config and every file it names as process.uid (root is dropped by then).
        for name in ("key.pem", "cluster.secret", "new.secret"):
            os.chown(self.workdir / name, UNPRIVILEGED_UID, -1)
            (self.workdir / name).chmod(0o600)
        ids, ping = self.start_meshed_with_ping()
        time.sleep(3)
        applied: list[str] = []
        for step, auth in STEPS:
            for i in (1, 2, 3):
                log = cluster.nodes[i].log_path
                before = log.read_text(errors="replace").count("accepting cluster secret ids")
                self.write(i, auth)
                os.kill(cluster.nodes[i].pid, signal.SIGHUP)
                deadline = time.monotonic() + 30
                while log.read_text(errors="replace").count("accepting cluster secret ids") <= before:
                    if time.monotonic() > deadline:
                        raise NetnsError(f"node {i} did not apply {step}:\n{cluster.nodes[i].log_tail()}")
                    time.sleep(0.2)
                applied.append(f"{step}: node {i}")
                time.sleep(2)
            self.assertEqual(cluster.wait_full_mesh(timeout=60), ids)
        time.sleep(3)
        resalted = {
            i: "outbound session(s) salted with a cluster secret no longer accepted"
            in cluster.nodes[i].log_path.read_text(errors="replace")
            for i in (1, 2, 3)
        }
        scraped = {i: self.scrape(i) for i in (1, 2, 3)}
        ping.finish()
        transmitted, received = ping.summary()
        text = "\n".join(
            [
                "cluster secret rotation by SIGHUP, 3 nodes, real processes (same test module)",
                f"ping node1 -> node2 every {INTERVAL * 1000:.0f} ms: {transmitted} sent, {transmitted - received} lost",
                f"  steps applied: {len(applied)} reloads; sessions re-salted after step 3: {resalted}",
                f"  peer removals: {({i: v['removed'] for i, v in scraped.items()})}",
                f"  auth failures: {({i: v['auth'] for i, v in scraped.items()})}",
            ]
        ) + "\n"
        record_figures("SIGHUP", text)
        self.assertEqual(cluster.wait_full_mesh(timeout=30), ids, "a node restarted")
        for seen in scraped.values():
            self.assertEqual(sum(seen["removed"].values()), 0.0, text)
            for reason in SECRET_FAILURES:
                self.assertEqual(seen["auth"].get(reason, 0.0), 0.0, text)
        self.assertEqual(resalted, {1: True, 2: True, 3: True}, text)
        for i in (1, 2, 3):
            self.assertEqual(cluster.metric(i, "tunmesh_cluster_secrets", secret_id="new", signing="true"), 1.0)
            self.assertEqual(cluster.metric(i, "tunmesh_cluster_secrets", secret_id="default"), 0.0)
        self.assertGreater(transmitted, 0.5 * len(applied) * 2 / INTERVAL)
        self.assertEqual(transmitted - received, 0, text)
        r = cluster.ns(1).run(
            [sys.executable, "-m", "tunmesh", "peers", "--config", str(self.old_only_config())],
            check=False,
            timeout=60,
        )
        self.assertIn("did not prove the TLS session under a cluster secret of this config (unknown_key)", r.stderr)

    def old_only_config(self) -> Path:
        path = self.workdir / "node1" / "old-only.yaml"
        path.write_text(config(1, AUTH_SINGLE))
        return path
