"""ALPN dispatch: one TLS port, several protocols.

The HTTP API and the data-plane links share one port (as the original's single TLS port); the
client says which it wants through ALPN, and after the handshake this protocol hands the connection
to the matching factory's protocol. Twisted's ``_GenericHTTPChannelProtocol`` does the same for h2.

Because the choice is made after the handshake, this layer also owns the handshake deadline: a
connection that has not finished its handshake within ``handshake_timeout`` of accept is aborted
(contract W9), and the chosen protocol is told when the connection was accepted so its own
deadlines can be counted from accept too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IProtocol,
    IProtocolFactory,
    IProtocolNegotiationFactory,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer


class IAcceptTimeAware(Interface):
    """A protocol whose deadlines count from TCP accept rather than from its own start."""

    def connectionAcceptedAt(when: float) -> None:  # noqa: N802, N805 (zope interface style)
        """Called before ``makeConnection`` with the ``clock.seconds()`` of accept."""


@implementer(IHandshakeListener)
class ALPNDispatchProtocol(Protocol):
    """Chooses the inner protocol at handshake completion (or on the first data without TLS)."""

    _log = Logger()

    def __init__(self, factory: ALPNDispatchFactory) -> None:
        self.factory = factory
        self.inner: IProtocol | None = None
        self.negotiated: bytes | None = None
        self._accepted_at = 0.0
        self._deadline: IDelayedCall | None = None
        self._lost = False

    def connectionMade(self) -> None:
        clock = self.factory.clock
        self._accepted_at = clock.seconds()
        if self.factory.handshake_timeout is not None:
            self._deadline = clock.callLater(self.factory.handshake_timeout, self._handshake_expired)

    def _tcp_transport(self) -> ITCPTransport:
        """``self.transport``, set by ``makeConnection`` before anything here runs.

        It is the ``TLSMemoryBIOProtocol`` (or, without TLS, the TCP transport): both provide
        ``ITCPTransport``, which ``Protocol.transport`` (``ITransport | None``) does not say.
        """
        return cast(ITCPTransport, self.transport)

    def _handshake_expired(self) -> None:
        self._deadline = None
        transport = self._tcp_transport()
        self._log.debug("TLS handshake deadline expired for {peer}", peer=str(transport.getPeer()))
        transport.abortConnection()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def handshakeCompleted(self) -> None:
        if self.inner is None:
            self._choose()

    def _choose(self) -> None:
        self._cancel_deadline()
        negotiated = getattr(self.transport, "negotiatedProtocol", None)
        self.negotiated = negotiated
        factory = self.factory.alternatives.get(negotiated, self.factory.default_factory) if negotiated else (
            self.factory.default_factory
        )
        transport = self._tcp_transport()
        inner = factory.buildProtocol(transport.getPeer())
        if inner is None:
            transport.loseConnection()
            return
        if IAcceptTimeAware.providedBy(inner):
            inner.connectionAcceptedAt(self._accepted_at)
        self.inner = inner
        inner.makeConnection(transport)
        if IHandshakeListener.providedBy(inner) and not self._lost:
            inner.handshakeCompleted()

    def dataReceived(self, data: bytes) -> None:
        if self.inner is None:
            self._choose()
            if self.inner is None:
                return
        self.inner.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._cancel_deadline()
        if self.inner is not None:
            inner, self.inner = self.inner, None
            inner.connectionLost(reason)


@implementer(IProtocolFactory, IProtocolNegotiationFactory)
class ALPNDispatchFactory(Factory):
    """Wrap with ``TLSMemoryBIOFactory``; ``alternatives`` maps ALPN ids to factories.

    ``default_factory`` serves ``http/1.1`` and connections without ALPN. A server context built on
    ``CertificateOptions`` (such as ``server_context``) asks this factory which protocols to accept.
    """

    noisy = False

    def __init__(
        self,
        default_factory: IProtocolFactory,
        alternatives: Mapping[bytes, IProtocolFactory],
        clock: IReactorTime | None = None,
        handshake_timeout: float | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # noqa: PLC0415
        self.default_factory = default_factory
        self.alternatives = dict(alternatives)
        self.clock: IReactorTime = clock  # type: ignore[assignment]
        self.handshake_timeout = handshake_timeout

    def acceptableProtocols(self) -> list[bytes]:
        """Advertised through ALPN by Twisted's server contexts: the alternatives, then HTTP/1.1."""
        return [*self.alternatives, b"http/1.1"]

    def _factories(self) -> list[IProtocolFactory]:
        seen: list[IProtocolFactory] = []
        for f in (self.default_factory, *self.alternatives.values()):
            if all(f is not s for s in seen):
                seen.append(f)
        return seen

    def startFactory(self) -> None:
        for f in self._factories():
            f.doStart()

    def stopFactory(self) -> None:
        for f in self._factories():
            f.doStop()

    def buildProtocol(self, addr: object) -> ALPNDispatchProtocol:
        return ALPNDispatchProtocol(self)
