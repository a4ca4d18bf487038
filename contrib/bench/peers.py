"""The peer VPNs that ``contrib/bench/bench.py --peers`` measures beside tunmesh, in the same two namespaces.

Each peer is set up as docs/performance.md ("Peers in the same run") describes and as the performance anchors
were measured: Debian's packages, their defaults, and only what two nodes need to reach each other directly.

* ``nebula``: a CA and two host certificates made with ``nebula-cert``, no lighthouse (each node names the
  other in ``static_host_map``), UDP 4242, firewall open to the other node;
* ``wireguard-go``: the userspace WireGuard, X25519 keys made here, applied with ``wg setconf``, UDP 51820;
* ``openvpn``: OpenVPN 2.6 point-to-point over UDP 1194 with TLS (``tls-server`` / ``tls-client``, a CA and
  two certificates made here, ECDHE only: ``dh none``), ``AES-256-GCM``, data channel offload off (the
  userspace OpenVPN the anchors measured).

Node ``i`` (1 or 2) is 198.18.0.i on the underlay and 100.64.0.i on the overlay; every peer's TUN has MTU
1400 (the relay's). The config text is built by pure functions (unit-tested in
``tests/unit/test_bench_peers.py``); :meth:`PeerVPN.start` writes it, starts both ends and returns their
processes, which the bench measures and stops.
"""

from __future__ import annotations

import abc
import base64
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tests.netns import Namespace, NetnsError

MTU = 1400
OVERLAY_PREFIX = 10
NEBULA_PORT = 4242
WIREGUARD_PORT = 51820
OPENVPN_PORT = 1194


def underlay(i: int) -> str:
    """Node ``i``'s underlay address (``tests.netns.Underlay``)."""
    return f"198.18.0.{i}"


def overlay(i: int) -> str:
    """Node ``i``'s overlay address, the same for every datapath."""
    return f"100.64.0.{i}"


def other(i: int) -> int:
    """The other node of the pair."""
    if i not in (1, 2):
        raise ValueError(f"node must be 1 or 2, not {i}")
    return 3 - i


class PeerError(RuntimeError):
    """A peer VPN could not be set up or did not come up; the message says why."""


# --------------------------------------------------------------------------- config text (pure)


def nebula_config(i: int, pki: Path) -> str:
    """Nebula YAML of node ``i``: certificates in ``pki``, the other node in ``static_host_map``."""
    j = other(i)
    any_rule = [{"port": "any", "proto": "any", "host": "any"}]
    config: dict[str, Any] = {
        "pki": {"ca": str(pki / "ca.crt"), "cert": str(pki / f"node{i}.crt"), "key": str(pki / f"node{i}.key")},
        "static_host_map": {overlay(j): [f"{underlay(j)}:{NEBULA_PORT}"]},
        "lighthouse": {"am_lighthouse": False, "hosts": []},
        "listen": {"host": underlay(i), "port": NEBULA_PORT},
        "punchy": {"punch": False},
        "tun": {"disabled": False, "dev": Nebula.device(i), "mtu": MTU},
        "logging": {"level": "warning", "format": "text"},
        "firewall": {"outbound": any_rule, "inbound": any_rule},
    }
    return yaml.safe_dump(config, sort_keys=False)


def wireguard_keypair() -> tuple[str, str]:
    """A fresh X25519 key pair as ``wg genkey`` / ``wg pubkey`` print them (base64)."""
    key = X25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(private).decode(), base64.b64encode(public).decode()


def wireguard_config(i: int, private_key: str, peer_public_key: str) -> str:
    """``wg setconf`` text of node ``i``: its key and port, the other node as its only peer."""
    j = other(i)
    return (
        "[Interface]\n"
        f"PrivateKey = {private_key}\n"
        f"ListenPort = {WIREGUARD_PORT}\n"
        "\n"
        "[Peer]\n"
        f"PublicKey = {peer_public_key}\n"
        f"AllowedIPs = {overlay(j)}/32\n"
        f"Endpoint = {underlay(j)}:{WIREGUARD_PORT}\n"
    )


def openvpn_config(i: int, pki: Path) -> str:
    """OpenVPN config of node ``i``: point-to-point TLS over UDP, node 1 the TLS server."""
    j = other(i)
    return "\n".join([
        f"dev {OpenVPN.device(i)}",
        "dev-type tun",
        "proto udp",
        f"local {underlay(i)}",
        f"lport {OPENVPN_PORT}",
        f"remote {underlay(j)} {OPENVPN_PORT}",
        f"ifconfig {overlay(i)} {overlay(j)}",
        "tls-server" if i == 1 else "tls-client",
        f"ca {pki / 'ca.crt'}",
        f"cert {pki / f'node{i}.crt'}",
        f"key {pki / f'node{i}.key'}",
        "dh none",
        "data-ciphers AES-256-GCM",
        f"tun-mtu {MTU}",
        "disable-dco",
        "verb 3",
        "",
    ])


# --------------------------------------------------------------------------- running them


class PeerVPN(abc.ABC):
    """One peer VPN: what it needs installed, how its two ends are configured and started."""

    name = ""
    #: executables that must be on ``PATH``
    binaries: tuple[str, ...] = ()
    #: the Debian packages that provide them
    packages: tuple[str, ...] = ()
    #: node i's TUN device is ``<prefix><i>``: one name per node, because wireguard-go's control socket
    #: (``/var/run/wireguard/<name>.sock``) is on the shared filesystem, not in the namespace
    prefix = ""

    @classmethod
    def device(cls, i: int) -> str:
        """Node ``i``'s TUN device."""
        other(i)  # 1 or 2
        return f"{cls.prefix}{i}"

    def missing(self) -> str | None:
        """Why this peer cannot run here (with the install hint), or ``None``."""
        absent = [b for b in self.binaries if shutil.which(b) is None]
        if not absent:
            return None
        return f"{', '.join(absent)} not installed (apt-get install -y {' '.join(self.packages)})"

    def version(self) -> str | None:
        """The installed Debian package's version, when it is one."""
        try:
            r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", self.packages[0]], capture_output=True,
                               text=True, check=False, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return (r.stdout.strip() or None) if r.returncode == 0 else None

    @abc.abstractmethod
    def prepare(self, workdir: Path) -> None:
        """Write keys and both configs into ``workdir``."""

    @abc.abstractmethod
    def launch(self, ns: Namespace, i: int, workdir: Path, log: IO[bytes]) -> subprocess.Popen[Any]:
        """Start node ``i``'s end in ``ns`` (configs already written)."""

    def start(self, nodes: Sequence[Namespace], workdir: Path) -> list[subprocess.Popen[Any]]:
        """Configure and start both ends; the processes (stopped by :func:`stop`)."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.prepare(workdir)
        procs: list[subprocess.Popen[Any]] = []
        try:
            for i, ns in enumerate(nodes[:2], 1):
                with open(workdir / f"node{i}.log", "wb") as log:
                    procs.append(self.launch(ns, i, workdir, log))
        except BaseException:
            self.stop(nodes, procs)
            raise
        return procs

    def stop(self, nodes: Sequence[Namespace], procs: Sequence[subprocess.Popen[Any]]) -> None:
        """Stop the processes and remove a device one of them left behind."""
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for i, ns in enumerate(nodes[:2], 1):
            ns.run(["ip", "link", "del", self.device(i)], check=False)

    def log_tail(self, workdir: Path, lines: int = 15) -> str:
        """The end of both ends' logs, for a failure message."""
        out = []
        for i in (1, 2):
            path = workdir / f"node{i}.log"
            text = path.read_text(errors="replace") if path.exists() else ""
            out.append(f"--- {self.name} node {i}\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(out)


def _run(argv: Sequence[str], cwd: Path) -> None:
    r = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=30, check=False)
    if r.returncode != 0:
        raise PeerError(f"{' '.join(argv)} failed ({r.returncode}): {(r.stderr or r.stdout).strip()}")


class Nebula(PeerVPN):
    name = "nebula"
    binaries = ("nebula", "nebula-cert")
    packages = ("nebula",)
    prefix = "tmt-neb"

    def prepare(self, workdir: Path) -> None:
        _run(["nebula-cert", "ca", "-name", "tmt-bench", "-duration", "24h"], workdir)
        for i in (1, 2):
            _run(["nebula-cert", "sign", "-name", f"node{i}", "-ip", f"{overlay(i)}/{OVERLAY_PREFIX}",
                  "-out-crt", f"node{i}.crt", "-out-key", f"node{i}.key"], workdir)
            (workdir / f"node{i}.yaml").write_text(nebula_config(i, workdir))

    def launch(self, ns: Namespace, i: int, workdir: Path, log: IO[bytes]) -> subprocess.Popen[Any]:
        return ns.popen(["nebula", "-config", str(workdir / f"node{i}.yaml")], stdout=log, stderr=subprocess.STDOUT)


class WireGuardGo(PeerVPN):
    name = "wireguard-go"
    binaries = ("wireguard-go", "wg")
    packages = ("wireguard-go", "wireguard-tools")
    prefix = "tmt-wg"

    def prepare(self, workdir: Path) -> None:
        keys = [wireguard_keypair() for _ in (1, 2)]
        for i in (1, 2):
            path = workdir / f"node{i}.conf"
            path.write_text(wireguard_config(i, keys[i - 1][0], keys[other(i) - 1][1]))
            path.chmod(0o600)

    def launch(self, ns: Namespace, i: int, workdir: Path, log: IO[bytes]) -> subprocess.Popen[Any]:
        dev = self.device(i)
        proc = ns.popen(["wireguard-go", "-f", dev], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while ns.run(["ip", "link", "show", dev], check=False).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise PeerError(f"wireguard-go did not create {dev} in {ns.name}")
            time.sleep(0.05)
        try:
            ns.run(["wg", "setconf", dev, str(workdir / f"node{i}.conf")])
            ns.run(["ip", "addr", "add", f"{overlay(i)}/{OVERLAY_PREFIX}", "dev", dev])
            ns.run(["ip", "link", "set", dev, "mtu", str(MTU), "up"])
        except NetnsError as e:
            proc.terminate()
            raise PeerError(str(e)) from e
        return proc


class OpenVPN(PeerVPN):
    name = "openvpn"
    binaries = ("openvpn",)
    packages = ("openvpn",)
    prefix = "tmt-ovpn"

    def prepare(self, workdir: Path) -> None:
        from tunmesh.tls.certs import make_ca, sign_node, write_issued

        ca = make_ca("tmt-bench openvpn CA", days=1)
        (workdir / "ca.crt").write_bytes(ca.cert_pem)
        for i in (1, 2):
            node = sign_node(ca, ips=[underlay(i)], common_name=f"node{i}", days=1)
            write_issued(node, workdir / f"node{i}.crt", workdir / f"node{i}.key", force=True)
            (workdir / f"node{i}.conf").write_text(openvpn_config(i, workdir))

    def launch(self, ns: Namespace, i: int, workdir: Path, log: IO[bytes]) -> subprocess.Popen[Any]:
        return ns.popen(["openvpn", "--config", str(workdir / f"node{i}.conf")], stdout=log,
                        stderr=subprocess.STDOUT)


#: the peers by name, in the order the bench measures them
PEERS: dict[str, PeerVPN] = {p.name: p for p in (Nebula(), WireGuardGo(), OpenVPN())}


def select(spec: str) -> list[PeerVPN]:
    """The peers a ``--peers`` value names (comma-separated; ``all`` or empty for every one)."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names or names == ["all"]:
        return list(PEERS.values())
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise ValueError(f"unknown peer {', '.join(unknown)}; known: {', '.join(PEERS)}")
    return [PEERS[n] for n in dict.fromkeys(names)]
