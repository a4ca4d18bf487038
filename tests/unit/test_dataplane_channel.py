"""Link channel binding (contract W5): the HELLO signs, and the link key mixes in, the TLS
exporter value of the connection, so a relay that terminates TLS on both sides is refused."""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import ISSLTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.unit.support import Pair, ipv4
from tests.unit.tls_support import tls_pair
from tunmesh.dataplane import frames as F
from tunmesh.dataplane import link as L


@implementer(ISSLTransport)
class _TLSTransport:  # type: ignore[misc]  # provides only what DirectTLSWriter reads
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def getHandle(self) -> Any:  # noqa: N802 (Twisted name)
        return self._conn


class TlsChannelTests(SynchronousTestCase):
    def test_both_ends_of_one_session_agree(self) -> None:
        client, server = tls_pair()
        a = L.tls_channel(_TLSTransport(client))
        self.assertEqual(len(a or b""), F.CHANNEL_LEN)
        self.assertEqual(a, L.tls_channel(_TLSTransport(server)))

    def test_another_session_differs(self) -> None:
        c1, _ = tls_pair()
        c2, _ = tls_pair()
        self.assertNotEqual(L.tls_channel(_TLSTransport(c1)), L.tls_channel(_TLSTransport(c2)))

    def test_no_value_before_the_handshake(self) -> None:
        conn = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
        conn.set_connect_state()
        self.assertIsNone(L.tls_channel(_TLSTransport(conn)))

    def test_tls_transport_without_an_openssl_connection(self) -> None:
        self.assertIsNone(L.tls_channel(_TLSTransport(object())))

    def test_no_tls_layer_means_empty_binding(self) -> None:
        self.assertEqual(L.tls_channel(object()), b"")


class RelayTests(SynchronousTestCase):
    """Memory links whose two ends see given exporter values (a relay: different values)."""

    def link_with(self, client_value: bytes, server_value: bytes) -> Pair:
        pair = Pair(self)

        def channel(transport: Any) -> bytes:
            proto = pair.client._proto
            return client_value if proto is not None and transport is proto.transport else server_value

        self.patch(L, "tls_channel", channel)
        pair.client.start()
        pair.pump()
        return pair

    def test_same_session_value_links_and_carries_packets(self) -> None:
        value = b"v" * F.CHANNEL_LEN
        pair = self.link_with(value, value)
        self.assertTrue(pair.client.ready)
        self.assertEqual(pair.client._channel, value)
        self.assertEqual(pair.server_proto._channel, value)
        pair.client.send_batch([ipv4("100.64.0.1", "100.64.0.2")])
        pair.pump()
        self.assertEqual(len(pair.packets()), 1)

    def test_relay_with_two_sessions_is_refused(self) -> None:
        pair = self.link_with(b"c" * F.CHANNEL_LEN, b"s" * F.CHANNEL_LEN)
        self.assertFalse(pair.client.ready)
        self.assertEqual(pair.metrics_b.value("link_hello_failures_total", "auth_body_mismatch"), 1)
        self.assertEqual(pair.metrics_a.value("link_hello_failures_total", "refused_bad_token"), 1)
        pair.client.send_batch([ipv4("100.64.0.1", "100.64.0.2")])
        pair.pump()
        self.assertEqual(pair.packets(), [])

    def test_server_without_a_value_refuses(self) -> None:
        pair = self.link_with(b"c" * F.CHANNEL_LEN, None)  # type: ignore[arg-type]
        self.assertFalse(pair.client.ready)
        self.assertEqual(pair.metrics_b.value("link_hello_failures_total", "channel_binding"), 1)

    def test_client_without_a_value_sends_no_hello(self) -> None:
        pair = self.link_with(None, b"s" * F.CHANNEL_LEN)  # type: ignore[arg-type]
        self.assertFalse(pair.client.ready)
        self.assertEqual(pair.metrics_a.value("link_hello_failures_total", "channel_binding"), 1)
        self.assertEqual(pair.metrics_b.value("link_hello_failures_total", "timeout"), 0)
