"""FakeTun (packet boundaries, EAGAIN, selectable fd) and TunService (open before the privilege drop)."""

from __future__ import annotations

import select
from types import SimpleNamespace
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tunmesh.health import HealthRegistry
from tunmesh.interfaces import PacketDevice
from tunmesh.testing import FakeTun
from tunmesh.tun import TunClosedError, TunService


class FakeTunTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.tun = FakeTun(mtu=1500)
        self.addCleanup(self.tun.close)

    def test_is_packet_device(self) -> None:
        self.assertIsInstance(self.tun, PacketDevice)

    def test_packet_boundaries(self) -> None:
        for p in (b"\x45a", b"\x45bb", b"\x60ccc"):
            self.tun.inject(p)
        self.assertEqual(self.tun.read_batch(), [b"\x45a", b"\x45bb", b"\x60ccc"])
        self.assertEqual(self.tun.read_batch(), [])

    def test_batch_limit(self) -> None:
        for i in range(100):
            self.tun.inject(bytes([0x45, i]))
        first = self.tun.read_batch(max_packets=64)
        self.assertEqual(len(first), 64)
        self.assertEqual(len(self.tun.read_batch()), 36)

    def test_selectable(self) -> None:
        self.assertEqual(select.select([self.tun], [], [], 0)[0], [])
        self.tun.inject(b"\x45")
        self.assertEqual(select.select([self.tun], [], [], 0)[0], [self.tun])

    def test_write_and_take(self) -> None:
        self.assertEqual(self.tun.write_batch([b"\x45one", b"\x45two"]), (2, 0))
        self.assertTrue(self.tun.write(b"\x45three"))
        self.assertEqual(self.tun.take_written(), [b"\x45one", b"\x45two", b"\x45three"])
        self.assertEqual(self.tun.take_written(), [])

    def test_write_eagain(self) -> None:
        tun = FakeTun(sndbuf=4096)
        self.addCleanup(tun.close)
        written, failed = tun.write_batch([b"x" * 1000] * 1000)
        self.assertGreater(failed, 0)
        self.assertEqual(written + failed, 1000)
        self.assertFalse(tun.write(b"x" * 1000))
        self.assertGreater(tun.stats.write_errors["EAGAIN"], 0)
        self.assertEqual(len(tun.take_written()), written)
        self.assertTrue(tun.write(b"x"))

    def test_offload_flavour(self) -> None:
        tun = FakeTun(offload_active=True)
        self.addCleanup(tun.close)
        self.assertEqual(tun.vnet_hdr_len, 10)
        tun.inject(b"\x00" * 10 + b"\x45" * 60000)
        self.assertEqual(len(tun.read_batch()[0]), 60010)

    def test_closed(self) -> None:
        self.tun.close()
        self.assertTrue(self.tun.closed)
        self.assertRaises(TunClosedError, self.tun.read_batch)
        self.assertFalse(self.tun.write(b"x"))


class TunServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.opened: list[FakeTun] = []
        self.networking = SimpleNamespace(tun_device_id="tmt0")

    def opener(self, networking: Any) -> FakeTun:
        tun = FakeTun(name=networking.tun_device_id)
        self.addCleanup(tun.close)
        self.opened.append(tun)
        return tun

    def test_privileged_start_opens(self) -> None:
        health = HealthRegistry()
        svc = TunService(self.networking, health, open_device=self.opener)
        self.assertEqual(health.liveness(), {"tun": False})
        svc.privilegedStartService()
        self.assertIs(svc.device, self.opened[0])
        svc.startService()
        self.assertEqual(len(self.opened), 1)
        self.assertEqual(health.liveness(), {"tun": True})
        svc.stopService()
        self.assertTrue(self.opened[0].closed)
        self.assertIsNone(svc.device)
        self.assertEqual(health.liveness(), {"tun": False})

    def test_start_without_privileged(self) -> None:
        svc = TunService(self.networking, open_device=self.opener)
        svc.startService()
        self.assertTrue(svc.is_open())
        svc.stopService()
        self.assertFalse(svc.is_open())

    def test_open_failure_propagates(self) -> None:
        def fail(networking: Any) -> FakeTun:
            raise OSError("no tun")

        svc = TunService(self.networking, open_device=fail)
        self.assertRaises(OSError, svc.privilegedStartService)
        self.assertIsNone(svc.device)

    def test_device_closed_under_us(self) -> None:
        svc = TunService(self.networking, open_device=self.opener)
        svc.startService()
        self.opened[0].close()
        self.assertFalse(svc.is_open())
        svc.stopService()
