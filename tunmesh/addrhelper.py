"""The address helper process (``python -m tunmesh.addrhelper``): see :mod:`tunmesh.tun.addrhelper`.

Standard library (and pyroute2) only: it starts while the node starts, often next to many others on a
busy host, so it must not pay for importing Twisted or the rest of tunmesh.
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import os
import socket
from collections.abc import Sequence
from typing import Any

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38
CAP_NET_ADMIN = 12
_CAP_VERSION_3 = 0x20080522


def _prctl(libc: Any, option: int, arg2: int) -> None:
    if libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def _proc_status() -> dict[str, str]:
    with open("/proc/self/status", "rb") as f:
        text = f.read().decode("ascii", "replace")
    return {k.strip(): v.strip() for k, sep, v in (line.partition(":") for line in text.splitlines()) if sep}


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def keep_only_net_admin(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` with ``CAP_NET_ADMIN`` as the only capability (effective and permitted),
    no supplementary groups and ``no_new_privs``; verified in ``/proc/self/status``. Raises ``OSError``."""
    libc = ctypes.CDLL(None, use_errno=True)
    _prctl(libc, PR_SET_KEEPCAPS, 1)
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = 1 << CAP_NET_ADMIN
    if libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")
    _prctl(libc, PR_SET_KEEPCAPS, 0)
    _prctl(libc, PR_SET_NO_NEW_PRIVS, 1)
    status = _proc_status()
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
    parser = argparse.ArgumentParser(prog="python -m tunmesh.addrhelper")
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


if __name__ == "__main__":
    raise SystemExit(main())
