"""The request/response figure of ``contrib/bench/bench.py``: ``sockperf`` TCP ping-pong over one connection.

``sockperf sr --tcp`` serves in the server namespace; ``sockperf pp --tcp -m 64 -t N`` in the client namespace
sends a 64-byte request, waits (blocking ``recvfrom``, no busy polling) for the 64-byte answer, and sends the
next: one transaction in flight, as a service call or a database query on one connection. sockperf (Debian
package ``sockperf``, BSD licence) is used rather than netperf's ``TCP_RR`` because netperf is in Debian's
non-free section. It warms up for 0.4 s and reports the rest ("valid duration").

Transactions per second are the answers received in the valid duration over its length; sockperf's
``avg-latency`` and percentiles are half round trips (its convention), so the figures here are doubled: a full
round trip in microseconds, which with one transaction in flight is 1e6 / transactions per second.
"""

from __future__ import annotations

import re
from typing import Any

REQUEST_BYTES = 64
PORT = 11111

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_VALID = re.compile(r"\[Valid Duration\] RunTime=([\d.]+) sec; SentMessages=(\d+); ReceivedMessages=(\d+)")
_AVG = re.compile(r"avg-latency=([\d.]+)")
_PCT = re.compile(r"percentile ([\d.]+) =\s*([\d.]+)")
_MAX = re.compile(r"<MAX> observation =\s*([\d.]+)")


class SockperfOutputError(ValueError):
    """sockperf printed no result (the message has the end of what it printed)."""


def server_argv(address: str, port: int = PORT) -> list[str]:
    """The server end, listening on ``address``."""
    return ["sockperf", "sr", "--tcp", "-i", address, "-p", str(port)]


def client_argv(address: str, duration: int, port: int = PORT) -> list[str]:
    """The ping-pong client: :data:`REQUEST_BYTES`-byte requests to ``address`` for ``duration`` seconds."""
    return ["sockperf", "pp", "--tcp", "-i", address, "-p", str(port), "-t", str(duration), "-m", str(REQUEST_BYTES)]


def parse_pingpong(output: str) -> dict[str, Any]:
    """Transactions/s and round-trip figures (microseconds) from ``sockperf pp`` output."""
    text = _ANSI.sub("", output)
    valid = _VALID.search(text)
    avg = _AVG.search(text)
    if not valid or not avg:
        tail = " | ".join(text.strip().splitlines()[-3:])
        raise SockperfOutputError(f"sockperf printed no ping-pong result: {tail or '(nothing)'}")
    seconds, received = float(valid.group(1)), int(valid.group(3))
    if seconds <= 0 or received == 0:
        raise SockperfOutputError(f"sockperf received {received} answers in {seconds} s")
    percentiles = {float(p): 2 * float(v) for p, v in _PCT.findall(text)}
    result: dict[str, Any] = {
        "transactions_per_s": received / seconds,
        "rtt_mean_us": 2 * float(avg.group(1)),
        "transactions": received,
        "seconds": seconds,
        "request_bytes": REQUEST_BYTES,
    }
    if 50.0 in percentiles:
        result["rtt_p50_us"] = percentiles[50.0]
    if 99.0 in percentiles:
        result["rtt_p99_us"] = percentiles[99.0]
    m = _MAX.search(text)
    if m:
        result["rtt_max_us"] = 2 * float(m.group(1))
    return result
