"""The one constant-body error renderer of the port (contract §3.0, W18).

An error response never says more than its status: its body is the constant text of :data:`BODIES`,
``text/plain``, not cached. ``tunmesh.api.app`` (the root app), ``tunmesh.mesh.api`` (the mesh routes,
through klein's ``handle_errors``) render with :func:`render_error`; ``tunmesh.api.server`` writes the
same bodies for the refusals it answers before a request exists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed

#: The body of each error status the port answers.
BODIES: Mapping[int, bytes] = {
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
    409: b"Conflict",
    413: b"Request Entity Too Large",
    415: b"Unsupported Media Type",
    421: b"Misdirected Request",
    429: b"Too Many Requests",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}
TEXT_PLAIN = b"text/plain; charset=utf-8"
#: ``Retry-After`` of a 429 that names no wait
DEFAULT_RETRY_AFTER = 10


def render_error(
    request: IRequest, status: int, *, allow: Iterable[str] = (), retry_after: float | None = None
) -> bytes:
    """Answer ``status`` with its constant body: ``Allow`` (sorted) for a 405 that names methods,
    ``Retry-After`` (whole seconds, at least 1) for a 429."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", TEXT_PLAIN)
    request.setHeader(b"Cache-Control", b"no-store")
    allowed = sorted(set(allow))
    if allowed:
        request.setHeader(b"Allow", ", ".join(allowed).encode("ascii"))
    if status == 429:
        request.setHeader(b"Retry-After", str(max(1, int(retry_after or DEFAULT_RETRY_AFTER))).encode("ascii"))
    return BODIES.get(status, b"Error")


def allowed_methods(failure: Failure) -> list[str]:
    """The methods a werkzeug ``MethodNotAllowed`` names (none for any other failure)."""
    error = failure.value
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        return list(error.valid_methods)
    return []


__all__ = ["BODIES", "DEFAULT_RETRY_AFTER", "TEXT_PLAIN", "allowed_methods", "render_error"]
