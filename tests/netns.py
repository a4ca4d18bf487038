"""Network-namespace harness for real multi-node tests and the benchmark (needs root and ``ip netns``).

Layout: a hub namespace ``tmt-u<pid>[.<n>]`` holds bridge ``tmt-br0``; node namespaces ``tmt-<pid>[.<n>]-n<i>``
each get a veth ``eth0`` onto the bridge with 198.18.0.<i>/24 and loopback up (``routed``: 198.18.0.<i>/32,
everything through the hub at 198.18.0.254; see :class:`Underlay`). The host's root namespace is
never touched. Every name carries the creating pid, so :func:`cleanup_stale` can remove what a crashed run
left behind without touching a concurrent run. Cleanup (processes, then namespaces) runs on ``__exit__``,
at interpreter exit, and is idempotent.

Tests use :func:`requires_root_netns`: without root or ``ip netns`` they are skipped, unless
``TUNMESH_REQUIRE_NETNS=1`` (CI), which turns the skip into a failure.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import itertools
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent
PREFIX = "tmt-"
UNDERLAY_NET = "198.18.0"
CLONE_NEWNET = 0x40000000
# ``python -m twisted.scripts.twistd`` exits 0 doing nothing (the module has no __main__ guard); this is what
# the ``twistd`` console script runs, with this interpreter (the venv).
TWISTD = (sys.executable, "-c", "from twisted.scripts.twistd import run; run()")
_NAME_PID = re.compile(r"^tmt-[a-z]*(\d+)")
_seq = itertools.count(1)
_live: set[Underlay] = set()
_live_lock = threading.Lock()

F = TypeVar("F", bound=Callable[..., Any])


class NetnsError(RuntimeError):
    """A namespace command failed; the message has the command and its stderr."""


# --------------------------------------------------------------------------- availability / skipping


def netns_unavailable_reason() -> str | None:
    """Why namespace tests cannot run here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"`ip netns` unavailable: {r.stderr.strip()}"
    return None


def require_netns() -> None:
    """Skip (or, with ``TUNMESH_REQUIRE_NETNS=1``, fail) when namespaces are unavailable."""
    reason = netns_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("TUNMESH_REQUIRE_NETNS") == "1":
        raise AssertionError(f"TUNMESH_REQUIRE_NETNS=1 but namespace tests cannot run: {reason}")
    raise unittest.SkipTest(reason)


def require_root() -> None:
    """Skip (or, with ``TUNMESH_REQUIRE_ROOT_TESTS=1``, fail) unless the tests run as root (privilege drops,
    setpriv, files owned by other uids)."""
    if os.geteuid() == 0:
        return
    if os.environ.get("TUNMESH_REQUIRE_ROOT_TESTS") == "1":
        raise AssertionError("TUNMESH_REQUIRE_ROOT_TESTS=1 but the tests do not run as root")
    raise unittest.SkipTest("needs root (set TUNMESH_REQUIRE_ROOT_TESTS=1 to make this a failure)")


def requires_root_netns(obj: F) -> F:
    """Decorator for a test method or a test class (wraps ``setUp``) calling :func:`require_netns`."""
    if isinstance(obj, type):
        original = obj.setUp  # type: ignore[attr-defined]

        @functools.wraps(original)
        def setUp(self: Any) -> Any:
            require_netns()
            return original(self)

        obj.setUp = setUp  # type: ignore[attr-defined]
        return obj

    @functools.wraps(obj)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        require_netns()
        return obj(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------- commands


def _run(argv: Sequence[str], check: bool = True, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def list_namespaces() -> list[str]:
    """Names from ``ip netns list`` (the first word of each line)."""
    out = _run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_ns_pids(name: str) -> None:
    r = _run(["ip", "netns", "pids", name], check=False)
    pids = [int(p) for p in r.stdout.split() if p.isdigit() and int(p) != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 2
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _pid_alive(p) and not _is_zombie(p)]
            if pids:
                time.sleep(0.05)
        if not pids:
            return


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def delete_namespace(name: str) -> None:
    """Kill whatever runs in ``name`` and delete it (its veths and bridges go with it)."""
    _kill_ns_pids(name)
    _run(["ip", "netns", "del", name], check=False)


def cleanup_stale(include_live: bool = False) -> list[str]:
    """Delete ``tmt-`` namespaces whose creating process is gone (all of them with ``include_live``).

    Names without a pid are left alone unless ``include_live``. Returns what was deleted.
    """
    removed = []
    for name in list_namespaces():
        if not name.startswith(PREFIX):
            continue
        m = _NAME_PID.match(name)
        owner = int(m.group(1)) if m else None
        if include_live or (owner is not None and owner != os.getpid() and not _pid_alive(owner)):
            delete_namespace(name)
            removed.append(name)
    return removed


# --------------------------------------------------------------------------- namespaces


class Namespace:
    """One network namespace; ``run``/``popen`` execute inside it via ``ip netns exec``."""

    def __init__(self, name: str, address: str | None = None) -> None:
        self.name = name
        self.address = address
        self._procs: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"Namespace({self.name!r}, {self.address!r})"

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], check: bool = True, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run to completion inside the namespace (text output captured)."""
        return _run(self.argv(argv), check=check, timeout=timeout, **kw)

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a process inside the namespace; it is killed on cleanup. ``ip netns exec`` execs the command,
        so ``.pid`` is the process itself."""
        proc = subprocess.Popen(self.argv(argv), **kw)
        self._procs.append(proc)
        return proc

    def stop_processes(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._procs.clear()

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Switch the calling thread into this namespace (``setns``) and back: sockets, TUN devices and
        netlink handles created inside belong to the namespace for their whole life."""
        libc = ctypes.CDLL(None, use_errno=True)
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                raise OSError(e, f"setns into {self.name}: {os.strerror(e)}")
            try:
                yield
            finally:
                if libc.setns(own, CLONE_NEWNET) != 0:  # pragma: no cover - would leave the thread stranded
                    e = ctypes.get_errno()
                    raise OSError(e, f"setns back to the original namespace: {os.strerror(e)}")
        finally:
            os.close(target)
            os.close(own)

    # ------------------------------------------------------------------ loss injection (nftables)

    def inject_loss(self, percent: int, iface: str = "eth0", hook: str = "output") -> None:
        """Drop ``percent`` % of packets leaving (``output``/``postrouting``) or entering (``input``/
        ``prerouting``) through ``iface``, at random (nft ``numgen random mod 100``). No tc netem needed."""
        if not 0 <= percent <= 100:
            raise ValueError("percent must be 0..100")
        key = "oifname" if hook in ("output", "postrouting") else "iifname"
        self.clear_loss()
        if percent == 0:
            return
        match = "" if percent == 100 else f"numgen random mod 100 < {percent} "  # nft: the value must be < 100
        script = (
            "table inet tmt_loss {\n"
            f"  chain c {{ type filter hook {hook} priority 0; policy accept;\n"
            f'    {key} "{iface}" {match}drop\n'
            "  }\n}\n"
        )
        self.run(["nft", "-f", "-"], input=script)

    def clear_loss(self) -> None:
        self.run(["nft", "delete", "table", "inet", "tmt_loss"], check=False)


#: the hub's address on its bridge when the underlay is routed (never a node's: nodes are .1 to .250)
HUB_ADDRESS = f"{UNDERLAY_NET}.254"


class Underlay:
    """A bridge in a hub namespace and ``nodes`` namespaces attached to it (198.18.0.1..K/24).

    Use as a context manager. ``tag`` (lowercase letters) distinguishes users, e.g. ``b`` for the bench.

    ``routed``: each node holds its address as a /32 and reaches the others through the hub (198.18.0.254,
    forwarding, no ICMP redirects), as pods reach each other through their node's router, instead of
    over the shared link. Needed beyond about 30 nodes: on one link every node resolves every other
    (N(N-1) neighbour entries), and the kernel's IPv4 neighbour table is **shared by all namespaces**
    and capped by the root namespace's ``net.ipv4.neigh.default.gc_thresh3`` (1024 by default). Past it
    the kernel drops packets ("neighbor table overflow!", ``sendmsg: No buffer space available``): at 50
    nodes (2450 entries) connects and TLS handshakes between live nodes timed out for minutes. Routed,
    a node holds one entry (the hub) and the hub N. One more forwarding hop, in the kernel.
    """

    def __init__(self, nodes: int = 2, tag: str = "", mtu: int = 1500, routed: bool = False) -> None:
        if not 1 <= nodes <= 250:
            raise ValueError("nodes must be 1..250")
        if not re.fullmatch(r"[a-z]*", tag):
            raise ValueError("tag must be lowercase letters")
        self.count = nodes
        self.mtu = mtu
        self.routed = routed
        pid = os.getpid()
        n = next(_seq)
        suffix = "" if n == 1 else f".{n}"
        self.hub = Namespace(f"tmt-{tag}u{pid}{suffix}")
        self.nodes = [
            Namespace(f"tmt-{tag}{pid}{suffix}-n{i}", f"{UNDERLAY_NET}.{i}") for i in range(1, nodes + 1)
        ]
        self._created: list[Namespace] = []
        self._closed = False

    def __enter__(self) -> Underlay:
        with _live_lock:
            _live.add(self)
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create(self) -> None:
        for ns in (self.hub, *self.nodes):
            _run(["ip", "netns", "add", ns.name])
            self._created.append(ns)
            ns.run(["ip", "link", "set", "lo", "up"])
        hub = self.hub
        hub.run(["ip", "link", "add", "tmt-br0", "type", "bridge"])
        hub.run(["ip", "link", "set", "tmt-br0", "mtu", str(self.mtu), "up"])
        if self.routed:
            hub.run(["ip", "addr", "add", f"{HUB_ADDRESS}/24", "dev", "tmt-br0"])
            for key in ("net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.tmt-br0.send_redirects=0",
                        "net.ipv4.ip_forward=1"):
                hub.run(["sysctl", "-q", "-w", key])
        for i, ns in enumerate(self.nodes, 1):
            port = f"p{i}"
            hub.run(["ip", "link", "add", port, "mtu", str(self.mtu), "type", "veth", "peer", "name", "eth0",
                     "mtu", str(self.mtu), "netns", ns.name])
            hub.run(["ip", "link", "set", port, "master", "tmt-br0", "up"])
            ns.run(["ip", "addr", "add", f"{ns.address}/{32 if self.routed else 24}", "dev", "eth0"])
            ns.run(["ip", "link", "set", "eth0", "up"])
            if self.routed:
                ns.run(["ip", "route", "add", f"{HUB_ADDRESS}/32", "dev", "eth0"])
                ns.run(["ip", "route", "add", f"{UNDERLAY_NET}.0/24", "via", HUB_ADDRESS, "dev", "eth0"])

    def close(self) -> None:
        """Stop processes, delete every namespace created. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        for ns in (*self.nodes, self.hub):
            ns.stop_processes()
        for ns in reversed(self._created):
            delete_namespace(ns.name)
        self._created.clear()
        with _live_lock:
            _live.discard(self)

    def wait_reachable(self, timeout: float = 10) -> None:
        """Until every node pings node 1 over the bridge (bridge ports start in listening state briefly)."""
        deadline = time.monotonic() + timeout
        first = self.nodes[0]
        for ns in self.nodes[1:]:
            while ns.run(["ping", "-c", "1", "-W", "1", first.address or ""], check=False).returncode != 0:
                if time.monotonic() > deadline:
                    raise NetnsError(f"{ns.name} cannot reach {first.address}")
                time.sleep(0.1)


@atexit.register
def _cleanup_at_exit() -> None:
    with _live_lock:
        live = list(_live)
    for underlay in live:
        underlay.close()


# --------------------------------------------------------------------------- tunmesh nodes


def write_configs(workdir: Path, underlay: Underlay, make_config: Callable[[int, Namespace], str]) -> list[Path]:
    """Write ``node<i>.yaml`` for every node from ``make_config(i, ns)`` (i from 1)."""
    workdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ns in enumerate(underlay.nodes, 1):
        path = workdir / f"node{i}.yaml"
        path.write_text(make_config(i, ns))
        path.chmod(0o600)
        paths.append(path)
    return paths


class NodeProcess:
    """A ``twistd -n tunmesh --config FILE`` running in a namespace."""

    def __init__(self, ns: Namespace, config: Path, log_path: Path, base_url: str, proc: subprocess.Popen[Any]) -> None:
        self.ns = ns
        self.config = config
        self.log_path = log_path
        self.base_url = base_url.rstrip("/")
        self.proc = proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def get(self, path: str, timeout: float = 5) -> tuple[int, str]:
        """GET over https from inside the namespace (certificate not verified: a status probe)."""
        r = self.ns.run(
            ["curl", "-k", "-s", "-m", str(timeout), "-o", "-", "-w", "\n%{http_code}", self.base_url + path],
            check=False, timeout=timeout + 5,
        )
        body, _, code = r.stdout.rpartition("\n")
        return (int(code) if code.isdigit() else 0), body

    def wait_ready(self, timeout: float = 30) -> None:
        """Until ``/ready`` answers 200; raises with the log tail if the node exits or the time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NetnsError(f"node in {self.ns.name} exited ({self.proc.returncode}):\n{self.log_tail()}")
            code, _ = self.get("/ready", timeout=2)
            if code == 200:
                return
            time.sleep(0.2)
        raise NetnsError(f"node in {self.ns.name} not ready after {timeout}s:\n{self.log_tail()}")

    def metrics(self) -> str:
        code, body = self.get("/metrics")
        if code != 200:
            raise NetnsError(f"/metrics on {self.ns.name} answered {code}")
        return body

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the twistd log and of stdout/stderr (where a startup traceback lands)."""
        parts = []
        for path in (self.log_path, self.log_path.with_suffix(".stdout")):
            try:
                text = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            except OSError:
                continue
            if text:
                parts.append(f"--- {path.name}\n{text}")
        return "\n".join(parts) or "(no log output)"

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def kill(self) -> int:
        """SIGKILL: the node gets no chance to tell its peers (a crash)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode

    def stop(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_node(ns: Namespace, config: Path, base_url: str, log_path: Path | None = None,
               env: dict[str, str] | None = None, via: str = "twistd") -> NodeProcess:
    """Start ``twistd -n --pidfile= --logfile=LOG tunmesh --config FILE`` (see ``TWISTD``), or with
    ``via="run"`` the console command ``tunmesh run --config FILE --logfile LOG``, in ``ns`` with this
    interpreter (the venv), the repository first on ``PYTHONPATH`` so this checkout's code runs."""
    log_path = log_path or config.with_suffix(".log")
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), full_env.get("PYTHONPATH")]))
    full_env.update(env or {})
    if via == "run":
        argv = [sys.executable, "-m", "tunmesh", "run", "--config", str(config), "--logfile", str(log_path)]
    elif via == "twistd":
        argv = [*TWISTD, "-n", "--pidfile=", f"--logfile={log_path}", "tunmesh", "--config", str(config)]
    else:
        raise ValueError(f"via must be 'twistd' or 'run', not {via!r}")
    out = open(log_path.with_suffix(".stdout"), "wb")
    try:
        proc = ns.popen(argv, cwd=str(REPO_ROOT), env=full_env, stdout=out, stderr=subprocess.STDOUT)
    finally:
        out.close()
    return NodeProcess(ns, config, log_path, base_url, proc)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt()


@contextmanager
def bench_workdir(prog: str, workdir: Path | None, prefix: str) -> Iterator[Path]:
    """The frame of a ``contrib/bench`` script that starts namespaces: exit 2 naming the reason when
    network namespaces are unavailable, remove stale ``tmt-`` namespaces, turn SIGTERM into
    ``KeyboardInterrupt`` (so the run's namespaces are removed on the way out), and yield the work
    directory: ``workdir``, or a ``tmt-<prefix>-`` temporary one removed afterwards."""
    reason = netns_unavailable_reason()
    if reason:
        print(f"{prog}: {reason}", file=sys.stderr)
        raise SystemExit(2)
    stale = cleanup_stale()
    if stale:
        print(f"removed stale namespaces: {', '.join(stale)}", file=sys.stderr)
    signal.signal(signal.SIGTERM, _interrupt)
    if workdir is not None:
        yield workdir
        return
    with tempfile.TemporaryDirectory(prefix=f"tmt-{prefix}-") as tmp:
        yield Path(tmp)


def bench_script(name: str) -> Any:
    """``contrib/bench/<name>.py`` as a module (the bench scripts are not a package), loaded once; for the
    tests of what the scripts generate and parse."""
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "contrib" / "bench" / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"contrib/bench/{name}.py cannot be loaded")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all threads) from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- a TUN pair relay (baseline)


class TunPairRelay:
    """Copies packets between two TUN devices in a thread: the simplest possible Python data plane, used as
    a test fixture (the reverse path for TCP through a TUN) and as the benchmark's baseline.

    Packets are adapted between offload and plain devices with :func:`tunmesh.tun.gso.adapt_for_device`,
    so a mixed pair exercises software segmentation against the real kernel.
    """

    def __init__(self, a: Any, b: Any, on_read: Callable[[str, bytes], None] | None = None) -> None:
        self.a, self.b = a, b
        self.on_read = on_read
        self.errors: list[BaseException] = []
        self.adapt_errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tun-relay", daemon=True)

    def start(self) -> TunPairRelay:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> TunPairRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _forward(self, src: Any, dst: Any, label: str) -> None:
        from tunmesh.tun.gso import GSOError, adapt_for_device

        same = src.offload_active == dst.offload_active
        packets = src.read_batch(max_packets=64)
        if self.on_read is not None:
            for p in packets:
                self.on_read(label, p)
        if same:
            dst.write_batch(packets)
            return
        out: list[bytes] = []
        for p in packets:
            try:
                out.extend(adapt_for_device(p, has_vnet_hdr=src.offload_active, device_offload=dst.offload_active))
            except (GSOError, ValueError):
                self.adapt_errors += 1
        dst.write_batch(out)

    def _loop(self) -> None:
        a, b = self.a, self.b
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([a, b], [], [], 0.1)
                if a in ready:
                    self._forward(a, b, "a")
                if b in ready:
                    self._forward(b, a, "b")
        except BaseException as e:  # surfaced by the test through .errors
            self.errors.append(e)


def iperf3_json(output: str) -> dict[str, Any]:
    """Parse ``iperf3 -J`` output, raising with its error text."""
    data = json.loads(output)
    if "error" in data:
        raise NetnsError(f"iperf3: {data['error']}")
    return data


__all__ = [
    "NetnsError",
    "Namespace",
    "NodeProcess",
    "TunPairRelay",
    "Underlay",
    "bench_workdir",
    "cleanup_stale",
    "delete_namespace",
    "iperf3_json",
    "list_namespaces",
    "netns_unavailable_reason",
    "process_cpu_seconds",
    "require_netns",
    "requires_root_netns",
    "start_node",
    "write_configs",
]

