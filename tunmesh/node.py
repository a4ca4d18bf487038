"""
The identity of one node process.

As upstream, a node gets a fresh UUIDv4 every time the process starts: a
restart is a new node that happens to reuse the URL and mesh address (peers
detect it by the changed ID).  ``makeService`` calls :meth:`NodeIdentity.generate`
exactly once and hands the value to everything that needs it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import attr


def _canonical_uuid(instance: object, attribute: attr.Attribute[str], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a string")
    try:
        canonical = str(uuid.UUID(value))
    except ValueError:
        raise ValueError(f"{attribute.name} {value!r} is not a UUID") from None
    if canonical != value:
        raise ValueError(f"{attribute.name} {value!r} is not in canonical lowercase UUID form")


def _non_empty_str(instance: object, attribute: attr.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty string")


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class NodeIdentity:
    """Who this process is: its ID, where peers reach it, and when it started."""

    node_id: str = attr.ib(validator=_canonical_uuid)
    advertise_url: str = attr.ib(validator=_non_empty_str)
    #: Unix time at start (for display and the start-time metric only).
    started_at: float = attr.ib(converter=float)
    #: Monotonic clock at start; ages are measured from this, never from wall time.
    started_monotonic: float = attr.ib(converter=float)

    @classmethod
    def generate(
        cls,
        advertise_url: str,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        uuid4: Callable[[], uuid.UUID] = uuid.uuid4,
    ) -> NodeIdentity:
        """A new identity with a random UUIDv4; call once per process."""
        return cls(
            node_id=str(uuid4()),
            advertise_url=advertise_url,
            started_at=wall(),
            started_monotonic=monotonic(),
        )

    def uptime(self, monotonic: Callable[[], float] = time.monotonic) -> float:
        """Seconds since start, on the monotonic clock."""
        return monotonic() - self.started_monotonic
