"""The running node's certificate expiry: gauge per certificate, warnings under 14 days (issue 12, 3b)."""

from __future__ import annotations

import datetime

from cryptography import x509
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.tls_support import certificate, ec_key
from tunmesh.testing import FakeMetrics
from tunmesh.tls.expiry import CHECK_INTERVAL, CertExpiryWatch

NOW = datetime.datetime(2026, 11, 29, tzinfo=datetime.UTC)


def cert(days_left: float) -> x509.Certificate:
    return certificate(
        ec_key(), not_before=NOW - datetime.timedelta(days=30), not_after=NOW + datetime.timedelta(days=days_left)
    )


class CertExpiryWatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        self.clock = Clock()
        self.wall = [NOW.timestamp()]
        self.metrics = FakeMetrics()
        self.watch = CertExpiryWatch(self.metrics, self.clock, wall=lambda: self.wall[0])  # type: ignore[arg-type]

    def warnings(self) -> list[dict]:
        return [e for e in self.events if e["log_level"] in (LogLevel.warn, LogLevel.error)]

    def test_gauges_hold_not_after_of_node_and_soonest_ca(self) -> None:
        node, ca_late, ca_soon = cert(300), cert(900), cert(400)
        self.watch.set_certificates(node, [ca_late, ca_soon])
        self.assertEqual(self.metrics.value("cert_expiry_timestamp_seconds", "node"), node.not_valid_after_utc.timestamp())
        self.assertEqual(self.metrics.value("cert_expiry_timestamp_seconds", "ca"), ca_soon.not_valid_after_utc.timestamp())

    def test_quiet_while_far_from_expiry_then_warns_daily(self) -> None:
        self.watch.set_certificates(cert(20), [cert(400)])
        self.watch.startService()
        self.addCleanup(self.watch.stopService)
        self.assertEqual(self.warnings(), [])
        for _day in range(8):  # 19 .. 12 days left: warnings under 14 (13, 12)
            self.wall[0] += CHECK_INTERVAL
            self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(len(self.warnings()), 2)
        self.assertIn("expires in", self.warnings()[0]["log_format"])
        self.assertEqual(self.warnings()[0]["which"], "node")

    def test_expired_is_an_error_and_reload_rechecks_at_once(self) -> None:
        self.watch.set_certificates(cert(1), [])
        self.watch.startService()
        self.addCleanup(self.watch.stopService)
        self.assertEqual(len(self.warnings()), 1)
        self.wall[0] += 2 * 86400
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(self.warnings()[-1]["log_level"], LogLevel.error)
        self.watch.set_certificates(cert(365), [])  # a reload with a new one
        count = len(self.warnings())
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(len(self.warnings()), count)
