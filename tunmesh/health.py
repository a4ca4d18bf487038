"""
Liveness and readiness registries behind ``/health`` and ``/ready``.

Checks are plain callables returning ``bool``.  They run on every probe, on
the reactor thread, so they must be cheap: read a cached flag or compare a
timestamp, never do I/O (security contract W9: health is answered from cached
state even while the port is under load).  Only booleans leave this module
(W14): a check that raises or returns anything but ``True``/``False`` counts as
``False`` and the reason goes to a rate-limited log line, never to the client.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger, LogLevel

from tunmesh.interfaces import SecondsClock
from tunmesh.logutil import MonotonicClock, RateLimitedLog

Check = Callable[[], bool]

_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


class HealthRegistry:
    """Named liveness and readiness checks."""

    log = Logger()

    def __init__(self, clock: SecondsClock | None = None) -> None:
        self._liveness: dict[str, Check] = {}
        self._readiness: dict[str, Check] = {}
        self._errors = RateLimitedLog(self.log, clock if clock is not None else MonotonicClock(), burst=1)

    @staticmethod
    def _add(table: dict[str, Check], kind: str, name: str, check: Check) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"{kind} check name {name!r} must match {_NAME.pattern}")
        if name in table:
            raise ValueError(f"{kind} check {name!r} is already registered")
        if not callable(check):
            raise TypeError(f"{kind} check {name!r} must be callable")
        table[name] = check

    def add_liveness(self, name: str, check: Check) -> None:
        """Register a check whose failure means the process should be restarted."""
        self._add(self._liveness, "liveness", name, check)

    def add_readiness(self, name: str, check: Check) -> None:
        """Register a check whose failure means the node should not get traffic yet."""
        self._add(self._readiness, "readiness", name, check)

    def _run(self, kind: str, table: dict[str, Check]) -> dict[str, bool]:
        results: dict[str, bool] = {}
        for name, check in table.items():
            try:
                value = check()
            except Exception:
                self._errors.emit(
                    (kind, name, "raised"),
                    LogLevel.error,
                    "{kind} check {check} raised; reporting false",
                    kind=kind,
                    check=name,
                )
                self.log.failure("{kind} check {check} traceback", kind=kind, check=name, level=LogLevel.debug)
                value = False
            if not isinstance(value, bool):
                self._errors.emit(
                    (kind, name, "type"),
                    LogLevel.error,
                    "{kind} check {check} returned {type}, not bool; reporting false",
                    kind=kind,
                    check=name,
                    type=type(value).__name__,
                )
                value = False
            results[name] = value
        return results

    def liveness(self) -> dict[str, bool]:
        """Current liveness, one boolean per check."""
        return self._run("liveness", self._liveness)

    def readiness(self) -> dict[str, bool]:
        """Current readiness, one boolean per check."""
        return self._run("readiness", self._readiness)

    def export(self, metrics: Any) -> None:
        """Expose what ``/health`` and ``/ready`` answer as gauges computed at scrape time:
        ``tunmesh_live``, ``tunmesh_ready`` (1 or 0) and ``tunmesh_health_check{probe, check}`` (each
        check registered so far: call this once every check is in, at the end of ``makeService``)."""
        metrics.gauge("live", "1 while /health answers 200 (every liveness check passes), else 0.").set_function(
            lambda: float(all(self.liveness().values()))
        )
        metrics.gauge("ready", "1 while /ready answers 200 (every readiness check passes), else 0.").set_function(
            lambda: float(all(self.readiness().values()))
        )
        checks = metrics.gauge(
            "health_check",
            "1 or 0 for each check, by probe (liveness: /health, readiness: /ready) and check name: "
            "why a node is not live or not ready.",
            ("probe", "check"),
        )
        for probe, table, run in (
            ("liveness", self._liveness, self.liveness),
            ("readiness", self._readiness, self.readiness),
        ):
            for name in table:
                checks.labels(probe=probe, check=name).set_function(
                    lambda run=run, name=name: float(run().get(name, False))
                )
