#!/usr/bin/env python3
"""Scale benchmark: N real nodes in N namespaces join, then rest; what a node costs per peer (as root).

    python contrib/bench/scale_bench.py [--nodes 10,30,50] [--idle 60] [--churn 10] [--json FILE]

For each N: one namespace per node (``tests.netns.Underlay``, routed through its hub: one shared link would
need more kernel neighbour entries than the kernel holds beyond about 30 nodes) with the cluster layout of the namespace tests
(``tests.integration.cluster``) and the **shipped** timings; every node's only bootstrap URL is node 1's, as
pods behind a headless Service. The nodes are started in a shuffled order ``--interval`` seconds apart.
Then it prints:

* ``full mesh``: seconds from the **last** start until every node has an outbound packet link to every
  other (max and median over nodes), and when the last node began to serve;
* at rest, over ``--idle`` seconds after ``--settle`` seconds: per node per minute, control requests sent and
  answered and their body bytes (from the nodes' own ``tunmesh_mesh_control_requests_total`` and
  ``tunmesh_mesh_control_bytes_total``), CPU (utime+stime from ``/proc/<pid>/stat``, in % of one core:
  median and max), RSS (``VmRSS``, median and max, and its private part ``RssAnon``: the rest is shared
  library pages every node on the host shares), open files, reactor timers
  (``tunmesh_reactor_delayed_calls``) and metric series;
* a ping sample: ``--pings`` random pairs, one ``ping`` each through the overlay, answered/sent;
* with ``--churn K``: K nodes killed (SIGKILL) and restarted at once (new node ids, as a restarted pod
  without a state volume): seconds from the restarts until the mesh is whole again, and, once the killed
  ids are gone (``stale_threshold`` or a URL probe), the survivors' open files, timers, metric series and
  links before and after, and how many series still name a killed id (want 0).

Absolute times depend on the machine's load (printed with each line); per-node request counts, bytes and
CPU-seconds per minute are the robust figures. Namespaces and processes are removed on exit, on Ctrl-C and
on SIGTERM; ``tests.netns.cleanup_stale()`` (run at start) removes what a killed run left behind.
Exit 1 when a measurement failed.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.integration.cluster import (  # noqa: E402
    Cluster,
    NodeSample,
    metrics_text,
    overlay_v4,
    shipped_config,
    start_together,
    wait_links_full_mesh,
    wait_listening,
)
from tests.netns import NetnsError, Underlay, bench_workdir  # noqa: E402
from tunmesh.mesh.client import CACHED_CONNECTION_TIMEOUT  # noqa: E402

COUNTERS = ("tunmesh_mesh_control_requests_total", "tunmesh_mesh_control_bytes_total")


def sample_all(cluster: Cluster) -> dict[int, NodeSample]:
    return {i: NodeSample(cluster, i) for i in sorted(cluster.nodes)}


def rest_figures(before: dict[int, NodeSample], after: dict[int, NodeSample]) -> dict[str, Any]:
    """Per node per minute between two samples, summarised over nodes (median and max)."""
    per: dict[str, list[float]] = {k: [] for k in ("req_out", "req_in", "kbytes", "cpu_pct")}
    for i, b in before.items():
        a = after[i]
        minutes = (a.at - b.at) / 60
        per["req_out"].append((a.total(COUNTERS[0], 'direction="out"') - b.total(COUNTERS[0], 'direction="out"')) / minutes)
        per["req_in"].append((a.total(COUNTERS[0], 'direction="in"') - b.total(COUNTERS[0], 'direction="in"')) / minutes)
        per["kbytes"].append((a.total(COUNTERS[1]) - b.total(COUNTERS[1])) / 1000 / minutes)
        per["cpu_pct"].append(100 * (a.cpu - b.cpu) / (a.at - b.at))
    out: dict[str, Any] = {key: over_nodes(values) for key, values in per.items()}
    for key, attr in (("rss_mb", "rss"), ("rss_anon_mb", "anon"), ("fds", "fds"), ("series", "series")):
        out[key] = over_nodes([getattr(s, attr) for s in after.values()])
    out["timers"] = over_nodes([s.total("tunmesh_reactor_delayed_calls") for s in after.values()])
    return out


def over_nodes(values: list[float]) -> dict[str, float]:
    """One figure summarised over the nodes: its median and its max."""
    return {"median": statistics.median(values), "max": max(values)}


def join_figures(at_mesh: dict[int, NodeSample]) -> dict[str, Any]:
    """Per node, from its start to the full mesh: control requests sent by kind and answered, body
    kB, CPU seconds (the counters are cumulative), summarised over nodes (median and max)."""
    per: dict[str, list[float]] = {
        k: [] for k in ("register", "bootstrap", "init_session", "req_in", "kbytes", "cpu_s")
    }
    for s in at_mesh.values():
        per["register"].append(s.total(COUNTERS[0], 'direction="out"', 'kind="register"'))
        # bootstraps sent (the other registrations are renewals); a "known" one sent nothing
        sent = s.total("tunmesh_mesh_bootstrap_attempts_total") - s.total(
            "tunmesh_mesh_bootstrap_attempts_total", 'result="known"'
        )
        per["bootstrap"].append(sent)
        per["init_session"].append(s.total(COUNTERS[0], 'direction="out"', 'kind="init_session"'))
        per["req_in"].append(s.total(COUNTERS[0], 'direction="in"'))
        per["kbytes"].append(s.total(COUNTERS[1]) / 1000)
        per["cpu_s"].append(s.cpu)
    return {k: over_nodes(v) for k, v in per.items()}


def describe_join(j: dict[str, Any]) -> str:
    return (f"per node registrations sent {j['register']['median']:.0f} (max {j['register']['max']:.0f}; "
            f"bootstraps {j['bootstrap']['median']:.0f}), "
            f"session setups sent {j['init_session']['median']:.0f} (max {j['init_session']['max']:.0f}), "
            f"requests answered {j['req_in']['median']:.0f}, {j['kbytes']['median']:.0f} kB, "
            f"CPU {j['cpu_s']['median']:.1f} s (max {j['cpu_s']['max']:.1f}) from start to the full mesh")


def ping_sample(cluster: Cluster, count: int, rng: random.Random) -> tuple[int, int]:
    nodes = sorted(cluster.nodes)
    answered = 0
    for _ in range(count):
        src, dst = rng.sample(nodes, 2)
        r = cluster.ns(src).run(["ping", "-n", "-c", "1", "-W", "2", overlay_v4(dst)], check=False, timeout=10)
        answered += r.returncode == 0
    return answered, count


def load() -> float:
    return os.getloadavg()[0]


def cpu_jiffies() -> tuple[int, int]:
    """(busy, all) jiffies of the whole machine since boot (``/proc/stat``): busy leaves out idle, iowait
    and niced time, so a ``nice -n 19`` job beside the bench does not count as the nodes' load."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    nice, idle, iowait = fields[1], fields[3], fields[4]
    return sum(fields) - idle - iowait - nice, sum(fields)


def busy_pct(since: tuple[int, int]) -> float:
    """Share of the machine's CPU (all cores) that was busy since ``since`` (a :func:`cpu_jiffies`)."""
    busy, total = cpu_jiffies()
    return 100.0 * (busy - since[0]) / max(1, total - since[1])


def run_one(n: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    result: dict[str, Any] = {"nodes": n}
    # routed: on one shared link N nodes need N(N-1) kernel neighbour entries, more than the kernel's
    # shared table holds (1024) beyond about 30 nodes, and packets are dropped (tests.netns.Underlay)
    with Underlay(nodes=n, tag="s", routed=True) as u:
        u.wait_reachable(timeout=60)
        cluster = Cluster(u, workdir / f"n{n}", shipped_config)
        order = list(range(1, n + 1))
        rng.shuffle(order)
        try:
            jiffies = cpu_jiffies()
            started = start_together(cluster, order, args.interval * (n - 1))
            serving = wait_listening(cluster, args.timeout)
            done = wait_links_full_mesh(cluster, args.timeout, poll=1.0)
            last = started[-1]
            times = sorted(t - last for t in done.values())
            result["full_mesh_after_last_start"] = over_nodes(times)
            result["serving_after_last_start"] = max(serving.values()) - last
            result["load_join"] = load()
            result["busy_join_pct"] = busy_pct(jiffies)
            print(f"[{n}] full mesh {times[-1]:.1f} s (median {statistics.median(times):.1f} s) after the last "
                  f"start; all serving after {result['serving_after_last_start']:.1f} s (load {load():.1f}, "
                  f"machine busy {result['busy_join_pct']:.0f} % from the first start)", flush=True)
            result["join"] = join_figures(sample_all(cluster))
            print(f"[{n}] join: {describe_join(result['join'])}", flush=True)
            time.sleep(args.settle)
            before = sample_all(cluster)
            time.sleep(args.idle)
            after = sample_all(cluster)
            cluster.check_running()
            result["rest"] = rest_figures(before, after)
            result["load_rest"] = load()
            result["ping"] = ping_sample(cluster, args.pings, rng)
            print(f"[{n}] at rest: {describe_rest(result['rest'])}; ping {result['ping'][0]}/{result['ping'][1]} "
                  f"(load {load():.1f})", flush=True)
            if args.churn:
                try:
                    result["churn"] = churn(cluster, min(args.churn, n - 1), rng, args)
                    print(f"[{n}] churn: {describe_churn(result['churn'])}", flush=True)
                except NetnsError as e:
                    # the join and rest figures stand; the churn failure is reported on its own
                    result["churn"] = {"error": str(e).splitlines()[0]}
                    print(f"[{n}] churn FAILED: {result['churn']['error']}", flush=True)
        finally:
            cluster.stop_all()
    return result


def churn(cluster: Cluster, count: int, rng: random.Random, args: argparse.Namespace) -> dict[str, Any]:
    """Kill ``count`` nodes (not node 1, the bootstrap target) and restart them at once."""
    victims = sorted(rng.sample(sorted(set(cluster.nodes) - {1}), count))
    survivors = sorted(set(cluster.nodes) - set(victims))
    old_ids = {i: cluster.node_id(i) for i in victims}
    before = {i: NodeSample(cluster, i) for i in survivors}
    for i in victims:
        cluster.kill(i)
    restarted = time.monotonic()
    jiffies = cpu_jiffies()
    for i in victims:
        cluster.start(i)
    serving = wait_listening(cluster, args.timeout, victims)
    done = wait_links_full_mesh(cluster, args.timeout, poll=1.0)
    whole = max(done.values()) - restarted
    busy = busy_pct(jiffies)
    # the killed ids leave the survivors' pools (stale threshold 30 s, or a probe of their URL)
    deadline = time.monotonic() + args.timeout
    lingering: dict[int, int] = {}
    while True:
        texts = {i: metrics_text(cluster, i) for i in survivors}
        lingering = {i: sum(t.count(old) for old in old_ids.values()) for i, t in texts.items()}
        if not any(lingering.values()) or time.monotonic() > deadline:
            break
        time.sleep(2)
    # compared at rest, as "before" was: the survivors' control connections of the churn (kept
    # CACHED_CONNECTION_TIMEOUT s) expire first, or their files and expiry timers look like growth
    time.sleep(args.settle + CACHED_CONNECTION_TIMEOUT)
    after = {i: NodeSample(cluster, i) for i in survivors}

    def summary(samples: dict[int, NodeSample], attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in samples.values())

    def links(samples: dict[int, NodeSample]) -> float:
        return statistics.median(s.total("tunmesh_links_connected") for s in samples.values())

    def timers(samples: dict[int, NodeSample]) -> float:
        return statistics.median(s.total("tunmesh_reactor_delayed_calls") for s in samples.values())

    return {
        "killed": count,
        "whole_after_restart": whole,
        "restarted_serving_after": max(serving[i] for i in victims) - restarted,
        "series_naming_killed_ids": sum(lingering.values()),
        "busy_pct": busy,
        "survivors_before": {"fds": summary(before, "fds"), "series": summary(before, "series"),
                             "timers": timers(before), "links": links(before), "rss_mb": summary(before, "rss")},
        "survivors_after": {"fds": summary(after, "fds"), "series": summary(after, "series"),
                            "timers": timers(after), "links": links(after), "rss_mb": summary(after, "rss")},
        "load": load(),
    }


def describe_rest(r: dict[str, Any]) -> str:
    return (f"requests/min out {r['req_out']['median']:.0f} (max {r['req_out']['max']:.0f}) in "
            f"{r['req_in']['median']:.0f}, {r['kbytes']['median']:.1f} kB/min, CPU {r['cpu_pct']['median']:.2f} % "
            f"(max {r['cpu_pct']['max']:.2f} %), RSS {r['rss_mb']['median']:.1f} MB (max {r['rss_mb']['max']:.1f}; "
            f"private {r['rss_anon_mb']['median']:.1f}), "
            f"fds {r['fds']['median']:.0f}, timers {r['timers']['median']:.0f}, series {r['series']['median']:.0f}")


def describe_churn(c: dict[str, Any]) -> str:
    b, a = c["survivors_before"], c["survivors_after"]
    return (f"{c['killed']} killed and restarted: whole again after {c['whole_after_restart']:.1f} s (all "
            f"restarted serving after {c['restarted_serving_after']:.1f} s; machine busy {c['busy_pct']:.0f} % "
            f"until whole); survivors "
            f"(median) fds {b['fds']:.0f} -> {a['fds']:.0f}, timers {b['timers']:.0f} -> {a['timers']:.0f}, "
            f"series {b['series']:.0f} -> {a['series']:.0f}, links {b['links']:.0f} -> {a['links']:.0f}, RSS "
            f"{b['rss_mb']:.1f} -> {a['rss_mb']:.1f} MB; series naming killed ids: "
            f"{c['series_naming_killed_ids']} (load {c['load']:.1f})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="10,30,50", help="comma-separated node counts (default 10,30,50)")
    ap.add_argument("--interval", type=float, default=0.2, help="seconds between two starts (default 0.2)")
    ap.add_argument("--idle", type=float, default=60.0, help="seconds measured at rest (default 60)")
    ap.add_argument(
        "--settle",
        type=float,
        default=90.0,
        help="seconds after the full mesh before measuring (default 90: a join's last exchanges go on at the "
        "30 s pace of a changing membership; 45 s after a 30-node join they still did)",
    )
    ap.add_argument("--pings", type=int, default=20, help="random pairs pinged through the overlay (default 20)")
    ap.add_argument("--churn", type=int, default=0, help="kill and restart this many nodes after the rest (0: no)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the start order, pings and churn (default 1)")
    ap.add_argument("--timeout", type=float, default=300.0, help="give up a wait after this many seconds (300)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    ap.add_argument("--workdir", type=Path, help="configs and node logs (default: a temporary directory)")
    args = ap.parse_args(argv)
    try:
        counts = [int(c) for c in args.nodes.split(",") if c.strip()]
    except ValueError:
        ap.error(f"--nodes: not a list of integers: {args.nodes!r}")
    if not counts or any(not 2 <= c <= 250 for c in counts):
        ap.error("--nodes: every count must be 2..250")
    if args.idle <= 0 or args.interval < 0 or args.settle < 0 or args.pings < 0 or args.churn < 0:
        ap.error("--idle must be positive; --interval, --settle, --pings and --churn not negative")

    # An installed node (pip, the image) has byte code; a checkout run with PYTHONDONTWRITEBYTECODE would
    # compile tunmesh from source in every one of the N interpreters (half of a start-up's CPU).
    for package in ("tunmesh", "twisted/plugins"):
        compileall.compile_dir(str(REPO / package), quiet=1)

    results: list[dict[str, Any]] = []
    failed = False
    with bench_workdir("scale_bench", args.workdir, "scale") as workdir:
        try:
            for n in counts:
                try:
                    results.append(run_one(n, args, workdir))
                except NetnsError as e:
                    failed = True
                    results.append({"nodes": n, "error": str(e).splitlines()[0]})
                    print(f"[{n}] FAILED: {str(e).splitlines()[0]}", flush=True)
        except KeyboardInterrupt:
            print("interrupted; namespaces removed", file=sys.stderr)
            return 130
        finally:
            if args.json is not None:
                args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    failed = failed or any("error" in r.get("churn", {}) for r in results)
    return 1 if failed else 0


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| nodes | full mesh after the last start (max / median) | requests per node per min (out / in) | "
        "kB per node per min | idle CPU per node (median / max) | RSS per node (median / max) | ping |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['nodes']} | failed: {r['error']} | | | | | |")
            continue
        m, rest = r["full_mesh_after_last_start"], r["rest"]
        rows.append(
            f"| {r['nodes']} | {m['max']:.1f} s / {m['median']:.1f} s | {rest['req_out']['median']:.0f} / "
            f"{rest['req_in']['median']:.0f} | {rest['kbytes']['median']:.1f} | {rest['cpu_pct']['median']:.2f} % / "
            f"{rest['cpu_pct']['max']:.2f} % | {rest['rss_mb']['median']:.1f} / {rest['rss_mb']['max']:.1f} MB | "
            f"{r['ping'][0]}/{r['ping'][1]} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
