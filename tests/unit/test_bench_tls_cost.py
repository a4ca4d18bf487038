"""``contrib/bench/tls_cost.py`` (the CPU a TLS handshake costs, docs/performance.md "Scale"): it runs real
connections with the node's own TLS contexts on the test reactor and reports both kinds it measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from tests.netns import bench_script


class TLSCostTests(TestCase):
    def test_it_measures_tcp_and_tls_connections_that_completed(self) -> None:
        tls_cost = bench_script("tls_cost")
        workdir = Path(self.mktemp())
        workdir.mkdir()
        d = tls_cost.measure(4, 2, workdir)

        def check(result: dict[str, Any]) -> None:
            self.assertEqual((result["connections"], result["rounds"]), (4, 2))
            for kind in ("tcp", "tls"):
                self.assertGreater(result[kind]["cpu_ms"], 0)
                self.assertGreater(result[kind]["wall_ms"], 0)
            self.assertEqual(result["tls_handshake_cpu_ms"], result["tls"]["cpu_ms"] - result["tcp"]["cpu_ms"])

        return d.addCallback(check)

    def test_bad_arguments_are_refused(self) -> None:
        tls_cost = bench_script("tls_cost")
        with self.assertRaises(SystemExit) as cm:
            tls_cost.main(["--connections", "0"])
        self.assertEqual(cm.exception.code, 2)
