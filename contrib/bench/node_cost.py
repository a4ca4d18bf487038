#!/usr/bin/env python3
"""What one node costs to start and to keep at rest: CPU-seconds to ready, memory once meshed (as root).

    python contrib/bench/node_cost.py [--nodes 2] [--settle 10] [--env MALLOC_ARENA_MAX=2] [--json FILE]

Starts N nodes (one namespace each, the test cluster layout of ``tests.integration.cluster``, fast test
timings), one after the other so start-ups do not compete for the cores, and reads for each node:

* ``cpu_serving``: utime+stime (``/proc/<pid>/stat``) when ``/health`` first answers 200: interpreter
  start, imports, config, TLS contexts, TUN device, the preload, the privilege drop and the first bind;
* once every node lists every other and ``--settle`` seconds passed: ``VmRSS``, ``RssAnon`` (private) and
  ``RssFile`` (library pages, shared by the nodes of a host) from ``/proc/<pid>/status``, in MB (10^6 B).

Prints the median over nodes and each node's figures. The import cost alone, without namespaces:
``python -X importtime -c "import tunmesh.tap, tunmesh.service"``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.integration.cluster import Cluster, node_config, rss_mb  # noqa: E402
from tests.netns import NetnsError, Underlay, cleanup_stale, netns_unavailable_reason, process_cpu_seconds  # noqa: E402


def config(i: int) -> str:
    return node_config(i, bootstrap=["https://198.18.0.1:4567/"])


def wait_serving(node: Any, timeout: float) -> None:
    """Until ``/health`` answers 200 (the reactor runs and the port is bound)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.proc.poll() is not None:
            raise NetnsError(f"node exited ({node.proc.returncode}):\n{node.log_tail()}")
        if node.get("/health", timeout=2)[0] == 200:
            return
        time.sleep(0.1)
    raise NetnsError(f"node not serving after {timeout}s:\n{node.log_tail()}")


def measure(n: int, settle: float, env: dict[str, str], workdir: Path) -> dict[str, Any]:
    with Underlay(nodes=n, tag="c") as u:
        u.wait_reachable(timeout=60)
        cluster = Cluster(u, workdir, config)
        try:
            serving: dict[int, float] = {}
            for i in range(1, n + 1):
                node = cluster.start(i, env=env)
                wait_serving(node, timeout=120)
                serving[i] = process_cpu_seconds(node.pid)
            cluster.wait_full_mesh(timeout=120)
            time.sleep(settle)
            per = {
                i: {
                    "cpu_serving": serving[i],
                    "rss": rss_mb(node.pid),
                    "anon": rss_mb(node.pid, "RssAnon"),
                    "file": rss_mb(node.pid, "RssFile"),
                }
                for i, node in sorted(cluster.nodes.items())
            }
        finally:
            cluster.stop_all()
    keys = ("cpu_serving", "rss", "anon", "file")
    return {"nodes": n, "median": {k: statistics.median(p[k] for p in per.values()) for k in keys}, "per_node": per}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=2, help="nodes in the mesh (default 2)")
    ap.add_argument("--settle", type=float, default=10.0, help="seconds at rest after the full mesh (10)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="set in the nodes' environment")
    ap.add_argument("--workdir", type=Path, help="configs and node logs (default: a temporary directory)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    args = ap.parse_args(argv)
    reason = netns_unavailable_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    env = dict(item.split("=", 1) for item in args.env)
    cleanup_stale()
    if args.workdir:
        result = measure(args.nodes, args.settle, env, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="tunmesh-cost-") as tmp:
            result = measure(args.nodes, args.settle, env, Path(tmp))
    m = result["median"]
    print(f"{args.nodes} nodes{' ' + ' '.join(args.env) if args.env else ''}: CPU to serving {m['cpu_serving']:.2f} s; "
          f"at rest VmRSS {m['rss']:.1f} MB, RssAnon {m['anon']:.1f} MB, RssFile {m['file']:.1f} MB (medians)")
    for i, p in result["per_node"].items():
        print(f"  node {i}: {p['cpu_serving']:.2f} s, {p['rss']:.1f} / {p['anon']:.1f} / {p['file']:.1f} MB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
