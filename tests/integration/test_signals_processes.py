"""Signals with real processes: node 1 runs under ``twistd tunmesh``, node 2 under ``tunmesh run``.

SIGHUP reloads the running node (a rotated certificate is served to new connections, the log level
changes) while it stays up and its packet links stay connected; SIGTERM then stops both without a
traceback.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.integration.cluster import UNPRIVILEGED_UID, Cluster, node_config, overlay_v4, wait_until
from tests.netns import NetnsError, Underlay, requires_root_netns
from tunmesh.tls.certs import certificate_sha256, write_self_signed

BOOT = ["https://198.18.0.1:4567/"]
LINK_UP = "packet link to "


def config(i: int) -> str:
    """The cluster's config, but node i serves its own copy of the certificate (node<i>/tls/, which the
    test rotates), and every node trusts ../trust.pem (the old and the new certificate)."""
    text = node_config(i, bootstrap=BOOT if i != 1 else [])
    text = text.replace("cert_file_path: ../cert.pem", "cert_file_path: tls/cert.pem")
    text = text.replace("key_file_path: ../key.pem", "key_file_path: tls/key.pem\n      ca_file_path: ../trust.pem")
    assert "ca_file_path" in text
    return text


def wait_for(predicate: Callable[[], object], timeout: float, what: str, logs: Callable[[], str]) -> None:
    wait_until(predicate, timeout, what, logs, poll=0.2)


def readable_by_node(*paths: Path) -> None:
    for path in paths:
        os.chown(path, UNPRIVILEGED_UID, -1)
        path.chmod(0o600)


@requires_root_netns
class SignalTests(TestCase):
    timeout = 240

    def setUp(self) -> None:
        self.underlay = Underlay(nodes=2, tag="h").__enter__()
        self.addCleanup(self.underlay.__exit__, None, None, None)
        self.workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"tmt-sighup-{os.getpid()}"
        self.cluster = Cluster(self.underlay, self.workdir, config)
        self.addCleanup(self.cluster.stop_all)
        new = self.workdir / "new"
        new.mkdir(exist_ok=True)
        # own subject names, so that one trust file can hold both self-signed certificates
        write_self_signed(new / "cert.pem", new / "key.pem", hostnames=("tunmesh-rotated.local",))
        self.new_cert, self.new_key = new / "cert.pem", new / "key.pem"
        (self.workdir / "trust.pem").write_bytes(
            (self.workdir / "cert.pem").read_bytes() + self.new_cert.read_bytes()
        )
        for i in (1, 2):
            tls = self.workdir / f"node{i}" / "tls"
            tls.mkdir(exist_ok=True)
            (tls / "cert.pem").write_bytes((self.workdir / "cert.pem").read_bytes())
            (tls / "key.pem").write_bytes((self.workdir / "key.pem").read_bytes())
            # SIGHUP re-reads the files as process.uid (root is dropped by then)
            readable_by_node(tls / "cert.pem", tls / "key.pem")

    def log(self, i: int) -> str:
        return self.cluster.nodes[i].log_path.read_text(errors="replace")

    def logged(self, i: int, line: str) -> bool:
        """Whether node i logged ``line``; fails at once if the node is gone (as SIGHUP used to do)."""
        code = self.cluster.nodes[i].proc.poll()
        if code is not None:
            self.fail(f"node {i} exited ({code}) after SIGHUP\n{self.cluster.nodes[i].log_tail()}")
        return line in self.log(i)

    def served_certificate(self, from_node: int, to_node: int) -> str:
        """SHA-256 (hex) of the certificate a new TLS connection to ``to_node`` is shown."""
        r = self.cluster.ns(from_node).run(
            ["sh", "-c", f"openssl s_client -connect 198.18.0.{to_node}:4567 </dev/null 2>/dev/null"
             " | openssl x509 -noout -fingerprint -sha256"],
            check=False, timeout=30,
        )
        m = re.search(r"=([0-9A-F:]+)", r.stdout)
        if m is None:
            raise NetnsError(f"no certificate from node {to_node}: {r.stdout!r} {r.stderr!r}")
        return m.group(1).replace(":", "").lower()

    def ping(self, from_node: int, to_node: int) -> None:
        r = self.cluster.ns(from_node).run(
            ["ping", "-c", "3", "-i", "0.2", "-W", "2", overlay_v4(to_node)], check=False, timeout=30
        )
        self.assertEqual(r.returncode, 0, f"ping {from_node}->{to_node}: {r.stdout}{r.stderr}\n{self.cluster.logs()}")

    def test_sighup_reloads_without_dropping_links_and_sigterm_leaves_cleanly(self) -> None:
        self.cluster.start(1)  # twistd tunmesh
        self.cluster.start(2, via="run")  # tunmesh run
        for node in self.cluster.nodes.values():
            node.wait_ready(timeout=60)
        ids = self.cluster.wait_full_mesh(timeout=60)
        self.ping(2, 1)
        wait_for(lambda: LINK_UP in self.log(1) and LINK_UP in self.log(2), 30, "links up", self.cluster.logs)
        old_served = self.served_certificate(1, 2)
        self.assertEqual(old_served, certificate_sha256(self.workdir / "cert.pem").hex())
        links_before = {i: self.log(i).count(LINK_UP) for i in (1, 2)}

        # Node 2: the certificate is rotated in place and the log level raised; node 1: nothing changed.
        tls = self.workdir / "node2" / "tls"
        (tls / "cert.pem").write_bytes(self.new_cert.read_bytes())
        (tls / "key.pem").write_bytes(self.new_key.read_bytes())
        cfg = self.workdir / "node2" / "config.yaml"
        cfg.write_text(cfg.read_text().replace("level: info", "level: debug"))
        for i in (1, 2):
            os.kill(self.cluster.nodes[i].pid, signal.SIGHUP)
        wait_for(lambda: self.logged(2, "reload: tun_mesh/logging/level: info -> debug"), 20,
                 "node 2 to reload", self.cluster.logs)
        wait_for(lambda: self.logged(1, "reload: nothing to change"), 20, "node 1 to reload", self.cluster.logs)
        self.assertIn("reload: tun_mesh/control_api/ssl/cert_file_path: new connections get the certificate",
                      self.log(2))

        # Still up, still ready, new connections see the new certificate, and the links were kept.
        for i in (1, 2):
            self.assertIsNone(self.cluster.nodes[i].proc.poll(), f"node {i} exited on SIGHUP\n{self.cluster.logs()}")
            self.assertEqual(self.cluster.nodes[i].get("/ready")[0], 200)
        self.assertEqual(self.served_certificate(1, 2), certificate_sha256(self.new_cert).hex())
        self.assertEqual(self.served_certificate(2, 1), old_served)
        self.ping(2, 1)
        self.ping(1, 2)
        self.assertEqual(self.cluster.peers_of(1), {ids[2]})
        self.assertEqual(self.cluster.peers_of(2), {ids[1]})
        time.sleep(2)  # a dropped link would be re-established (and logged) within this
        self.assertEqual({i: self.log(i).count(LINK_UP) for i in (1, 2)}, links_before, self.cluster.logs())

        # SIGTERM: both leave without a traceback.
        logs = {i: n.log_path for i, n in self.cluster.nodes.items()}
        self.cluster.stop(2)
        self.cluster.stop(1)
        for i, path in logs.items():
            text = path.read_text(errors="replace") + path.with_suffix(".stdout").read_text(errors="replace")
            self.assertIn("Main loop terminated", text, f"node {i}")
            for bad in ("Unhandled Error", "Traceback"):
                self.assertNotIn(bad, text, f"node {i} log:\n{text[-3000:]}")
        self.assertIn("left the mesh: 1 of 1 peers acknowledged", logs[2].read_text(errors="replace"))
