"""The address helper: the one privileged thing a dynamically addressed node still needs after the drop.

With dynamic addressing (docs/addressing.md) a node may have to move its TUN address long after it dropped
root (W19), and changing an address needs ``CAP_NET_ADMIN``. Rather than keep that capability in the
network-facing process (it could then rewrite every route and firewall rule of the pod), the node starts
this helper before the drop (docs/security.md, "Dynamic addressing and privileges"):

* a separate process (``python -m tunmesh.tun.addrhelper``), spawned as root while the TUN is opened; it
  switches to ``process.uid``/``gid`` itself, keeping **only** ``CAP_NET_ADMIN`` (``PR_SET_KEEPCAPS`` then
  ``capset``), sets ``no_new_privs`` and verifies all of it in ``/proc/self/status`` before it says ready;
* it speaks one line protocol over a socketpair, ``set <address>/<prefix>`` -> ``ok`` | ``error <why>``, and
  only ever touches the one TUN interface it was started for, with an address inside a configured
  ``network_cidr`` carrying exactly that network's prefix (not its network or broadcast address);
* it exits when the node closes the socket (or dies).

A compromised node process can therefore at worst renumber its own TUN inside the mesh range, which it
could do to its traffic anyway.
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from twisted.logger import Logger

from tunmesh.mesh.structs import IPInterface, IPNetwork
from tunmesh.privileges import PR_SET_NO_NEW_PRIVS, libc_prctl, parse_proc_status, read_proc_status

PR_SET_KEEPCAPS = 8
CAP_NET_ADMIN = 12
_CAP_VERSION_3 = 0x20080522
#: seconds the node waits for the helper to start, and for one answer
TIMEOUT = 10.0


class AddressChangeError(Exception):
    """The TUN address could not be changed; ``str()`` says why in one line."""


class AddressSetter(Protocol):
    """Moves the node's TUN address of one family (what the address observer calls)."""

    def set_address(self, address: IPInterface) -> None: ...

    def close(self) -> None: ...


# -- the helper process ---------------------------------------------------------------------------------


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def keep_only_net_admin(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` with ``CAP_NET_ADMIN`` as the only capability (effective and permitted),
    no supplementary groups and ``no_new_privs``; verified in ``/proc/self/status``. Raises ``OSError``."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc_prctl(PR_SET_KEEPCAPS, 1)
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = 1 << CAP_NET_ADMIN
    if libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")
    libc_prctl(PR_SET_KEEPCAPS, 0)
    libc_prctl(PR_SET_NO_NEW_PRIVS, 1)
    status = parse_proc_status(read_proc_status())
    want = 1 << CAP_NET_ADMIN
    for key, value in (("CapEff", want), ("CapPrm", want), ("CapInh", 0), ("CapAmb", 0)):
        if key in status and int(status[key], 16) != value:
            raise OSError(0, f"{key} is {status[key]} after the switch, expected {value:#x}")
    if status.get("NoNewPrivs") != "1" or any(int(v) != uid for v in status.get("Uid", "").split()):
        raise OSError(0, f"switch not complete: Uid {status.get('Uid')}, NoNewPrivs {status.get('NoNewPrivs')}")


def check_address(text: str, networks: Sequence[IPNetwork]) -> IPInterface:
    """Parse and police a requested address: inside one of ``networks``, with exactly its prefix, not its
    network or broadcast address. Raises ``ValueError`` with the reason."""
    iface = ipaddress.ip_interface(text)
    for net in networks:
        if iface.version == net.version and iface.ip in net:
            if iface.network.prefixlen != net.prefixlen:
                raise ValueError(f"{iface}: prefix must be /{net.prefixlen}")
            if net.prefixlen < net.max_prefixlen - 1 and iface.ip in (net.network_address, net.broadcast_address):
                raise ValueError(f"{iface}: network or broadcast address of {net}")
            return iface
    raise ValueError(f"{iface} is outside every network_cidr")


def replace_address(ifname: str, iface: IPInterface, networks: Sequence[IPNetwork], iproute: Any) -> None:
    """On ``ifname``: remove this family's addresses inside the mesh networks, add ``iface``."""
    family = socket.AF_INET if iface.version == 4 else socket.AF_INET6
    indexes = iproute.link_lookup(ifname=ifname)
    if not indexes:
        raise ValueError(f"interface {ifname} not found")
    index = indexes[0]
    for msg in iproute.get_addr(index=index, family=family):
        current = ipaddress.ip_interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
        if current == iface:
            return
        if any(current.ip in net for net in networks):
            iproute.addr("del", index=index, address=str(current.ip), prefixlen=current.network.prefixlen,
                          family=family)
    flags = 0x02 if iface.version == 6 else 0  # IFA_F_NODAD: usable at once
    iproute.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen, family=family,
                 flags=flags)


def serve(sock: socket.socket, ifname: str, networks: Sequence[IPNetwork], iproute: Any) -> None:
    """Answer ``set`` lines until the node closes the socket."""
    reader = sock.makefile("rb")
    for raw in reader:
        line = raw.decode("ascii", "replace").strip()
        verb, _, arg = line.partition(" ")
        try:
            if verb != "set":
                raise ValueError(f"unknown request {verb!r}")
            replace_address(ifname, check_address(arg, networks), networks, iproute)
            answer = "ok"
        except Exception as e:  # one line back to the node, whatever went wrong
            answer = "error " + " ".join(str(e).split())[:400]
        sock.sendall(answer.encode("ascii", "replace") + b"\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunmesh.tun.addrhelper")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--ifname", required=True)
    parser.add_argument("--network", action="append", required=True)
    parser.add_argument("--uid", type=int)
    parser.add_argument("--gid", type=int)
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    try:
        from pyroute2 import IPRoute  # imported before the switch: the new uid may not read the interpreter

        networks = [ipaddress.ip_network(n) for n in args.network]
        if os.geteuid() == 0 and args.uid:
            keep_only_net_admin(args.uid, args.gid if args.gid is not None else _primary_gid(args.uid))
        iproute = IPRoute()
    except Exception as e:
        sock.sendall(b"error " + " ".join(str(e).split()).encode("ascii", "replace")[:400] + b"\n")
        return 1
    sock.sendall(f"ready {os.getpid()}\n".encode("ascii"))
    with iproute:
        serve(sock, args.ifname, networks, iproute)
    return 0


def _primary_gid(uid: int) -> int:
    """As the node's own drop does: the uid's primary group, or the uid without a passwd entry."""
    import pwd

    try:
        return int(pwd.getpwuid(uid).pw_gid)
    except KeyError:
        return uid


# -- the node's side ------------------------------------------------------------------------------------


class AddressHelper:
    """The node's handle on the helper process. Requests block the caller for a few milliseconds (an
    address moves rarely); every failure is :class:`AddressChangeError`."""

    log = Logger()

    def __init__(self, process: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.process = process
        self._sock = sock
        self._reader = sock.makefile("rb")
        hello = self._read("starting")
        if not hello.startswith("ready "):
            self.close()
            raise AddressChangeError(f"address helper failed to start: {hello}")
        self.pid = process.pid

    @classmethod
    def spawn(
        cls,
        ifname: str,
        networks: Sequence[IPNetwork],
        uid: int | None,
        gid: int | None,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
    ) -> AddressHelper:
        """Start the helper (call as root, before the privilege drop)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.settimeout(TIMEOUT)
        cmd = [python, "-m", "tunmesh.tun.addrhelper", "--fd", str(theirs.fileno()), "--ifname", ifname]
        for net in networks:
            cmd += ["--network", str(net)]
        if uid is not None:
            cmd += ["--uid", str(uid)]
        if gid is not None:
            cmd += ["--gid", str(gid)]
        try:
            process = subprocess.Popen(cmd, pass_fds=(theirs.fileno(),), env=dict(env) if env is not None else None,
                                       stdin=subprocess.DEVNULL)
        except OSError as e:
            ours.close()
            raise AddressChangeError(f"cannot start the address helper: {e}") from None
        finally:
            theirs.close()
        return cls(process, ours)

    def _read(self, what: str) -> str:
        try:
            line = self._reader.readline()
        except OSError as e:
            raise AddressChangeError(f"address helper did not answer ({what}): {e}") from None
        if not line:
            raise AddressChangeError(f"address helper exited ({what}), status {self.process.poll()}")
        return line.decode("ascii", "replace").strip()

    def set_address(self, address: IPInterface) -> None:
        """Move the TUN's address of ``address``'s family to ``address``."""
        try:
            self._sock.sendall(f"set {address}\n".encode("ascii"))
        except OSError as e:
            raise AddressChangeError(f"address helper unreachable: {e}") from None
        answer = self._read(f"set {address}")
        if answer != "ok":
            raise AddressChangeError(f"address helper refused {address}: {answer.removeprefix('error ')}")

    def close(self) -> None:
        """Stop the helper (it exits on EOF) and reap it."""
        self._reader.close()
        self._sock.close()
        try:
            self.process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


if __name__ == "__main__":
    raise SystemExit(main())
