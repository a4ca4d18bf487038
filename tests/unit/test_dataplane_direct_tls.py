"""DirectTLSWriter: DATA frames written straight through OpenSSL to the socket keep the byte
stream exact (record-sized slices, tag joined to the tail) and fall back to Twisted's path in order."""

from __future__ import annotations

import socket
from typing import Any

from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.tls_support import tls_pair
from tunmesh.dataplane import frames as F
from tunmesh.dataplane.link import TLS_RECORD, DirectTLSWriter


class FakeTLS:
    """The attributes of Twisted's TLSMemoryBIOProtocol the writer uses."""

    def __init__(self, conn: SSL.Connection, tcp: FakeTCP) -> None:
        self._tlsConnection = conn
        self._appSendBuffer: list[bytes] = []
        self._lostTLSConnection = False
        self.disconnecting = False
        self.transport = tcp
        self.slow_writes: list[bytes] = []
        self._aggregator = self
        self.aggregated: list[bytes] = []

    def getHandle(self) -> SSL.Connection:
        return self._tlsConnection

    def _write(self, data: bytes) -> None:
        """Twisted's path: encrypt and hand to the TCP transport."""
        self.slow_writes.append(data)
        try:
            self._tlsConnection.send(data)
        except SSL.Error:
            self._lostTLSConnection = True  # Twisted closes the connection here
            return
        self.transport.write(self._tlsConnection.bio_read(1 << 20))

    def flush(self) -> None:  # the aggregator
        pending, self.aggregated = getattr(self, "aggregated", []), []
        for d in pending:
            self._write(d)


class FakeTCP:
    """The attributes of Twisted's tcp.Connection the writer uses, over a real socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.connected = True
        self.disconnecting = False
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataBuffer: list[bytes] = []
        self.buffered: list[bytes] = []

    def getHandle(self) -> socket.socket:
        return self.socket

    def write(self, data: bytes) -> None:
        self.buffered.append(data)
        self._tempDataBuffer.append(data)


class DirectTLSWriterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.client, self.server = tls_pair()
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        self.peer = b
        self.tcp = FakeTCP(a)
        self.tls = FakeTLS(self.client, self.tcp)
        writer = DirectTLSWriter.wrap(self.tls)
        assert writer is not None
        self.writer = writer

    def received(self) -> bytes:
        """Plaintext the server end decrypts from the socket and the TCP buffer, in order."""
        wire = b""
        while True:
            try:
                wire += self.peer.recv(1 << 20)
            except BlockingIOError:
                break
        wire += b"".join(self.tcp.buffered)
        self.server.bio_write(wire)
        out = b""
        while True:
            try:
                out += self.server.recv(1 << 16)
            except SSL.WantReadError:
                return out

    def test_stream_exact_for_all_sizes(self) -> None:
        sizes = [1, 100, TLS_RECORD - 16, TLS_RECORD, TLS_RECORD + 1, 3 * TLS_RECORD, 50_000]
        expected = b""
        self.assertTrue(self.writer.usable())
        for i, n in enumerate(sizes):
            frame = bytes([i]) * n
            tag = bytes([0xF0 + i]) * F.TAG_LEN
            self.writer.write(frame, tag)
            expected += frame + tag
        self.writer.flush()
        self.assertEqual(self.received(), expected)
        self.assertEqual(self.tcp.buffered, [])  # all went straight to the socket
        self.assertEqual(self.tls.slow_writes, [])

    def test_queued_tcp_bytes_keep_order(self) -> None:
        self.tcp._tempDataBuffer.append(b"x")  # Twisted still holds bytes for the socket
        self.writer.write(b"frame", b"t" * F.TAG_LEN)
        self.writer.flush()
        self.assertEqual(len(self.tcp.buffered), 1)
        with self.assertRaises(BlockingIOError):
            self.peer.recv(100)

    def test_aggregated_control_frames_go_first(self) -> None:
        self.tls.aggregated = [b"REKEY"]
        self.assertTrue(self.writer.usable())
        self.writer.write(b"DATA", b"t" * F.TAG_LEN)
        self.writer.flush()
        self.assertEqual(self.received(), b"REKEY" + b"DATA" + b"t" * F.TAG_LEN)

    def test_not_usable_when_buffered_or_closing(self) -> None:
        self.tls._appSendBuffer.append(b"pending")
        self.assertFalse(self.writer.usable())
        self.tls._appSendBuffer.clear()
        self.tls.disconnecting = True
        self.assertFalse(self.writer.usable())
        self.tls.disconnecting = False
        self.tls._lostTLSConnection = True
        self.assertFalse(self.writer.usable())

    def test_openssl_error_falls_back_to_twisted(self) -> None:
        self.client.shutdown()  # further SSL_write fails
        self.writer.write(b"frame", b"t" * F.TAG_LEN)
        self.assertEqual(self.tls.slow_writes, [b"frame" + b"t" * F.TAG_LEN])
        self.assertTrue(self.tls._lostTLSConnection)
        self.assertFalse(self.writer.usable())

    def test_wrap_refuses_other_transports(self) -> None:
        class Plain:
            transport: Any = None

        self.assertIsNone(DirectTLSWriter.wrap(Plain()))
        self.assertIsNone(DirectTLSWriter.wrap(object()))
