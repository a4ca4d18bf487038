#!/usr/bin/env python3
"""In-memory scale simulation: N nodes join and rest on one ``task.Clock``, counting control messages and bytes.

    nice -n 19 python contrib/bench/scale_sim.py [--nodes 50,200,500] [--settle 90] [--rest 240] [--json FILE]
    nice -n 19 python contrib/bench/scale_sim.py --seeded --nodes 50,200,500 --settle 30   # rest only

Every node is a real ``Membership`` + ``MeshAPI`` + ``MeshClient`` (the in-memory harness of the mesh tests,
``tests/unit/mesh_support.py``, on ``FakeNetwork(direct=True)``: each request is a real
``twisted.web.server.Request`` handed to the node's real ``Site`` and resources, without the HTTP bytes
``StubTreq`` would write and parse; tokens signed and verified, X25519 session setups) with the **shipped** timings (groom 5 s, bootstrap retry 15 s, local peers renewed
every 5 s, stale after 30 s), all bootstrapping from node 1's URL, started together. No sockets, no TUN,
no data plane: what it counts is the control plane alone, in simulated time, so the growth with N is known
beyond what one machine can start as processes. The packet links are modelled by what membership reads
of them (``Membership.link_age``): a peer's link is up, and has just heard from it, once the node holds an
outbound session with it, so renewals relax as they do between real nodes at rest; ``--no-links`` counts
the control plane as it runs without links (a link down everywhere).

For each N it prints:

* ``join``: simulated seconds from the start until every node holds every other node with an outbound
  session, and control requests sent and body bytes (sent + received) per node during that time;
* ``rest``: over ``--rest`` simulated seconds after the join settled, control requests sent per node per
  minute, body bytes (sent + received) per node per minute, and the mean body size of a registration
  (request + response): the figure that must not grow with N;
* wall seconds the simulation took (not a measure of tunmesh: the whole cluster runs in this process).

The run is bounded: at most ``join_limit`` (300) simulated seconds to join, then ``--settle`` and ``--rest``;
progress goes to stderr every 10 simulated seconds. The cost is about 2-3 ms of CPU per simulated request
(tokens, JSON, routing) plus a few ms per registration that carries a whole table of hundreds of entries
(the join), so 500 nodes (about 250 000 pairs) take a long while: run it ``nice``.

``--seeded`` skips the join: every node starts with the state a finished join leaves (``seed_converged``)
and only the rest is simulated, for N whose join is out of reach here (500: ≈ 10 minutes instead of
hours). At 50 and 200 nodes it measures the rest figures of a simulated join (docs/performance.md).

The counts come from each node's own ``tunmesh_mesh_control_requests_total`` and
``tunmesh_mesh_control_bytes_total`` (``tunmesh.mesh.traffic``).
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from twisted.internet.task import Clock  # noqa: E402

from tests.unit.mesh_support import START, Node, advance  # noqa: E402
from tunmesh.auth.keys import random_id  # noqa: E402
from tunmesh.mesh.gossip import table_digest  # noqa: E402
from tunmesh.mesh.pool import REST_RENEWAL  # noqa: E402
from tunmesh.mesh.settings import PeerTiming  # noqa: E402
from tunmesh.mesh.structs import Registration  # noqa: E402
from tunmesh.testing import FakeNetwork, HeapClock  # noqa: E402

#: the shipped registration timings (config defaults), as a deployment runs them
SHIPPED = dict(
    groom_interval=5.0,
    bootstrap_retry_interval=15.0,
    local_timing=PeerTiming(5.0, 30.0),
    mesh_timing=PeerTiming(30.0, 120.0),
    request_timeout=5.0,
)


@dataclass
class SimResult:
    nodes: int
    join_seconds: float | None
    join_requests_per_node: float
    join_kbytes_per_node: float
    rest_requests_per_node_minute: float
    rest_answered_per_node_minute: float
    rest_kbytes_per_node_minute: float
    rest_register_bytes_per_message: float
    rest_requests_max_node_minute: float
    wall_seconds: float


def address(n: int) -> str:
    """Node n's overlay address: all nodes in one /16, so every peer is ``local`` (renewed every 5 s)."""
    return f"100.64.{n // 250}.{n % 250 + 1}/16"


def build(count: int, clock: Clock, net: FakeNetwork, links: bool = True) -> list[Node]:
    first = "https://n1.test:4567"
    nodes = [
        Node(net, clock, n, (first,), address=address(n), max_nodes=max(256, count + 8), **SHIPPED)  # type: ignore[arg-type]
        for n in range(1, count + 1)
    ]
    if links:
        for node in nodes:
            node.membership.link_age = modelled_links(node)
    return nodes


def modelled_links(node: Node) -> Callable[[str], float | None]:
    """A data plane's ``link_age`` as at rest: a peer's link is up once there is an outbound session to it."""
    sessions = node.sessions

    def link_age(peer_id: str) -> float | None:
        return 0.0 if sessions.outbound(peer_id) is not None else None

    return link_age


def seed_converged(nodes: list[Node], rng: random.Random, rest_interval: float) -> None:
    """Give every node the state a finished join leaves, built directly instead of by the join: every
    other node in its pool (its registration accepted, holding that node's table as hints), a session
    each way with every peer, the gossip digests of a pair whose tables agree (each holds the other's
    current table), and the last exchange of each pair spread over the past ``rest_interval``.

    For N where the simulated join is out of reach (its whole tables on first contact are ≈ N³ bytes:
    ≈ 75 GB of JSON at 500 nodes); the rest that follows runs the real protocol. ``--seeded`` at 50
    nodes measures the same rest figures as a real join (docs/performance.md), which checks the seed."""
    infos = [n.membership.local for n in nodes]
    tables = {n.id: tuple(i for i in infos if i.id != n.id) for n in nodes}
    digests = {peer_id: table_digest(table) for peer_id, table in tables.items()}
    for node in nodes:
        node.membership.gossip.digest(tables[node.id])
    for a in nodes:
        membership = a.membership
        for group in membership.bootstrapper.groups:
            group.reached.add(nodes[0].id if a is not nodes[0] else nodes[1].id)
        for b in nodes:
            if b is a:
                continue
            # b's last registration, as a converged b sends it: its whole table, naming the one it holds of a
            seen = Registration(
                b.membership.local, tables[b.id], 0, 0, remote_digest=digests[b.id], known_digest=digests[a.id]
            )
            a.pool.upsert(seen.local, seen.seq, seen.remote)
            membership.gossip.accepted(b.id, seen)
            peer = a.pool.get(b.id)
            assert peer is not None
            peer.registered_with = True
            kid, secret = random_id(), secrets.token_bytes(32)
            a.sessions.install_outbound(b.id, kid, secret)
            b.sessions.install_inbound(a.id, kid, secret)
        membership.joined()
    now = nodes[0].clock.seconds()
    for a in nodes:  # one exchange renews a pair: one last-exchange time for both sides
        for b in nodes:
            if a.id < b.id:
                pa, pb = a.pool.get(b.id), b.pool.get(a.id)
                assert pa is not None and pb is not None
                pa.last_renewal = pb.last_renewal = now - rng.uniform(0, rest_interval)


def meshed(nodes: list[Node]) -> bool:
    want = len(nodes) - 1
    for node in nodes:
        if len(node.pool) < want:
            return False
        sessions = node.sessions
        if sum(1 for p in node.pool if sessions.outbound(p.id) is not None) < want:
            return False
    return True


def totals(nodes: list[Node]) -> tuple[list[float], list[float], float, float, list[float]]:
    """Per node: requests sent, body bytes sent + received; registrations: count and bytes (all nodes,
    as a client: request and response bodies); per node: requests answered."""
    requests = [n.counter("tunmesh_mesh_control_requests_total", direction="out") for n in nodes]
    answered = [n.counter("tunmesh_mesh_control_requests_total", direction="in") for n in nodes]
    volume = [n.counter("tunmesh_mesh_control_bytes_total") for n in nodes]
    reg_count = sum(n.counter("tunmesh_mesh_control_requests_total", kind="register", direction="out") for n in nodes)
    reg_bytes = sum(n.counter("tunmesh_mesh_control_bytes_total", kind="register") for n in nodes) / 2
    return requests, volume, reg_count, reg_bytes, answered


def simulate(
    count: int,
    rest: float = 240.0,
    settle: float = 90.0,
    join_limit: float = 300.0,
    tick: float = 0.5,
    links: bool = True,
    progress: Callable[[str], None] | None = None,
    seeded: bool = False,
) -> SimResult:
    """Start ``count`` nodes together, wait for the full mesh (at most ``join_limit`` simulated seconds),
    let it settle ``settle`` seconds (the join's follow-ups), then count ``rest`` seconds. ``progress``
    gets a line at each phase's end and every 10 simulated seconds (a 500-node run takes a while)."""
    wall = time.monotonic()

    def report(phase: str, at: float) -> None:
        if progress is not None:
            progress(f"{count} nodes: {phase} {at:.1f} sim s, {time.monotonic() - wall:.0f} wall s")

    def run(phase: str, seconds: float) -> None:
        for i in range(1, int(seconds / tick) + 1):
            advance(clock, tick, tick)
            if (i * tick) % 10 == 0:
                report(phase, i * tick)

    clock = HeapClock()
    clock.advance(START)
    net = FakeNetwork(direct=True)
    nodes = build(count, clock, net, links)
    try:
        if seeded:
            timing = SHIPPED["local_timing"]
            assert isinstance(timing, PeerTiming)
            seed_converged(nodes, random.Random(count), REST_RENEWAL * timing.stale_threshold)
            report("seeded a converged mesh;", 0.0)
        for node in nodes:
            node.start()
        join: float | None = None
        elapsed = 0.0
        while elapsed < join_limit:
            advance(clock, tick, tick)
            elapsed += tick
            if elapsed % 10 == 0:
                report("joining", elapsed)
            if meshed(nodes):
                join = elapsed
                break
        joined_requests, joined_bytes, _, _, _ = totals(nodes)
        report(
            f"full mesh after {join} s ({statistics.mean(joined_requests):.0f} requests, "
            f"{statistics.mean(joined_bytes) / 1000:.0f} kB per node); joined at",
            elapsed,
        )
        run("settling", settle)  # renewals of the join are past, rotations not yet due
        before = totals(nodes)
        run("at rest", rest)
        after = totals(nodes)
        per_minute = 60.0 / rest
        requests = [(a - b) * per_minute for a, b in zip(after[0], before[0], strict=True)]
        volume = [(a - b) * per_minute for a, b in zip(after[1], before[1], strict=True)]
        answered = [(a - b) * per_minute for a, b in zip(after[4], before[4], strict=True)]
        reg_count = after[2] - before[2]
        reg_bytes = after[3] - before[3]
        return SimResult(
            nodes=count,
            join_seconds=join,
            join_requests_per_node=statistics.mean(joined_requests),
            join_kbytes_per_node=statistics.mean(joined_bytes) / 1000,
            rest_requests_per_node_minute=statistics.mean(requests),
            rest_answered_per_node_minute=statistics.mean(answered),
            rest_kbytes_per_node_minute=statistics.mean(volume) / 1000,
            rest_register_bytes_per_message=reg_bytes / reg_count if reg_count else 0.0,
            rest_requests_max_node_minute=max(requests),
            wall_seconds=time.monotonic() - wall,
        )
    finally:
        for node in nodes:
            node.crash()
        clock.advance(0)


def table(results: list[SimResult]) -> str:
    head = (
        "| nodes | full mesh after (sim s) | join: requests / kB per node | rest: requests sent per node per min "
        "(max node) | rest: answered per node per min | rest: kB per node per min | bytes per registration "
        "(req+resp) | wall s |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    rows = [
        f"| {r.nodes} | {'no mesh' if r.join_seconds is None else f'{r.join_seconds:.1f}'} | "
        f"{r.join_requests_per_node:.0f} / {r.join_kbytes_per_node:.0f} | "
        f"{r.rest_requests_per_node_minute:.0f} ({r.rest_requests_max_node_minute:.0f}) | "
        f"{r.rest_answered_per_node_minute:.0f} | "
        f"{r.rest_kbytes_per_node_minute:.1f} | {r.rest_register_bytes_per_message:.0f} | {r.wall_seconds:.0f} |"
        for r in results
    ]
    return "\n".join([head, *rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="50,200,500", help="comma-separated node counts (default 50,200,500)")
    ap.add_argument(
        "--rest", type=float, default=240.0, help="simulated seconds counted at rest (default 240: two rest renewals)"
    )
    ap.add_argument("--settle", type=float, default=90.0, help="simulated seconds after the join (default 90)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    ap.add_argument(
        "--no-links", action="store_true", help="no packet links (renewals every reregistration_interval)"
    )
    ap.add_argument(
        "--seeded",
        action="store_true",
        help="start from a converged mesh built directly (the state a join leaves) instead of a simulated "
        "join: for N whose join is out of reach here (500); the join figures are then not measured",
    )
    args = ap.parse_args(argv)
    try:
        counts = [int(c) for c in args.nodes.split(",") if c.strip()]
    except ValueError:
        ap.error(f"--nodes: not a list of integers: {args.nodes!r}")
    if not counts or any(c < 2 for c in counts):
        ap.error("--nodes: every count must be at least 2")
    if args.rest <= 0 or args.settle < 0:
        ap.error("--rest must be positive and --settle not negative")
    results = []
    for count in counts:
        result = simulate(
            count,
            rest=args.rest,
            settle=args.settle,
            links=not args.no_links,
            seeded=args.seeded,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
        results.append(result)
        print(f"simulated {count} nodes in {result.wall_seconds:.0f} s", file=sys.stderr, flush=True)
        print(table([result]).splitlines()[-1], file=sys.stderr, flush=True)
    print(table(results))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0 if all(r.join_seconds is not None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
