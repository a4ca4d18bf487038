"""The twistd log hook: a dotted name twistd can import, filtering at the configured level."""

from __future__ import annotations

import io

from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python.reflect import namedAny
from twisted.trial.unittest import SynchronousTestCase

from tunmesh import logsetup


class TwistdObserverTests(SynchronousTestCase):
    def test_dotted_name_resolves_and_filters_at_level(self) -> None:
        name = logsetup.configure_twistd("warn", None, True)
        self.assertIs(namedAny(name), logsetup.twistd_observer)
        out = io.StringIO()
        self.patch(logsetup.sys, "stdout", out)
        observer = logsetup.twistd_observer()
        publisher = LogPublisher(observer)
        log = Logger(namespace="t", observer=publisher)
        log.info("quiet {x}", x=1)
        log.warn("loud {x}", x=2)
        self.assertNotIn("quiet", out.getvalue())
        self.assertIn("loud 2", out.getvalue())

    def test_logfile_destination(self) -> None:
        path = self.mktemp()
        logsetup.configure_twistd("debug", path, False)
        observer = logsetup.twistd_observer()
        observer({"log_level": LogLevel.debug, "log_format": "hello", "log_namespace": "t", "log_time": 0})
        with open(path) as f:
            self.assertIn("hello", f.read())

    def test_json_format(self) -> None:
        """``logging.format: json``: twistd's observer writes one JSON object per event."""
        import json

        logsetup.configure_twistd("info", None, True, "json")
        self.addCleanup(logsetup.configure_twistd, "info", None, True, "text")
        out = io.StringIO()
        self.patch(logsetup.sys, "stdout", out)
        publisher = LogPublisher(logsetup.twistd_observer())
        Logger(namespace="t", observer=publisher).info("peer {peer} up", peer="p1")
        (line,) = out.getvalue().splitlines()
        self.assertEqual(json.loads(line)["peer"], "p1")
        self.assertEqual(json.loads(line)["text"], "peer p1 up")
