#!/usr/bin/env python3
"""Join-time benchmark: how fast nodes started together form the mesh (real processes, as root).

    python contrib/bench/join_bench.py [--nodes 20] [--spread 2] [--seed 1] [--workdir DIR]

Two measurements, each in its own namespaces (``tests.netns.Underlay``, one namespace per node) with the
cluster layout of the namespace tests (``tests.integration.cluster``: one shared self-signed certificate
and secret; node i at 198.18.0.i owns 100.64.0.i), but with the **default** groom and bootstrap timings
(``groom_interval`` 5 s, ``bootstrap_retry_interval`` 15 s), as a deployment would run:

* ``2 nodes``: node 2 (which bootstraps from node 1) starts first, node 1 the moment node 2 serves: node 2's
  first bootstrap is always refused, as when the target of two pods started together is the slower one.
  Prints the time from the later start (and from when both serve) until node 2 gets an answer to
  ``ping 100.64.0.1`` through the overlay;
* ``N nodes``: every node's only bootstrap URL is node 1's (one URL for all, as pods behind a headless
  Service; node 1 skips its own URL), started in a shuffled order evenly spread over ``--spread`` seconds;
  prints the time from the first start until each node has an outbound packet link to every other node
  (max and median).

Each line also says when the nodes began to serve their port (interpreter start-up, which joining cannot
speed up) and the load average: on a machine whose cores are busy with other work, start-up dominates.

Not a test: it prints figures (docs/performance.md, "Join time"). Exit 1 when a measurement failed.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.integration.cluster import (  # noqa: E402
    Cluster,
    shipped_config,
    start_together,
    wait_first_ping,
    wait_links_full_mesh,
    wait_listening,
)
from tests.netns import NetnsError, Underlay, bench_workdir  # noqa: E402


def two_nodes(workdir: Path, timeout: float) -> tuple[float, float]:
    """Node 2 starts, and node 1 the moment node 2 serves (so node 2's first bootstrap was refused, as
    when the target of two pods started together is the slower one). Seconds from node 1's start until
    both serve, and until node 2 pings node 1 through the overlay."""
    with Underlay(nodes=2, tag="j") as u:
        u.wait_reachable()
        cluster = Cluster(u, workdir / "two", shipped_config)
        try:
            cluster.start(2)
            wait_listening(cluster, timeout)
            later = time.monotonic()
            cluster.start(1)
            serving = wait_listening(cluster, timeout)
            answered = wait_first_ping(cluster, 2, 1, timeout)
            return max(serving.values()) - later, answered - later
        finally:
            cluster.stop_all()


def many_nodes(
    workdir: Path, nodes: int, spread: float, seed: int, timeout: float
) -> tuple[list[float], float, float]:
    """Per-node seconds from the first start until all its outbound links are up; the start window;
    and when the last node began to serve (from the first start)."""
    with Underlay(nodes=nodes, tag="j") as u:
        u.wait_reachable(timeout=30)
        cluster = Cluster(u, workdir / "many", shipped_config)
        order = list(range(1, nodes + 1))
        random.Random(seed).shuffle(order)
        try:
            started = start_together(cluster, order, spread)
            serving = wait_listening(cluster, timeout)
            done = wait_links_full_mesh(cluster, timeout)
            times = sorted(t - started[0] for t in done.values())
            return times, started[-1] - started[0], max(serving.values()) - started[0]
        finally:
            cluster.stop_all()


def load() -> str:
    """The 1-minute load average: start-up times mean little on a machine busy with other work."""
    return f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=20, help="nodes of the second measurement (default 20)")
    ap.add_argument("--spread", type=float, default=2.0, help="seconds over which they are started (default 2)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the start order (default 1)")
    ap.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds (default 120)")
    ap.add_argument("--skip-two", action="store_true", help="only the N-node measurement")
    ap.add_argument("--workdir", type=Path, help="configs and node logs (default: a temporary directory)")
    args = ap.parse_args(argv)

    with bench_workdir("join_bench", args.workdir, "join") as workdir:
        failed = False
        try:
            if not args.skip_two:
                try:
                    serving, first_ping = two_nodes(workdir, args.timeout)
                    print(f"join 2 nodes, the bootstrap target started last: first ping through the overlay "
                          f"{first_ping:.2f} s after the later start, {first_ping - serving:.2f} s after both served "
                          f"(serving after {serving:.2f} s; load {load()})", flush=True)
                except NetnsError as e:
                    failed = True
                    print(f"join 2 nodes: FAILED: {e}", flush=True)
            try:
                times, window, serving = many_nodes(workdir, args.nodes, args.spread, args.seed, args.timeout)
                print(f"join {args.nodes} nodes started within {window:.1f} s: full mesh (every node linked to every "
                      f"other) max {times[-1]:.2f} s, median {statistics.median(times):.2f} s after the first start "
                      f"(all serving after {serving:.2f} s; load {load()})", flush=True)
            except NetnsError as e:
                failed = True
                print(f"join {args.nodes} nodes: FAILED: {str(e).splitlines()[0]}", flush=True)
        except KeyboardInterrupt:
            print("interrupted; namespaces removed", file=sys.stderr)
            return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
