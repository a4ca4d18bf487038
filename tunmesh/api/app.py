"""
The root klein application of the control API port.

Own routes (all unauthenticated, all cheap):

  - ``GET /health``: liveness booleans, 200 or 503;
  - ``GET /ready``: readiness booleans, 503 until every check is true;
  - ``GET /metrics``: Prometheus text, only when monitoring is enabled (else 404); ``?name[]=`` selects
    series by sample name, as prometheus_client's exporters do;
  - ``GET /tunmesh/control/v0/node_info``: ``{"id", "listen_url"}``, an unsigned
    diagnostic (security contract W4: it never drives a redirect).

Everything else below ``/tunmesh/`` is delegated to resources mounted with
:meth:`ControlAPI.mount`.  A mounted resource sees the request with the prefix moved
to ``request.prepath`` and only the rest in ``request.postpath``, so a mounted
klein app declares its routes relative to the prefix::

    class MeshRoutes:
        app = Klein()

        @app.route("/registrations/register", methods=["POST"])
        def register(self, request): ...

    api.mount("/tunmesh/control/v0", MeshRoutes().app.resource())

serves ``POST /tunmesh/control/v0/registrations/register``.  The longest
matching prefix wins; node_info keeps its exact path whatever is mounted.  A
mounted app answers its own 404/405s and errors (through the same renderer,
:func:`tunmesh.api.errors.render_error`, from its ``handle_errors``).

Errors use constant plain-text bodies (contract 3.0, W18): 404 ``Not Found``,
405 ``Method Not Allowed`` (with ``Allow``), 500 ``Internal Server Error`` (the
traceback goes to the log at debug, and ``tunmesh_errors_total{where="api"}``
counts it).  Every response here carries ``Cache-Control: no-store``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from klein import Klein
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from tunmesh.api.errors import BODIES, allowed_methods, render_error
from tunmesh.health import HealthRegistry
from tunmesh.interfaces import SecondsClock
from tunmesh.logutil import MonotonicClock, RateLimitedLog
from tunmesh.metrics import MAX_SELECTED_NAMES, Metrics, MetricsDisabledError
from tunmesh.node import NodeIdentity

#: Root of the paths that may be mounted.
MOUNT_ROOT = "/tunmesh/"
#: node_info path; wins over any mounted prefix.
NODE_INFO_PATH = "/tunmesh/control/v0/node_info"

BAD_REQUEST_BODY = BODIES[400]
NOT_FOUND_BODY = BODIES[404]
METHOD_NOT_ALLOWED_BODY = BODIES[405]
INTERNAL_ERROR_BODY = BODIES[500]

_JSON = b"application/json"

# Own paths below MOUNT_ROOT, as segments after "tunmesh", with their methods.
_OWN_TUNMESH_PATHS: dict[tuple[bytes, ...], tuple[str, ...]] = {
    tuple(s.encode() for s in NODE_INFO_PATH[len(MOUNT_ROOT) :].split("/")): ("GET", "HEAD"),
}


def _common_headers(request: IRequest, content_type: bytes) -> None:
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")


def _render_error(request: IRequest, status: int, allow: Iterable[str] = ()) -> bytes:
    """:func:`tunmesh.api.errors.render_error`, with this app's ``nosniff`` on every answer."""
    body = render_error(request, status, allow=allow)
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    return body


def _json(request: IRequest, code: int, value: Any) -> bytes:
    request.setResponseCode(code)
    _common_headers(request, _JSON)
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("ascii")


def _parse_prefix(prefix: str) -> tuple[bytes, ...]:
    """``"/tunmesh/control/v0"`` to the segments after ``tunmesh``; ``ValueError`` if unusable."""
    if not isinstance(prefix, str) or not prefix.startswith(MOUNT_ROOT):
        raise ValueError(f"mount prefix {prefix!r} must start with {MOUNT_ROOT!r}")
    rest = prefix[len(MOUNT_ROOT) :].rstrip("/")
    segments = rest.split("/") if rest else []
    if not segments or any(s in ("", ".", "..") for s in segments):
        raise ValueError(f"mount prefix {prefix!r} needs non-empty segments below {MOUNT_ROOT!r}")
    encoded = tuple(s.encode("utf-8") for s in segments)
    for own in _OWN_TUNMESH_PATHS:
        if encoded[: len(own)] == own:
            raise ValueError(f"mount prefix {prefix!r} is {NODE_INFO_PATH} or below it, which this app owns")
    return encoded


class _Utf8PathGuard(Resource):
    """
    Answer a path that is not UTF-8 with a constant 400 before klein sees it:
    klein would log a traceback per request, which lets anyone flood the log.
    """

    isLeaf = True

    def __init__(self, inner: IResource) -> None:
        super().__init__()
        self._inner = inner

    def render(self, request: IRequest) -> bytes | int:
        try:
            b"/".join(request.prepath + request.postpath).decode("utf-8")
        except UnicodeDecodeError:
            return _render_error(request, 400)
        result: bytes | int = self._inner.render(request)
        return result


class ControlAPI:
    """
    Root resource of the API port: health, readiness, metrics, node_info,
    and the mount table for the ``/tunmesh/`` sub-apps.
    """

    app = Klein()
    log = Logger()

    def __init__(
        self,
        identity: NodeIdentity,
        health: HealthRegistry,
        metrics: Metrics,
        monitoring_enabled: bool,
        *,
        clock: SecondsClock | None = None,
    ) -> None:
        self._identity = identity
        self._health = health
        self._metrics = metrics
        self._monitoring_enabled = monitoring_enabled
        self._mounts: dict[tuple[bytes, ...], IResource] = {}
        # Encoded once: node_info never changes during the life of the process.
        self._node_info = json.dumps(
            {"id": identity.node_id, "listen_url": identity.advertise_url}, separators=(",", ":")
        ).encode("utf-8")
        self._errors = metrics.counter(
            "errors", "Unexpected exceptions caught at a boundary, by where (api, pre_auth, a mesh route...).", ("where",)
        )
        self._error_log = RateLimitedLog(self.log, clock if clock is not None else MonotonicClock())

    def mount(self, prefix: str, resource: IResource) -> None:
        """
        Serve everything below ``prefix`` (which starts with ``/tunmesh/``) with
        ``resource``; it sees the path relative to ``prefix``.
        """
        segments = _parse_prefix(prefix)
        if not IResource.providedBy(resource):
            raise TypeError(f"mount {prefix!r}: {resource!r} does not provide IResource")
        if segments in self._mounts:
            raise ValueError(f"mount prefix {prefix!r} is already mounted")
        self._mounts[segments] = resource

    def resource(self) -> IResource:
        """The root resource to hand to the (hardened) Site."""
        return _Utf8PathGuard(self.app.resource())

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        live = self._health.liveness()
        return _json(request, 200 if all(live.values()) else 503, {"live": live})

    @app.route("/ready", methods=["GET"])
    def ready(self, request: IRequest) -> bytes:
        ready = self._health.readiness()
        return _json(request, 200 if all(ready.values()) else 503, {"ready": ready})

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: IRequest) -> bytes:
        if not self._monitoring_enabled:
            raise NotFound()
        selectors = request.args.get(b"name[]")
        names: list[str] | None = None
        if selectors is not None:
            try:
                names = [s.decode("ascii") for s in selectors]
            except UnicodeDecodeError:
                return _render_error(request, 400)
            if len(names) > MAX_SELECTED_NAMES:
                return _render_error(request, 400)
        try:
            body, content_type = self._metrics.render(names)
        except MetricsDisabledError:
            raise NotFound() from None
        request.setResponseCode(200)
        _common_headers(request, content_type.encode("ascii"))
        return body

    @app.route(NODE_INFO_PATH, methods=["GET"])
    def node_info(self, request: IRequest) -> bytes:
        request.setResponseCode(200)
        _common_headers(request, _JSON)
        return self._node_info

    @app.route(MOUNT_ROOT, branch=True, strict_slashes=False)
    def mounted(self, request: IRequest) -> IResource:
        """
        Hand the request to the longest mounted prefix.  klein has already
        moved ``tunmesh`` to ``prepath``; move the prefix too.
        """
        rest = tuple(request.postpath)
        for own, own_methods in _OWN_TUNMESH_PATHS.items():
            if rest == own:
                # Werkzeug falls through to this branch when node_info's method
                # does not match; keep the 405 of the exact route.
                raise MethodNotAllowed(valid_methods=list(own_methods))
            if rest[: len(own)] == own:
                # Below node_info (or node_info/): ours, and there is nothing.
                raise NotFound()
        for segments in sorted(self._mounts, key=len, reverse=True):
            if rest[: len(segments)] == segments:
                request.prepath.extend(segments)
                request.postpath = list(rest[len(segments) :])
                request.setHeader(b"Cache-Control", b"no-store")
                return self._mounts[segments]
        raise NotFound()

    @app.handle_errors(NotFound, RequestRedirect)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        return _render_error(request, 404)

    @app.handle_errors(MethodNotAllowed)
    def method_not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        return _render_error(request, 405, allowed_methods(failure))

    @app.handle_errors(Exception)
    def internal_error(self, request: IRequest, failure: Failure) -> bytes:
        self._errors.labels(where="api").inc()
        self._error_log.emit(
            "api",
            LogLevel.error,
            "unexpected {error_type} answering {method} {path}; 500 sent",
            error_type=failure.type.__name__ if failure.type is not None else "error",
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("ascii", "replace")[:200],
        )
        self.log.failure("traceback of the 500 above", failure=failure, level=LogLevel.debug)
        return _render_error(request, 500)
