"""The TCP client endpoint of every node-to-node connection (control requests, packet links).

Peers advertise URLs whose host is nearly always an IP literal (a pod IP). Twisted's ``HostnameEndpoint``
resolves even a literal through ``getaddrinfo`` in the reactor's thread pool: a thread hand-off, and
under a busy main thread a wait for the GIL, on every connection. A literal connects directly here; a
name still goes through ``HostnameEndpoint`` (resolution, both families, happy eyeballs).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint


def tcp_client_endpoint(reactor: Any, host: str | bytes, port: int, timeout: float) -> IStreamClientEndpoint:
    """A TCP endpoint to ``host``:``port`` within ``timeout`` seconds; ``host`` is a name or an IP
    literal (an IPv6 literal with or without its URL brackets)."""
    text = host.decode("idna") if isinstance(host, bytes) else host
    literal = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if isIPAddress(literal):
        return TCP4ClientEndpoint(reactor, literal, port, timeout)
    if isIPv6Address(literal):
        return TCP6ClientEndpoint(reactor, literal, port, timeout)
    return HostnameEndpoint(reactor, text.encode("idna"), port, timeout=timeout)
