"""Log observer for twistd that honours ``tun_mesh/logging/level``.

twistd builds its log observer after ``makeService``; the plugin hands it this factory (twistd's own
``--logger`` hook), so the configured level filters every event, twistd's included, and the destination
stays what ``--logfile`` / ``--nodaemon`` say.
"""

from __future__ import annotations

import sys
from typing import Callable

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
