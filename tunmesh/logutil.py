"""
Logging helpers: per-key rate limiting (security contract W17) and the
observer the twistd plugin installs.

A flood of identical problems (dropped packets, failed auth) must not become
a flood of log lines: the exact counts live in metrics, the log only needs the
first few events and then a periodic summary.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Hashable
from typing import IO, Any, Protocol

import attr
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
    textFileLogObserver,
)

#: Config spelling (C{logging.level}) to Twisted level.
LEVELS: dict[str, LogLevel] = {
    "error": LogLevel.error,
    "warn": LogLevel.warn,
    "info": LogLevel.info,
    "debug": LogLevel.debug,
}

#: Key used for every event once the key table is full of busy keys.
OVERFLOW_KEY = ("tunmesh.logutil", "overflow")


class SecondsClock(Protocol):
    """Anything with C{seconds()} (an C{IReactorTime}, or a monotonic adapter)."""

    def seconds(self) -> float: ...


class MonotonicClock:
    """C{seconds()} from C{time.monotonic}, for users built without a reactor (no C{callLater})."""

    def seconds(self) -> float:
        return time.monotonic()


@attr.s(auto_attribs=True)
class _Bucket:
    tokens: float
    updated: float
    suppressed: int = 0
    level: LogLevel = LogLevel.warn
    pending: IDelayedCall | None = None


class RateLimitedLog:
    """
    Log at most C{burst} events per key, then at most one line per C{period}
    seconds per key (a token bucket, like Tailscale's C{logRateLimit}).

    The line that spends a token after suppression carries the number of
    suppressed events (C{rate_limit_suppressed} field).  If C{clock} can C{callLater},
    a summary is also scheduled for when the next token is due, so the count
    of a flood that stops is not lost; with a clock that only has
    C{seconds()}, the count is reported with the key's next event or by
    L{flush}.  The key table is bounded by C{max_keys}.
    """

    def __init__(
        self,
        logger: Logger,
        clock: SecondsClock,
        burst: int = 5,
        period: float = 10.0,
        *,
        max_keys: int = 1024,
    ) -> None:
        if burst < 1:
            raise ValueError("burst must be at least 1")
        if not period > 0:
            raise ValueError("period must be positive")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._log = logger
        self._clock = clock
        self._burst = burst
        self._period = float(period)
        self._max_keys = max_keys
        self._buckets: dict[Hashable, _Bucket] = {}
        self._pruned_at = float("-inf")

    def _refill(self, bucket: _Bucket, now: float) -> None:
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(float(self._burst), bucket.tokens + elapsed / self._period)
        bucket.updated = now

    def _bucket_for(self, key: Hashable, now: float) -> tuple[Hashable, _Bucket]:
        bucket = self._buckets.get(key)
        if bucket is not None:
            return key, bucket
        if len(self._buckets) >= self._max_keys and now - self._pruned_at >= self._period:
            # At most one O(max_keys) sweep per period, so a flood of new keys
            # costs O(1) per event once the table is full.
            self._pruned_at = now
            self._prune(now)
        if len(self._buckets) >= self._max_keys and key != OVERFLOW_KEY:
            return self._bucket_for(OVERFLOW_KEY, now)
        bucket = _Bucket(tokens=float(self._burst), updated=now)
        self._buckets[key] = bucket
        return key, bucket

    def _prune(self, now: float) -> None:
        """Forget keys that are back to a full bucket with nothing to report."""
        for key, bucket in list(self._buckets.items()):
            self._refill(bucket, now)
            if bucket.suppressed == 0 and bucket.pending is None and bucket.tokens >= self._burst:
                del self._buckets[key]

    def emit(self, key: Hashable, level: LogLevel, format: str, **fields: Any) -> bool:
        """
        Log C{format} with C{fields} unless C{key} is over its rate.

        @return: whether a line was written.
        """
        now = self._clock.seconds()
        key, bucket = self._bucket_for(key, now)
        self._refill(bucket, now)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            suppressed, bucket.suppressed = bucket.suppressed, 0
            if bucket.pending is not None and bucket.pending.active():
                bucket.pending.cancel()
            bucket.pending = None
            if suppressed:
                format = format + " ({rate_limit_suppressed} similar events suppressed)"
            self._log.emit(level, format, rate_limit_suppressed=suppressed, rate_limit_key=repr(key), **fields)
            return True
        bucket.suppressed += 1
        bucket.level = level
        if bucket.pending is None:
            call_later = getattr(self._clock, "callLater", None)
            if call_later is not None:
                delay = (1.0 - bucket.tokens) * self._period
                bucket.pending = call_later(delay, self._summarise, key)
        return False

    def _summarise(self, key: Hashable) -> None:
        bucket = self._buckets.get(key)
        if bucket is None:
            return
        bucket.pending = None
        now = self._clock.seconds()
        self._refill(bucket, now)
        if bucket.suppressed and bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            self._write_summary(key, bucket)

    def _write_summary(self, key: Hashable, bucket: _Bucket) -> None:
        suppressed, bucket.suppressed = bucket.suppressed, 0
        self._log.emit(
            bucket.level,
            "{rate_limit_suppressed} events suppressed for {rate_limit_key}",
            rate_limit_suppressed=suppressed,
            rate_limit_key=repr(key),
        )

    def flush(self) -> None:
        """Write a summary for every key with suppressed events (e.g. at shutdown)."""
        for key, bucket in list(self._buckets.items()):
            if bucket.pending is not None and bucket.pending.active():
                bucket.pending.cancel()
            bucket.pending = None
            if bucket.suppressed:
                self._write_summary(key, bucket)

    def suppressed(self, key: Hashable) -> int:
        """How many events of C{key} are waiting to be summarised."""
        bucket = self._buckets.get(key)
        return 0 if bucket is None else bucket.suppressed


def parse_level(level: str) -> LogLevel:
    """C{logging.level} config value to a L{LogLevel}; C{ValueError} for anything else."""
    try:
        return LEVELS[level]
    except (KeyError, TypeError):
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}") from None


def make_observer(
    level: str,
    json: bool = False,
    out: IO[str] | None = None,
    predicate: LogLevelFilterPredicate | None = None,
) -> ILogObserver:
    """
    An observer writing events at C{level} or above to C{out} (stderr), as
    text lines or as one JSON object per line, for the twistd plugin.

    Pass C{predicate} to keep a handle on the level filter (its default level
    is set to C{level} here and may be changed later, as a SIGHUP reload does).
    """
    min_level = parse_level(level)
    stream = sys.stderr if out is None else out
    inner = jsonFileLogObserver(stream, recordSeparator="") if json else textFileLogObserver(stream)
    if predicate is None:
        predicate = LogLevelFilterPredicate(defaultLogLevel=min_level)
    else:
        predicate.setLogLevelForNamespace("", min_level)
    return FilteringLogObserver(inner, [predicate])
