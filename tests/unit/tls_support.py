"""TLS helpers shared by the unit tests (no tests here): keys and certificates made in the test with
``cryptography`` (weak, mismatched, expired, not yet valid), self-signed files in a temporary directory,
in-memory handshakes (:func:`handshake`, :class:`Recorder`), a handshaken memory-BIO pair, and the node's
full server factory on 127.0.0.1 (:class:`LoopbackServer`)."""

from __future__ import annotations

import datetime
import tempfile
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from klein import Klein
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from tunmesh.api.server import RouteLimits, make_server_factory, make_site
from tunmesh.tls.certs import write_self_signed
from tunmesh.tls.contexts import server_context

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


def rsa_key(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def certificate(
    key: PrivateKey,
    *,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    name: str = "node1.example",
    ca: bool = False,
) -> x509.Certificate:
    """A self-signed certificate for ``key`` valid from ``not_before`` to ``not_after``."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def write_cert(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


def write_key(path: Path, key: PrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def write_pair(
    directory: Path,
    key: PrivateKey | None = None,
    *,
    now: datetime.datetime,
    valid_days: float = 365,
    start_days: float = -1,
) -> tuple[Path, Path]:
    """``cert.pem``/``key.pem`` in ``directory``: valid from ``now + start_days`` for ``valid_days``."""
    key = key if key is not None else ec_key()
    start = now + datetime.timedelta(days=start_days)
    cert = certificate(key, not_before=start, not_after=start + datetime.timedelta(days=valid_days))
    return write_cert(directory / "cert.pem", cert), write_key(directory / "key.pem", key)


def temp_dir(case: SynchronousTestCase) -> Path:
    path = Path(tempfile.mkdtemp(prefix="tunmesh-tls-"))

    def cleanup() -> None:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()

    case.addCleanup(cleanup)
    return path


def self_signed(directory: Path, name: str, hostnames: tuple[str, ...] = ("tunmesh.local",),
                ips: tuple[str, ...] = ("127.0.0.1",)) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    write_self_signed(cert, key, hostnames, ips)
    return cert, key


@implementer(IHandshakeListener)
class Recorder(Protocol):
    """Records the handshake, received data and the loss reason."""

    def __init__(self, greeting: bytes = b"") -> None:
        self.handshake_done = False
        self.data = b""
        self.lost: Any = None
        self.greeting = greeting

    def connectionMade(self) -> None:
        if self.greeting:
            assert self.transport is not None
            self.transport.write(self.greeting)

    def handshakeCompleted(self) -> None:
        self.handshake_done = True

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = reason


def settle(pump: Any, clock: Clock, rounds: int = 20) -> None:
    """Pump bytes both ways; advance the clock that flushes TLS write aggregation."""
    for _ in range(rounds):
        clock.advance(0)
        pump.flush()


def handshake(server_creator: Any, client_creator: Any, server_proto: Any = None,
              client_proto: Any = None) -> tuple[Any, Any, Any, Any]:
    """Run a TLS connection in memory; returns (client TLS, server TLS, client app, server app)."""
    server_app = server_proto or Recorder()
    client_app = client_proto or Recorder(greeting=b"ping")
    clock = Clock()
    server_factory = TLSMemoryBIOFactory(server_creator, False, Factory.forProtocol(lambda: server_app), clock=clock)
    client_factory = TLSMemoryBIOFactory(client_creator, True, Factory.forProtocol(lambda: client_app), clock=clock)
    client, server, pump = connectedServerAndClient(
        lambda: server_factory.buildProtocol(None), lambda: client_factory.buildProtocol(None)
    )
    settle(pump, clock)
    return client, server, client_app, server_app


def tls_pair() -> tuple[SSL.Connection, SSL.Connection]:
    """A handshaken client/server pair of memory-BIO connections."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256())
    )
    sctx = SSL.Context(SSL.TLS_METHOD)
    sctx.use_privatekey(key)
    sctx.use_certificate(cert)
    server = SSL.Connection(sctx, None)
    server.set_accept_state()
    client = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
    client.set_connect_state()
    for _ in range(10):
        for a, b in ((client, server), (server, client)):
            try:
                a.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                b.bio_write(a.bio_read(1 << 20))
            except SSL.WantReadError:
                pass
    return client, server


class HelloApp:
    """A Klein app answering ``GET /hello``."""

    app = Klein()

    @app.route("/hello", methods=["GET"])
    def hello(self, request: Any) -> bytes:
        return b"hi"


class LinkEcho(Protocol):
    """A link end that echoes what it reads, prefixed with ``link:``."""

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"link:" + data)


class LoopbackServer(TestCase):
    """The full server factory listening on 127.0.0.1 with a self-signed certificate."""

    timeout = 20

    def setUp(self) -> None:
        directory = temp_dir(self)
        self.cert, self.key = self_signed(directory, "node", hostnames=("tunmesh.local",), ips=("127.0.0.1",))
        site = make_site(HelloApp().app.resource(), RouteLimits(), reactor)
        factory = make_server_factory(site, server_context(self.cert, self.key),
                                      {b"tunmesh-link/1": Factory.forProtocol(LinkEcho)}, reactor)
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(self.port.stopListening)
        self.port_number = cast(IPv4Address, self.port.getHost()).port
        self.url = f"https://127.0.0.1:{self.port_number}"
