""":class:`ControlTraffic`: how many control requests a node sends and answers, and how many body bytes they carry.

The cost of the control plane at rest is what it does per peer per interval (docs/performance.md, "Scale"):
these two counters make it measurable from the node's own ``/metrics``, by kind (``register``,
``init_session``, ``leave``, ``other``), so the scale benchmark and the in-memory simulation read the same
figures. Bytes are request and response bodies (what the flows build, sign and parse), not HTTP or TLS
framing.
"""

from __future__ import annotations

from tunmesh.interfaces import MetricsLike


def request_kind(path: str) -> str:
    """The label of a control request by its path: ``register``, ``init_session``, ``leave`` or
    ``other`` (ids in the path are left out: the label set stays fixed)."""
    if "/registrations/register" in path:
        return "register"
    if "/init_session" in path:
        return "init_session"
    if "/registrations/leave" in path:
        return "leave"
    return "other"


class ControlTraffic:
    """Counts control requests (``direction``: ``out`` sent as a client, ``in`` answered as a server) and
    body bytes (``direction``: ``sent``, ``received``); one per node, shared by its client and its API."""

    def __init__(self, metrics: MetricsLike) -> None:
        self._requests = metrics.counter(
            "mesh_control_requests",
            "Control requests by kind (register, init_session, leave, other) and direction (out: sent by this "
            "node, in: answered by it).",
            ("kind", "direction"),
        )
        self._bytes = metrics.counter(
            "mesh_control_bytes",
            "Body bytes of control requests and responses by kind and direction (sent, received), as a "
            "client and as a server.",
            ("kind", "direction"),
        )

    def client(self, path: str, sent: int, received: int) -> None:
        """This node sent a request of ``sent`` body bytes to ``path``; ``received`` came back."""
        self._count(request_kind(path), "out", sent, received)

    def server(self, path: str, received: int, sent: int) -> None:
        """This node answered a request to ``path`` of ``received`` body bytes with ``sent`` bytes."""
        self._count(request_kind(path), "in", sent, received)

    def _count(self, kind: str, direction: str, sent: int, received: int) -> None:
        self._requests.labels(kind=kind, direction=direction).inc()
        if sent:
            self._bytes.labels(kind=kind, direction="sent").inc(sent)
        if received:
            self._bytes.labels(kind=kind, direction="received").inc(received)
