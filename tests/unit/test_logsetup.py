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

    def test_client_service_attempts_only_at_debug(self) -> None:
        """ClientService logs each packet link's connection attempt at INFO: held at WARN unless the
        node logs at DEBUG (a SIGHUP level change applies to it too)."""
        from twisted.application.internet import ClientService

        from tunmesh.twisted_internals import CLIENT_SERVICE_LOG_NAMESPACE

        self.assertTrue(ClientService._log.namespace.startswith(CLIENT_SERVICE_LOG_NAMESPACE + "."))
        logsetup.configure_twistd("info", None, True)
        out = io.StringIO()
        self.patch(logsetup.sys, "stdout", out)
        self.addCleanup(logsetup.set_level, "info")
        publisher = LogPublisher(logsetup.twistd_observer())
        attempts = Logger(namespace=ClientService._log.namespace, observer=publisher)
        ours = Logger(namespace="tunmesh.dataplane.link.LinkClient", observer=publisher)
        attempts.info("Scheduling retry {n}", n=1)
        ours.info("link {n} up", n=1)
        attempts.warn("gave up {n}", n=1)
        self.assertNotIn("Scheduling retry", out.getvalue())
        self.assertIn("link 1 up", out.getvalue())
        self.assertIn("gave up 1", out.getvalue())
        logsetup.set_level("debug")
        attempts.info("Scheduling retry {n}", n=2)
        self.assertIn("Scheduling retry 2", out.getvalue())
        logsetup.set_level("info")
        attempts.info("Scheduling retry {n}", n=3)
        self.assertNotIn("Scheduling retry 3", out.getvalue())

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
