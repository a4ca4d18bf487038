"""Mesh errors: each carries the HTTP status the API boundary answers with and a short reason label.

The reason is a fixed label (safe for logs and metric labels); ``detail`` may carry ids and addresses for
logs but is never sent to the client: the body of an error response is a constant per status.
"""

from __future__ import annotations

from tunmesh.errors import StatusError


class MeshError(StatusError):
    """Base class: ``status`` is the HTTP status, ``reason`` a short label, ``detail`` for logs only."""

    status = 500

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class InvalidRegistration(MeshError):
    """Malformed or schema-invalid input (400)."""

    status = 400


class UnsupportedMediaType(MeshError):
    """The request body is not ``application/json`` (415)."""

    status = 415


class SelfRegistration(MeshError):
    """A registration from (or answered by) this very node (421, as upstream)."""

    status = 421


class RegistrationConflict(MeshError):
    """An id, address, URL or sequence conflict with live state (409)."""

    status = 409


class PoolFull(MeshError):
    """``max_nodes`` peers are already known; a new one is refused until some go stale (503)."""

    status = 503


class Stopping(MeshError):
    """This node is shutting down (it has told its peers it is leaving)."""

    status = 503


class PeerRequestFailed(MeshError):
    """An outbound control request failed: transport error, timeout, bad status or bad signature.

    ``status`` here is the HTTP status the peer answered (0 when there was no answer).
    """

    def __init__(
        self, reason: str, detail: str = "", status: int = 0, retry_after: float | None = None
    ) -> None:
        super().__init__(reason, detail)
        self.status = status
        self.retry_after = retry_after


class SessionRefused(PeerRequestFailed):
    """The peer refused our session token (401/404): it forgot us, or another process answers at its URL."""
