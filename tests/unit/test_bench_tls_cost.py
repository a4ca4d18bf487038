"""``contrib/bench/tls_cost.py`` (the CPU a TLS handshake costs, docs/performance.md "Scale"): it runs real
connections with the node's own TLS contexts on the test reactor and reports both kinds it measured."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

BENCH = Path(__file__).resolve().parents[2] / "contrib" / "bench" / "tls_cost.py"


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("tls_cost", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["tls_cost"] = module
    spec.loader.exec_module(module)
    return module


class TLSCostTests(TestCase):
    def test_it_measures_tcp_and_tls_connections_that_completed(self) -> None:
        tls_cost = _load()
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
        tls_cost = _load()
        with self.assertRaises(SystemExit) as cm:
            tls_cost.main(["--connections", "0"])
        self.assertEqual(cm.exception.code, 2)
