"""After the privilege drop, a real node works or exits with one line naming the cause.

The setup that used to give a node answering 500 to everything (``unexpected LookupError in api``): an
interpreter the dropped uid cannot read, as a pyenv Python under a ``0700`` home. The tests build such an
interpreter (:mod:`tests.integration.sealed_python`) and run real ``twistd tunmesh`` nodes on it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.integration.cluster import UNPRIVILEGED_UID, Cluster, node_config, overlay_v4
from tests.integration.sealed_python import SealedCluster, late_imports, sealed_python
from tests.netns import NetnsError, NodeProcess, Underlay, requires_root_netns

BOOT = ["https://198.18.0.1:4567/"]
SESSION_MAX_AGE = 4
STARTUP_ERROR = "tunmesh: startup error:"


def _as_uid(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def wait_ready_or_exit(node: NodeProcess, timeout: float) -> str:
    """``"ready"`` once ``/ready`` answers 200, ``"exited"`` once the process ends; raises on timeout with
    the last status seen and the log."""
    deadline = time.monotonic() + timeout
    code = 0
    while time.monotonic() < deadline:
        if node.proc.poll() is not None:
            return "exited"
        code, _ = node.get("/ready", timeout=2)
        if code == 200:
            return "ready"
        time.sleep(0.3)
    raise NetnsError(
        f"node in {node.ns.name} neither ready nor exited after {timeout}s (/ready last answered {code}):\n"
        f"{node.log_tail(30)}"
    )


class OneLineExit:
    """Assertions on a node that refused to run after the drop."""

    @staticmethod
    def check(test: TestCase, node: NodeProcess) -> str:
        """The process ended with status != 0 and exactly one ``tunmesh: startup error:`` line on its
        console, no traceback; returns that line."""
        test.assertNotEqual(node.proc.returncode, 0, node.log_tail())
        console = node.log_path.with_suffix(".stdout").read_text(errors="replace")
        lines = [line for line in console.splitlines() if line.startswith(STARTUP_ERROR)]
        test.assertEqual(len(lines), 1, console)
        test.assertNotIn("Traceback", console)
        test.assertIn(lines[0], node.log_path.read_text(errors="replace"))
        return lines[0]


@requires_root_netns
class SealedInterpreterTests(TestCase):
    """Two nodes on an interpreter tree uid 65534 cannot read."""

    timeout = 300

    def test_nodes_on_an_interpreter_the_dropped_uid_cannot_read_work_or_exit_with_one_line(self) -> None:
        with sealed_python() as tree, Underlay(nodes=2, tag="pd") as underlay:
            # The premise: the dropped uid really cannot read the interpreter's files.
            denied = subprocess.run(
                ["/bin/cat", str(tree.stdlib / "encodings" / "idna.py")], capture_output=True,
                preexec_fn=lambda: _as_uid(UNPRIVILEGED_UID), timeout=30,
            )
            self.assertNotEqual(denied.returncode, 0, "uid 65534 can read the sealed stdlib: the test proves nothing")

            workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"tmt-privdrop-{os.getpid()}"
            audit = workdir / "late-imports"
            # Sessions rotate every few seconds: the rotation path runs as the dropped uid too.
            cluster = SealedCluster(tree, underlay, workdir,
                                    lambda i: node_config(i, bootstrap=BOOT, session_max_age=SESSION_MAX_AGE),
                                    env={"TMT_LATE_IMPORTS": str(audit)})
            try:
                cluster.start(1)
                cluster.start(2)
                try:
                    outcomes = {i: wait_ready_or_exit(cluster.nodes[i], timeout=60) for i in (1, 2)}
                except NetnsError as e:
                    raise AssertionError(f"{e}\nlate imports: {late_imports(audit)}\n{cluster.logs()}") from e
                if "exited" in outcomes.values():
                    for i, outcome in outcomes.items():
                        if outcome == "exited":
                            line = OneLineExit.check(self, cluster.nodes[i])
                            self.assertIn(f"uid {UNPRIVILEGED_UID}", line)
                    return
                try:
                    self.check_serves_requests(cluster)
                    self.check_mesh_and_overlay(cluster, underlay)
                    self.check_refusals(cluster.nodes[1])
                    self.check_sessions_rotate(cluster)
                    self.check_sighup_reload(cluster)
                except Exception as e:  # say whether a late import was behind it
                    raise AssertionError(f"{e}\nlate imports: {late_imports(audit)}\n{cluster.logs()}") from e
                logs = cluster.logs()
                for word in ("unexpected", "LookupError", "ImportError", "ModuleNotFoundError", STARTUP_ERROR):
                    self.assertNotIn(word, logs)
                self.assertIn(f"self-check as uid {UNPRIVILEGED_UID} passed", logs)
                # ... and the log names what the uid cannot read, for the day something new is imported late.
                self.assertIn(f"uid {UNPRIVILEGED_UID} cannot read {tree.root} (on the way to", logs)
                # Node 2 leaves (SIGTERM: the leave announcement); nothing was imported late, up to here.
                cluster.stop(2)
                self.assertEqual(late_imports(audit), {}, "modules imported after the privilege drop")
            finally:
                cluster.stop_all()
                shutil.rmtree(workdir, ignore_errors=True)

    def test_an_interpreter_missing_a_needed_codec_refuses_before_the_drop_with_one_line(self) -> None:
        with sealed_python() as tree, Underlay(nodes=1, tag="pm") as underlay:
            for cached in (tree.stdlib / "encodings").glob("**/utf_16_be*"):
                cached.unlink()
            workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"tmt-privmiss-{os.getpid()}"
            cluster = SealedCluster(tree, underlay, workdir, lambda i: node_config(i, bootstrap=[]))
            try:
                node = cluster.start(1)
                self.assertEqual(wait_ready_or_exit(node, timeout=60), "exited")
                line = OneLineExit.check(self, node)
                self.assertIn("codec 'utf-16-be' unavailable before the privilege drop", line)
                self.assertNotIn("dropped root", node.log_path.read_text())
            finally:
                cluster.stop_all()
                shutil.rmtree(workdir, ignore_errors=True)

    def check_serves_requests(self, cluster: Cluster) -> None:
        for i, node in cluster.nodes.items():
            for path, want in (("/health", 200), ("/ready", 200), ("/metrics", 200),
                               ("/tunmesh/control/v0/node_info", 200), ("/nope", 404)):
                self.assertEqual(node.get(path)[0], want, (i, path, node.log_tail()))
            # A request with a JSON body and a bad token: Content-Type parsing, token parsing, the 401.
            r = node.ns.run(
                ["curl", "-k", "-s", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                 "-H", "Content-Type: application/json", "-H", "Authorization: Bearer a.b.c", "--data", "{}",
                 f"{node.base_url}/tunmesh/control/v0/registrations/register"],
                check=False, timeout=30,
            )
            self.assertEqual(r.stdout, "401", (i, node.log_tail()))

    def check_refusals(self, node: NodeProcess) -> None:
        """The constant-body answers: 405, 413 before the body, 429 over the per-source rate limit."""
        self.assertEqual(self.curl(node, "-X", "DELETE", node.base_url + "/health"), "405")
        big = "x" * 8192
        self.assertEqual(self.curl(node, "-H", "Content-Type: application/json", "--data", big,
                                   node.base_url + "/anything"), "413")
        # One curl, one keep-alive connection, 12 requests: faster than the 20/s refill after a burst of 5.
        url = node.base_url + "/tunmesh/control/v0/node_info"
        r = node.ns.run(["curl", "-k", "-s", "-m", "10", "-w", "%{http_code} ",
                         *[a for _ in range(12) for a in ("-o", "/dev/null", url)]], check=False, timeout=30)
        self.assertIn("429", r.stdout.split())

    def check_sessions_rotate(self, cluster: Cluster) -> None:
        def installed() -> int:
            # Rotations log at debug: count the completed setups in the metrics instead.
            return int(sum(cluster.metric(i, "tunmesh_mesh_session_setups_total", result="ok")
                           for i in cluster.nodes))

        before = installed()
        deadline = time.monotonic() + 4 * SESSION_MAX_AGE
        while installed() < before + 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        self.assertGreaterEqual(installed(), before + 2, "no session rotation")
        cluster.wait_full_mesh(timeout=30)

    def check_sighup_reload(self, cluster: Cluster) -> None:
        """SIGHUP re-reads the config as the dropped uid (a new bootstrap URL) and applies it; the node keeps
        serving. The loader checks the files the config names, so the test key is opened to that uid."""
        node = cluster.nodes[1]
        (cluster.workdir / "key.pem").chmod(0o644)
        config = node.config
        config.write_text(config.read_text().replace(
            "          - https://198.18.0.1:4567/\n",
            "          - https://198.18.0.1:4567/\n          - https://198.18.0.2:4567/\n"))
        node.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        applied = "reload: tun_mesh/clustering/bootstrap_groups: now test: https://198.18.0.1:4567/, https://198.18.0.2:4567/"
        while applied not in node.log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.3)
        self.assertIn(applied, node.log_path.read_text(), node.log_tail())
        self.assertIsNone(node.proc.poll())
        self.assertEqual(node.get("/ready")[0], 200)

    @staticmethod
    def curl(node: NodeProcess, *args: str) -> str:
        r = node.ns.run(["curl", "-k", "-s", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", *args],
                        check=False, timeout=30)
        return r.stdout

    def check_mesh_and_overlay(self, cluster: Cluster, underlay: Underlay) -> None:
        """Registration, gossip, the session exchange and the packet link all ran as uid 65534: a TCP
        transfer through the overlay arrives intact."""
        cluster.wait_full_mesh(timeout=60)
        payload = os.urandom(1 << 20)
        server = underlay.nodes[1].popen(
            [sys.executable, "-c",
             "import hashlib, socket, sys\n"
             f"s = socket.create_server(('{overlay_v4(2)}', 7070)); print('up', flush=True)\n"
             "c, _ = s.accept(); h = hashlib.sha256()\n"
             "while chunk := c.recv(65536): h.update(chunk)\n"
             "print(h.hexdigest(), flush=True)\n"],
            stdout=subprocess.PIPE, text=True,
        )
        assert server.stdout is not None
        self.assertEqual(server.stdout.readline().strip(), "up")
        deadline = time.monotonic() + 30
        while True:
            sent = underlay.nodes[0].run(
                [sys.executable, "-c",
                 "import socket, sys\n"
                 f"c = socket.create_connection(('{overlay_v4(2)}', 7070), timeout=10)\n"
                 "c.sendall(sys.stdin.buffer.read()); c.close()\n"],
                check=False, timeout=60, input=payload.hex(),
            )
            if sent.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.assertEqual(sent.returncode, 0, sent.stderr + cluster.logs())
        self.assertEqual(server.stdout.readline().strip(), hashlib.sha256(payload.hex().encode()).hexdigest())
        server.wait(timeout=10)
