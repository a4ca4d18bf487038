"""twistd plugin: ``twistd -n tunmesh --config FILE`` runs one tunmesh node."""

from __future__ import annotations

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    """Command line of the node; everything else lives in the config file."""

    optParameters = [
        ["config", "c", None, "Config file (default: $TUNMESH_CONFIG_PATH, then /etc/tunmesh/config.yaml)."],
    ]

    def postOptions(self) -> None:
        # Load and lint the config here, so a bad file ends twistd with one line per problem
        # (naming the key path) instead of a traceback from inside makeService.
        from tunmesh.logsetup import configure_twistd
        from tunmesh.service import load_or_exit

        config, path = load_or_exit(self["config"])
        self["loaded_config"] = config
        self["config_path"] = path
        parent = self.parent
        if parent is not None and not parent.get("logger"):
            # twistd's --logger hook: our observer applies tun_mesh/logging/level to every event.
            parent["logger"] = configure_twistd(
                config.logging.level, parent.get("logfile"), bool(parent.get("nodaemon"))
            )


@implementer(IServiceMaker, IPlugin)
class TunMeshServiceMaker:
    tapname = "tunmesh"
    description = "Layer 3 mesh VPN sidecar node (TUN device + one HTTPS port)."
    options = Options

    def makeService(self, options: Options):  # noqa: N802 (Twisted interface name)
        from tunmesh.service import makeService

        return makeService(options["loaded_config"], config_path=options["config_path"])


serviceMaker = TunMeshServiceMaker()
