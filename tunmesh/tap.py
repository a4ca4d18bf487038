"""The node as a twistd application: :class:`Options` and :func:`makeService`.

``twistd tunmesh`` finds this module through the plugin ``twisted/plugins/tunmesh_plugin.py``, which only
names it (as Twisted's own ``twisted_web`` plugin names ``twisted.web.tap``); ``tunmesh run`` uses it
directly through :func:`run`, so it works without plugin discovery.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Any

from twisted.application.service import IService, IServiceMaker
from twisted.python import usage
from zope.interface import implementer

TAPNAME = "tunmesh"
DESCRIPTION = "Layer 3 mesh VPN sidecar node (TUN device + one HTTPS port)."


class Options(usage.Options):
    """Command line of the node; everything else lives in the config file."""

    optParameters = [
        ["config", "c", None, "Config file (default: $TUNMESH_CONFIG_PATH, then /etc/tunmesh/config.yaml)."],
    ]

    def postOptions(self) -> None:
        # Load and lint the config here, so a bad file ends twistd as any bad option does (a
        # UsageError: ConfigRefused, one line per problem naming the key path) instead of a traceback
        # from inside makeService.
        from tunmesh.logsetup import configure_twistd
        from tunmesh.service import load_checked_config

        config, path = load_checked_config(self["config"])
        self["loaded_config"] = config
        self["config_path"] = path
        parent = self.parent
        if parent is not None and not parent.get("logger"):
            # twistd's --logger hook: our observer applies tun_mesh/logging/level to every event.
            parent["logger"] = configure_twistd(
                config.logging.level, parent.get("logfile"), bool(parent.get("nodaemon")), config.logging.format
            )


def makeService(options: Options) -> IService:  # noqa: N802 (twistd's name)
    """The node described by the loaded config (see :mod:`tunmesh.service`)."""
    from tunmesh.service import makeService as make_node

    return make_node(options["loaded_config"], config_path=options["config_path"])


@implementer(IServiceMaker)
class _ServiceMaker:
    """This module as the one ``IServiceMaker`` of ``tunmesh run`` (no plugin discovery involved)."""

    tapname = TAPNAME
    description = DESCRIPTION
    options = Options

    def makeService(self, options: Options) -> IService:  # noqa: N802
        return makeService(options)


def _server_options() -> Any:
    """twistd's own ``ServerOptions`` (reactor, logging, pid file, uid), offering only this node."""
    from twisted.scripts.twistd import ServerOptions

    maker = _ServiceMaker()

    class RunOptions(ServerOptions):  # type: ignore[misc, valid-type]
        @property
        def subCommands(self) -> Iterator[tuple[str, None, Any, str]]:  # noqa: N802
            self.loadedPlugins = {maker.tapname: maker}
            yield (maker.tapname, None, maker.options, maker.description)

    return RunOptions()


def twistd_argv(config: str | None, logfile: str | None = None) -> list[str]:
    """The twistd command line ``tunmesh run`` stands for: foreground, no pid file, log to stdout
    (or ``logfile``), then this node with its ``--config``."""
    argv = ["--nodaemon", "--pidfile=", f"--logfile={logfile or '-'}", TAPNAME]
    if config is not None:
        argv += ["--config", config]
    return argv


def run(config: str | None, logfile: str | None = None, argv: Sequence[str] | None = None) -> None:
    """``tunmesh run``: the same service as ``twistd -n tunmesh``, started the way twistd starts it
    (``twisted.scripts.twistd.runApp``), so signals, logging and the privilege drop behave alike.

    Returns when the reactor has stopped; a config or startup problem exits 1 with one line per problem.
    """
    from twisted.scripts.twistd import runApp

    options = _server_options()
    from tunmesh.service import ConfigRefused

    try:
        options.parseOptions(list(argv) if argv is not None else twistd_argv(config, logfile))
    except ConfigRefused as e:
        # the problem lines alone: twistd's usage text would bury them
        print("\n".join(e.problems), file=sys.stderr)
        raise SystemExit(1) from None
    except usage.UsageError as e:
        raise SystemExit(f"tunmesh run: {e}") from None
    runApp(options)


__all__ = ["Options", "makeService", "run", "twistd_argv", "TAPNAME", "DESCRIPTION"]
