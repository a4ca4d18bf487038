#!/usr/bin/env python3
"""What one connection costs in CPU: TCP alone, then TLS with the node's own contexts (no root needed).

    python contrib/bench/tls_cost.py [--connections 300] [--rounds 3] [--json FILE]

Both ends run in this process on one reactor over loopback: a server built by
``tunmesh.tls.contexts.server_context`` (an ECDSA P-256 certificate as ``tunmesh cert`` makes, TLS >= 1.2,
the node's cipher policy) and a client by ``client_context`` (the chain verified against that certificate,
as between nodes). Each connection is opened, carries one byte each way (so the handshake is complete on
both ends) and is closed; the next starts when it is gone. Printed per connection: process CPU (utime +
stime of both ends together) and wall time, the median of ``--rounds`` rounds, for TCP and for TLS; their
difference is what a TLS handshake costs the two nodes of a pair. The channel-binding proof and the link
HELLO that follow a handshake between real nodes are not included.

The scale analysis in docs/performance.md uses it: a pair of nodes needs at least three TLS connections
(a packet link each way and one control connection), so this figure times three is a floor of what a join
costs per pair, whatever the protocol above it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from twisted.internet import defer, endpoints, protocol, reactor  # noqa: E402

from tunmesh.tls.certs import write_self_signed  # noqa: E402
from tunmesh.tls.contexts import client_context, server_context  # noqa: E402

HOST = "127.0.0.1"


class _Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted's name)
        self.transport.write(data)


class _Once(protocol.Protocol):
    """Writes one byte, waits for it to come back, closes; ``done`` fires when the connection is gone."""

    def __init__(self, done: defer.Deferred[None]) -> None:
        self.done = done

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(b"x")

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.done.callback(None)


class _OnceFactory(protocol.Factory):
    def __init__(self) -> None:
        self.done: defer.Deferred[None] = defer.Deferred()

    def buildProtocol(self, addr: Any) -> _Once:  # noqa: N802
        return _Once(self.done)


@defer.inlineCallbacks
def _round(make_endpoint: Any, count: int) -> Any:
    cpu, wall = time.process_time(), time.monotonic()
    for _ in range(count):
        factory = _OnceFactory()
        yield make_endpoint().connect(factory)
        yield factory.done
    return (time.process_time() - cpu) / count, (time.monotonic() - wall) / count


@defer.inlineCallbacks
def measure(count: int, rounds: int, workdir: Path) -> Any:
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    write_self_signed(cert, key, ips=[HOST])
    echo = protocol.Factory.forProtocol(_Echo)
    tcp_port = reactor.listenTCP(0, echo, interface=HOST)
    tls_port = reactor.listenSSL(0, echo, server_context(cert, key), interface=HOST)
    creator = client_context(cert, HOST, verify_hostname=False)  # the node's default (the chain is verified)

    def tcp() -> Any:
        return endpoints.TCP4ClientEndpoint(reactor, HOST, tcp_port.getHost().port)

    def tls() -> Any:
        return endpoints.wrapClientTLS(creator, endpoints.TCP4ClientEndpoint(reactor, HOST, tls_port.getHost().port))

    result: dict[str, Any] = {"connections": count, "rounds": rounds}
    try:
        yield _round(tls, 20)  # warm up: imports, OpenSSL's first use
        for name, make in (("tcp", tcp), ("tls", tls)):
            samples = []
            for _ in range(rounds):
                samples.append((yield _round(make, count)))
            result[name] = {
                "cpu_ms": statistics.median(s[0] for s in samples) * 1e3,
                "wall_ms": statistics.median(s[1] for s in samples) * 1e3,
            }
    finally:
        yield tcp_port.stopListening()
        yield tls_port.stopListening()
    result["tls_handshake_cpu_ms"] = result["tls"]["cpu_ms"] - result["tcp"]["cpu_ms"]
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=300, help="connections per round (default 300)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the median is printed (default 3)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    if args.connections < 1 or args.rounds < 1:
        ap.error("--connections and --rounds must be at least 1")
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tunmesh-tlscost-") as tmp:
        d = measure(args.connections, args.rounds, Path(tmp))
        d.addCallback(out.update)
        d.addErrback(lambda f: out.update(error=f.getTraceback()))
        d.addBoth(lambda _: reactor.stop())
        reactor.run()  # it stops before the directory goes: measure() closed its ports
    if "error" in out:
        print(out["error"], file=sys.stderr)
        return 1
    print(f"per connection, both ends together (median of {args.rounds} rounds of {args.connections}):")
    for name in ("tcp", "tls"):
        print(f"  {name}: {out[name]['cpu_ms']:.2f} ms CPU, {out[name]['wall_ms']:.2f} ms wall")
    print(f"  a TLS handshake adds {out['tls_handshake_cpu_ms']:.2f} ms of CPU")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
