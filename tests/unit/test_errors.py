"""Errors answered with an HTTP status share one base (``tunmesh.errors.StatusError``)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tunmesh.auth.errors import AuthError, KexError
from tunmesh.errors import StatusError
from tunmesh.mesh.errors import InvalidRegistration, PeerRequestFailed, PoolFull, Stopping


class StatusErrorTests(SynchronousTestCase):
    def test_every_boundary_error_carries_reason_status_and_retry_after(self) -> None:
        cases: list[tuple[StatusError, str, int, float | None]] = [
            (AuthError("bad_signature"), "bad_signature", 401, None),
            (AuthError("rate_limited", retry_after=3.0), "rate_limited", 429, 3.0),
            (KexError("bad_key"), "bad_key", 400, None),
            (InvalidRegistration("schema", "detail for logs"), "schema", 400, None),
            (PoolFull("max_nodes"), "max_nodes", 503, None),
            (Stopping("stopping"), "stopping", 503, None),
            (PeerRequestFailed("status_429", "url", 429, 7.0), "status_429", 429, 7.0),
        ]
        for error, reason, status, retry_after in cases:
            self.assertIsInstance(error, StatusError)
            self.assertEqual((error.reason, error.status, error.retry_after), (reason, status, retry_after))

    def test_detail_stays_out_of_the_reason(self) -> None:
        error = InvalidRegistration("schema", "10.0.0.1 sent junk")
        self.assertEqual(error.reason, "schema")
        self.assertEqual(str(error), "schema: 10.0.0.1 sent junk")
