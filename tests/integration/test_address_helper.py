"""The address helper in a ``tmt-`` namespace (root): it runs as the service uid with only CAP_NET_ADMIN,
moves the TUN address inside the mesh network, and refuses anything else."""

from __future__ import annotations

import json
import os
from ipaddress import IPv4Interface, IPv6Interface, ip_interface, ip_network

from twisted.trial.unittest import SynchronousTestCase

from tests.netns import Underlay, requires_root_netns
from tunmesh.addrhelper import CAP_NET_ADMIN
from tunmesh.privileges import parse_proc_status
from tunmesh.tun.addrhelper import AddressChangeError, AddressHelper
from tunmesh.tun.device import TunDevice

UID = 65534
NET4 = ip_network("100.64.0.0/10")
NET6 = ip_network("fd7e:7e57::/64")


@requires_root_netns
class AddressHelperTests(SynchronousTestCase):
    def setUp(self) -> None:
        os.environ["TUNMESH_CLUSTER_SECRET"] = "not-for-the-helper"
        self.addCleanup(os.environ.pop, "TUNMESH_CLUSTER_SECRET", None)
        self.underlay = Underlay(nodes=1, tag="ah").__enter__()
        self.addCleanup(self.underlay.close)
        self.ns = self.underlay.nodes[0]
        with self.ns.entered():
            self.dev = TunDevice.open("tmah0", False, 1400)
            self.addCleanup(self.dev.close)
            self.dev.configure(IPv4Interface("100.64.0.5/10"), IPv6Interface("fd7e:7e57::5/64"))
            self.helper = AddressHelper.spawn("tmah0", [NET4, NET6], UID, UID)
        self.addCleanup(self.helper.close)

    def addresses(self) -> set[str]:
        out = self.ns.run(["ip", "-j", "addr", "show", "dev", "tmah0"]).stdout
        return {f"{a['local']}/{a['prefixlen']}" for a in json.loads(out)[0]["addr_info"]
                if a.get("scope") == "global"}

    def test_runs_as_the_service_uid_with_only_net_admin(self) -> None:
        with open(f"/proc/{self.helper.pid}/status") as f:
            status = parse_proc_status(f.read())
        self.assertEqual({int(v) for v in status["Uid"].split()}, {UID})
        self.assertEqual(int(status["CapEff"], 16), 1 << CAP_NET_ADMIN)
        self.assertEqual(int(status["CapPrm"], 16), 1 << CAP_NET_ADMIN)
        self.assertEqual(status["NoNewPrivs"], "1")
        self.assertEqual(status["Groups"], "")

    def test_moves_the_address_of_one_family(self) -> None:
        self.helper.set_address(ip_interface("100.64.3.9/10"))
        self.assertEqual(self.addresses(), {"100.64.3.9/10", "fd7e:7e57::5/64"})
        self.helper.set_address(ip_interface("fd7e:7e57::77/64"))
        self.assertEqual(self.addresses(), {"100.64.3.9/10", "fd7e:7e57::77/64"})
        self.helper.set_address(ip_interface("100.64.3.9/10"))  # no change: idempotent
        self.assertEqual(self.addresses(), {"100.64.3.9/10", "fd7e:7e57::77/64"})

    def test_refuses_anything_outside_the_mesh_network(self) -> None:
        for bad in ("10.0.0.1/8", "100.64.0.9/24", "100.64.0.0/10", "100.127.255.255/10"):
            with self.assertRaises(AddressChangeError) as e:
                self.helper.set_address(ip_interface(bad))
            self.assertIn("refused", str(e.exception))
        self.assertEqual(self.addresses(), {"100.64.0.5/10", "fd7e:7e57::5/64"})
        # it still serves after refusals
        self.helper.set_address(ip_interface("100.64.0.6/10"))
        self.assertIn("100.64.0.6/10", self.addresses())

    def test_inherits_no_secret_from_the_environment(self) -> None:
        with open(f"/proc/{self.helper.pid}/environ", "rb") as f:
            names = {item.split(b"=", 1)[0] for item in f.read().split(b"\0") if item}
        self.assertLessEqual(names, {b"PATH", b"PYTHONPATH", b"PYTHONHOME", b"LANG", b"LC_ALL"})

    def test_exits_when_the_node_closes_its_end(self) -> None:
        self.helper.close()
        self.assertEqual(self.helper.process.returncode, 0)
