"""An in-memory TUN for data-plane tests: a ``SOCK_SEQPACKET`` socketpair keeps packet boundaries,
and its descriptor works with the reactor's ``addReader`` just like the real device's."""

from __future__ import annotations

import socket

from tunmesh.tun.base import FdPacketIO, TunStats
from tunmesh.tun.vnet import VNET_HDR_LEN


class FakeTun(FdPacketIO):
    """Same interface as :class:`~tunmesh.tun.device.TunDevice`. The test plays the kernel's side:
    :meth:`inject` is "the kernel routed a packet into the TUN", :meth:`take_written` is "packets the node
    wrote to the TUN"."""

    def __init__(
        self, name: str = "faketun", mtu: int = 1500, offload_active: bool = False, sndbuf: int | None = None
    ) -> None:
        self._app, self._kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if sndbuf is not None:
            self._app.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self._app.setblocking(False)
        self._kernel.setblocking(False)
        self._fd = self._app.fileno()
        self.name = name
        self.mtu = mtu
        self.offload_active = offload_active
        self.vnet_hdr_len = VNET_HDR_LEN if offload_active else 0
        self.read_size = 65535 + VNET_HDR_LEN if offload_active else mtu
        self.stats = TunStats()

    def inject(self, packet: bytes) -> None:
        """Queue a packet for the node to read (raises ``BlockingIOError`` when the buffer is full)."""
        self._kernel.send(packet)

    def take_written(self) -> list[bytes]:
        """Everything written to the device since the last call, in order."""
        out = []
        while True:
            try:
                out.append(self._kernel.recv(65535 + VNET_HDR_LEN))
            except BlockingIOError:
                return out

    def close(self) -> None:
        """Close both ends."""
        if self._fd >= 0:
            self._fd = -1
            self._app.close()
            self._kernel.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def kernel_fileno(self) -> int:
        """The other end, for tests that want to poll it."""
        return self._kernel.fileno()

