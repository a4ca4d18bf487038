"""One real node (``twistd tunmesh``) in a namespace: the API port's TLS policy, routes, limits, privilege drop,
and twistd's handling of bad configs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from tests.integration.cluster import UNPRIVILEGED_UID, Cluster, node_config
from tests.netns import REPO_ROOT, TWISTD, Underlay, requires_root_netns

URL = "https://198.18.0.1:4567"


@requires_root_netns
class SingleNodeTests(TestCase):
    """A lone node (no bootstrap URLs: ready as soon as it listens)."""

    timeout = 180

    _shared: dict[str, Any] = {}

    def setUp(self) -> None:
        # One node for the whole class (trial has no setUpClass): starting twistd costs seconds.
        # The harness's exit hook stops it and removes the namespaces when the test run ends.
        if not self._shared:
            underlay = Underlay(nodes=1, tag="s").__enter__()
            workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"tmt-single-{os.getpid()}"
            cluster = Cluster(underlay, workdir, lambda i: node_config(i, bootstrap=[]))
            self._shared.update(underlay=underlay, cluster=cluster)
            cluster.start(1).wait_ready(timeout=60)
        self.cluster = self._shared["cluster"]
        self.node = self.cluster.nodes[1]

    def curl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.node.ns.run(["curl", "-k", "-s", "-m", "10", *args], check=False, timeout=30)

    def test_routes_over_tls12_and_tls13(self) -> None:
        for versions in (["--tlsv1.2", "--tls-max", "1.2"], ["--tlsv1.3"]):
            for path, want in (("/health", "200"), ("/ready", "200"), ("/metrics", "200"), ("/nope", "404")):
                r = self.curl(*versions, "-o", "/dev/null", "-w", "%{http_code}", URL + path)
                self.assertEqual(r.stdout, want, (versions, path, r.stderr))

    def test_metrics_are_prefixed_and_labelled(self) -> None:
        body = self.curl(URL + "/metrics").stdout
        node_id = self.cluster.node_id(1)
        self.assertIn('tunmesh_build_info{env_name="netns_test",version=', body)
        # node_name: clustering.node_name, else $POD_NAME, else the host name.
        self.assertRegex(body, r'tunmesh_node_info\{advertise_url="https://198.18.0.1:4567/",env_name="netns_test",'
                               rf'node_id="{node_id}",node_name="[^"]+"\}} 1.0')
        self.assertIn("process_resident_memory_bytes", body)
        metric_lines = [line for line in body.splitlines() if line and not line.startswith("#")]
        # base_labels on every series; the node's id on its info series only (issue 8).
        self.assertTrue(all('env_name="netns_test"' in line for line in metric_lines))
        self.assertEqual([line for line in metric_lines if "node_id=" in line],
                         [line for line in metric_lines if line.startswith("tunmesh_node_info")])

    def test_tls11_refused(self) -> None:
        r = self.node.ns.run(
            ["openssl", "s_client", "-connect", "198.18.0.1:4567", "-tls1_1"], check=False, timeout=30, input=""
        )
        self.assertNotEqual(r.returncode, 0)
        self.assertNotIn("BEGIN CERTIFICATE", r.stdout)

    def test_non_forward_secret_tls12_suite_refused(self) -> None:
        for cipher in ("AES128-GCM-SHA256", "AES256-SHA"):
            r = self.node.ns.run(
                ["openssl", "s_client", "-connect", "198.18.0.1:4567", "-tls1_2", "-cipher", cipher],
                check=False, timeout=30, input="",
            )
            self.assertNotEqual(r.returncode, 0, cipher)
        ok = self.node.ns.run(
            ["openssl", "s_client", "-connect", "198.18.0.1:4567", "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
            check=False, timeout=30, input="",
        )
        self.assertEqual(ok.returncode, 0, ok.stderr)

    def test_10mb_post_refused_before_reading(self) -> None:
        big = Path(self.mktemp())
        big.write_bytes(b"\0" * (10 * 1024 * 1024))
        for path in ("/tunmesh/control/v0/registrations/register", "/health", "/anything"):
            r = self.curl("-o", "/dev/null", "-w", "%{http_code}", "-H", "Content-Type: application/json",
                          "--data-binary", f"@{big}", URL + path)
            self.assertEqual(r.stdout, "413", (path, r.stderr))
        rss = _rss_kib(self.node.pid)
        self.assertLess(rss, 200 * 1024, "the node buffered the body")

    def test_privileges_dropped(self) -> None:
        status = Path(f"/proc/{self.node.pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        self.assertEqual(set(uid_line.split()[1:]), {str(UNPRIVILEGED_UID)})
        self.assertIn("NoNewPrivs:\t1", status)
        cap_eff = next(line for line in status.splitlines() if line.startswith("CapEff:"))
        self.assertEqual(int(cap_eff.split()[1], 16), 0)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class TwistdBadConfigTests(TestCase):
    """``twistd tunmesh`` refuses bad configs with one line per problem naming the key path, exit != 0, no
    secret and no traceback. These fail before any privileged step, so they need no root."""

    SECRET = "Qx7vR2mN9pL4kT8wZ3yB6cF1hJ5dG0sAeVu"

    def run_twistd(self, text: str, files: bool = True) -> subprocess.CompletedProcess[str]:
        d = Path(self.mktemp()).resolve()
        d.mkdir()
        if files:
            from tunmesh.tls.certs import write_self_signed

            write_self_signed(d / "cert.pem", d / "key.pem")
        (d / "config.yaml").write_text(text)
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        env.pop("TUNMESH_CLUSTER_SECRET", None)
        return subprocess.run(
            [*TWISTD, "-n", "--pidfile=", "tunmesh", "--config",
             str(d / "config.yaml")],
            capture_output=True, text=True, timeout=60, cwd=str(REPO_ROOT), env=env,
        )

    def good(self) -> str:
        return f"""\
tun_mesh:
  config_version: 1.1
  clustering:
    control_api_advertise_url: https://198.18.0.1:4567/
    bootstrap_groups: {{}}
    auth:
      secret: {self.SECRET}
  control_api:
    ssl:
      cert_file_path: cert.pem
      key_file_path: key.pem
  networking:
    ipv4:
      network_cidr: 100.64.0.0/24
      node_address_cidr: 100.64.0.1/24
  process:
    uid: 65534
"""

    def assert_refused(self, r: subprocess.CompletedProcess[str], key_path: str) -> None:
        out = r.stdout + r.stderr
        self.assertNotEqual(r.returncode, 0, out)
        self.assertIn(key_path, out)
        self.assertNotIn("Traceback", out)
        self.assertNotIn(self.SECRET, out)
        problem_lines = [line for line in out.splitlines() if line.startswith("tunmesh: config error:")]
        self.assertGreaterEqual(len(problem_lines), 1, out)

    def test_malformed_yaml(self) -> None:
        r = self.run_twistd(self.good().replace("  networking:", "  networking: [\n"))
        self.assertNotEqual(r.returncode, 0)
        # twistd prints a refused option (ConfigRefused, a UsageError) after its usage text, on stdout
        self.assertIn("config.yaml", r.stdout + r.stderr)
        self.assertNotIn("Traceback", r.stdout + r.stderr)

    def test_unknown_key(self) -> None:
        self.assert_refused(
            self.run_twistd(self.good().replace("  process:\n", "  process:\n    colour: blue\n")),
            "tun_mesh/process",
        )

    def test_wrong_type(self) -> None:
        self.assert_refused(self.run_twistd(self.good().replace("uid: 65534", "uid: lots")), "tun_mesh/process/uid")

    def test_missing_required(self) -> None:
        # (node_address_cidr is optional since dynamic addressing; network_cidr is still required)
        self.assert_refused(
            self.run_twistd(self.good().replace("      network_cidr: 100.64.0.0/24\n", "")),
            "tun_mesh/networking/ipv4",
        )

    def test_missing_cert_file(self) -> None:
        self.assert_refused(self.run_twistd(self.good(), files=False), "tun_mesh/control_api/ssl/cert_file_path")

    def test_weak_secret_not_echoed(self) -> None:
        weak = "a" * 40
        r = self.run_twistd(self.good().replace(self.SECRET, weak))
        self.assert_refused(r, "tun_mesh/clustering/auth/secret")
        self.assertNotIn(weak, r.stdout + r.stderr)
