""":class:`LinkStats`: one direction of one peer's packet link as ``tunmesh status`` shows it (issue 8).

State and since when, packets and bytes (DATA frames: packets carried, frame bytes before TLS), the key in
use, the last connection error, and the round-trip time measured with the link's keepalive PING/PONG
(one probe outstanding at a time; the PONG must echo the probe's number). Updated once per batch on the
hot path (two additions); times are the link clock's seconds (monotonic in a running node).
"""

from __future__ import annotations

from typing import Any

#: link states
CONNECTING = "connecting"
UP = "up"
DOWN = "down"
STOPPED = "stopped"

#: weight of a new sample in the smoothed RTT (RFC 6298's alpha)
RTT_ALPHA = 0.125


class LinkStats:
    """Counters, state and RTT of one link direction (see module docstring)."""

    __slots__ = (
        "state",
        "since",
        "packets",
        "bytes",
        "kid",
        "last_error",
        "last_error_at",
        "connects",
        "last_rx",
        "rtt",
        "srtt",
        "rtt_at",
        "_probe",
        "_probe_at",
    )

    def __init__(self, now: float, state: str = DOWN) -> None:
        self.state = state
        self.since = now
        self.packets = 0
        self.bytes = 0
        self.kid = ""
        self.last_error = ""
        self.last_error_at: float | None = None
        self.connects = 0
        self.last_rx: float | None = None
        self.rtt: float | None = None
        self.srtt: float | None = None
        self.rtt_at: float | None = None
        self._probe = 0
        self._probe_at: float | None = None

    def _set(self, state: str, now: float) -> None:
        if state != self.state:
            self.state, self.since = state, now

    def connecting(self, now: float) -> None:
        self._set(CONNECTING, now)

    def up(self, now: float, kid: str) -> None:
        self._set(UP, now)
        self.kid = kid
        self.connects += 1
        self.last_error, self.last_error_at = "", None
        self._probe_at = None

    def failed(self, now: float, error: str, state: str = CONNECTING) -> None:
        """A connection attempt failed or the link was lost (``error`` is the reason, for people)."""
        self._set(state, now)
        self.last_error, self.last_error_at = error, now
        self._probe_at = None

    def stopped(self, now: float) -> None:
        self._set(STOPPED, now)

    def probe(self, now: float) -> int:
        """The number to send in a PING; a probe still unanswered is given up."""
        self._probe = (self._probe + 1) & 0xFFFFFFFFFFFFFFFF
        self._probe_at = now
        return self._probe

    def echoed(self, opaque: int, now: float) -> bool:
        """A PONG: records the RTT when it answers the outstanding probe; False otherwise (ignored)."""
        if self._probe_at is None or opaque != self._probe:
            return False
        rtt = max(0.0, now - self._probe_at)
        self._probe_at = None
        self.rtt, self.rtt_at = rtt, now
        self.srtt = rtt if self.srtt is None else (1 - RTT_ALPHA) * self.srtt + RTT_ALPHA * rtt
        return True

    def to_dict(self, now: float) -> dict[str, Any]:
        """JSON-ready view; times become ages in seconds (``None`` when it never happened)."""

        def age(t: float | None) -> float | None:
            return None if t is None else round(max(0.0, now - t), 3)

        return {
            "state": self.state,
            "since_s": age(self.since),
            "packets": self.packets,
            "bytes": self.bytes,
            "kid": self.kid or None,
            "connects": self.connects,
            "last_error": self.last_error or None,
            "last_error_age_s": age(self.last_error_at),
            "last_rx_age_s": age(self.last_rx),
            "rtt_ms": None if self.rtt is None else round(self.rtt * 1000, 3),
            "srtt_ms": None if self.srtt is None else round(self.srtt * 1000, 3),
            "rtt_age_s": age(self.rtt_at),
        }
