"""A real tunmesh cluster for the namespace tests: N ``twistd tunmesh`` processes in N namespaces.

Node i lives in namespace ``tmt-...-n<i>`` at 198.18.0.<i> (underlay), advertises
``https://198.18.0.<i>:4567/``, and owns 100.64.0.<i> and fd7e:7e57::<i> on the overlay. All nodes share one
self-signed certificate and one cluster secret, and bootstrap from node 1 only, so every other
relationship comes from gossip.
"""

from __future__ import annotations

import functools
import os
import re
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.netns import NetnsError, NodeProcess, Underlay, process_cpu_seconds, start_node
from tunmesh.cli import generate_secret
from tunmesh.tls.certs import write_self_signed

PORT = 4567
OVERLAY_V4 = "100.64.0"
OVERLAY_V6 = "fd7e:7e57::"
UNPRIVILEGED_UID = 65534
#: every node bootstraps from node 1
BOOT = ["https://198.18.0.1:4567/"]
#: timings under which a peer is never groomed for silence during a test (only a leave removes it)
SLOW_STALE = {"local": {"reregistration_interval": 1, "stale_threshold": 120}}


def overlay_v4(i: int) -> str:
    return f"{OVERLAY_V4}.{i}"


def overlay_v6(i: int) -> str:
    return f"{OVERLAY_V6}{i}"


def node_config(
    i: int,
    bootstrap: list[str],
    timing: Mapping[str, Any] | None = None,
    session_max_age: float | None = None,
    offload: bool = True,
    packet_metrics: bool = False,
) -> str:
    """The YAML config of node ``i`` (cert, key and secret files sit one directory up)."""
    reg: dict[str, Any] = {"groom_interval": 1, "bootstrap_retry_interval": 1}
    reg.update(timing or {})
    reg_lines = "\n".join(f"        {k}: {v}" for k, v in reg.items() if not isinstance(v, dict))
    sub = "\n".join(
        f"        {k}:\n" + "\n".join(f"          {kk}: {vv}" for kk, vv in v.items())
        for k, v in reg.items()
        if isinstance(v, dict)
    )
    auth = (
        f"\n      auth:\n        session_max_age: {session_max_age}\n        early_validity_window: 0.5"
        f"\n        validity_window: {min(1.5, session_max_age / 2)}"
        if session_max_age
        else ""
    )
    urls = "\n".join(f"          - {u}" for u in bootstrap) or "          []"
    return f"""\
tun_mesh:
  config_version: 1.1
  clustering:
    control_api_advertise_url: https://198.18.0.{i}:{PORT}/
    bootstrap_groups:
      test:
        bootstrap_node_urls:
{urls}
    auth:
      secret_file: ../cluster.secret
  control_api:
    listen_port: {PORT}
    ssl:
      cert_file_path: ../cert.pem
      key_file_path: ../key.pem
  logging:
    level: info
  monitoring:
    method: prometheus
    enable_node_packet_metrics: {"true" if packet_metrics else "false"}
    prometheus:
      base_labels:
        env_name: netns_test
  networking:
    offload: {"true" if offload else "false"}
    ipv4:
      network_cidr: {OVERLAY_V4}.0/24
      node_address_cidr: {overlay_v4(i)}/24
    ipv6:
      network_cidr: {OVERLAY_V6}/64
      node_address_cidr: {overlay_v6(i)}/64
  process:
    uid: {UNPRIVILEGED_UID}
    timing:{auth}
      registrations:
{reg_lines}
{sub}
""".rstrip() + "\n"


def with_admin_socket(config: str, path: Path) -> str:
    """``config`` with ``process.admin_socket: path`` unless it sets one already."""
    if "admin_socket:" in config or "\n  process:\n" not in config:
        return config
    return config.replace("\n  process:\n", f"\n  process:\n    admin_socket: {path}\n", 1)



#: the shipped groom and bootstrap timings (``node_config`` speeds them up for most tests)
SHIPPED_TIMING = {"groom_interval": 5, "bootstrap_retry_interval": 15}


def shipped_config(i: int) -> str:
    """Node ``i`` with the shipped timings, bootstrapping from node 1's URL only, as pods behind a headless
    Service (node 1 skips its own URL): what the join benchmark and the join tests measure."""
    return node_config(i, bootstrap=[f"https://198.18.0.1:{PORT}/"], timing=SHIPPED_TIMING)

class Cluster:
    """Owns the configs and processes of one test's nodes (the Underlay owns the namespaces)."""

    def __init__(self, underlay: Underlay, workdir: Path, make_config: Callable[[int], str]) -> None:
        self.underlay = underlay
        self.workdir = workdir
        self.make_config = make_config
        self.nodes: dict[int, NodeProcess] = {}
        workdir.mkdir(parents=True, exist_ok=True)
        workdir.chmod(0o755)
        (workdir / "cluster.secret").write_text(generate_secret() + "\n")
        write_self_signed(workdir / "cert.pem", workdir / "key.pem", hostnames=("tunmesh.local",))
        for i in range(1, underlay.count + 1):
            d = workdir / f"node{i}"
            d.mkdir(exist_ok=True)
            (d / "config.yaml").write_text(with_admin_socket(make_config(i), self.admin_socket(i)))

    def admin_socket(self, i: int) -> Path:
        """Node i's admin socket: one per node, since the nodes share this host's filesystem."""
        return self.workdir / f"node{i}" / "admin.sock"

    def tunmesh(self, i: int, *args: str, timeout: float = 30) -> Any:
        """Run ``tunmesh ARGS --socket <node i's admin socket>`` in node i's namespace (as root)."""
        import sys

        argv = [sys.executable, "-m", "tunmesh", *args, "--socket", str(self.admin_socket(i))]
        return self.ns(i).run(argv, check=False, timeout=timeout)

    def ns(self, i: int) -> Any:
        return self.underlay.nodes[i - 1]

    def start(self, i: int, via: str = "twistd", env: dict[str, str] | None = None) -> NodeProcess:
        """Start node i with ``twistd tunmesh`` or (``via="run"``) ``tunmesh run``."""
        d = self.workdir / f"node{i}"
        node = start_node(
            self.ns(i), d / "config.yaml", f"https://198.18.0.{i}:{PORT}", log_path=d / "node.log", via=via,
            env=env,
        )
        self.nodes[i] = node
        return node

    def start_all(self, ready_timeout: float = 60) -> None:
        for i in range(1, self.underlay.count + 1):
            self.start(i)
        for node in self.nodes.values():
            node.wait_ready(timeout=ready_timeout)

    def stop(self, i: int) -> None:
        node = self.nodes.pop(i, None)
        if node is not None:
            node.stop()

    def kill(self, i: int) -> None:
        node = self.nodes.pop(i, None)
        if node is not None:
            node.kill()

    def stop_all(self) -> None:
        for i in list(self.nodes):
            self.stop(i)

    def check_running(self) -> None:
        """Raise (with its log tail) if a node this cluster started has exited."""
        for i, node in self.nodes.items():
            if node.proc.poll() is not None:
                raise NetnsError(f"node {i} exited ({node.proc.returncode})\n{node.log_tail()}")

    def logs(self) -> str:
        return "\n".join(f"=== node {i}\n{n.log_tail(60)}" for i, n in sorted(self.nodes.items()))

    def peers_of(self, i: int) -> set[str]:
        """Peer ids node i lists (``tunmesh peers``: the signed, cluster-authenticated view)."""
        return set(self.peer_view(i)["peers"])

    def peer_view(self, i: int) -> dict[str, Any]:
        import json
        import sys

        d = self.workdir / f"node{i}"
        r = self.ns(i).run(
            [sys.executable, "-m", "tunmesh", "peers", "--config", str(d / "config.yaml")], check=False, timeout=30
        )
        if r.returncode != 0:
            raise NetnsError(f"tunmesh peers on node {i} failed: {r.stderr.strip()}")
        return dict(json.loads(r.stdout))

    def node_id(self, i: int) -> str:
        import json

        code, body = self.nodes[i].get("/tunmesh/control/v0/node_info")
        if code != 200:
            raise NetnsError(f"node_info of node {i} answered {code}")
        return str(json.loads(body)["id"])

    def wait_full_mesh(self, timeout: float = 60) -> dict[int, str]:
        """Until every running node lists every other running node; returns index -> node id."""
        deadline = time.monotonic() + timeout
        ids = {i: self.node_id(i) for i in self.nodes}
        while True:
            missing = {i: set(ids.values()) - {ids[i]} - self.peers_of(i) for i in self.nodes}
            if not any(missing.values()):
                return ids
            if time.monotonic() > deadline:
                raise NetnsError(f"no full mesh after {timeout}s, missing {missing}\n{self.logs()}")
            time.sleep(0.5)

    def metric(self, i: int, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` on node i whose labels include ``labels``."""
        total = 0.0
        for line in self.nodes[i].metrics().splitlines():
            if not line.startswith(name):
                continue
            m = re.match(r"^(\w+)(\{[^}]*\})?\s+(\S+)$", line)
            if not m or m.group(1) != name:
                continue
            have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(m.group(3))
        return total


@contextmanager
def running_cluster(
    underlay: Underlay, workdir: Path, make_config: Callable[[int], str], start: bool = True
) -> Iterator[Cluster]:
    cluster = Cluster(underlay, workdir, make_config)
    try:
        if start:
            cluster.start_all()
        yield cluster
    finally:
        cluster.stop_all()


# --------------------------------------------------------------------------- join timing (bench and tests)


@functools.cache
def _probe_tls_context() -> ssl.SSLContext:
    """One client context for every probe, without the system CA store (nothing is verified): a context
    per attempt (``ssl.create_default_context`` loads the store) cost the bench more CPU than the 50 nodes
    it polled while they started (wait_listening retries every node every 0.05 s)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class MetricsProbe:
    """Reads one node's ``/metrics`` over a kept-alive HTTPS connection opened inside its namespace.

    Cheaper than a ``curl`` per poll, which matters when 20 nodes are polled while they join on two cores.
    The certificate is not verified: this is a status probe, like :meth:`NodeProcess.get`.
    """

    def __init__(self, ns: Any, host: str, port: int = PORT) -> None:
        self.ns = ns
        self.host = host
        self.port = port
        self._conn: Any = None

    def samples(self, name: str) -> dict[str, float] | None:
        """``{label text: value}`` of the samples named ``name`` (None while the node does not answer).

        Asks for those alone (``/metrics?name[]=``): a poll of the whole exposition cost a node 3.8 ms of
        CPU at 20 peers, and a bench polling 50 joining nodes several times a second took a large share
        of two cores from the nodes it measured."""
        body = self._get(f"/metrics?name[]={name}")
        if body is None:
            return None
        out: dict[str, float] = {}
        for line in body.splitlines():
            m = re.match(r"^(\w+)(\{[^}]*\})?\s+(\S+)$", line)
            if m and m.group(1) == name:
                out[m.group(2) or ""] = float(m.group(3))
        return out

    def serving(self) -> bool:
        """Whether the node answers ``/health`` (its port is bound and its reactor runs)."""
        return self._get("/health") is not None

    def links_out(self) -> int | None:
        """Outbound packet links up (``tunmesh_links_connected{direction="out"}``)."""
        samples = self.samples("tunmesh_links_connected")
        if samples is None:
            return None
        return int(sum(v for k, v in samples.items() if 'direction="out"' in k))

    def _get(self, path: str) -> str | None:
        import http.client

        try:
            if self._conn is None:
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=5, context=_probe_tls_context())
                with self.ns.entered():
                    conn.connect()
                # never reconnect implicitly: that would open the socket outside the namespace
                conn.auto_open = 0
                self._conn = conn
            self._conn.request("GET", path)
            response = self._conn.getresponse()
            body = response.read()
            if response.status != 200:
                return None
            return body.decode("utf-8", "replace")
        except (OSError, http.client.HTTPException):
            self.close()
            return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def start_together(cluster: Cluster, order: list[int], spread: float = 0.0) -> list[float]:
    """Start the nodes in ``order``, evenly spread over ``spread`` seconds; their start times (monotonic)."""
    t0 = time.monotonic()
    started = []
    for k, i in enumerate(order):
        if spread > 0 and len(order) > 1:
            time.sleep(max(0.0, t0 + spread * k / (len(order) - 1) - time.monotonic()))
        cluster.start(i)
        started.append(time.monotonic())
    return started


def _poll_until(
    cluster: Cluster,
    nodes: Iterable[int],
    check: Callable[[MetricsProbe], bool],
    timeout: float,
    poll: float,
    failure: Callable[[dict[int, MetricsProbe], list[int]], str],
) -> dict[int, float]:
    """Poll ``nodes`` until ``check`` held for each; per node, the monotonic time of the round that first
    saw it. Each round probes the pending nodes all at once (a thread each: each probe enters its own
    namespace and waits on its own node), so it lasts as long as the slowest node's answer, not the sum
    of all: polled one after another, 50 nodes on a saturated machine took a round of up to ~45 s and the
    times measured with them were late by as much. After ``timeout`` s, :exc:`NetnsError` with
    ``failure(probes, missing)``."""
    probes = {i: MetricsProbe(cluster.ns(i), f"198.18.0.{i}") for i in nodes}
    done: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    try:
        with ThreadPoolExecutor(max_workers=max(1, len(probes))) as pool:
            while True:
                pending = sorted(set(probes) - set(done))
                results = list(pool.map(lambda i: check(probes[i]), pending))
                now = time.monotonic()
                done.update((i, now) for i, ok in zip(pending, results, strict=True) if ok)
                if len(done) == len(probes):
                    return done
                if now > deadline:
                    raise NetnsError(failure(probes, sorted(set(probes) - set(done))))
                cluster.check_running()
                time.sleep(poll)
    finally:
        for probe in probes.values():
            probe.close()


def wait_listening(cluster: Cluster, timeout: float, nodes: Iterable[int] | None = None) -> dict[int, float]:
    """Until every running node (or each of ``nodes``) serves ``/health``; per node, the monotonic time it
    first did (within one poll round: all nodes are probed at once)."""
    return _poll_until(
        cluster,
        cluster.nodes if nodes is None else nodes,
        MetricsProbe.serving,
        timeout,
        0.05,
        lambda probes, missing: f"nodes {missing} not serving after {timeout}s\n{cluster.logs()}",
    )


def wait_first_ping(cluster: Cluster, src: int, dst: int, timeout: float) -> float:
    """Ping ``dst``'s overlay address from ``src`` until a reply; the monotonic time of that reply."""
    deadline = time.monotonic() + timeout
    ns = cluster.ns(src)
    while True:
        r = ns.run(["ping", "-n", "-c", "1", "-W", "0.2", overlay_v4(dst)], check=False, timeout=10)
        if r.returncode == 0:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise NetnsError(f"no ping {src} -> {dst} through the overlay after {timeout}s\n{cluster.logs()}")
        cluster.check_running()
        time.sleep(0.05)


def wait_links_full_mesh(cluster: Cluster, timeout: float, poll: float = 0.25) -> dict[int, float]:
    """Until every running node has an outbound packet link to every other one.

    Returns, per node, the monotonic time at which it was first seen with all its links up. A link is up
    only once the peer is in the pool and a session exists, so this is the mesh a packet can use.
    """
    want = len(cluster.nodes) - 1

    def failure(probes: dict[int, MetricsProbe], missing: list[int]) -> str:
        counts = {i: probes[i].links_out() for i in missing}
        return f"no full mesh after {timeout}s; outbound links of unfinished nodes {counts}"

    return _poll_until(cluster, cluster.nodes, lambda p: (p.links_out() or 0) >= want, timeout, poll, failure)


def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    logs: Callable[[], str] = lambda: "",
    poll: float = 0.5,
) -> None:
    """Poll ``predicate`` every ``poll`` seconds until it is true; after ``timeout``, fail with ``logs()``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise NetnsError(f"timed out after {timeout}s waiting for {what}\n{logs()}")
        time.sleep(poll)


@contextmanager
def started_mesh(nodes: int, tag: str, timing: Mapping[str, Any]) -> Iterator[tuple[Cluster, dict[int, str]]]:
    """``nodes`` nodes bootstrapping from node 1, started and fully meshed; removed afterwards."""
    with Underlay(nodes=nodes, tag=tag) as underlay:
        workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"tmt-mesh{tag}-{os.getpid()}"
        with running_cluster(underlay, workdir, lambda i: node_config(i, bootstrap=BOOT, timing=timing)) as cluster:
            yield cluster, cluster.wait_full_mesh(timeout=60)


# --------------------------------------------------------------------------- resources (scale bench and tests)


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """``VmRSS`` (or another ``/proc/<pid>/status`` field in kB, e.g. ``RssAnon``) in MB (10^6 bytes)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / 1e6
    return 0.0


def metrics_text(cluster: Cluster, i: int) -> str:
    """Node i's ``/metrics`` over a new connection (a kept-alive one may have been closed while idle)."""
    probe = MetricsProbe(cluster.ns(i), f"198.18.0.{i}")
    try:
        for _attempt in range(3):
            body = probe._get("/metrics")
            if body is not None:
                return body
            time.sleep(0.5)
        raise NetnsError(f"node {i} does not answer /metrics")
    finally:
        probe.close()


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class NodeSample:
    """One reading of a node: CPU seconds, RSS, open files, and its ``/metrics`` figures."""

    def __init__(self, cluster: Cluster, i: int) -> None:
        pid = cluster.nodes[i].pid
        self.cpu = process_cpu_seconds(pid)
        self.at = time.monotonic()
        self.rss = rss_mb(pid)
        self.anon = rss_mb(pid, "RssAnon")
        self.fds = open_files(pid)
        body = metrics_text(cluster, i)
        lines = [ln for ln in body.splitlines() if ln and not ln.startswith("#")]
        self.series = len(lines)
        self.values: dict[str, float] = {}
        for line in lines:
            name_labels, _, value = line.rpartition(" ")
            try:
                self.values[name_labels] = float(value)
            except ValueError:
                continue

    def total(self, name: str, *fragments: str) -> float:
        return sum(
            v for k, v in self.values.items() if k.split("{")[0] == name and all(f in k for f in fragments)
        )
