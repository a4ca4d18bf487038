"""The peer VPNs of ``contrib/bench/bench.py --peers`` come up with their generated configs (real binaries).

Each installed peer (``contrib/bench/peers.py``) is started in two namespaces and must answer a ping through
its overlay, then stop without leaving its TUN device behind. A peer that is not installed is skipped with
the packages to install: the benchmark reports it the same way.
"""

from __future__ import annotations

import tempfile
import time
import unittest
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from tests.netns import Underlay, bench_script, requires_root_netns

peers = bench_script("peers")


@requires_root_netns
class PeerVPNProcessTests(TestCase):
    timeout = 90

    def check_peer(self, name: str) -> None:
        peer: Any = peers.PEERS[name]
        missing = peer.missing()
        if missing:
            raise unittest.SkipTest(missing)
        with tempfile.TemporaryDirectory(prefix="tmt-peer-") as tmp, Underlay(nodes=2, tag="p") as u:
            u.wait_reachable()
            a, b = u.nodes
            workdir = Path(tmp)
            procs = peer.start(u.nodes, workdir)
            try:
                deadline = time.monotonic() + 30
                while a.run(["ping", "-n", "-c", "1", "-W", "0.2", peers.overlay(2)], check=False).returncode:
                    for proc in procs:
                        self.assertIsNone(proc.poll(), peer.log_tail(workdir))
                    self.assertLess(time.monotonic(), deadline, peer.log_tail(workdir))
                    time.sleep(0.1)
                # and back
                b.run(["ping", "-n", "-c", "1", "-W", "2", peers.overlay(1)])
            finally:
                peer.stop(u.nodes, procs)
            for proc in procs:
                self.assertIsNotNone(proc.poll())
            for i, ns in enumerate(u.nodes, 1):
                r = ns.run(["ip", "link", "show", peer.device(i)], check=False)
                self.assertNotEqual(r.returncode, 0, f"{peer.device(i)} left in {ns.name}")

    def test_nebula_answers_through_its_overlay_and_stops_cleanly(self) -> None:
        self.check_peer("nebula")

    def test_wireguard_go_answers_through_its_overlay_and_stops_cleanly(self) -> None:
        self.check_peer("wireguard-go")

    def test_openvpn_answers_through_its_overlay_and_stops_cleanly(self) -> None:
        self.check_peer("openvpn")
