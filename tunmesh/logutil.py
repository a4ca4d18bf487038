"""
Logging helpers: per-key rate limiting (security contract W17) and the
observer the twistd plugin installs.

A flood of identical problems (dropped packets, failed auth) must not become
a flood of log lines: the exact counts live in metrics, the log only needs the
first few events and then a periodic summary.

The observer (:func:`make_observer`) writes ``text`` lines or ``json`` (one
event per line, every format field a key of its own, plus ``text`` and
``level``), and tidies what reaches it (:class:`TidyObserver`): Twisted's
"Starting factory <... at 0x...>" chatter is demoted to debug, and an error
carrying an exception is one line with the exception's type and message, its
traceback a separate debug event.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Hashable
from typing import IO, Any

import attr
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsJSON,
    formatEvent,
    textFileLogObserver,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from tunmesh.interfaces import SecondsClock

#: Config spelling (``logging.level``) to Twisted level.
LEVELS: dict[str, LogLevel] = {
    "error": LogLevel.error,
    "warn": LogLevel.warn,
    "info": LogLevel.info,
    "debug": LogLevel.debug,
}

#: Key used for every event once the key table is full of busy keys.
OVERFLOW_KEY = ("tunmesh.logutil", "overflow")


class MonotonicClock:
    """``seconds()`` from ``time.monotonic``, for users built without a reactor (no ``callLater``)."""

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
    Log at most ``burst`` events per key, then at most one line per ``period``
    seconds per key (a token bucket, like Tailscale's ``logRateLimit``).

    The line that spends a token after suppression carries the number of
    suppressed events (``rate_limit_suppressed`` field).  If ``clock`` can ``callLater``,
    a summary is also scheduled for when the next token is due, so the count
    of a flood that stops is not lost; with a clock that only has
    ``seconds()``, the count is reported with the key's next event or by
    :meth:`flush`.  The key table is bounded by ``max_keys``.
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
        Log ``format`` with ``fields`` unless ``key`` is over its rate.

        :returns: whether a line was written.
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
        """How many events of ``key`` are waiting to be summarised."""
        bucket = self._buckets.get(key)
        return 0 if bucket is None else bucket.suppressed


def parse_level(level: str) -> LogLevel:
    """``logging.level`` config value to a :class:`LogLevel`; ``ValueError`` for anything else."""
    try:
        return LEVELS[level]
    except (KeyError, TypeError):
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}") from None


#: Twisted's per-connection INFO chatter (a repr with a memory address per outgoing connection):
#: demoted to debug by :class:`TidyObserver`.
DEMOTED_FORMATS = frozenset({"Starting factory {factory!r}", "Stopping factory {factory!r}"})
#: Config spelling (``logging.format``).
FORMATS = ("text", "json")


@implementer(ILogObserver)
class TidyObserver:
    """Sits before the level filter: demotes :data:`DEMOTED_FORMATS` to debug, and rewrites an event
    that carries an exception (``log.failure``, or a legacy ``log.err``) into one line ending in
    ``: <ExceptionType>: <message>`` (fields ``exception_type``, ``exception_message``) followed by a
    debug event holding the traceback (``traceback`` field), so that ERROR lines stay one line each
    and the traceback shows only at ``logging.level: debug``.

    Events are copied, never changed in place: other observers see them as they were.
    """

    def __init__(self, inner: ILogObserver) -> None:
        self._inner = inner

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_format") in DEMOTED_FORMATS and event.get("log_level") == LogLevel.info:
            event = {**event, "log_level": LogLevel.debug}
        failure = event.get("log_failure")
        if failure is None and event.get("isError") and isinstance(event.get("failure"), Failure):
            failure = event["failure"]
        if isinstance(failure, Failure):
            self._with_failure(event, failure)
            return
        self._inner(event)

    def _with_failure(self, event: dict[str, Any], failure: Failure) -> None:
        exc_type = failure.type.__name__ if isinstance(failure.type, type) else str(failure.type)
        exc_message = str(failure.value)
        if "log_failure" in event:
            head = formatEvent({k: v for k, v in event.items() if k != "log_failure"})
        else:  # legacy log.err: its log_text holds the traceback; "why" is the headline.
            head = str(event.get("why") or "Unhandled Error")
        text = f"{head}: {exc_type}: {exc_message}" if exc_message else f"{head}: {exc_type}"
        short = {k: v for k, v in event.items() if k not in ("log_failure", "failure", "log_flattened")}
        short.update(
            log_format="{log_text}",
            log_text=text,
            exception_type=exc_type,
            exception_message=exc_message,
        )
        self._inner(short)
        self._inner(
            {
                "log_level": LogLevel.debug,
                "log_namespace": event.get("log_namespace", "log_legacy"),
                "log_time": event.get("log_time", time.time()),
                "log_system": event.get("log_system", "-"),
                "log_format": "traceback of the error above ({exception_type}):\n{traceback}",
                "exception_type": exc_type,
                "traceback": failure.getTraceback(),
            }
        )


_JSON_TYPES = (str, int, float, bool, type(None), list, tuple, dict)


def _json_line(event: dict[str, Any]) -> str:
    """One JSON object per line: the event's fields, with ``text`` (the formatted message) and
    ``level`` (``debug``/``info``/``warn``/``error``/``critical``) for pipelines that do not format."""
    # The emitting Logger and object say nothing in JSON ({"unpersistable": true}): left out; other
    # fields JSON cannot hold (addresses, exceptions...) are written as their str().
    record = {
        k: v if k.startswith("log_") or isinstance(v, _JSON_TYPES) else str(v)
        for k, v in event.items()
        if k not in ("log_logger", "log_source")
    }
    record.setdefault("text", formatEvent(event))
    level = event.get("log_level")
    record.setdefault("level", getattr(level, "name", "info"))
    return eventAsJSON(record) + "\n"


def make_observer(
    level: str,
    json: bool = False,
    out: IO[str] | None = None,
    predicate: LogLevelFilterPredicate | None = None,
) -> ILogObserver:
    """
    An observer writing events at ``level`` or above to ``out`` (stderr), as
    text lines or as one JSON object per line, for the twistd plugin; both
    through a :class:`TidyObserver`.

    Pass ``predicate`` to keep a handle on the level filter (its default level
    is set to ``level`` here and may be changed later, as a SIGHUP reload does).
    """
    min_level = parse_level(level)
    stream = sys.stderr if out is None else out
    inner = FileLogObserver(stream, _json_line) if json else textFileLogObserver(stream)
    if predicate is None:
        predicate = LogLevelFilterPredicate(defaultLogLevel=min_level)
    set_levels(predicate, min_level)
    return TidyObserver(FilteringLogObserver(inner, [predicate]))


def set_levels(predicate: LogLevelFilterPredicate, level: LogLevel) -> None:
    """Filter at ``level``; ClientService's per-attempt lines (one per packet link connection) only at
    DEBUG, else from WARN (:data:`tunmesh.twisted_internals.CLIENT_SERVICE_LOG_NAMESPACE`)."""
    from tunmesh.twisted_internals import CLIENT_SERVICE_LOG_NAMESPACE

    predicate.setLogLevelForNamespace("", level)
    quiet = level if level in (LogLevel.debug, LogLevel.error, LogLevel.critical) else LogLevel.warn
    predicate.setLogLevelForNamespace(CLIENT_SERVICE_LOG_NAMESPACE, quiet)
