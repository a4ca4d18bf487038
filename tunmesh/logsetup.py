"""Log observer for twistd that honours ``tun_mesh/logging/level`` and ``tun_mesh/logging/format``.

twistd builds its log observer after ``makeService``; the plugin points twistd's own ``--logger`` option at
:func:`twistd_observer`, so the configured level filters every event, twistd's included, and the destination
stays what ``--logfile`` / ``--nodaemon`` say.
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, LogLevelFilterPredicate
from twisted.python import logfile

from tunmesh.logutil import make_observer, parse_level, set_levels

_twistd_settings: dict[str, object] = {"level": "info", "path": None, "nodaemon": True, "format": "text"}
#: The level filter of the observer twistd installs; :func:`set_level` changes it at run time.
_level_filter = LogLevelFilterPredicate()


def configure_twistd(level: str, path: str | None, nodaemon: bool, format: str = "text") -> str:
    """Remember what ``twistd_observer`` needs (``format``: ``tun_mesh/logging/format``, text or json);
    return its dotted name for twistd's ``--logger`` option (twistd imports that name itself, so it
    has to be a module-level function)."""
    _twistd_settings.update(level=level, path=path, nodaemon=nodaemon, format=format)
    return f"{__name__}.twistd_observer"


def twistd_observer() -> ILogObserver:
    """twistd's ``--logger`` factory: the configured level, twistd's --logfile/--nodaemon destination."""
    path = _twistd_settings["path"]
    if (path in (None, "") and _twistd_settings["nodaemon"]) or path == "-":
        stream = sys.stdout
    else:
        stream = logfile.LogFile.fromFullPath(str(path or "twistd.log"), rotateLength=10_000_000, maxRotatedFiles=5)
    return make_observer(
        str(_twistd_settings["level"]),
        json=_twistd_settings["format"] == "json",
        out=stream,
        predicate=_level_filter,
    )


def current_level() -> str:
    """The level the node's observer filters at (config spelling)."""
    return str(_twistd_settings["level"])


def set_level(level: str) -> None:
    """Filter the node's log at ``level`` from now on (``tun_mesh/logging/level``, SIGHUP reload).

    Raises ``ValueError`` for a level that is not one of the config's spellings.
    """
    set_levels(_level_filter, parse_level(level))
    _twistd_settings["level"] = level
