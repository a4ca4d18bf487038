"""Log observer for twistd that honours ``tun_mesh/logging/level``.

twistd builds its log observer after ``makeService``; the plugin hands it this factory (twistd's own
``--logger`` hook), so the configured level filters every event, twistd's included, and the destination
stays what ``--logfile`` / ``--nodaemon`` say.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    textFileLogObserver,
)
from twisted.python import logfile

LEVELS: dict[str, LogLevel] = {
    "error": LogLevel.error,
    "warn": LogLevel.warn,
    "info": LogLevel.info,
    "debug": LogLevel.debug,
}


_twistd_settings: dict[str, object] = {"level": "info", "path": None, "nodaemon": True}


def configure_twistd(level: str, path: str | None, nodaemon: bool) -> str:
    """Remember what ``twistd_observer`` needs; return its dotted name for twistd's ``--logger`` option
    (twistd imports that name itself, so it has to be a module-level function)."""
    _twistd_settings.update(level=level, path=path, nodaemon=nodaemon)
    return f"{__name__}.twistd_observer"


def twistd_observer() -> ILogObserver:
    """twistd's ``--logger`` factory: the configured level, twistd's --logfile/--nodaemon destination."""
    s = _twistd_settings
    return observer_factory(str(s["level"]), s["path"], bool(s["nodaemon"]))()  # type: ignore[arg-type]


def observer_factory(level: str, path: str | None, nodaemon: bool) -> Callable[[], ILogObserver]:
    """Return a no-argument factory, as twistd's ``--logger`` option expects."""

    def make() -> ILogObserver:
        if path in (None, "") and nodaemon or path == "-":
            stream = sys.stdout
        else:
            stream = logfile.LogFile.fromFullPath(path or "twistd.log", rotateLength=10_000_000, maxRotatedFiles=5)
        predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
        return FilteringLogObserver(textFileLogObserver(stream), [predicate])

    return make
