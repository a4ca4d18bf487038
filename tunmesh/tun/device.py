"""The real TUN device: opened with python-pytun, offload probed with ``fcntl.ioctl``, configured with pyroute2
in a short-lived helper process.

Why this split: python-pytun does ``TUNSETIFF`` (and knows ``IFF_VNET_HDR``), but has no call for
``TUNSETVNETHDRSZ`` or ``TUNSETOFFLOAD``; those are plain ioctls on the same descriptor, issued here with the
standard library. Addresses, MTU, ``txqueuelen`` and link state go through netlink (pyroute2), not through
pytun's per-attribute ioctls, so that IPv6 works and errors come back with an errno; they are made by
:mod:`tunmesh.netconf`, run once at start, so that the node does not hold pyroute2's ~9 MB for its whole life.

Offload (``IFF_VNET_HDR`` + ``TUNSETOFFLOAD`` CSUM|TSO4|TSO6) makes the kernel hand over unsegmented TCP
super-packets (up to 64 KiB, each read prefixed with a virtio header) and accept them back the same way; the
performance anchors measure about 4x the throughput of a plain TUN. Kernels differ, so it is probed at
start-up and any failing step falls back to a plain TUN (logged at WARN with the step), and
``tun_mesh/networking/offload: false`` turns it off.

Everything here needs CAP_NET_ADMIN and runs before the privilege drop (see
:class:`tunmesh.tun.service.TunService`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import struct
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network, ip_interface
from typing import Any, Protocol

from twisted.logger import Logger

from tunmesh.tun.base import FdPacketIO, TunStats
from tunmesh.tun.helpers import spawn_helper
from tunmesh.tun.vnet import VNET_HDR_LEN

# linux/if_tun.h
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNSETVNETLE = 0x400454DC
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

OFFLOAD_TSO = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
OFFLOAD_USO = TUN_F_USO4 | TUN_F_USO6

MAX_IP_PACKET = 65535
IFNAMSIZ = 16
DEFAULT_TXQUEUELEN = 1000
#: seconds the node waits for the TUN configuration helper (many nodes may start at once on a busy host)
NETCONF_TIMEOUT = 30.0

KEY_DEVICE = "tun_mesh/networking/tun_device_id"
KEY_MTU = "tun_mesh/networking/mtu"
KEY_IPV4 = "tun_mesh/networking/ipv4/node_address_cidr"
KEY_IPV6 = "tun_mesh/networking/ipv6/node_address_cidr"


class TunDeviceError(Exception):
    """The device cannot be opened or configured; ``key`` is the config key to look at."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class RawTun(Protocol):
    """The opened descriptor (a ``pytun.TunTapDevice``, or a stand-in in tests)."""

    def fileno(self) -> int: ...

    def close(self) -> None: ...


Opener = Callable[[str, int], RawTun]
Ioctl = Callable[[int, int, Any], Any]
#: runs :mod:`tunmesh.netconf` with these arguments and returns its result object (:func:`spawn_netconf`)
NetconfRunner = Callable[[Sequence[str]], Mapping[str, Any]]


def _pytun_errno(exc: Exception) -> int | None:
    if exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


def pytun_opener(name: str, flags: int) -> RawTun:
    """Open ``/dev/net/tun`` and attach it to interface ``name`` with python-pytun (``TUNSETIFF``).

    pytun errors become :class:`TunDeviceError` naming ``tun_device_id`` and saying what to do.
    """
    import pytun

    try:
        return pytun.TunTapDevice(name=name, flags=flags)
    except pytun.Error as e:
        code = _pytun_errno(e)
        if code == errno.ENOENT or code == errno.ENODEV:
            msg = "/dev/net/tun is missing: load the tun module or pass /dev/net/tun into the container"
        elif code == errno.EBUSY:
            msg = f"device name {name!r} is taken: another process has that TUN device open"
        elif code == errno.EPERM or code == errno.EACCES:
            msg = f"no permission to create TUN device {name!r}: needs CAP_NET_ADMIN (start as root)"
        elif code == errno.EINVAL:
            msg = f"device name {name!r} is invalid or used by a non-TUN interface (or flags {flags:#x} rejected)"
        else:
            msg = f"cannot open TUN device {name!r}: {e}"
        raise TunDeviceError(KEY_DEVICE, msg) from e


def _validate_name(name: str) -> None:
    if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
        raise TunDeviceError(KEY_DEVICE, f"invalid interface name {name!r} (1-15 characters, no '/' or spaces)")


def _validate_mtu(mtu: int) -> None:
    if not 68 <= mtu <= MAX_IP_PACKET:
        raise TunDeviceError(KEY_MTU, f"MTU {mtu} out of range 68..65535")


def spawn_netconf(
    args: Sequence[str], python: str = sys.executable, timeout: float = NETCONF_TIMEOUT
) -> Mapping[str, Any]:
    """Run the TUN configuration helper (``python -m tunmesh.netconf args``, as root before the drop) and
    return its result object. A helper that cannot start, gives no answer within ``timeout`` seconds or
    answers something else is a :class:`TunDeviceError` on ``tun_device_id``."""
    # Its output goes to anonymous memory files (no writable directory needed: read-only root filesystems),
    # and the wait is waitpid + sleep: no poll() on pipes with a timeout, which failed with EINVAL in a node
    # run under libfaketime (the clock-step test) and ended the start.
    with os.fdopen(os.memfd_create("tunmesh-netconf-out"), "w+b") as out_file, os.fdopen(
        os.memfd_create("tunmesh-netconf-err"), "w+b"
    ) as err_file:
        try:
            process = spawn_helper("tunmesh.netconf", args, python, stdout=out_file, stderr=err_file)
        except OSError as e:
            raise TunDeviceError(KEY_DEVICE, f"cannot start the TUN configuration helper ({python}): {e}") from None
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise TunDeviceError(
                KEY_DEVICE, f"the TUN configuration helper gave no answer within {timeout:g} s"
            ) from None
        except OSError:
            # A clock that cannot time a sleep (EINVAL from clock_nanosleep: seen under libfaketime, the
            # clock-step test): wait without our timeout; the helper ends itself at its own deadline
            # (tunmesh.netconf.DEADLINE, SIGALRM).
            process.wait()
        out_file.seek(0)
        err_file.seek(0)
        out, err = out_file.read(), err_file.read()
    lines = out.decode("utf-8", "replace").strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except ValueError:
        result = None
    if not isinstance(result, dict) or not isinstance(result.get("ok"), bool):
        why = " ".join(err.decode("utf-8", "replace").strip().splitlines()[-1:])[:400] or "no output"
        raise TunDeviceError(
            KEY_DEVICE, f"the TUN configuration helper failed (exit status {process.returncode}): {why}"
        )
    return result


class TunDevice(FdPacketIO):
    """An open, non-blocking TUN device (``IFF_TUN|IFF_NO_PI``, plus ``IFF_VNET_HDR`` when offload is active).

    Reads and writes carry raw IP packets, prefixed with the 10-byte virtio header when
    ``offload_active`` (``vnet_hdr_len`` is then 10, otherwise 0).
    """

    log = Logger()

    def __init__(self, raw: RawTun, name: str, mtu: int, offload_active: bool) -> None:
        self._raw = raw
        self._fd = raw.fileno()
        self.name = name
        self.mtu = mtu
        self.offload_active = offload_active
        self.vnet_hdr_len = VNET_HDR_LEN if offload_active else 0
        # A super-packet is up to 64 KiB; a plain packet is at most the MTU.
        self.read_size = (MAX_IP_PACKET + VNET_HDR_LEN) if offload_active else mtu
        self.stats = TunStats()
        os.set_blocking(self._fd, False)

    @classmethod
    def open(
        cls,
        name: str,
        offload: bool,
        mtu: int,
        *,
        uso: bool = False,
        opener: Opener = pytun_opener,
        ioctl: Ioctl = fcntl.ioctl,
    ) -> TunDevice:
        """Create (or attach to) TUN interface ``name``; probe offload when ``offload`` is true.

        ``uso`` also asks for UDP segmentation offload (kernel 6.2+); off by default because a peer on an
        older kernel cannot write UDP super-packets back (they would need :func:`tunmesh.tun.gso.segment`).
        The link is not configured here: call :meth:`configure`.
        """
        _validate_name(name)
        _validate_mtu(mtu)
        if offload:
            raw = cls._probe_offload(name, uso, opener, ioctl)
            if raw is not None:
                cls.log.info("TUN {name}: offload active (virtio header, TSO)", name=name)
                return cls(raw, name, mtu, offload_active=True)
        raw = opener(name, IFF_TUN | IFF_NO_PI)
        return cls(raw, name, mtu, offload_active=False)

    @classmethod
    def _probe_offload(cls, name: str, uso: bool, opener: Opener, ioctl: Ioctl) -> RawTun | None:
        """Open with the virtio header and enable TSO; ``None`` (after a WARN naming the step) if any step fails."""
        step = "open with IFF_VNET_HDR"
        try:
            raw = opener(name, IFF_TUN | IFF_NO_PI | IFF_VNET_HDR)
        except TunDeviceError as e:
            cls.log.warn(
                "TUN {name}: offload unavailable, step {step} failed ({error}); using a plain TUN",
                name=name, step=step, error=e.message,
            )
            return None
        try:
            fd = raw.fileno()
            if sys.byteorder == "big":
                step = "TUNSETVNETLE"
                ioctl(fd, TUNSETVNETLE, struct.pack("i", 1))
            step = "TUNSETVNETHDRSZ"
            ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
            step = "TUNSETOFFLOAD"
            if uso:
                try:
                    ioctl(fd, TUNSETOFFLOAD, OFFLOAD_TSO | OFFLOAD_USO)
                except OSError as e:
                    cls.log.info("TUN {name}: no UDP offload ({error}); TSO only", name=name, error=e)
                    ioctl(fd, TUNSETOFFLOAD, OFFLOAD_TSO)
            else:
                ioctl(fd, TUNSETOFFLOAD, OFFLOAD_TSO)
        except OSError as e:
            cls.log.warn(
                "TUN {name}: offload unavailable, step {step} failed ({error}); using a plain TUN",
                name=name, step=step, error=e,
            )
            raw.close()  # a non-persistent TUN disappears with its last descriptor, freeing the name
            return None
        return raw

    @classmethod
    def from_config(cls, networking: Any, **open_kwargs: Any) -> TunDevice:
        """Open and configure the device from ``cfg.networking`` (its keys: docs/configuration.md)."""
        ipv4 = node_interface(networking.ipv4.node_address_cidr, networking.ipv4.network_cidr)
        ipv6 = None
        if getattr(networking, "ipv6", None) is not None:
            ipv6 = node_interface(networking.ipv6.node_address_cidr, networking.ipv6.network_cidr)
        device = cls.open(networking.tun_device_id, bool(networking.offload), int(networking.mtu), **open_kwargs)
        try:
            device.configure(ipv4=ipv4, ipv6=ipv6)
        except BaseException:
            device.close()
            raise
        return device

    def configure(
        self,
        ipv4: IPv4Interface | None,
        ipv6: IPv6Interface | None = None,
        txqueuelen: int = DEFAULT_TXQUEUELEN,
        run_netconf: NetconfRunner = spawn_netconf,
    ) -> None:
        """Set MTU and ``txqueuelen``, bring the link up and add the addresses (netlink).

        Each address carries the mesh NETWORK prefix (as the original does), so the kernel routes the whole
        mesh range into the tunnel through the connected route. IPv6 is added with ``nodad`` so it is usable
        at once. The MTU stays the configured value with offload too: super-packets exceed it by design
        (each segment respects it). ``txqueuelen`` defaults to 1000 (TUN's default of 500 drops under bursts).

        The requests are made by pyroute2 in the short-lived helper :mod:`tunmesh.netconf`
        (run by ``run_netconf``, tests run it in-process), so the node never imports pyroute2; each failure
        comes back as the :class:`TunDeviceError` naming the config key, with the netlink error.
        """
        args = ["--ifname", self.name, "--mtu", str(self.mtu), "--txqueuelen", str(txqueuelen)]
        for iface in (ipv4, ipv6):
            if iface is not None:
                args += ["--address", str(iface)]
        result = run_netconf(args)
        if not result.get("ok"):
            raise self._netconf_error(result, ipv4, ipv6)
        self.log.info(
            "TUN {name} up: mtu {mtu}, ipv4 {ipv4}, ipv6 {ipv6}, offload {offload}",
            name=self.name, mtu=self.mtu, ipv4=str(ipv4), ipv6=str(ipv6), offload=self.offload_active,
        )

    def _netconf_error(
        self, result: Mapping[str, Any], ipv4: IPv4Interface | None, ipv6: IPv6Interface | None
    ) -> TunDeviceError:
        """The error :mod:`tunmesh.netconf`'s failed ``step`` stands for."""
        step, error = result.get("step"), result.get("error")
        if step == "lookup":
            return TunDeviceError(KEY_DEVICE, f"interface {self.name!r} vanished after it was opened")
        if step == "mtu":
            return TunDeviceError(KEY_MTU, f"cannot set MTU {self.mtu} on {self.name!r}: {error}")
        if step == "up":
            return TunDeviceError(KEY_DEVICE, f"cannot bring {self.name!r} up: {error}")
        if step == "ipv4":
            return TunDeviceError(KEY_IPV4, f"cannot add address {ipv4} to {self.name!r}: {error}")
        if step == "ipv6":
            return TunDeviceError(KEY_IPV6, f"cannot add address {ipv6} to {self.name!r}: {error}")
        return TunDeviceError(KEY_DEVICE, f"cannot configure {self.name!r}: {error}")

    def close(self) -> None:
        """Close the descriptor; the (non-persistent) interface disappears with it."""
        if self._fd >= 0:
            self._fd = -1
            try:
                self._raw.close()
            except Exception as e:  # pytun raises its own Error type on a double close
                self.log.debug("TUN {name}: close: {error}", name=self.name, error=e)


def node_interface(
    node_address: IPv4Interface | IPv6Interface | str, network: IPv4Network | IPv6Network | str
) -> Any:
    """The node's address with the mesh network's prefix length (``100.64.0.7`` in ``100.64.0.0/10`` gives
    ``100.64.0.7/10``), so the connected route sends the whole mesh range into the tunnel."""
    node = ip_interface(node_address) if isinstance(node_address, str) else node_address
    net = ip_interface(network).network if isinstance(network, str) else network
    if node.version != net.version:
        raise TunDeviceError(KEY_IPV4 if node.version == 4 else KEY_IPV6, f"{node} is not in {net}")
    if node.ip not in net:
        key = KEY_IPV4 if node.version == 4 else KEY_IPV6
        raise TunDeviceError(key, f"node address {node.ip} is outside network_cidr {net}")
    return ip_interface(f"{node.ip}/{net.prefixlen}")
