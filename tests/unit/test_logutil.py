"""Tests for L{tunmesh.logutil}."""

from __future__ import annotations

import io
import json
from ipaddress import ip_interface
from typing import Any

from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, eventFromJSON, formatEvent, globalLogPublisher
from twisted.logger._legacy import publishToNewObserver
from twisted.python.failure import Failure
from twisted.python.log import textFromEventDict
from twisted.trial.unittest import SynchronousTestCase

from tunmesh.logutil import OVERFLOW_KEY, MonotonicClock, RateLimitedLog, make_observer, parse_level


class SecondsOnly:
    """A clock without callLater, as used by registries built without a reactor."""

    def __init__(self) -> None:
        self.now = 0.0

    def seconds(self) -> float:
        return self.now


class RateLimitedLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.logger = Logger(namespace="test", observer=self.events.append)  # type: ignore[arg-type]
        self.clock = Clock()
        self.rl = RateLimitedLog(self.logger, self.clock, burst=5, period=10.0)

    def emit(self, key: object = ("no_route", "peer-a"), n: int = 1) -> list[bool]:
        return [
            self.rl.emit(key, LogLevel.warn, "dropped packet: {reason}", reason="no_route") for _ in range(n)
        ]

    def test_burst_then_suppressed(self) -> None:
        written = self.emit(n=100)
        self.assertEqual(written, [True] * 5 + [False] * 95)
        self.assertEqual(len(self.events), 5)
        self.assertEqual(formatEvent(self.events[0]), "dropped packet: no_route")
        self.assertEqual(self.events[0]["log_level"], LogLevel.warn)
        self.assertEqual(self.rl.suppressed(("no_route", "peer-a")), 95)

    def test_scheduled_summary_after_period(self) -> None:
        self.emit(n=100)
        self.clock.advance(9.9)
        self.assertEqual(len(self.events), 5)
        self.clock.advance(0.1)
        self.assertEqual(len(self.events), 6)
        summary = self.events[-1]
        self.assertEqual(summary["rate_limit_suppressed"], 95)
        self.assertIn("95 events suppressed", formatEvent(summary))
        self.assertEqual(summary["log_level"], LogLevel.warn)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_sustained_flood_one_line_per_period(self) -> None:
        """A flood of 10 events/s for 60 s: 5 lines, then about one per 10 s."""
        for _ in range(600):
            self.emit()
            self.clock.advance(0.1)
        self.clock.advance(10)
        self.assertLessEqual(len(self.events), 5 + 7)
        self.assertGreaterEqual(len(self.events), 5 + 6)
        # Every event is either written or counted in a later line.
        written = [e for e in self.events if "reason" in e]
        counted = sum(e.get("rate_limit_suppressed", 0) for e in self.events)
        self.assertEqual(len(written) + counted, 600)

    def test_event_after_period_carries_the_count(self) -> None:
        clock = SecondsOnly()
        rl = RateLimitedLog(self.logger, clock, burst=2, period=10.0)
        for _ in range(7):
            rl.emit("k", LogLevel.error, "boom {n}", n=1)
        self.assertEqual(len(self.events), 2)
        clock.now = 10.0
        self.assertTrue(rl.emit("k", LogLevel.error, "boom {n}", n=2))
        self.assertEqual(formatEvent(self.events[-1]), "boom 2 (5 similar events suppressed)")
        self.assertEqual(rl.suppressed("k"), 0)

    def test_keys_are_independent(self) -> None:
        self.emit(key="a", n=10)
        self.emit(key="b", n=10)
        self.assertEqual(len(self.events), 10)
        self.assertEqual(self.rl.suppressed("a"), 5)
        self.assertEqual(self.rl.suppressed("b"), 5)

    def test_quiet_refills_burst(self) -> None:
        self.emit(n=5)
        self.clock.advance(50)
        self.assertEqual(self.emit(n=6), [True] * 5 + [False])

    def test_flush_writes_pending_counts(self) -> None:
        rl = RateLimitedLog(self.logger, SecondsOnly(), burst=1, period=10.0)
        rl.emit("k", LogLevel.info, "x")
        rl.emit("k", LogLevel.info, "x")
        rl.emit("k", LogLevel.info, "x")
        rl.flush()
        self.assertEqual(self.events[-1]["rate_limit_suppressed"], 2)
        rl.flush()
        self.assertEqual(len(self.events), 2)

    def test_flush_cancels_scheduled_summary(self) -> None:
        self.emit(n=6)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.rl.flush()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.events[-1]["rate_limit_suppressed"], 1)

    def test_key_table_bounded(self) -> None:
        rl = RateLimitedLog(self.logger, self.clock, burst=1, period=10.0, max_keys=3)
        for i in range(3):
            rl.emit(i, LogLevel.warn, "x")
            rl.emit(i, LogLevel.warn, "x")  # suppressed: the key stays busy
        self.assertTrue(rl.emit("new", LogLevel.warn, "x"))
        self.assertFalse(rl.emit("newer", LogLevel.warn, "x"))
        self.assertEqual(rl.suppressed(OVERFLOW_KEY), 1)
        self.assertEqual(len(rl._buckets), 4)

    def test_idle_keys_are_pruned(self) -> None:
        rl = RateLimitedLog(self.logger, self.clock, burst=1, period=10.0, max_keys=2)
        rl.emit("a", LogLevel.warn, "x")
        rl.emit("b", LogLevel.warn, "x")
        self.clock.advance(10)
        self.assertTrue(rl.emit("c", LogLevel.warn, "x"))
        self.assertEqual(rl.suppressed(OVERFLOW_KEY), 0)
        self.assertNotIn(OVERFLOW_KEY, rl._buckets)

    def test_prune_at_most_once_per_period(self) -> None:
        rl = RateLimitedLog(self.logger, self.clock, burst=1, period=10.0, max_keys=2)
        rl.emit("a", LogLevel.warn, "x")
        rl.emit("b", LogLevel.warn, "x")
        self.clock.advance(10)
        rl.emit("c", LogLevel.warn, "x")  # sweeps: a and b are idle again
        rl.emit("d", LogLevel.warn, "x")
        self.clock.advance(5)  # c and d are half refilled: not prunable, and no sweep yet anyway
        rl.emit("e", LogLevel.warn, "x")
        self.assertIn(OVERFLOW_KEY, rl._buckets)
        self.clock.advance(10)
        # a sweep is allowed again; c, d and the overflow are idle and go
        self.assertTrue(rl.emit("f", LogLevel.warn, "x"))
        self.assertEqual(set(rl._buckets), {"f"})

    def test_bad_parameters(self) -> None:
        self.assertRaises(ValueError, RateLimitedLog, self.logger, self.clock, burst=0)
        self.assertRaises(ValueError, RateLimitedLog, self.logger, self.clock, period=0)
        self.assertRaises(ValueError, RateLimitedLog, self.logger, self.clock, period=-1)
        self.assertRaises(ValueError, RateLimitedLog, self.logger, self.clock, max_keys=0)

    def test_monotonic_clock_advances(self) -> None:
        c = MonotonicClock()
        a = c.seconds()
        self.assertGreaterEqual(c.seconds(), a)


class ObserverTests(SynchronousTestCase):
    def log_all(self, level: str, as_json: bool = False) -> str:
        out = io.StringIO()
        logger = Logger(namespace="tunmesh.test", observer=make_observer(level, json=as_json, out=out))
        logger.debug("d {x}", x=1)
        logger.info("i {x}", x=2)
        logger.warn("w {x}", x=3)
        logger.error("e {x}", x=4)
        logger.critical("c {x}", x=5)
        return out.getvalue()

    def test_levels_filter(self) -> None:
        expected = {
            "debug": ["d 1", "i 2", "w 3", "e 4", "c 5"],
            "info": ["i 2", "w 3", "e 4", "c 5"],
            "warn": ["w 3", "e 4", "c 5"],
            "error": ["e 4", "c 5"],
        }
        for level, messages in expected.items():
            text = self.log_all(level)
            for m in ["d 1", "i 2", "w 3", "e 4", "c 5"]:
                if m in messages:
                    self.assertIn(m, text, level)
                else:
                    self.assertNotIn(m, text, level)

    def test_json_lines_keep_fields(self) -> None:
        lines = self.log_all("warn", as_json=True).splitlines()
        self.assertEqual(len(lines), 3)
        events = [json.loads(line) for line in lines]
        self.assertEqual([e["x"] for e in events], [3, 4, 5])
        self.assertEqual(events[0]["log_namespace"], "tunmesh.test")

    def test_json_lines_round_trip_with_text_and_level(self) -> None:
        """One event per line; ``eventFromJSON`` gives back an event that formats to the same text."""
        out = io.StringIO()
        logger = Logger(namespace="tunmesh.test", observer=make_observer("info", json=True, out=out))
        logger.info("peer {peer_id} up over {url}", peer_id="p1", url="https://a:1/", extra={"k": [1, 2]},
                    address=ip_interface("100.64.0.1/24"))
        logger.warn("multi\nline {x}", x="y")
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        for line, text, level in zip(
            lines, ["peer p1 up over https://a:1/", "multi\nline y"], ["info", "warn"], strict=True
        ):
            record = json.loads(line)
            self.assertEqual((record["text"], record["level"]), (text, level))
            self.assertEqual(formatEvent(eventFromJSON(line)), text)
        self.assertEqual(json.loads(lines[0])["peer_id"], "p1")
        self.assertEqual(json.loads(lines[0])["address"], "100.64.0.1/24")
        self.assertNotIn("unpersistable", out.getvalue())
        self.assertEqual(json.loads(lines[0])["extra"], {"k": [1, 2]})

    def failing(self) -> Failure:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError:
            return Failure()

    def test_error_with_exception_is_one_line_with_type_and_message(self) -> None:
        for level, traceback_shown in (("info", False), ("debug", True)):
            out = io.StringIO()
            logger = Logger(namespace="tunmesh.test", observer=make_observer(level, out=out))
            logger.failure("link to {peer} failed", self.failing(), peer="p1")
            text = out.getvalue()
            first = text.splitlines()[0]
            self.assertIn("[tunmesh.test#critical] link to p1 failed: ConnectionRefusedError: "
                          "[Errno 111] Connection refused", first)
            self.assertEqual("Traceback" in text, traceback_shown, text)
            if not traceback_shown:
                self.assertEqual(len(text.splitlines()), 1, text)

    def test_error_with_exception_in_json(self) -> None:
        out = io.StringIO()
        logger = Logger(namespace="tunmesh.test", observer=make_observer("info", json=True, out=out))
        logger.failure("boom {x}", self.failing(), level=LogLevel.error, x=1)
        (line,) = out.getvalue().splitlines()
        record = json.loads(line)
        self.assertEqual(record["exception_type"], "ConnectionRefusedError")
        self.assertEqual(record["exception_message"], "[Errno 111] Connection refused")
        self.assertEqual(record["level"], "error")
        self.assertTrue(record["text"].startswith("boom 1: ConnectionRefusedError: "))
        self.assertNotIn("log_failure", record)

    def test_legacy_unhandled_error_is_short_too(self) -> None:
        """Twisted's own ``log.err`` (e.g. "Unhandled Error" from a protocol) goes the same way."""
        out = io.StringIO()
        observer = make_observer("info", out=out)
        event = {"isError": 1, "failure": self.failing(), "why": None, "message": (), "time": 0.0,
                 "system": "HTTP11ClientProtocol,client"}
        publishToNewObserver(observer, event, textFromEventDict)
        (line,) = out.getvalue().splitlines()
        self.assertIn("Unhandled Error: ConnectionRefusedError: [Errno 111] Connection refused", line)

    def test_factory_chatter_is_debug(self) -> None:
        class Chatty(Factory):
            pass

        for level, shown in (("info", False), ("debug", True)):
            out = io.StringIO()
            globalLogPublisher.addObserver(observer := make_observer(level, out=out))
            try:
                f = Chatty()
                f.doStart()
                f.doStop()
            finally:
                globalLogPublisher.removeObserver(observer)
            self.assertEqual("Starting factory" in out.getvalue(), shown, out.getvalue())
            self.assertEqual("Stopping factory" in out.getvalue(), shown)

    def test_unknown_level(self) -> None:
        for bad in ("warning", "INFO", "", None, "critical"):
            self.assertRaises(ValueError, make_observer, bad)
            self.assertRaises(ValueError, parse_level, bad)

    def test_parse_level(self) -> None:
        self.assertIs(parse_level("warn"), LogLevel.warn)
        self.assertIs(parse_level("debug"), LogLevel.debug)
