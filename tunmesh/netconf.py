"""The TUN configuration helper (``python -m tunmesh.netconf``): see :meth:`tunmesh.tun.device.TunDevice.configure`.

The node runs it once at start, as root before the privilege drop, to set the TUN's MTU and
``txqueuelen``, bring the link up and add its addresses over netlink with pyroute2. pyroute2 imports all of
its ~180 modules (≈ 9 MB private memory, ≈ 0.1 CPU-s) for these four requests; in a process that exits at
once, the node never holds them (docs/performance.md, "Where the memory goes").

Standard library and pyroute2 only, like :mod:`tunmesh.addrhelper`. It prints one JSON line on stdout,
``{"ok": true}`` or ``{"ok": false, "step": STEP, "code": ERRNO, "error": TEXT}`` (``code`` is ``null``
when the failure has no errno), and exits 0 or 1. ``STEP`` is one of :data:`STEPS`; the node turns a
failure back into the ``TunDeviceError`` naming the config key, as if it had made the requests itself.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

IFA_F_NODAD = 0x02

#: what can fail: the interface lookup, MTU + txqueuelen, link up, each family's address, or anything
#: else (``internal``: the netlink socket, an unexpected error)
STEPS = ("lookup", "mtu", "up", "ipv4", "ipv6", "internal")


class StepError(Exception):
    """A request failed: ``step`` (one of :data:`STEPS`), the errno ``code`` if any, and the text."""

    def __init__(self, step: str, code: int | None, text: str) -> None:
        super().__init__(step, code, text)
        self.step = step
        self.code = code
        self.text = text


def configure(
    ifname: str,
    mtu: int,
    txqueuelen: int,
    addresses: Sequence[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
    iproute: Any,
) -> None:
    """Set MTU and ``txqueuelen``, bring ``ifname`` up, add ``addresses`` (IPv6 with ``nodad``, usable at
    once; an address already there is fine: a persistent device). Raises :class:`StepError`."""
    from pyroute2.netlink.exceptions import NetlinkError

    indexes = iproute.link_lookup(ifname=ifname)
    if not indexes:
        raise StepError("lookup", None, f"interface {ifname!r} not found")
    index = indexes[0]
    try:
        iproute.link("set", index=index, mtu=mtu, txqlen=txqueuelen)
    except NetlinkError as e:
        raise StepError("mtu", e.code, str(e)) from e
    try:
        iproute.link("set", index=index, state="up")
    except NetlinkError as e:
        raise StepError("up", e.code, str(e)) from e
    for iface in addresses:
        family, flags = (socket.AF_INET, 0) if iface.version == 4 else (socket.AF_INET6, IFA_F_NODAD)
        try:
            iproute.addr(
                "add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen,
                family=family, flags=flags,
            )
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                continue
            raise StepError(f"ipv{iface.version}", e.code, str(e)) from e


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tunmesh.netconf")
    parser.add_argument("--ifname", required=True)
    parser.add_argument("--mtu", type=int, required=True)
    parser.add_argument("--txqueuelen", type=int, required=True)
    parser.add_argument("--address", action="append", default=[], type=ipaddress.ip_interface)
    return parser


def run(argv: Sequence[str], iproute_factory: Callable[[], Any]) -> dict[str, Any]:
    """Parse ``argv``, configure through ``iproute_factory()`` (a context manager, pyroute2's ``IPRoute``)
    and return the result object printed by :func:`main`."""
    args = _parser().parse_args(argv)
    try:
        with iproute_factory() as iproute:
            configure(args.ifname, args.mtu, args.txqueuelen, args.address, iproute)
    except StepError as e:
        return {"ok": False, "step": e.step, "code": e.code, "error": e.text}
    except Exception as e:  # one answer back to the node, whatever went wrong
        code = e.errno if isinstance(e, OSError) else None
        return {"ok": False, "step": "internal", "code": code, "error": f"{type(e).__name__}: {e}"}
    return {"ok": True}


def main(argv: Sequence[str] | None = None) -> int:
    from pyroute2 import IPRoute

    result = run(sys.argv[1:] if argv is None else argv, IPRoute)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if result["ok"] else 1


#: The child's own deadline (seconds): a netlink request that never returns ends it, even when the parent's
#: clock cannot time its wait (see ``tunmesh.tun.device.spawn_netconf``).
DEADLINE = 30

if __name__ == "__main__":
    import signal

    signal.alarm(DEADLINE)
    raise SystemExit(main())
