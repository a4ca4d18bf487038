"""Packet I/O on a non-blocking file descriptor, shared by the real TUN device and the fake one.

One ``read`` is one packet on a TUN (and on a ``SOCK_SEQPACKET`` socket, which the fake uses). The data plane
drains the descriptor in batches from one reactor wakeup (``read_batch``) and never blocks on a write: a
packet the kernel will not take is dropped and counted, as a datagram network would.
"""

from __future__ import annotations

import errno
import io
import os
from collections import Counter
from collections.abc import Iterable

DEFAULT_MAX_PACKETS = 64
DEFAULT_MAX_BYTES = 4 * 1024 * 1024

_AGAIN = frozenset({errno.EAGAIN, errno.EWOULDBLOCK})
_CLOSED = frozenset({errno.EBADF, errno.EBADFD})


class TunClosedError(OSError):
    """The device (or the fake's peer) is gone; reading again cannot succeed."""


class TunStats:
    """Counters the data plane exports per batch (the hot path only increments integers here)."""

    __slots__ = ("packets_read", "bytes_read", "read_errors", "packets_written", "bytes_written", "write_errors")

    def __init__(self) -> None:
        self.packets_read = 0
        self.bytes_read = 0
        self.read_errors: Counter[str] = Counter()
        self.packets_written = 0
        self.bytes_written = 0
        self.write_errors: Counter[str] = Counter()


def _errno_name(err: OSError) -> str:
    return errno.errorcode.get(err.errno or 0, "unknown")


class _Reader:
    """A raw, non-owning ``FileIO`` over one descriptor number (see ``FdPacketIO.read_batch``)."""

    __slots__ = ("fd", "file")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.file = io.FileIO(fd, "rb", closefd=False)


class FdPacketIO:
    """``read_batch``/``write``/``write_batch`` over one non-blocking descriptor.

    Subclasses set ``self._fd``, ``self.read_size`` and ``self.stats`` before use.
    """

    _fd: int
    read_size: int
    stats: TunStats
    _reader: _Reader | None = None

    def fileno(self) -> int:
        """The descriptor to register with the reactor (``addReader``)."""
        return self._fd

    @property
    def closed(self) -> bool:
        """The descriptor has been closed."""
        return self._fd < 0

    def read_batch(
        self, max_packets: int = DEFAULT_MAX_PACKETS, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> list[bytes]:
        """Read packets until the device is empty (EAGAIN) or a limit is reached.

        Each item is one raw read: with offload it starts with the 10-byte virtio header. A read error
        other than EAGAIN ends the batch and is counted in ``stats.read_errors``; a closed device raises
        :class:`TunClosedError` so the caller stops polling it.
        """
        if max_packets < 1 or max_bytes < 1:
            raise ValueError("max_packets and max_bytes must be positive")
        if self._fd < 0:
            raise TunClosedError(errno.EBADF, "TUN device is closed")
        out: list[bytes] = []
        total = 0
        size = self.read_size
        reader = self._reader
        if reader is None or reader.fd != self._fd:
            # A raw FileIO over the descriptor: on a non-blocking descriptor its read() answers None for
            # EAGAIN instead of raising. The end of every batch is an EAGAIN, and an OSError costs its
            # strerror() formatting and a traceback, a visible share of a cold wake-up (docs/performance.md).
            reader = self._reader = _Reader(self._fd)
        read = reader.file.read
        while len(out) < max_packets and total < max_bytes:
            try:
                packet = read(size)
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno in _AGAIN:
                    break
                if e.errno in _CLOSED:
                    raise TunClosedError(e.errno, "TUN device is closed") from e
                self.stats.read_errors[_errno_name(e)] += 1
                break
            if packet is None:
                break
            if not packet:
                raise TunClosedError(errno.EBADF, "end of file on the TUN descriptor")
            out.append(packet)
            total += len(packet)
        self.stats.packets_read += len(out)
        self.stats.bytes_read += total
        return out

    def write(self, packet: bytes) -> bool:
        """Write one packet without blocking; ``False`` (counted by errno) when the kernel refuses it."""
        if self._fd < 0:
            self.stats.write_errors["EBADF"] += 1
            return False
        try:
            os.write(self._fd, packet)
        except OSError as e:
            self.stats.write_errors[_errno_name(e)] += 1
            return False
        self.stats.packets_written += 1
        self.stats.bytes_written += len(packet)
        return True

    def write_batch(self, packets: Iterable[bytes]) -> tuple[int, int]:
        """Write packets in order; returns ``(written, failed)``.

        After EAGAIN the rest of the batch is counted as failed without trying (the queue is full now).
        """
        written = failed = 0
        fd = self._fd
        if fd < 0:
            n = sum(1 for _ in packets)
            self.stats.write_errors["EBADF"] += n
            return 0, n
        full = False
        nbytes = 0
        for packet in packets:
            if full:
                failed += 1
                self.stats.write_errors["EAGAIN"] += 1
                continue
            try:
                os.write(fd, packet)
            except OSError as e:
                failed += 1
                self.stats.write_errors[_errno_name(e)] += 1
                full = e.errno in _AGAIN
                continue
            written += 1
            nbytes += len(packet)
        self.stats.packets_written += written
        self.stats.bytes_written += nbytes
        return written, failed

    def _close_fd(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.close(fd)
            except OSError:
                pass
