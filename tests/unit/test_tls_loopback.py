"""One real-socket suite on 127.0.0.1: the full server factory with treq/Agent and a link client."""

from __future__ import annotations

from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, HTTPConnectionPool

from tests.unit.tls_support import LoopbackServer, self_signed, temp_dir
from tunmesh.tls.certs import certificate_sha256
from tunmesh.tls.contexts import MeshTLSPolicy, client_context, peer_certificate_sha256


class _LinkClient(Protocol):
    def __init__(self) -> None:
        self.answer: Deferred[bytes] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self.peer_hash: bytes | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"frame")

    def dataReceived(self, data: bytes) -> None:
        if not self.answer.called:
            assert self.transport is not None
            self.peer_hash = peer_certificate_sha256(self.transport)
            self.answer.callback(data)
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class LoopbackTests(LoopbackServer):

    @inlineCallbacks
    def test_treq_get_with_mesh_policy(self) -> Any:
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        agent = Agent(reactor, contextFactory=MeshTLSPolicy(self.cert, verify_hostname=True), pool=pool)
        response = yield treq.get(self.url + "/hello", agent=agent)
        body = yield response.content()
        self.assertEqual((response.code, body), (200, b"hi"))

    @inlineCallbacks
    def test_link_alpn_over_real_socket(self) -> Any:
        creator = client_context(self.cert, "127.0.0.1", True, alpn=(b"tunmesh-link/1",))
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", self.port_number, creator)
        client = _LinkClient()
        yield connectProtocol(endpoint, client)
        answer = yield client.answer
        self.assertEqual(answer, b"link:frame")
        self.assertEqual(client.peer_hash, certificate_sha256(self.cert))
        yield client.lost


class FailureDiagnosticsTests(LoopbackServer):
    """Issue 12, defect 7: a certificate failure is reported as one, not as ``RequestTransmissionFailed``."""

    @inlineCallbacks
    def test_unknown_ca_reported_as_certificate_failure(self) -> Any:
        from tunmesh.mesh.client import MeshClient
        from tunmesh.mesh.errors import PeerRequestFailed

        other_cert, _ = self_signed(temp_dir(self), "other", hostnames=("tunmesh.local",), ips=("127.0.0.1",))
        client = MeshClient.with_tls(reactor, MeshTLSPolicy(other_cert, verify_hostname=True), timeout=5)
        try:
            yield client.post(self.url, "/hello", b"{}", "Bearer x")
        except PeerRequestFailed as exc:
            self.assertEqual(exc.reason, "tls")
            self.assertIn("certificate verify failed", exc.detail)
            self.assertIn("ca_file_path", exc.detail)
            self.assertNotIn("RequestTransmissionFailed", exc.detail)
        else:
            self.fail("a peer with an unknown CA was accepted")

    @inlineCallbacks
    def test_refused_connection_says_so(self) -> Any:
        from tunmesh.mesh.client import MeshClient
        from tunmesh.mesh.errors import PeerRequestFailed

        port = self.port_number
        yield self.port.stopListening()
        client = MeshClient.with_tls(reactor, MeshTLSPolicy(self.cert, verify_hostname=True), timeout=5)
        try:
            yield client.post(f"https://127.0.0.1:{port}", "/hello", b"{}", "Bearer x")
        except PeerRequestFailed as exc:
            self.assertEqual(exc.reason, "transport")
            self.assertIn("connection refused", exc.detail)
        else:
            self.fail("a closed port answered")
