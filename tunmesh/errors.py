"""The base of every error a boundary answers with an HTTP status.

:class:`tunmesh.auth.errors.AuthError`, :class:`tunmesh.auth.errors.KexError` and
:class:`tunmesh.mesh.errors.MeshError` derive from :class:`StatusError`, so a boundary (the mesh routes,
``tunmesh.api.errors.render_error``) reads ``status``, ``reason`` and ``retry_after`` of any of them
without probing for attributes.
"""

from __future__ import annotations


class StatusError(Exception):
    """An error with the HTTP ``status`` it is answered with.

    ``reason`` is a short fixed label (safe for logs and metric labels, never a secret or a request
    value); ``retry_after`` is the seconds a 429 asks the client to wait (``None``: the default).
    """

    status: int = 500
    reason: str = "error"
    retry_after: float | None = None


__all__ = ["StatusError"]
