#!/usr/bin/env python3
"""Datapath benchmark: raw veth, a Python TUN relay baseline, and tunmesh, measured in ONE run (as root).

    python contrib/bench/bench.py [--duration 10] [--json out.json] [--relay] [--peers [LIST]] [--skip-tunmesh]

Two namespaces on a bridge (``tmt-b...``, 198.18.0.1/.2), then for each datapath: ``ping -c 50 -i 0.01``
(avg/p50/max), ``iperf3`` TCP with 1 and 4 streams, ``iperf3 -u -b 0 -l 1200`` (received rate), a TCP
request/response loop (``sockperf`` ping-pong, 64-byte messages, one connection: transactions per second and
the mean round trip; :mod:`rr`), and the CPU the datapath's processes used during each run (utime+stime from
/proc, in % of one core). Only ratios taken in the same run mean anything (docs/performance.md); the table
ends with them, and with the best peer and tunmesh's ratio to it.

Datapaths: ``raw`` (the underlay itself, the limit); with ``--relay`` a TUN in each namespace joined by
:class:`tests.netns.TunPairRelay` in this process, with offload (``relay-tso``) and without (``relay-plain``):
what a bare Python loop does; ``tunmesh``: two nodes started with twistd (``tunmesh`` fails with a clear
message, and the others still report, while the node cannot start), with the shipped timings; its section
adds the join time (both nodes started together: seconds until the first ping through the overlay is
answered) and each node's idle CPU (``--idle`` seconds at rest after the traffic). With ``--peers`` the peer
VPNs of :mod:`peers` (nebula, wireguard-go, OpenVPN over UDP) run in the same namespaces; one that is not
installed gets a row saying so, with the Debian packages to install.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # peers, rr: also when loaded by path (the unit tests)

import peers  # noqa: E402
import rr  # noqa: E402

from tests.netns import (  # noqa: E402
    Namespace,
    NetnsError,
    TunPairRelay,
    Underlay,
    bench_workdir,
    iperf3_json,
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


def request_response(client: Namespace, server: Namespace, target: str, duration: int,
                     cpu: Callable[[], float]) -> dict[str, Any]:
    """The ``sockperf`` ping-pong figures (:mod:`rr`), or ``{"error": ...}`` when it cannot run: the
    other figures of the datapath still count."""
    if shutil.which("sockperf") is None:
        return {"error": "sockperf not installed (apt-get install -y sockperf)"}
    srv = server.popen(rr.server_argv(target), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        before, t0 = cpu(), time.monotonic()
        r = client.run(rr.client_argv(target, duration), check=False, timeout=duration + 60)
        cpu_pct = 100.0 * (cpu() - before) / max(time.monotonic() - t0, 1e-9)
        try:
            result = rr.parse_pingpong(r.stdout + r.stderr)
        except rr.SockperfOutputError as e:
            return {"error": str(e)}
        result["cpu_pct"] = cpu_pct
        return result
    finally:
        srv.terminate()
        srv.wait(timeout=10)


def measure(client: Namespace, server: Namespace, target: str, duration: int, cpu: Callable[[], float]) -> dict[str, Any]:
    """All figures for one datapath; ``cpu()`` returns the datapath's CPU seconds so far (0 for raw)."""
    result: dict[str, Any] = {"ping": ping_stats(client, target)}
    result["rr"] = request_response(client, server, target, duration, cpu)
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
                dev.configure(IPv4Interface(addr))
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


def wait_overlay(client: Namespace, target: str, timeout: float, exited: Callable[[], str | None]) -> float:
    """Ping ``target`` until it answers; the monotonic time of the answer. ``exited()`` names a datapath
    process that exited (then this gives up at once)."""
    deadline = time.monotonic() + timeout
    while client.run(["ping", "-n", "-c", "1", "-W", "0.2", target], check=False, timeout=10).returncode != 0:
        dead = exited()
        if dead:
            raise BenchError(dead)
        if time.monotonic() > deadline:
            raise BenchError(f"overlay {target} not reachable after {timeout:.0f} s")
        time.sleep(0.05)
    return time.monotonic()


def idle_cpu(pids: list[int], seconds: float) -> list[float]:
    """Each process's utime+stime over ``seconds`` at rest, in % of one core."""
    before, t0 = [process_cpu_seconds(p) for p in pids], time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    return [100.0 * (process_cpu_seconds(p) - b) / elapsed for p, b in zip(pids, before, strict=True)]


def with_networking(config: str, **keys: Any) -> str:
    """``config`` (YAML text of a node) with ``keys`` set in its ``networking`` group."""
    lines = "".join(f"    {k}: {str(v).lower() if isinstance(v, bool) else v}\n" for k, v in keys.items())
    if "\n  networking:\n" not in config:
        raise ValueError("the node config has no networking group")
    return config.replace("\n  networking:\n", "\n  networking:\n" + lines, 1)


def bench_tunmesh(
    u: Underlay, duration: int, workdir: Path, idle: float, networking: dict[str, Any] | None = None
) -> dict[str, Any]:
    plugin = REPO / "twisted" / "plugins" / "tunmesh_plugin.py"
    if not plugin.exists():
        raise BenchError(f"the tunmesh node does not exist yet ({plugin} missing)")
    probe = subprocess.run([sys.executable, "-c", "import tunmesh.service"], cwd=REPO, capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        raise BenchError(f"the tunmesh node cannot start yet: import tunmesh.service failed: {last}")
    # The cluster layout of the namespace tests (one shared self-signed cert, one secret, both nodes
    # bootstrap from node 1's URL; node i owns 100.64.0.i; offload on), with the shipped timings, as a
    # deployment runs: the join time and idle CPU are those a user gets.
    from tests.integration.cluster import Cluster, shipped_config

    cluster = Cluster(u, workdir, lambda i: with_networking(shipped_config(i), **(networking or {})))
    a, b = u.nodes
    try:
        started = time.monotonic()
        nodes = [cluster.start(i) for i in (1, 2)]

        def exited() -> str | None:
            for node in nodes:
                if node.proc.poll() is not None:
                    return f"node in {node.ns.name} exited ({node.proc.returncode}):\n{node.log_tail(20)}"
            return None

        try:
            answered = wait_overlay(a, "100.64.0.2", 90, exited)
        except BenchError as e:
            raise BenchError(f"tunmesh: {e}\n{cluster.logs()}") from e
        join_s = answered - started
        for node in nodes:
            try:
                node.wait_ready(timeout=60)
            except NetnsError as e:
                raise BenchError(f"tunmesh node did not become ready: {e}") from e
        pids = [n.pid for n in nodes]
        result = measure(a, b, "100.64.0.2", duration, lambda: sum(process_cpu_seconds(p) for p in pids))
        result["join_s"] = join_s
        # How many packets each node sent as datagrams and as link frames (the datagram path at work).
        result["datagrams_tx"] = [cluster.metric(i, "tunmesh_link_datagrams_total", direction="tx") for i in (1, 2)]
        result["frames_tx"] = [cluster.metric(i, "tunmesh_link_frames_total", direction="tx") for i in (1, 2)]
        if idle > 0:
            time.sleep(2)  # the last test's connections close
            result["idle_cpu_pct"] = idle_cpu(pids, idle)
            result["idle_seconds"] = idle
        dead = exited()
        if dead:
            raise BenchError(f"{dead.splitlines()[0]} during the run:\n{dead}")
        return result
    finally:
        cluster.stop_all()


def bench_peer(u: Underlay, peer: peers.PeerVPN, duration: int, workdir: Path) -> dict[str, Any]:
    """One peer VPN measured like tunmesh (its two processes' CPU)."""
    missing = peer.missing()
    if missing:
        raise BenchError(missing)
    a, b = u.nodes
    pdir = workdir / peer.name
    try:
        procs = peer.start(u.nodes, pdir)
    except (peers.PeerError, NetnsError) as e:
        raise BenchError(f"{peer.name} could not start: {e}\n{peer.log_tail(pdir)}") from e
    try:
        def exited() -> str | None:
            for i, proc in enumerate(procs, 1):
                if proc.poll() is not None:
                    return f"{peer.name} node {i} exited ({proc.returncode}):\n{peer.log_tail(pdir)}"
            return None

        try:
            wait_overlay(a, "100.64.0.2", 30, exited)
        except BenchError as e:
            raise BenchError(f"{peer.name}: {e}\n{peer.log_tail(pdir)}") from e
        pids = [p.pid for p in procs]
        result = measure(a, b, "100.64.0.2", duration, lambda: sum(process_cpu_seconds(p) for p in pids))
        result["version"] = peer.version()
        dead = exited()
        if dead:
            raise BenchError(f"{dead.splitlines()[0]} during the run:\n{dead}")
        return result
    finally:
        peer.stop(u.nodes, procs)


def _rr_cell(r: dict[str, Any]) -> str:
    t = r.get("rr", {})
    if "transactions_per_s" not in t:
        return "–"
    p50 = f" / {t['rtt_p50_us']:.0f}" if "rtt_p50_us" in t else ""
    return f"{t['transactions_per_s']:.0f} ({t['rtt_mean_us']:.0f}{p50} µs)"


def fmt_row(name: str, r: dict[str, Any] | None, error: str | None) -> str:
    if r is None:
        return f"| {name} | failed: {error} |"
    p = r["ping"]
    return (f"| {name} | {r['tcp1_bps'] / 1e9:.2f} | {r['tcp4_bps'] / 1e9:.2f} | {r['udp_rx_bps'] / 1e6:.0f} | "
            f"{p['avg_ms']:.3f} / {p['p50_ms']:.3f} / {p['max_ms']:.3f} | {_rr_cell(r)} | "
            f"{r['tcp1_cpu_pct']:.0f} % |")


def _rr_tps(r: dict[str, Any]) -> float | None:
    value = r.get("rr", {}).get("transactions_per_s")
    return float(value) if value else None


def ratio_lines(results: dict[str, dict[str, Any]], peer_names: list[str]) -> list[str]:
    """Ratios to raw for every datapath, then the best peer (ping avg, TCP 1 stream, request/response)
    and tunmesh's ratio to it."""
    lines: list[str] = []
    raw = results.get("raw", {}).get("result")
    if raw:
        lines += ["", "Ratios to raw veth (same run): TCP1 / TCP4 / UDP / ping avg / request-response rate"]
        for name, entry in results.items():
            r = entry.get("result")
            if name == "raw" or not r:
                continue
            tps, raw_tps = _rr_tps(r), _rr_tps(raw)
            rr_ratio = f"{tps / raw_tps:.3f}" if tps and raw_tps else "–"
            lines.append(
                f"  {name}: {r['tcp1_bps'] / raw['tcp1_bps']:.3f} / {r['tcp4_bps'] / raw['tcp4_bps']:.3f} / "
                f"{r['udp_rx_bps'] / raw['udp_rx_bps']:.3f} / {r['ping']['avg_ms'] / raw['ping']['avg_ms']:.1f}x"
                f" / {rr_ratio}"
            )
    measured = {n: results[n]["result"] for n in peer_names if results.get(n, {}).get("result")}
    tunmesh = results.get("tunmesh", {}).get("result")
    if measured:
        lines.append("")
        ping_best = min(measured, key=lambda n: measured[n]["ping"]["avg_ms"])
        tcp_best = max(measured, key=lambda n: measured[n]["tcp1_bps"])
        best_ping, best_tcp = measured[ping_best]["ping"]["avg_ms"], measured[tcp_best]["tcp1_bps"]
        line = f"Best peer, ping avg: {ping_best} {best_ping:.3f} ms"
        if tunmesh:
            line += f"; tunmesh {tunmesh['ping']['avg_ms']:.3f} ms = {tunmesh['ping']['avg_ms'] / best_ping:.2f}x"
        lines.append(line)
        line = f"Best peer, TCP 1 stream: {tcp_best} {best_tcp / 1e9:.2f} Gbit/s"
        if tunmesh:
            line += f"; tunmesh {tunmesh['tcp1_bps'] / 1e9:.2f} Gbit/s = {tunmesh['tcp1_bps'] / best_tcp:.2f}x"
        lines.append(line)
        with_rr = {n: t for n in measured if (t := _rr_tps(measured[n]))}
        if with_rr:
            rr_best = max(with_rr, key=lambda n: with_rr[n])
            line = f"Best peer, request/response: {rr_best} {with_rr[rr_best]:.0f}/s"
            tunmesh_tps = _rr_tps(tunmesh) if tunmesh else None
            if tunmesh_tps:
                line += f"; tunmesh {tunmesh_tps:.0f}/s = {tunmesh_tps / with_rr[rr_best]:.2f}x"
            lines.append(line)
    return lines


def tunmesh_lines(r: dict[str, Any]) -> list[str]:
    """The tunmesh section: join time and idle CPU per node."""
    lines = [""]
    if "join_s" in r:
        lines.append(f"tunmesh join (2 nodes started together, shipped timings): first ping through the overlay "
                     f"answered {r['join_s']:.2f} s after the start")
    if "idle_cpu_pct" in r:
        per_node = ", ".join(f"node {i} {pct:.2f} %" for i, pct in enumerate(r["idle_cpu_pct"], 1))
        lines.append(f"tunmesh idle CPU ({r['idle_seconds']:.0f} s at rest, % of one core): {per_node}")
    if "datagrams_tx" in r:
        lines.append("tunmesh packets sent as datagrams / link frames sent, per node: "
                     + ", ".join(f"{d:.0f} / {f:.0f}" for d, f in zip(r["datagrams_tx"], r["frames_tx"], strict=True)))
    return lines


def report(results: dict[str, dict[str, Any]], peer_names: list[str] | None = None) -> str:
    lines = [
        "| Datapath | TCP 1 stream Gbit/s | TCP 4 streams Gbit/s | UDP received Mbit/s | ping avg / p50 / max ms "
        f"| request/response per s (RTT mean / p50 µs), {rr.REQUEST_BYTES} B | datapath CPU (TCP 1) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in results.items():
        lines.append(fmt_row(name, entry.get("result"), entry.get("error")))
    lines += ratio_lines(results, peer_names or [])
    tunmesh = results.get("tunmesh", {}).get("result")
    if tunmesh and ("join_s" in tunmesh or "idle_cpu_pct" in tunmesh):
        lines += tunmesh_lines(tunmesh)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per iperf3 and sockperf test (default 10)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON")
    ap.add_argument("--relay", action="store_true", help="also measure the Python TUN relay baseline")
    ap.add_argument("--peers", nargs="?", const="all", metavar="LIST",
                    help=f"also measure the peer VPNs (comma-separated, default all: {','.join(peers.PEERS)})")
    ap.add_argument("--skip-tunmesh", action="store_true", help="do not start tunmesh nodes")
    ap.add_argument("--tls-only", action="store_true",
                    help="also measure tunmesh with the datagram path off (networking.datagrams: false), row tunmesh-tls")
    ap.add_argument("--idle", type=float, default=30.0,
                    help="seconds of tunmesh idle CPU measured after the traffic (default 30, 0 to skip)")
    ap.add_argument("--workdir", type=Path, help="configs and node logs (default: a temporary directory)")
    args = ap.parse_args(argv)
    try:
        chosen = peers.select(args.peers) if args.peers is not None else []
    except ValueError as e:
        ap.error(str(e))
    for tool in ("iperf3", "ping"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} not found (apt-get install -y iperf3 iputils-ping)", file=sys.stderr)
            return 2

    results: dict[str, dict[str, Any]] = {}
    failed = False
    with bench_workdir("bench", args.workdir, "bench") as workdir:
        plan: list[tuple[str, Callable[[Underlay], dict[str, Any]]]] = [("raw", lambda u: bench_raw(u, args.duration))]
        if args.relay:
            plan.append(("relay-tso", lambda u: bench_relay(u, args.duration, True)))
            plan.append(("relay-plain", lambda u: bench_relay(u, args.duration, False)))
        for peer in chosen:
            plan.append((peer.name, functools.partial(bench_peer, peer=peer, duration=args.duration, workdir=workdir)))
        if not args.skip_tunmesh:
            plan.append(("tunmesh", lambda u: bench_tunmesh(u, args.duration, workdir / "tunmesh", args.idle)))
            if args.tls_only:
                plan.append(("tunmesh-tls", lambda u: bench_tunmesh(
                    u, args.duration, workdir / "tunmesh-tls", 0, {"datagrams": False})))
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

    meta = {"duration": args.duration, "kernel": os.uname().release, "cpus": os.cpu_count(),
            "python": sys.version.split()[0], "overlay_mtu": OVERLAY_MTU, "peer_mtu": peers.MTU,
            "loadavg": os.getloadavg(), "rr_request_bytes": rr.REQUEST_BYTES, "peers": [p.name for p in chosen]}
    print(report(results, [p.name for p in chosen]))
    print(f"\n(load average {meta['loadavg'][0]:.2f} / {meta['loadavg'][1]:.2f} / {meta['loadavg'][2]:.2f} "
          f"on {meta['cpus']} CPUs)")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
