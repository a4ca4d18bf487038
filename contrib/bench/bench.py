#!/usr/bin/env python3
"""Datapath benchmark: raw veth, a Python TUN relay baseline, and tunmesh, measured in ONE run (as root).

    python contrib/bench/bench.py [--duration 10] [--json out.json] [--relay] [--skip-tunmesh]

Two namespaces on a bridge (``tmt-b...``, 198.18.0.1/.2), then for each datapath: ``ping -c 50 -i 0.01``
(avg/p50/max), ``iperf3`` TCP with 1 and 4 streams, ``iperf3 -u -b 0 -l 1200`` (received rate), and the CPU
the datapath's processes used during each iperf3 run (utime+stime from /proc, in % of one core). Only ratios
taken in the same run mean anything (docs/performance.md); the table ends with them.

Datapaths: ``raw`` (the underlay itself, the limit); with ``--relay`` a TUN in each namespace joined by
:class:`tests.netns.TunPairRelay` in this process, with offload (``relay-tso``) and without (``relay-plain``):
what a bare Python loop does; ``tunmesh``: two nodes started with twistd (``tunmesh`` fails with a clear
message, and the others still report, while the node cannot start).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from ipaddress import ip_interface
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.netns import (  # noqa: E402
    Namespace,
    NetnsError,
    TunPairRelay,
    Underlay,
    cleanup_stale,
    iperf3_json,
    netns_unavailable_reason,
    process_cpu_seconds,
)

OVERLAY_MTU = 1400
PORT = 4567
_TIME = re.compile(r"time=([\d.]+) ms")


class BenchError(RuntimeError):
    """A datapath could not be measured; the message says why."""


def ping_stats(client: Namespace, target: str) -> dict[str, float]:
    r = client.run(["ping", "-c", "50", "-i", "0.01", "-W", "1", target], check=False, timeout=60)
    times = [float(t) for t in _TIME.findall(r.stdout)]
    if not times:
        raise BenchError(f"ping {target} got no replies: {r.stdout.strip()[-200:]} {r.stderr.strip()}")
    return {
        "avg_ms": statistics.fmean(times),
        "p50_ms": statistics.median(times),
        "max_ms": max(times),
        "received": len(times),
    }


def run_iperf(client: Namespace, target: str, args: list[str], duration: int,
              cpu: Callable[[], float]) -> tuple[dict[str, Any], float]:
    before, t0 = cpu(), time.monotonic()
    r = client.run(["iperf3", "-c", target, "-t", str(duration), "-J", *args], check=False, timeout=duration + 60)
    cpu_pct = 100.0 * (cpu() - before) / max(time.monotonic() - t0, 1e-9)
    if not r.stdout.strip():
        raise BenchError(f"iperf3 {' '.join(args)} produced no output: {r.stderr.strip()}")
    return iperf3_json(r.stdout), cpu_pct


def udp_received_bps(data: dict[str, Any]) -> float:
    end = data["end"]
    if "sum_received" in end:
        return float(end["sum_received"]["bits_per_second"])
    s = end["sum"]
    return float(s["bits_per_second"]) * (1 - float(s.get("lost_percent", 0)) / 100)


def measure(client: Namespace, server: Namespace, target: str, duration: int, cpu: Callable[[], float]) -> dict[str, Any]:
    """All figures for one datapath; ``cpu()`` returns the datapath's CPU seconds so far (0 for raw)."""
    result: dict[str, Any] = {"ping": ping_stats(client, target)}
    srv = server.popen(["iperf3", "-s", "-B", target], stdout=open(os.devnull, "wb"), stderr=open(os.devnull, "wb"))
    try:
        time.sleep(0.5)
        data, cpu1 = run_iperf(client, target, [], duration, cpu)
        result["tcp1_bps"] = float(data["end"]["sum_received"]["bits_per_second"])
        result["tcp1_cpu_pct"] = cpu1
        data, cpu4 = run_iperf(client, target, ["-P", "4"], duration, cpu)
        result["tcp4_bps"] = float(data["end"]["sum_received"]["bits_per_second"])
        result["tcp4_cpu_pct"] = cpu4
        data, cpuu = run_iperf(client, target, ["-u", "-b", "0", "-l", "1200"], duration, cpu)
        result["udp_rx_bps"] = udp_received_bps(data)
        result["udp_cpu_pct"] = cpuu
    finally:
        srv.terminate()
        srv.wait(timeout=10)
    return result


def bench_raw(u: Underlay, duration: int) -> dict[str, Any]:
    a, b = u.nodes
    return measure(a, b, b.address or "", duration, lambda: 0.0)


def bench_relay(u: Underlay, duration: int, offload: bool) -> dict[str, Any]:
    from tunmesh.tun.device import TunDevice

    a, b = u.nodes
    devices = []
    try:
        for ns, addr in ((a, "100.64.0.1/10"), (b, "100.64.0.2/10")):
            with ns.entered():
                dev = TunDevice.open("tmt-tun0", offload, OVERLAY_MTU)
                devices.append(dev)
                dev.configure(ip_interface(addr))
        if offload and not all(d.offload_active for d in devices):
            raise BenchError("TUN offload unavailable on this kernel")
        me = os.getpid()
        with TunPairRelay(devices[0], devices[1]) as relay:
            result = measure(a, b, "100.64.0.2", duration, lambda: process_cpu_seconds(me))
        if relay.errors:
            raise BenchError(f"relay failed: {relay.errors[0]!r}")
        return result
    finally:
        for dev in devices:
            dev.close()


def bench_tunmesh(u: Underlay, duration: int, workdir: Path) -> dict[str, Any]:
    plugin = REPO / "twisted" / "plugins" / "tunmesh_plugin.py"
    if not plugin.exists():
        raise BenchError(f"the tunmesh node does not exist yet ({plugin} missing)")
    probe = subprocess.run([sys.executable, "-c", "import tunmesh.service"], cwd=REPO, capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        raise BenchError(f"the tunmesh node cannot start yet: import tunmesh.service failed: {last}")
    # The same cluster layout as the namespace tests: one shared self-signed cert, one secret, node 2
    # bootstraps from node 1; node i owns 100.64.0.i. Offload on (the default).
    from tests.integration.cluster import Cluster
    from tests.integration.cluster import node_config as cluster_node_config

    cluster = Cluster(u, workdir, lambda i: cluster_node_config(i, bootstrap=[f"https://198.18.0.1:{PORT}/"]))
    nodes = [cluster.start(i) for i in (1, 2)]
    try:
        for node in nodes:
            try:
                node.wait_ready(timeout=60)
            except NetnsError as e:
                raise BenchError(f"tunmesh node did not become ready: {e}") from e
        a, b = u.nodes
        deadline = time.monotonic() + 60
        while a.run(["ping", "-c", "1", "-W", "1", "100.64.0.2"], check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise BenchError("overlay 100.64.0.1 -> 100.64.0.2 not reachable 60 s after the nodes were ready:\n"
                                 + nodes[0].log_tail(20))
        pids = [n.pid for n in nodes]
        result = measure(a, b, "100.64.0.2", duration, lambda: sum(process_cpu_seconds(p) for p in pids))
        for node in nodes:
            if node.proc.poll() is not None:
                raise BenchError(f"node in {node.ns.name} died during the run:\n{node.log_tail(20)}")
        return result
    finally:
        for node in nodes:
            node.stop()


def fmt_row(name: str, r: dict[str, Any] | None, error: str | None) -> str:
    if r is None:
        return f"| {name} | failed: {error} |"
    p = r["ping"]
    return (f"| {name} | {r['tcp1_bps'] / 1e9:.2f} | {r['tcp4_bps'] / 1e9:.2f} | {r['udp_rx_bps'] / 1e6:.0f} | "
            f"{p['avg_ms']:.3f} / {p['p50_ms']:.3f} / {p['max_ms']:.3f} | {r['tcp1_cpu_pct']:.0f} % |")


def report(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| Datapath | TCP 1 stream Gbit/s | TCP 4 streams Gbit/s | UDP received Mbit/s | ping avg / p50 / max ms "
        "| datapath CPU (TCP 1) |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in results.items():
        lines.append(fmt_row(name, entry.get("result"), entry.get("error")))
    raw = results.get("raw", {}).get("result")
    if raw:
        lines.append("")
        lines.append("Ratios to raw veth (same run): TCP1 / TCP4 / UDP / ping avg")
        for name, entry in results.items():
            r = entry.get("result")
            if name == "raw" or not r:
                continue
            lines.append(
                f"  {name}: {r['tcp1_bps'] / raw['tcp1_bps']:.3f} / {r['tcp4_bps'] / raw['tcp4_bps']:.3f} / "
                f"{r['udp_rx_bps'] / raw['udp_rx_bps']:.3f} / {r['ping']['avg_ms'] / raw['ping']['avg_ms']:.1f}x"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per iperf3 test (default 10)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON")
    ap.add_argument("--relay", action="store_true", help="also measure the Python TUN relay baseline")
    ap.add_argument("--skip-tunmesh", action="store_true", help="do not start tunmesh nodes")
    ap.add_argument("--workdir", type=Path, help="configs and node logs (default: a temporary directory)")
    args = ap.parse_args(argv)

    reason = netns_unavailable_reason()
    if reason:
        print(f"bench: {reason}", file=sys.stderr)
        return 2
    for tool in ("iperf3", "ping"):
        if not any(os.access(os.path.join(d, tool), os.X_OK) for d in os.environ.get("PATH", "").split(":")):
            print(f"bench: {tool} not found (apt-get install -y iperf3 iputils-ping)", file=sys.stderr)
            return 2
    stale = cleanup_stale()
    if stale:
        print(f"removed stale namespaces: {', '.join(stale)}", file=sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    plan: list[tuple[str, Callable[[Underlay], dict[str, Any]]]] = [("raw", lambda u: bench_raw(u, args.duration))]
    if args.relay:
        plan.append(("relay-tso", lambda u: bench_relay(u, args.duration, True)))
        plan.append(("relay-plain", lambda u: bench_relay(u, args.duration, False)))
    tmp = None
    if not args.skip_tunmesh:
        workdir = args.workdir
        if workdir is None:
            tmp = tempfile.TemporaryDirectory(prefix="tmt-bench-")
            workdir = Path(tmp.name)
        plan.append(("tunmesh", lambda u: bench_tunmesh(u, args.duration, workdir)))

    results: dict[str, dict[str, Any]] = {}
    failed = False
    try:
        with Underlay(nodes=2, tag="b") as u:
            u.wait_reachable()
            for name, fn in plan:
                print(f"measuring {name} ...", file=sys.stderr, flush=True)
                try:
                    results[name] = {"result": fn(u)}
                except (BenchError, NetnsError, OSError) as e:
                    failed = True
                    results[name] = {"error": str(e).splitlines()[0] if str(e) else repr(e), "detail": str(e)}
                    print(f"{name}: FAILED: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted; namespaces removed", file=sys.stderr)
        return 130
    finally:
        if tmp is not None:
            tmp.cleanup()

    meta = {"duration": args.duration, "kernel": os.uname().release, "cpus": os.cpu_count(),
            "python": sys.version.split()[0], "overlay_mtu": OVERLAY_MTU}
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
