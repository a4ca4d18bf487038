"""``tunmesh status`` and ``tunmesh reload`` against real nodes (issue 8).

Three nodes form a mesh (named by ``clustering.node_name``, and node 3 by ``$POD_NAME``); a fourth has
another cluster secret. ``tunmesh status`` runs in node 1's namespace: table and ``--json`` show every peer
up with its name, link RTT and traffic; node 3 is killed and shows as not up with the "check the port"
hint; the wrong-secret node's own status shows its bootstrap URL answering 401 with the secret/clock hint,
and node 1 shows the refused tokens. ``tunmesh reload`` applies a changed log level. The table and JSON
with node 3 killed are written to ``$TUNMESH_STATUS_SAMPLE`` when that is set.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from tests.integration.cluster import UNPRIVILEGED_UID, Cluster, node_config
from tests.netns import NetnsError, Underlay, requires_root_netns
from tunmesh.cli import generate_secret

BOOT = ["https://198.18.0.1:4567/"]
NAMES = {1: "alpha", 2: "bravo"}
TIMING = {"local": {"reregistration_interval": 2, "stale_threshold": 20}}


def config(i: int) -> str:
    text = node_config(i, bootstrap=BOOT if i != 1 else [], timing=TIMING)
    if i in NAMES:
        text = text.replace("  clustering:\n", f"  clustering:\n    node_name: {NAMES[i]}\n", 1)
    if i == 4:
        text = text.replace("secret_file: ../cluster.secret", "secret_file: ../other.secret")
    return text


@requires_root_netns
class StatusTests(TestCase):
    timeout = 240

    def setUp(self) -> None:
        self.underlay = Underlay(nodes=4, tag="st").__enter__()
        self.addCleanup(self.underlay.__exit__, None, None, None)
        self.workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"tmt-status-{os.getpid()}"
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.cluster = Cluster(self.underlay, self.workdir, config)
        self.addCleanup(self.cluster.stop_all)
        (self.workdir / "other.secret").write_text(generate_secret() + "\n")

    def status(self, i: int) -> dict[str, Any]:
        r = self.cluster.tunmesh(i, "status", "--json")
        if r.returncode != 0:
            raise NetnsError(f"tunmesh status --json on node {i}: {r.stderr.strip()}\n{self.cluster.logs()}")
        return dict(json.loads(r.stdout))

    def table(self, i: int) -> str:
        r = self.cluster.tunmesh(i, "status")
        self.assertEqual(r.returncode, 0, r.stderr)
        return str(r.stdout)

    def wait_status(self, i: int, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        doc: dict[str, Any] = {}
        while True:
            try:
                doc = self.status(i)
            except NetnsError:
                if time.monotonic() > deadline:
                    raise
            else:
                if predicate(doc):
                    return doc
            if time.monotonic() > deadline:
                raise NetnsError(f"{what}: not seen in {timeout}s\n{json.dumps(doc, indent=1)}\n{self.cluster.logs()}")
            time.sleep(0.5)

    def test_status_of_a_live_mesh_then_a_killed_peer_and_a_wrong_secret(self) -> None:
        c = self.cluster
        for i in (1, 2):
            c.start(i)
        c.start(3, env={"POD_NAME": "charlie-0"})
        for i in (1, 2, 3):
            c.nodes[i].wait_ready(timeout=60)
        ids = c.wait_full_mesh()
        st = c.admin_socket(1).stat()
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_uid), (0o600, UNPRIVILEGED_UID))

        def all_up(doc: dict[str, Any]) -> bool:
            peers = doc["peers"]
            return len(peers) == 2 and all(p["state"] == "up" and p["link"]["out"]["rtt_ms"] is not None
                                           and p["link"]["in"] is not None for p in peers)

        doc = self.wait_status(1, all_up, 30, "both peers up with an RTT")
        node = doc["node"]
        self.assertEqual((node["name"], node["id"], node["ready"]), ("alpha", ids[1], True))
        self.assertEqual(node["addresses"]["ipv4"], "100.64.0.1/24")
        by_name = {p["name"]: p for p in doc["peers"]}
        self.assertEqual(set(by_name), {"bravo", "charlie-0"})
        bravo = by_name["bravo"]
        self.assertEqual((bravo["id"], bravo["url"]), (ids[2], "https://198.18.0.2:4567"))
        self.assertEqual(bravo["addresses"], ["100.64.0.2/32", "fd7e:7e57::2/128"])
        self.assertIsNotNone(bravo["sessions"]["out"]["kid"])
        self.assertIsNotNone(bravo["sessions"]["in"]["kid"])
        self.assertLess(bravo["link"]["out"]["rtt_ms"], 1000)

        # Traffic through the mesh shows in the per-peer counters on both sides.
        before = bravo["link"]["out"]["packets"]
        c.ns(1).run(["ping", "-c", "5", "-i", "0.2", "-W", "2", "100.64.0.2"], timeout=30)
        doc = self.status(1)
        bravo = {p["name"]: p for p in doc["peers"]}["bravo"]
        self.assertGreaterEqual(bravo["link"]["out"]["packets"] - before, 5)
        self.assertGreaterEqual(bravo["link"]["in"]["packets"], 5)
        table = self.table(1)
        self.assertIn("node alpha", table)
        for word in ("bravo", "charlie-0", "RTT", "https://198.18.0.2:4567", "ready: yes"):
            self.assertIn(word, table)

        # A peer killed: not up, with what to check.
        c.kill(3)

        def charlie_down(doc: dict[str, Any]) -> bool:
            peer = {p["id"]: p for p in doc["peers"]}.get(ids[3])
            # The link to it fails at once; its renewal (every 2 s here) fails too: membership's view.
            failure = peer["last_failure"] if peer is not None else None
            return (peer is not None and peer["state"] == "unreachable" and "listens on the port" in peer["hint"]
                    and failure is not None and failure["failures"] > 0 and failure["operation"] == "register")

        killed = self.wait_status(1, charlie_down, 30, "the killed peer shown down with a hint")
        killed_table = self.table(1)
        self.assertIn("charlie-0", killed_table)
        self.assertIn("hint: nothing listens there", killed_table)
        self.assertIn("connection refused", killed_table)
        self.assertIn("register failing: transport", killed_table)

        # The wrong-secret node: node 1 cannot prove the control connection with a secret node 4 accepts
        # (W5: tunmesh-ctl/1), so node 4 refuses it before sending anything, and says what to check.
        c.start(4)

        def refused(doc: dict[str, Any]) -> bool:
            return any(u["reason"] == "channel_binding" and u["failures"] for u in doc["urls"])

        wrong = self.wait_status(4, refused, 60, "the unproven TLS session of the bootstrap URL")
        url = [u for u in wrong["urls"] if u["reason"] == "channel_binding"][0]
        self.assertEqual(url["url"], "https://198.18.0.1:4567")
        self.assertIn("bad_signature", url["detail"])
        self.assertIn("same cluster secret", url["hint"])
        self.assertFalse(wrong["node"]["ready"])
        wrong_table = self.table(4)
        self.assertIn("ready: NO", wrong_table)
        self.assertIn("channel_binding", wrong_table)
        # Nothing reached node 1: no request of node 4's was sent, so none was refused there.
        self.assertNotIn(wrong["node"]["id"], json.dumps(self.status(1)))

        # Later the killed peer is removed as stale, and status says so.
        gone = self.wait_status(1, lambda d: any(r["id"] == ids[3] for r in d["removed"]), 40, "removal")
        self.assertEqual([r["reason"] for r in gone["removed"] if r["id"] == ids[3]], ["stale"])
        log = (self.workdir / "node1" / "node.log").read_text(errors="replace")
        for line in (f"peer bravo ({ids[2]}) registered", f"packet link to charlie-0 ({ids[3]}) up",
                     f"removing stale peer charlie-0 ({ids[3]})"):
            self.assertIn(line, log)

        sample = os.environ.get("TUNMESH_STATUS_SAMPLE")
        if sample:
            Path(sample).write_text(
                "# tunmesh status on node alpha (3-node mesh, node charlie-0 killed)\n\n"
                f"$ tunmesh status\n{killed_table}\n$ tunmesh status --json\n"
                f"{json.dumps(killed, indent=2, sort_keys=True)}\n\n"
                "# the same node later (charlie-0 removed as stale; a node with another secret tried to join)\n\n"
                f"$ tunmesh status\n{self.table(1)}\n"
                "# tunmesh status on the node with the wrong cluster secret\n\n"
                f"$ tunmesh status\n{wrong_table}"
            )

    def test_reload_over_the_admin_socket_applies_a_new_log_level(self) -> None:
        c = self.cluster
        # The node reloads as process.uid: it must read the key and the secret then.
        for name in ("key.pem", "cluster.secret"):
            os.chown(self.workdir / name, UNPRIVILEGED_UID, -1)
        c.start(1)
        c.nodes[1].wait_ready(timeout=60)
        r = c.tunmesh(1, "reload")
        self.assertEqual((r.returncode, r.stdout), (0, "no change\n"), r.stderr)
        path = self.workdir / "node1" / "config.yaml"
        path.write_text(path.read_text().replace("level: info", "level: debug"))
        r = c.tunmesh(1, "reload", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["changed"], ["tun_mesh/logging/level"])
        path.write_text(path.read_text().replace("listen_port: 4567", "listen_port: 4568"))
        r = c.tunmesh(1, "reload")
        self.assertIn("applied at the next start:\n  tun_mesh/control_api/listen_port", r.stdout)
