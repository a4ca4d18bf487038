"""Tests for L{tunmesh.health}."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tunmesh.health import HealthRegistry


class Flag:
    def __init__(self, value: bool) -> None:
        self.value = value

    def __call__(self) -> bool:
        return self.value


class HealthRegistryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        self.clock = Clock()
        self.health = HealthRegistry(self.clock)

    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("log_level") == LogLevel.error]

    def test_empty(self) -> None:
        self.assertEqual(self.health.liveness(), {})
        self.assertEqual(self.health.readiness(), {})

    def test_checks_are_called_each_time(self) -> None:
        tun = Flag(True)
        self.health.add_liveness("tun", tun)
        self.health.add_readiness("registered", Flag(False))
        self.assertEqual(self.health.liveness(), {"tun": True})
        self.assertEqual(self.health.readiness(), {"registered": False})
        tun.value = False
        self.assertEqual(self.health.liveness(), {"tun": False})

    def test_liveness_and_readiness_are_separate(self) -> None:
        self.health.add_liveness("a", Flag(True))
        self.health.add_readiness("a", Flag(False))
        self.assertEqual(self.health.liveness(), {"a": True})
        self.assertEqual(self.health.readiness(), {"a": False})

    def test_raising_check_is_false_and_logged_rate_limited(self) -> None:
        def broken() -> bool:
            raise RuntimeError("secret detail")

        self.health.add_liveness("broken", broken)
        self.health.add_liveness("ok", Flag(True))
        for _ in range(20):
            self.assertEqual(self.health.liveness(), {"broken": False, "ok": True})
        self.assertEqual(len(self.errors()), 1)
        self.assertEqual(self.errors()[0]["check"], "broken")
        self.assertNotIn("secret detail", formatEvent(self.errors()[0]))
        # the traceback goes out at debug, once per failure
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 20)
        debug = [e for e in self.events if e.get("log_level") == LogLevel.debug and "log_failure" in e]
        self.assertEqual(len(debug), 20)
        self.clock.advance(10)
        # the suppressed count is summarised once the period is over
        self.assertEqual(len(self.errors()), 2)
        self.assertEqual(self.errors()[1]["rate_limit_suppressed"], 19)

    def test_non_bool_result_is_false(self) -> None:
        for i, value in enumerate([1, "yes", None, [True]]):
            self.health.add_readiness(f"odd{i}", lambda value=value: value)  # type: ignore[misc]
        self.assertEqual(self.health.readiness(), {"odd0": False, "odd1": False, "odd2": False, "odd3": False})
        self.assertEqual(len(self.errors()), 4)

    def test_duplicate_name(self) -> None:
        self.health.add_liveness("tun", Flag(True))
        self.assertRaises(ValueError, self.health.add_liveness, "tun", Flag(True))

    def test_bad_names(self) -> None:
        for bad in ("", "Tun", "with space", "x" * 65, 3, "1abc"):
            self.assertRaises(ValueError, self.health.add_liveness, bad, Flag(True))

    def test_not_callable(self) -> None:
        self.assertRaises(TypeError, self.health.add_readiness, "x", True)

    def test_default_clock(self) -> None:
        health = HealthRegistry()
        health.add_liveness("x", Flag(True))
        self.assertEqual(health.liveness(), {"x": True})


class ExportTests(SynchronousTestCase):
    def test_gauges_say_what_the_probes_answer_at_scrape_time(self) -> None:
        from tunmesh.metrics import Metrics

        state = {"mesh": False}
        registry = HealthRegistry()
        registry.add_liveness("tun", lambda: True)
        registry.add_readiness("mesh", lambda: state["mesh"])
        registry.add_readiness("api", lambda: True)
        metrics = Metrics("n", process_metrics=False)
        registry.export(metrics)
        value = metrics.collector_registry().get_sample_value
        self.assertEqual((value("tunmesh_live", {}), value("tunmesh_ready", {})), (1.0, 0.0))
        self.assertEqual(value("tunmesh_health_check", {"probe": "readiness", "check": "mesh"}), 0.0)
        self.assertEqual(value("tunmesh_health_check", {"probe": "readiness", "check": "api"}), 1.0)
        self.assertEqual(value("tunmesh_health_check", {"probe": "liveness", "check": "tun"}), 1.0)
        state["mesh"] = True
        self.assertEqual(value("tunmesh_ready", {}), 1.0)
        self.assertEqual(value("tunmesh_health_check", {"probe": "readiness", "check": "mesh"}), 1.0)
