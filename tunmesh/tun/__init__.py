"""The TUN device (python-pytun, ``IFF_VNET_HDR`` offload), and software GSO for mixed nodes (the fake TUN
for tests is :class:`tunmesh.testing.FakeTun`).

Public names: :class:`TunDevice`, :class:`TunDeviceError`, :class:`TunService`, :class:`PacketDevice` (the
interface the data plane uses, declared in :mod:`tunmesh.interfaces`), :class:`TunStats`, :class:`TunClosedError`,
and :mod:`tunmesh.tun.gso` / :mod:`tunmesh.tun.vnet` for the virtio header.
"""

from tunmesh.interfaces import PacketDevice
from tunmesh.tun.base import TunClosedError, TunStats
from tunmesh.tun.device import TunDevice, TunDeviceError, node_interface
from tunmesh.tun.service import TunService
from tunmesh.tun.vnet import VNET_HDR_LEN, VirtioNetHdr

__all__ = [
    "VNET_HDR_LEN",
    "PacketDevice",
    "TunClosedError",
    "TunDevice",
    "TunDeviceError",
    "TunService",
    "TunStats",
    "VirtioNetHdr",
    "node_interface",
]
