#!/usr/bin/env python3
"""Throughput of one peer link over real TLS on loopback (Twisted reactor).

Prints MB/s of packets delivered; not a test.  By default both ends run in this process on one
core (a lower bound); with ``--split`` the server end runs in a second process, so each end has
its own core, as between two nodes.
Usage: PYTHONPATH=. python contrib/bench/link_loopback.py [seconds] [--split] [--packet-size=N] (default 65535:
offload super-packets, 4 per batch; small packets, e.g. 1200, go 32 per batch, as a UDP flood reads from the TUN)
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ALPN = b"tunmesh-link/1"


class _Metrics:
    class _C:
        def labels(self, **kw: str) -> _Metrics._C:
            return self

        def inc(self, n: float = 1) -> None:
            pass

        dec = set = observe = inc

        def remove(self, *labels: str) -> None:
            pass

    def counter(self, *a: object, **k: object) -> _Metrics._C:
        return self._C()

    gauge = histogram = counter


def self_signed() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


def link_metrics() -> Any:
    from tunmesh.dataplane.drops import DropCounter
    from tunmesh.dataplane.link import LinkMetrics

    m = _Metrics()
    return LinkMetrics(m, DropCounter(m))


def start_server(reactor: Any, cert_pem: bytes, key_pem: bytes, secret: bytes, received: list[int]) -> int:
    from twisted.internet import ssl

    from tunmesh.auth.sessions import SessionAuthority, SessionStore
    from tunmesh.dataplane.link import LinkServerFactory

    store = SessionStore("b", reactor)
    store.install_inbound("a", "k1", secret)

    def on_packets(peer: str, pkts: list[bytes], vnet: bool) -> None:
        for p in pkts:
            received[0] += len(p)

    factory = LinkServerFactory("b", store, SessionAuthority(store), lambda p: True, on_packets, reactor,
                                link_metrics())
    cert = ssl.PrivateCertificate.loadPEM(cert_pem + key_pem)
    options = ssl.CertificateOptions(
        privateKey=cert.privateKey.original, certificate=cert.original, acceptableProtocols=[ALPN]
    )
    return reactor.listenSSL(0, factory, options, interface="127.0.0.1").getHost().port


def run_client(reactor: Any, port: int, cert_pem: bytes, secret: bytes, seconds: float,
               received: list[int] | None) -> None:
    from twisted.internet import ssl
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS

    from tunmesh.auth.sessions import SessionAuthority, SessionStore
    from tunmesh.dataplane.link import LinkClient

    store = SessionStore("a", reactor)
    store.install_outbound("b", "k1", secret)
    creator = ssl.optionsForClientTLS(
        "localhost", trustRoot=ssl.Certificate.loadPEM(cert_pem), acceptableProtocols=[ALPN]
    )

    def connector(url: str, proto: Any) -> Any:
        return connectProtocol(wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "127.0.0.1", port)), proto)

    client = LinkClient("a", "b", "https://localhost/", connector, store, SessionAuthority(store), reactor,
                        link_metrics(), max_queue_packets=256, packet_expiration=1.0)
    client.start()
    size = next((int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--packet-size=")), 65535)
    packet = os.urandom(size)
    batch = [packet] * (4 if size > 16384 else 32)
    sent = [0]
    start = [0.0]
    cpu0 = [0.0]

    def pump() -> None:
        if client.ready and not client.paused:
            if not start[0]:
                start[0] = time.perf_counter()
                cpu0[0] = time.process_time()
                if received is not None:
                    received[0] = 0
            for _ in range(4):
                if client.paused:
                    break
                client.send_batch(batch)
                sent[0] += len(batch) * len(packet)
        reactor.callLater(0, pump)

    def done() -> None:
        dt = time.perf_counter() - start[0]
        what, n = ("delivered", received[0]) if received is not None else ("written by client", sent[0])
        cpu = time.process_time() - cpu0[0]
        print(f"link over TLS loopback, {what}: {n / dt / 1e6:.0f} MB/s ({n * 8 / dt / 1e9:.2f} Gbit/s); "
              f"this process's CPU: {cpu / dt * 100:.0f} % of a core, {cpu / (sent[0] / 1e9):.2f} s per GB sent")
        reactor.stop()

    reactor.callLater(0, pump)
    reactor.callLater(seconds + 0.5, done)
    reactor.run()


def serve(directory: Path, seconds: float) -> None:
    from twisted.internet import reactor

    received = [0]
    port = start_server(reactor, (directory / "cert.pem").read_bytes(), (directory / "key.pem").read_bytes(),
                        (directory / "secret").read_bytes(), received)
    print(port, flush=True)
    t0 = time.perf_counter()

    def report() -> None:
        dt = time.perf_counter() - t0
        print(f"server received {received[0] / dt / 1e6:.0f} MB/s over {dt:.1f}s "
              f"(includes the handshake)", flush=True)
        reactor.stop()

    reactor.callLater(seconds, report)
    reactor.run()


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    seconds = float(args[0]) if args else 5.0
    if "--serve" in sys.argv:
        serve(Path(args[1]), seconds)
        return
    cert_pem, key_pem = self_signed()
    secret = os.urandom(32)
    if "--split" in sys.argv:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            (d / "cert.pem").write_bytes(cert_pem)
            (d / "key.pem").write_bytes(key_pem)
            (d / "secret").write_bytes(secret)
            child = subprocess.Popen(
                [sys.executable, __file__, str(seconds + 1.5), str(d), "--serve"], stdout=subprocess.PIPE, text=True
            )
            assert child.stdout is not None
            port = int(child.stdout.readline())
            from twisted.internet import reactor

            run_client(reactor, port, cert_pem, secret, seconds, None)
            print(child.stdout.read().strip())
            child.wait()
        return
    from twisted.internet import reactor

    received = [0]
    port = start_server(reactor, cert_pem, key_pem, secret, received)
    run_client(reactor, port, cert_pem, secret, seconds, received)


if __name__ == "__main__":
    main()
