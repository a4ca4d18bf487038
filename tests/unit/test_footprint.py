"""What a running node keeps imported: nothing that only tests, the CLI or other tools need (issue 9).

A module imported once stays for the life of the process, in every node: ``twisted.internet.testing`` cost
each node ~2 MB (it imports trial, ``unittest`` and ``doctest``), pyroute2 ~9 MB (its package imports all of
its modules; the TUN is configured by a short-lived helper process instead: docs/performance.md). The check runs
in a fresh interpreter, since this one runs trial.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

REPO = Path(__file__).resolve().parents[2]

#: Modules (and their submodules) a node at rest must not hold, with why they would be there.
NOT_AT_REST = (
    "twisted.trial",  # test framework (twisted.internet.testing imports it)
    "twisted.internet.testing",
    "twisted.test",
    "unittest",
    "doctest",
    "hypothesis",
    "treq.testing",
    "tunmesh.testing",
    "argparse",  # the CLI's; the node is started by twistd (twisted.python.usage)
    "tunmesh.cli",
    "tunmesh.clidocs",
    "tunmesh.certcli",
    "tunmesh.ctlquery",
    "tunmesh.config.docs",
    "tunmesh.admin.client",
    "tunmesh.admin.render",
    "tunmesh.addrhelper",  # the helper process's side; the node holds tunmesh.tun.addrhelper
    "tunmesh.netconf",  # the TUN configuration helper process's side
    "pyroute2",  # only the helper processes make netlink requests
)

#: Runs in a fresh interpreter: the node's imports and its start-up paths before the service is built (what
#: ``twistd tunmesh`` imports, the preload and the private-name check), then the service built with test fakes
#: (only what building imports counts there), then the real TUN configuration path (its helper process runs,
#: and fails without root or a device: only what the node's side imports counts).
SCRIPT = r"""
import json, sys
from pathlib import Path

import tunmesh.tap, tunmesh.service
from tunmesh import preload, twisted_internals
import twisted.internet.reactor

preload.preload()
twisted_internals.missing()
startup = set(sys.modules)

import yaml
from twisted.internet.testing import MemoryReactorClock
from tests.unit.support import minimal_data
from tunmesh.config import load_config
from tunmesh.testing import FakeTun
from tunmesh.tls.certs import write_self_signed

base = Path(sys.argv[1])
(base / "ssl").mkdir(parents=True)
write_self_signed(base / "ssl" / "cert.pem", base / "ssl" / "key.pem")
(base / "config.yaml").write_text(yaml.safe_dump(minimal_data()))
fakes = set(sys.modules)
tunmesh.service.makeService(load_config(base / "config.yaml", env={}), MemoryReactorClock(), lambda n: FakeTun(),
                            base / "config.yaml")
built = set(sys.modules)

import os
from ipaddress import IPv4Interface
from tunmesh.tun.device import TunDevice, TunDeviceError
r, w = os.pipe()
try:
    TunDevice(open(r, "rb", buffering=0), "tmt-absent9", 1400, False).configure(IPv4Interface("100.64.0.7/10"))
except TunDeviceError as e:
    assert "vanished" in e.message, e
print(json.dumps({"startup": sorted(startup), "build": sorted(built - fakes), "configure": sorted(set(sys.modules) - built)}))
"""


def _unwanted(modules: list[str]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in NOT_AT_REST))


class NodeImportsTests(SynchronousTestCase):
    def run_script(self) -> dict[str, list[str]]:
        base = Path(self.mktemp()).resolve()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        r = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(base)], capture_output=True, text=True, timeout=120, env=env,
            cwd=str(REPO),
        )
        self.assertEqual(r.returncode, 0, r.stderr)
        return dict(json.loads(r.stdout.strip().splitlines()[-1]))

    def test_start_up_and_building_the_node_import_nothing_only_tests_or_tools_need(self) -> None:
        seen = self.run_script()
        self.assertEqual(_unwanted(seen["startup"]), [])
        self.assertEqual(_unwanted(seen["build"]), [])
        self.assertEqual(_unwanted(seen["configure"]), [])
        # the check sees what it should: the node's own modules are there
        self.assertIn("tunmesh.tun.device", seen["startup"])
        self.assertIn("twisted.internet.reactor", seen["startup"])

    def test_the_filter_matches_packages_and_their_submodules_only(self) -> None:
        self.assertEqual(
            _unwanted(["twisted.trial", "twisted.trial.itrial", "twisted.trialx", "twisted.internet.tcp", "argparser"]),
            ["twisted.trial", "twisted.trial.itrial"],
        )
