"""Certificate expiry while the node runs: a gauge per certificate and a warning well before the end.

The preflight refuses an expired or not-yet-valid certificate at start and warns under
:data:`~tunmesh.preflight.EXPIRY_WARNING_DAYS` days; a node runs for months, so the same warning is
repeated while it runs (once a day, and at once after a reload), and
``tunmesh_cert_expiry_timestamp_seconds{which}`` lets an alert fire long before peers start refusing
the node (issue 12, defect 3b). ``which`` is ``node`` (the first certificate of ``cert_file_path``) or
``ca`` (the soonest-expiring certificate of the trust bundle).

Certificates are handed in as parsed objects (read as root at build time, and again by a reload), so
the check itself does no I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from cryptography import x509
from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from tunmesh.metrics import Metrics

WARN_DAYS = 14.0
CHECK_INTERVAL = 24 * 3600.0


class CertExpiryWatch(TimerService):
    """Exports the expiry of the node's certificate and its trust anchors; warns under :data:`WARN_DAYS`."""

    log = Logger()

    def __init__(
        self,
        metrics: Metrics,
        clock: IReactorTime,
        wall: Callable[[], float] = time.time,
        interval: float = CHECK_INTERVAL,
    ) -> None:
        super().__init__(interval, self.check)
        self.clock = clock
        self.setName("cert_expiry")
        self._wall = wall
        self._gauge = metrics.gauge(
            "cert_expiry_timestamp_seconds",
            "Unix time at which a certificate stops being valid, by which: node (cert_file_path) or ca "
            "(the soonest-expiring certificate of the trust bundle).",
            ("which",),
        )
        self._certs: dict[str, tuple[float, str]] = {}

    def set_certificates(self, node: x509.Certificate, trust: Sequence[x509.Certificate]) -> None:
        """The certificates in use now (at build time, and after each successful reload)."""
        self._certs = {"node": (node.not_valid_after_utc.timestamp(), node.subject.rfc4514_string())}
        if trust:
            soonest = min(trust, key=lambda c: c.not_valid_after_utc)
            self._certs["ca"] = (soonest.not_valid_after_utc.timestamp(), soonest.subject.rfc4514_string())
        for which, (not_after, _) in self._certs.items():
            self._gauge.labels(which=which).set(not_after)
        if self.running:
            self.check()

    def check(self) -> None:
        """Warn for each certificate under :data:`WARN_DAYS` days of validity (an error once expired)."""
        now = self._wall()
        for which, (not_after, subject) in self._certs.items():
            days = (not_after - now) / 86400.0
            if days <= 0:
                self.log.error(
                    "{which} certificate {subject} has expired: peers refuse this node; replace it and reload",
                    which=which, subject=subject, days=days,
                )
            elif days < WARN_DAYS:
                self.log.warn(
                    "{which} certificate {subject} expires in {days:.1f} days: replace it and reload (SIGHUP)",
                    which=which, subject=subject, days=days,
                )


__all__ = ["CHECK_INTERVAL", "CertExpiryWatch", "WARN_DAYS"]
