"""Real processes: ``twistd tunmesh`` refuses a bad TLS key with ``tunmesh check-config``'s exact line, and no
TUN device ever appears (watched with ``ip monitor`` in a throwaway network namespace)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from twisted.trial.unittest import TestCase

from tests.netns import REPO_ROOT, TWISTD, requires_root_netns
from tests.unit.tls_support import write_key
from tunmesh.tls.certs import write_self_signed

SECRET = "Qx7vR2mN9pL4kT8wZ3yB6cF1hJ5dG0sAeVu"
DEVICE = "tmtpre0"

CONFIG = f"""\
tun_mesh:
  config_version: 1.1
  clustering:
    control_api_advertise_url: https://198.18.0.1:4567
    bootstrap_groups: {{}}
    auth:
      secret: {SECRET}
  control_api:
    ssl:
      cert_file_path: cert.pem
      key_file_path: key.pem
  networking:
    tun_device_id: {DEVICE}
    ipv4:
      network_cidr: 100.64.0.0/24
      node_address_cidr: 100.64.0.1/24
  process:
    uid: 65534
"""

# In a fresh network namespace: start `ip monitor link`, prove it is listening (a persistent TUN link made with
# `ip tuntap` must show up in it), run the node, and report the node's exit status. Whatever links the node
# creates are in the monitor.
_SCRIPT = """
ip -o monitor link > "$1/monitor.txt" 2>&1 &
monitor=$!
for _ in $(seq 100); do
    ip tuntap add dev pfprobe0 mode tun 2>/dev/null || true
    grep -q pfprobe0 "$1/monitor.txt" && break
    ip tuntap del dev pfprobe0 mode tun 2>/dev/null || true
    sleep 0.05
done
shift
"$@" > "$WORKDIR/twistd.out" 2> "$WORKDIR/twistd.err"
status=$?
sleep 0.2
kill $monitor
exit $status
"""


@requires_root_netns
class PreflightProcessTests(TestCase):
    timeout = 120

    def test_mismatched_key_refused_by_check_config_and_twistd_alike_without_a_tun(self) -> None:
        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir(parents=True)
        write_self_signed(workdir / "cert.pem", workdir / "key.pem", hostnames=("tunmesh.local",))
        write_key(workdir / "key.pem", ec.generate_private_key(ec.SECP256R1()))
        config = workdir / "config.yaml"
        config.write_text(CONFIG)
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), WORKDIR=str(workdir))
        env.pop("TUNMESH_CLUSTER_SECRET", None)

        check = subprocess.run(
            [sys.executable, "-m", "tunmesh", "check-config", str(config)],
            capture_output=True, text=True, timeout=60, cwd=str(REPO_ROOT), env=env,
        )
        expected = [
            f"tunmesh: config error: tun_mesh/control_api/ssl/key_file_path: {workdir / 'key.pem'} does not "
            f"match the certificate in {workdir / 'cert.pem'}"
        ]
        self.assertEqual((check.returncode, check.stdout, check.stderr.splitlines()), (1, "", expected))

        twistd = [*TWISTD, "-n", "--pidfile=", "tunmesh", "--config", str(config)]
        run = subprocess.run(
            ["unshare", "--net", "sh", "-c", _SCRIPT, "preflight", str(workdir), *twistd],
            capture_output=True, text=True, timeout=90, cwd=str(REPO_ROOT), env=env,
        )
        monitor = (workdir / "monitor.txt").read_text()
        stderr = (workdir / "twistd.err").read_text()
        self.assertIn("pfprobe0", monitor, "ip monitor was not listening")
        self.assertEqual(run.returncode, 1, (run.stdout, run.stderr, stderr))
        self.assertEqual([line for line in stderr.splitlines() if line.startswith("tunmesh:")], expected, stderr)
        self.assertNotIn("Traceback", stderr)
        self.assertNotIn(DEVICE, monitor, f"the node created {DEVICE} before refusing: {shlex.quote(monitor)}")
