"""TunDevice without root: offload probe and fallback with injected opener/ioctl, read/write semantics over
pipes (EAGAIN, errors), netlink configuration (the helper's logic in-process against a recording IPRoute, the
helper as a process), pytun error messages."""

from __future__ import annotations

import errno
import io
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from ipaddress import IPv4Interface, IPv6Interface, ip_interface, ip_network
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytun
from pyroute2.netlink.exceptions import NetlinkError
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from tunmesh import netconf
from tunmesh.tun import base as tun_base
from tunmesh.tun import device as device_mod
from tunmesh.tun.base import TunClosedError
from tunmesh.tun.device import (
    IFF_NO_PI,
    IFF_TUN,
    IFF_VNET_HDR,
    KEY_DEVICE,
    KEY_IPV4,
    KEY_IPV6,
    KEY_MTU,
    TUNSETOFFLOAD,
    TUNSETVNETHDRSZ,
    NetconfRunner,
    TunDevice,
    TunDeviceError,
    node_interface,
    pytun_opener,
    spawn_netconf,
)


class PipeRaw:
    """Stands in for a pytun device: the read end of a pipe; ``feed`` writes to it."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self.closed = False

    def fileno(self) -> int:
        return self.r

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.r)
            os.close(self.w)


class RecordingOpener:
    def __init__(self, fail_flags: set[int] | None = None) -> None:
        self.calls: list[tuple[str, int]] = []
        self.raws: list[PipeRaw] = []
        self.fail_flags = fail_flags or set()

    def __call__(self, name: str, flags: int) -> PipeRaw:
        self.calls.append((name, flags))
        if flags in self.fail_flags:
            raise TunDeviceError(KEY_DEVICE, "flags rejected")
        raw = PipeRaw()
        self.raws.append(raw)
        return raw


class RecordingIoctl:
    def __init__(self, fail_request: int | None = None, fail_arg: Any = None) -> None:
        self.calls: list[tuple[int, Any]] = []
        self.fail_request = fail_request
        self.fail_arg = fail_arg

    def __call__(self, fd: int, request: int, arg: Any) -> int:
        self.calls.append((request, arg))
        if request == self.fail_request and (self.fail_arg is None or arg == self.fail_arg):
            raise OSError(errno.EINVAL, "Invalid argument")
        return 0


def open_device(test: SynchronousTestCase, offload: bool = True, **kw: Any) -> tuple[TunDevice, RecordingOpener, RecordingIoctl]:
    opener = kw.pop("opener", RecordingOpener())
    ioctl = kw.pop("ioctl", RecordingIoctl())
    dev = TunDevice.open("tmt0", offload, kw.pop("mtu", 1400), opener=opener, ioctl=ioctl, **kw)
    test.addCleanup(dev.close)
    for raw in opener.raws:
        test.addCleanup(raw.close)
    return dev, opener, ioctl


class OffloadProbeTests(SynchronousTestCase):
    def test_offload_active(self) -> None:
        dev, opener, ioctl = open_device(self)
        self.assertTrue(dev.offload_active)
        self.assertEqual(dev.vnet_hdr_len, 10)
        self.assertEqual(dev.read_size, 65545)
        self.assertEqual(opener.calls, [("tmt0", IFF_TUN | IFF_NO_PI | IFF_VNET_HDR)])
        self.assertEqual(ioctl.calls, [(TUNSETVNETHDRSZ, struct.pack("i", 10)), (TUNSETOFFLOAD, 0x07)])
        self.assertFalse(os.get_blocking(dev.fileno()))

    def test_offload_disabled_by_config(self) -> None:
        dev, opener, ioctl = open_device(self, offload=False)
        self.assertFalse(dev.offload_active)
        self.assertEqual(dev.vnet_hdr_len, 0)
        self.assertEqual(dev.read_size, 1400)
        self.assertEqual(opener.calls, [("tmt0", IFF_TUN | IFF_NO_PI)])
        self.assertEqual(ioctl.calls, [])

    def assertFallback(self, step: str, **kw: Any) -> None:
        with capturedLogs() as events:
            dev, opener, ioctl = open_device(self, **kw)
        self.assertFalse(dev.offload_active)
        self.assertEqual(opener.calls[-1], ("tmt0", IFF_TUN | IFF_NO_PI))
        warns = [e for e in events if e["log_level"].name == "warn"]
        self.assertEqual(len(warns), 1)
        self.assertEqual(warns[0]["step"], step)
        self.assertEqual(warns[0]["name"], "tmt0")
        # The first descriptor was closed before reopening, so the name was free again.
        if len(opener.raws) == 2:
            self.assertTrue(opener.raws[0].closed)
            self.assertFalse(opener.raws[1].closed)

    def test_fallback_on_offload_ioctl(self) -> None:
        self.assertFallback("TUNSETOFFLOAD", ioctl=RecordingIoctl(TUNSETOFFLOAD))

    def test_fallback_on_hdrsz_ioctl(self) -> None:
        self.assertFallback("TUNSETVNETHDRSZ", ioctl=RecordingIoctl(TUNSETVNETHDRSZ))

    def test_fallback_on_vnet_open(self) -> None:
        self.assertFallback(
            "open with IFF_VNET_HDR", opener=RecordingOpener({IFF_TUN | IFF_NO_PI | IFF_VNET_HDR})
        )

    def test_uso_requested_and_available(self) -> None:
        dev, _opener, ioctl = open_device(self, uso=True)
        self.assertTrue(dev.offload_active)
        self.assertEqual(ioctl.calls[-1], (TUNSETOFFLOAD, 0x67))

    def test_uso_unavailable_keeps_tso(self) -> None:
        dev, _opener, ioctl = open_device(self, uso=True, ioctl=RecordingIoctl(TUNSETOFFLOAD, 0x67))
        self.assertTrue(dev.offload_active)
        self.assertEqual([c[1] for c in ioctl.calls if c[0] == TUNSETOFFLOAD], [0x67, 0x07])

    def test_plain_open_failure_raises(self) -> None:
        opener = RecordingOpener({IFF_TUN | IFF_NO_PI | IFF_VNET_HDR, IFF_TUN | IFF_NO_PI})
        e = self.assertRaises(TunDeviceError, TunDevice.open, "tmt0", True, 1400, opener=opener, ioctl=RecordingIoctl())
        self.assertEqual(e.key, KEY_DEVICE)

    def test_bad_names(self) -> None:
        for name in ("", "x" * 16, "a/b", "a b"):
            e = self.assertRaises(TunDeviceError, TunDevice.open, name, False, 1400, opener=RecordingOpener())
            self.assertEqual(e.key, KEY_DEVICE)
            self.assertTrue(str(e).startswith("tun_mesh/networking/tun_device_id: "))

    def test_bad_mtu(self) -> None:
        for mtu in (0, 67, 65536):
            e = self.assertRaises(TunDeviceError, TunDevice.open, "tmt0", False, mtu, opener=RecordingOpener())
            self.assertEqual(e.key, KEY_MTU)


class PytunOpenerErrorTests(SynchronousTestCase):
    def check(self, exc: Exception, fragment: str) -> None:
        def boom(**kw: Any) -> None:
            raise exc

        self.patch(pytun, "TunTapDevice", boom)
        e = self.assertRaises(TunDeviceError, pytun_opener, "tun1", IFF_TUN | IFF_NO_PI)
        self.assertEqual(e.key, KEY_DEVICE)
        self.assertIn(fragment, e.message)

    def test_missing_dev(self) -> None:
        self.check(pytun.Error(errno.ENOENT, "No such file or directory"), "/dev/net/tun is missing")

    def test_busy(self) -> None:
        self.check(pytun.Error(errno.EBUSY, "Device or resource busy"), "is taken")

    def test_permission(self) -> None:
        self.check(pytun.Error(errno.EPERM, "Operation not permitted"), "CAP_NET_ADMIN")

    def test_non_tun(self) -> None:
        self.check(pytun.Error(errno.EINVAL, "Invalid argument"), "non-TUN interface")

    def test_other(self) -> None:
        self.check(pytun.Error("Interface name too long"), "Interface name too long")


class ReadWriteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dev, self.opener, _ = open_device(self, offload=False, mtu=1000)
        self.raw = self.opener.raws[0]

    def test_read_until_eagain(self) -> None:
        os.write(self.raw.w, b"a" * 2500)  # a pipe is a stream: reads come in read_size chunks
        batch = self.dev.read_batch()
        self.assertEqual([len(p) for p in batch], [1000, 1000, 500])
        self.assertEqual(self.dev.read_batch(), [])
        self.assertEqual((self.dev.stats.packets_read, self.dev.stats.bytes_read), (3, 2500))

    def test_read_max_packets(self) -> None:
        os.write(self.raw.w, b"a" * 5000)
        self.assertEqual(len(self.dev.read_batch(max_packets=2)), 2)
        self.assertEqual(len(self.dev.read_batch()), 3)

    def test_read_max_bytes(self) -> None:
        os.write(self.raw.w, b"a" * 5000)
        self.assertEqual(len(self.dev.read_batch(max_bytes=1500)), 2)

    def test_read_bad_limits(self) -> None:
        self.assertRaises(ValueError, self.dev.read_batch, 0)
        self.assertRaises(ValueError, self.dev.read_batch, 1, 0)

    def reads_failing(self, failure: OSError, at: int) -> list[int]:
        """Make the device's ``at``-th raw read raise ``failure``; returns the list of reads made."""
        calls: list[int] = []

        class Flaky:
            def __init__(self, fd: int) -> None:
                self.fd = fd
                real = io.FileIO(fd, "rb", closefd=False)

                class File:
                    @staticmethod
                    def read(n: int) -> bytes | None:
                        calls.append(fd)
                        if len(calls) == at:
                            raise failure
                        return real.read(n)

                self.file = File()

        self.patch(tun_base, "_Reader", Flaky)
        return calls

    def test_read_error_ends_batch_and_counts(self) -> None:
        os.write(self.raw.w, b"a" * 3000)
        self.reads_failing(OSError(errno.EINVAL, "Invalid argument"), at=2)
        self.assertEqual(len(self.dev.read_batch()), 1)
        self.assertEqual(self.dev.stats.read_errors["EINVAL"], 1)

    def test_read_eintr_retried(self) -> None:
        os.write(self.raw.w, b"a" * 10)
        calls = self.reads_failing(InterruptedError(errno.EINTR, "Interrupted"), at=1)
        self.assertEqual(self.dev.read_batch(), [b"a" * 10])
        self.assertEqual(len(calls), 3)  # interrupted, the packet, then empty

    def test_the_end_of_a_batch_raises_nothing(self) -> None:
        """An empty device ends the batch without an exception (no strerror, no traceback per wake-up)."""
        os.write(self.raw.w, b"a" * 10)
        raised: list[str] = []

        def profile(frame: Any, event: str, arg: Any) -> None:
            if event == "c_exception":
                raised.append(getattr(arg, "__qualname__", repr(arg)))

        sys.setprofile(profile)
        try:
            packets = self.dev.read_batch()
        finally:
            sys.setprofile(None)
        self.assertEqual(packets, [b"a" * 10])
        self.assertEqual(raised, [])

    def test_read_eof_is_closed(self) -> None:
        os.close(self.raw.w)
        self.raw.w = os.open(os.devnull, os.O_WRONLY)  # keep PipeRaw.close happy
        self.assertRaises(TunClosedError, self.dev.read_batch)

    def test_read_after_close(self) -> None:
        self.dev.close()
        self.assertTrue(self.dev.closed)
        self.assertRaises(TunClosedError, self.dev.read_batch)

    def test_close_twice(self) -> None:
        self.dev.close()
        self.dev.close()
        self.assertTrue(self.raw.closed)


class WriteTests(SynchronousTestCase):
    """Writes go to the write end of a pipe, which fills up (EAGAIN) without blocking."""

    def setUp(self) -> None:
        self.r, w = os.pipe()
        os.set_blocking(w, False)
        self.addCleanup(self.close_r)
        raw = SimpleNamespace(fileno=lambda: w, close=lambda: os.close(w))
        self.dev = TunDevice(raw, "tmt0", 1500, offload_active=False)
        self.addCleanup(self.dev.close)

    def close_r(self) -> None:
        if self.r >= 0:
            os.close(self.r)

    def test_write(self) -> None:
        self.assertTrue(self.dev.write(b"\x45hello"))
        self.assertEqual(os.read(self.r, 100), b"\x45hello")
        self.assertEqual(self.dev.stats.packets_written, 1)

    def test_write_full_returns_false(self) -> None:
        chunk = b"x" * 65536
        while self.dev.write(chunk):
            pass
        self.assertEqual(self.dev.stats.write_errors["EAGAIN"], 1)

    def test_write_batch_stops_trying_after_eagain(self) -> None:
        chunk = b"x" * 65536
        written, failed = self.dev.write_batch([chunk] * 200)
        self.assertGreater(written, 0)
        self.assertEqual(written + failed, 200)
        self.assertEqual(self.dev.stats.write_errors["EAGAIN"], failed)
        self.assertEqual(self.dev.stats.packets_written, written)

    def test_write_errors_never_raise(self) -> None:
        for code, name in ((errno.ENOBUFS, "ENOBUFS"), (errno.EINVAL, "EINVAL"), (errno.EIO, "EIO")):
            def fail(fd: int, data: bytes, code: int = code) -> int:
                raise OSError(code, os.strerror(code))

            self.patch(os, "write", fail)
            self.assertFalse(self.dev.write(b"\x45"))
            self.assertEqual(self.dev.write_batch([b"\x45", b"\x45"]), (0, 2))
            self.assertEqual(self.dev.stats.write_errors[name], 3)

    def test_write_broken_pipe(self) -> None:
        os.close(self.r)
        self.r = -1
        self.assertFalse(self.dev.write(b"\x45"))
        self.assertEqual(self.dev.stats.write_errors["EPIPE"], 1)

    def test_write_after_close(self) -> None:
        self.dev.close()
        self.assertFalse(self.dev.write(b"\x45"))
        self.assertEqual(self.dev.write_batch(iter([b"a", b"b"])), (0, 2))
        self.assertEqual(self.dev.stats.write_errors["EBADF"], 3)


class FakeIPRoute:
    """Records netlink calls; ``fail`` maps a call kind ("mtu", "up", "addr4", "addr6") to an errno."""

    def __init__(self, fail: dict[str, int] | None = None, exists: bool = True) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail or {}
        self.exists = exists

    def __enter__(self) -> FakeIPRoute:
        return self

    def __exit__(self, *a: object) -> None:
        pass

    def link_lookup(self, ifname: str) -> list[int]:
        return [7] if self.exists else []

    def _maybe_fail(self, kind: str) -> None:
        if kind in self.fail:
            raise NetlinkError(self.fail[kind], os.strerror(self.fail[kind]))

    def link(self, cmd: str, **kw: Any) -> None:
        self.calls.append(("link", kw))
        self._maybe_fail("mtu" if "mtu" in kw else "up")

    def addr(self, cmd: str, **kw: Any) -> None:
        self.calls.append(("addr", kw))
        self._maybe_fail("addr4" if ":" not in kw["address"] else "addr6")


def in_process(ipr: FakeIPRoute) -> NetconfRunner:
    """Runs the helper's logic (:func:`tunmesh.netconf.run`) here against ``ipr``, its answer through JSON."""
    return lambda args: json.loads(json.dumps(netconf.run(args, lambda: ipr)))


class ConfigureTests(SynchronousTestCase):
    """What the helper asks of netlink, and the errors the node makes of its answers."""

    def setUp(self) -> None:
        self.dev, _, _ = open_device(self)

    def configure(self, ipr: FakeIPRoute, ipv6: IPv6Interface | None = None) -> None:
        self.dev.configure(IPv4Interface("100.64.0.7/10"), ipv6, run_netconf=in_process(ipr))

    def test_calls(self) -> None:
        ipr = FakeIPRoute()
        self.configure(ipr, IPv6Interface("fd00::7/64"))
        self.assertEqual(ipr.calls[0], ("link", {"index": 7, "mtu": 1400, "txqlen": 1000}))
        self.assertEqual(ipr.calls[1], ("link", {"index": 7, "state": "up"}))
        self.assertEqual(ipr.calls[2][1]["address"], "100.64.0.7")
        self.assertEqual(ipr.calls[2][1]["prefixlen"], 10)
        self.assertEqual(ipr.calls[3][1]["address"], "fd00::7")
        self.assertEqual(ipr.calls[3][1]["flags"], 0x02)

    def test_ipv4_only(self) -> None:
        ipr = FakeIPRoute()
        self.configure(ipr)
        self.assertEqual(len([c for c in ipr.calls if c[0] == "addr"]), 1)

    def test_existing_address_tolerated(self) -> None:
        self.configure(FakeIPRoute({"addr4": errno.EEXIST}))

    def test_errors_name_keys(self) -> None:
        for kind, key in (("mtu", KEY_MTU), ("up", KEY_DEVICE), ("addr4", KEY_IPV4), ("addr6", KEY_IPV6)):
            e = self.assertRaises(
                TunDeviceError, self.configure, FakeIPRoute({kind: errno.EINVAL}), IPv6Interface("fd00::7/64")
            )
            self.assertEqual(e.key, key)

    def test_errors_say_what_failed_with_the_netlink_error(self) -> None:
        for kind, message in (
            ("mtu", "cannot set MTU 1400 on 'tmt0': (22, 'Invalid argument')"),
            ("up", "cannot bring 'tmt0' up: (22, 'Invalid argument')"),
            ("addr4", "cannot add address 100.64.0.7/10 to 'tmt0': (22, 'Invalid argument')"),
            ("addr6", "cannot add address fd00::7/64 to 'tmt0': (22, 'Invalid argument')"),
        ):
            e = self.assertRaises(
                TunDeviceError, self.configure, FakeIPRoute({kind: errno.EINVAL}), IPv6Interface("fd00::7/64")
            )
            self.assertEqual(e.message, message)

    def test_vanished(self) -> None:
        e = self.assertRaises(TunDeviceError, self.configure, FakeIPRoute(exists=False))
        self.assertEqual(e.key, KEY_DEVICE)
        self.assertEqual(e.message, "interface 'tmt0' vanished after it was opened")

    def test_an_unexpected_helper_failure_names_the_device(self) -> None:
        def broken() -> FakeIPRoute:
            raise OSError(errno.EPROTONOSUPPORT, "Protocol not supported")

        e = self.assertRaises(
            TunDeviceError, self.dev.configure, IPv4Interface("100.64.0.7/10"), None,
            run_netconf=lambda args: netconf.run(args, broken),
        )
        self.assertEqual(e.key, KEY_DEVICE)
        self.assertIn("Protocol not supported", e.message)

    def test_the_helper_is_asked_for_the_device_its_mtu_and_addresses(self) -> None:
        seen: list[list[str]] = []

        def record(args: Sequence[str]) -> dict[str, bool]:
            seen.append(list(args))
            return {"ok": True}

        self.dev.configure(IPv4Interface("100.64.0.7/10"), IPv6Interface("fd00::7/64"), 500, run_netconf=record)
        self.assertEqual(seen, [[
            "--ifname", "tmt0", "--mtu", "1400", "--txqueuelen", "500",
            "--address", "100.64.0.7/10", "--address", "fd00::7/64",
        ]])


class SpawnNetconfTests(SynchronousTestCase):
    """The helper as a process: what the node makes of one that is missing, silent, slow or broken."""

    def script(self, body: str) -> str:
        path = Path(self.mktemp())
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(0o755)
        return str(path)

    def test_the_real_helper_answers_for_a_missing_interface(self) -> None:
        # No root needed: looking an interface up is allowed to anyone.
        result = spawn_netconf(["--ifname", "tmt-absent9", "--mtu", "1400", "--txqueuelen", "1000"])
        self.assertEqual(result, {"ok": False, "step": "lookup", "code": None,
                                  "error": "interface 'tmt-absent9' not found"})

    def test_an_interpreter_that_cannot_start(self) -> None:
        e = self.assertRaises(TunDeviceError, spawn_netconf, [], python=str(Path(self.mktemp()) / "python"))
        self.assertEqual(e.key, KEY_DEVICE)
        self.assertIn("cannot start the TUN configuration helper", e.message)

    def test_a_helper_that_says_nothing_useful(self) -> None:
        for body, why in (
            ("echo 'Traceback: boom' >&2; exit 1", "(exit status 1): Traceback: boom"),
            ("echo not json", "(exit status 0): no output"),
            ("echo '[1, 2]'", "(exit status 0): no output"),
            ("echo '{\"ok\": 1}'", "(exit status 0): no output"),
        ):
            e = self.assertRaises(TunDeviceError, spawn_netconf, [], python=self.script(body))
            self.assertEqual(e.key, KEY_DEVICE)
            self.assertEqual(e.message, f"the TUN configuration helper failed {why}")

    def test_a_clock_that_cannot_sleep_still_gets_the_answer(self) -> None:
        """Under libfaketime ``time.sleep`` fails with EINVAL: the wait goes on without a timeout (the helper
        has its own deadline) instead of failing the start."""
        real_wait = subprocess.Popen.wait

        def wait(proc: subprocess.Popen[bytes], timeout: float | None = None) -> int:
            if timeout is not None:
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_wait(proc)

        self.patch(subprocess.Popen, "wait", wait)
        result = spawn_netconf([], python=self.script('echo \'{"ok": true}\''))
        self.assertEqual(result, {"ok": True})

    def test_a_helper_that_hangs_is_killed(self) -> None:
        e = self.assertRaises(TunDeviceError, spawn_netconf, [], python=self.script("exec sleep 30"), timeout=0.3)
        self.assertEqual(e.message, "the TUN configuration helper gave no answer within 0.3 s")


class FromConfigTests(SynchronousTestCase):
    def networking(self, ipv6: Any = None) -> SimpleNamespace:
        return SimpleNamespace(
            tun_device_id="tmt0", mtu=1400, offload=True,
            ipv4=SimpleNamespace(node_address_cidr=ip_interface("100.64.0.7/24"), network_cidr=ip_network("100.64.0.0/10")),
            ipv6=ipv6,
        )

    @contextmanager
    def patched_configure(self) -> Iterator[list[tuple[Any, Any]]]:
        seen: list[tuple[Any, Any]] = []
        self.patch(TunDevice, "configure", lambda self, ipv4, ipv6: seen.append((ipv4, ipv6)))
        yield seen

    def test_from_config(self) -> None:
        opener = RecordingOpener()
        with self.patched_configure() as seen:
            dev = TunDevice.from_config(
                self.networking(SimpleNamespace(node_address_cidr=ip_interface("fd00::7/128"), network_cidr=ip_network("fd00::/48"))),
                opener=opener, ioctl=RecordingIoctl(),
            )
        self.addCleanup(dev.close)
        self.assertTrue(dev.offload_active)
        self.assertEqual(seen, [(IPv4Interface("100.64.0.7/10"), IPv6Interface("fd00::7/48"))])

    def test_configure_failure_closes(self) -> None:
        opener = RecordingOpener()

        def fail(self: TunDevice, ipv4: Any, ipv6: Any) -> None:
            raise TunDeviceError(KEY_MTU, "nope")

        self.patch(TunDevice, "configure", fail)
        self.assertRaises(TunDeviceError, TunDevice.from_config, self.networking(), opener=opener, ioctl=RecordingIoctl())
        self.assertTrue(opener.raws[0].closed)


class NodeInterfaceTests(SynchronousTestCase):
    def test_network_prefix(self) -> None:
        self.assertEqual(node_interface("100.64.0.7/32", "100.64.0.0/10"), IPv4Interface("100.64.0.7/10"))
        self.assertEqual(
            node_interface(ip_interface("fd00::1/64"), ip_network("fd00::/16")), IPv6Interface("fd00::1/16")
        )

    def test_outside(self) -> None:
        e = self.assertRaises(TunDeviceError, node_interface, "10.0.0.1/32", "100.64.0.0/10")
        self.assertEqual(e.key, KEY_IPV4)
        e = self.assertRaises(TunDeviceError, node_interface, "fe00::1/64", "fd00::/16")
        self.assertEqual(e.key, KEY_IPV6)

    def test_family_mismatch(self) -> None:
        self.assertRaises(TunDeviceError, node_interface, "fd00::1/64", "100.64.0.0/10")


class ModuleTests(SynchronousTestCase):
    def test_ioctl_numbers_match_linux_headers(self) -> None:
        # _IOW('T', nr, int/unsigned int): dir=1<<30, size 4<<16, type 'T'<<8.
        def iow(nr: int) -> int:
            return (1 << 30) | (4 << 16) | (ord("T") << 8) | nr

        self.assertEqual(device_mod.TUNSETOFFLOAD, iow(208))
        self.assertEqual(device_mod.TUNSETVNETHDRSZ, iow(216))
        self.assertEqual(device_mod.TUNSETVNETLE, iow(220))
