"""The TUN device as a Twisted service: opened as root in ``privilegedStartService``, before the privilege
drop, and closed on stop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from tunmesh.interfaces import PacketDevice
from tunmesh.tun.device import TunDevice


class TunService(Service):
    """Owns the node's TUN device. ``.device`` is ``None`` until the service has started.

    ``open_device`` defaults to :meth:`TunDevice.from_config` on ``networking`` (``cfg.networking``); tests
    pass a function returning a :class:`~tunmesh.testing.FakeTun`. ``health`` (a ``HealthRegistry``) gets a
    liveness check ``tun``: the device is open.
    """

    log = Logger()
    # Twisted's Service has an unannotated ``name = None`` (so mypy infers the type None); IService
    # documents it as the service's name, a str.
    name = "tun"  # type: ignore[assignment]

    def __init__(
        self,
        networking: Any,
        health: Any | None = None,
        open_device: Callable[[Any], PacketDevice] = TunDevice.from_config,
    ) -> None:
        self._networking = networking
        self._open_device = open_device
        self.device: PacketDevice | None = None
        if health is not None:
            health.add_liveness("tun", self.is_open)

    def is_open(self) -> bool:
        """Liveness: the device is open."""
        return self.device is not None and not self.device.closed

    def privilegedStartService(self) -> None:
        """Open and configure the device while we still have CAP_NET_ADMIN."""
        if self.device is None:
            self.device = self._open_device(self._networking)
        super().privilegedStartService()

    def startService(self) -> None:
        """Open the device here if nobody called ``privilegedStartService`` (e.g. a service started alone)."""
        if self.device is None:
            self.device = self._open_device(self._networking)
        super().startService()

    def stopService(self) -> None:
        """Close the device; the interface (and its routes) disappear with it."""
        if self.device is not None:
            self.device.close()
            self.log.info("TUN {name} closed", name=self.device.name)
            self.device = None
        return super().stopService()
