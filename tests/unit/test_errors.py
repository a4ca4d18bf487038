"""Errors answered with an HTTP status share one base (``tunmesh.errors.StatusError``) and one
constant-body renderer (``tunmesh.api.errors.render_error``)."""

from __future__ import annotations

from typing import Any

from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel
from werkzeug.exceptions import MethodNotAllowed, NotFound

from tunmesh.api.errors import BODIES, allowed_methods, render_error
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


class RenderErrorTests(SynchronousTestCase):
    """``tunmesh.api.errors.render_error``: the one constant-body answer of the port."""

    def render(self, status: int, **kw: Any) -> tuple[Request, bytes]:
        request = Request(DummyChannel())
        return request, render_error(request, status, **kw)

    def test_body_is_the_constant_of_the_status_and_never_cached(self) -> None:
        for status, body in BODIES.items():
            request, rendered = self.render(status)
            self.assertEqual((request.code, rendered), (status, body))
            self.assertEqual(request.responseHeaders.getRawHeaders(b"Content-Type"), [b"text/plain; charset=utf-8"])
            self.assertEqual(request.responseHeaders.getRawHeaders(b"Cache-Control"), [b"no-store"])

    def test_405_names_the_allowed_methods_sorted_once(self) -> None:
        request, _ = self.render(405, allow=["POST", "GET", "POST"])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"Allow"), [b"GET, POST"])
        request, _ = self.render(405)
        self.assertIsNone(request.responseHeaders.getRawHeaders(b"Allow"))

    def test_429_asks_for_whole_seconds_at_least_one(self) -> None:
        for retry_after, header in ((None, b"10"), (0.2, b"1"), (7.9, b"7")):
            request, _ = self.render(429, retry_after=retry_after)
            self.assertEqual(request.responseHeaders.getRawHeaders(b"Retry-After"), [header])
        request, _ = self.render(401, retry_after=5.0)
        self.assertIsNone(request.responseHeaders.getRawHeaders(b"Retry-After"))

    def test_allowed_methods_come_from_method_not_allowed_only(self) -> None:
        self.assertEqual(sorted(allowed_methods(Failure(MethodNotAllowed(valid_methods=["GET"])))), ["GET"])
        self.assertEqual(allowed_methods(Failure(MethodNotAllowed())), [])
        self.assertEqual(allowed_methods(Failure(NotFound())), [])
