"""Control-plane channel binding (contract W5(a)): the server proves the TLS session first.

A node-to-node control connection negotiates the ALPN id :data:`CTL_ALPN`. Right after the
handshake, before any HTTP, the server writes one proof frame: a 4-byte big-endian length and
``tm-chan+jwt`` tokens (one per cluster secret it accepts, comma-separated) whose ``cnf`` is the
TLS exporter value (RFC 5705/8446, label :data:`CTL_LABEL`) of *its* side of the session. The
client computes the same value on its side and checks a token under a secret it accepts; only
then does its HTTP/1.1 client protocol start. A relay that terminates TLS (holding a certificate
the nodes trust) has two sessions with two different exporter values and no cluster secret: it
can neither forward the server's proof (wrong value) nor mint one, so the client aborts the
connection having sent nothing but its TLS handshake.

Requests and responses on the connection are bound as well (their tokens carry the same value in
``cnf``, checked by the route handlers), so a request relayed from a client that does not check
the proof is refused by the server.

Only public Twisted APIs are used: ``IHandshakeListener``, ``wrapClientTLS``, ``connectProtocol``,
``IAgentEndpointFactory`` and ``ISSLTransport.getHandle`` (the pyOpenSSL connection, whose
``export_keying_material`` gives the value).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.endpoints import connectProtocol, wrapClientTLS
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    ISSLTransport,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.client import URI
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from tunmesh.auth.errors import AuthError
from tunmesh.auth.keys import b64url
from tunmesh.endpoints import tcp_client_endpoint
from tunmesh.logutil import RateLimitedLog
from tunmesh.tls.dispatch import IAcceptTimeAware

#: ALPN id of node-to-node control HTTP (HTTP/1.1 after the server's proof frame).
CTL_ALPN: Final = b"tunmesh-ctl/1"
#: RFC 5705 / RFC 8446 exporter label and length of the control-plane binding.
CTL_LABEL: Final = b"EXPORTER-tunmesh-ctl-v1"
CTL_LEN: Final = 32
#: Largest proof frame accepted (a handful of ~400-byte tokens).
MAX_PROOF_BYTES: Final = 16 * 1024
_LEN = struct.Struct(">I")

#: ``verify(tokens, cnf)``: raises ``AuthError`` unless one token proves the session ``cnf``.
ProofVerifier = Callable[[list[str], str], object]
#: ``prove(cnf)``: the tokens proving the session ``cnf``.
ProofSigner = Callable[[str], list[str]]


def exporter_value(transport: object, label: bytes, length: int) -> bytes | None:
    """The TLS exporter value of ``transport``'s session; ``b""`` when there is no TLS under it
    (memory transports in tests, including treq's ``StubTreq``, which marks https requests'
    transports ``ISSLTransport`` but has no OpenSSL connection to hand out), ``None`` when there is TLS but no value can be had (not
    handshaken yet, or an OpenSSL error)."""
    get_handle = getattr(transport, "getHandle", None) if ISSLTransport.providedBy(transport) else None
    if get_handle is None:
        return b""
    conn = get_handle()
    if not isinstance(conn, SSL.Connection):
        return None
    try:
        value = conn.export_keying_material(label, length)
    except SSL.Error:
        return None
    return value if len(value) == length else None


def control_binding(transport: object) -> str | None:
    """The ``cnf`` value of a control connection: base64url of its exporter value.

    ``None`` without TLS (nothing to bind: in-memory tests). Raises ``AuthError("channel_binding")``
    when there is TLS but no value, so such a connection is refused rather than left unbound.
    """
    value = exporter_value(transport, CTL_LABEL, CTL_LEN)
    if value is None:
        raise AuthError("channel_binding")
    return b64url(value) if value else None


def encode_proof(tokens: list[str]) -> bytes:
    """The proof frame: length, then the tokens joined by commas (ASCII)."""
    payload = ",".join(tokens).encode("ascii")
    if len(payload) > MAX_PROOF_BYTES:
        raise ValueError("channel proof too large")
    return _LEN.pack(len(payload)) + payload


class ChannelProofError(Exception):
    """The server of a control connection did not prove the TLS session (W5): a relay, a node
    with another cluster secret, or not a tunmesh control port. ``reason`` is ``channel_binding``;
    ``detail`` says what was wrong (the auth reason of the proof, ``timeout``, ``closed``...)."""

    reason = "channel_binding"

    def __init__(self, detail: str) -> None:
        super().__init__(f"the server did not prove the TLS session ({detail})")
        self.detail = detail


# --- server side ------------------------------------------------------------------------------


@implementer(IAcceptTimeAware)
class ChannelProofServerProtocol(Protocol):
    """Writes the proof frame at connection start, then is the wrapped protocol's pipe."""

    def __init__(self, factory: ChannelProofFactory) -> None:
        self.factory = factory
        self.inner: IProtocol | None = None
        self._accepted_at: float | None = None

    def connectionAcceptedAt(self, when: float) -> None:
        self._accepted_at = when

    def connectionMade(self) -> None:
        transport: Any = self.transport
        try:
            cnf = control_binding(transport)
            if cnf is None:
                raise AuthError("channel_binding")  # tunmesh-ctl/1 is only offered over TLS
            frame = encode_proof(self.factory.prove(cnf))
        except (AuthError, ValueError) as exc:
            self.factory.rlog.emit(
                ("no_channel_proof",),
                LogLevel.warn,
                "control connection from {peer}: no channel proof ({error}); closed",
                peer=str(transport.getPeer()),
                error=str(exc),
            )
            transport.abortConnection()
            return
        transport.write(frame)
        inner = self.factory.wrapped.buildProtocol(transport.getPeer())
        if inner is None:
            transport.loseConnection()
            return
        if self._accepted_at is not None and IAcceptTimeAware.providedBy(inner):
            inner.connectionAcceptedAt(self._accepted_at)
        self.inner = inner
        inner.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.inner is not None:
            inner, self.inner = self.inner, None
            inner.connectionLost(reason)


class ChannelProofFactory(Factory):
    """The :data:`CTL_ALPN` alternative of the port's ALPN dispatch: proof, then ``wrapped``
    (the HTTP site). ``prove`` is ``ClusterAuthority.sign_channel_proof``."""

    noisy = False
    log = Logger()

    def __init__(self, wrapped: IProtocolFactory, prove: ProofSigner, clock: IReactorTime | None = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # noqa: PLC0415
        self.wrapped = wrapped
        self.prove = prove
        self.rlog = RateLimitedLog(self.log, clock)  # type: ignore[arg-type]

    def buildProtocol(self, addr: Any) -> ChannelProofServerProtocol:
        return ChannelProofServerProtocol(self)


# --- client side ------------------------------------------------------------------------------


@implementer(IHandshakeListener)
class ChannelProofClientProtocol(Protocol):
    """Waits for the server's proof frame, checks it, then hands the connection to ``factory``'s
    protocol and fires ``ready`` with it. Nothing is written before that."""

    def __init__(
        self,
        factory: IProtocolFactory,
        verify: ProofVerifier | None,
        clock: IReactorTime,
        timeout: float,
    ) -> None:
        self._factory = factory
        self._verify = verify
        self._clock = clock
        self._timeout = timeout
        self._buffer = b""
        self._deadline: IDelayedCall | None = None
        self.inner: IProtocol | None = None
        self.ready: defer.Deferred[IProtocol] = defer.Deferred(lambda d: self._abort())

    def connectionMade(self) -> None:
        self._deadline = self._clock.callLater(self._timeout, self._fail, "timeout")

    def handshakeCompleted(self) -> None:
        """Nothing to do: the proof arrives as data once the handshake is done."""

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _fail(self, detail: str) -> None:
        self._cancel_deadline()
        if not self.ready.called:
            self.ready.errback(ChannelProofError(detail))
        self._abort()

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        if self.ready.called:
            return  # refused already; the connection is being aborted
        self._buffer += data
        if len(self._buffer) < _LEN.size:
            return
        (size,) = _LEN.unpack_from(self._buffer)
        if size > MAX_PROOF_BYTES:
            self._fail("oversized")
            return
        if len(self._buffer) < _LEN.size + size:
            return
        payload = self._buffer[_LEN.size : _LEN.size + size]
        rest = self._buffer[_LEN.size + size :]
        self._buffer = b""
        self._check(payload, rest)

    def _check(self, payload: bytes, rest: bytes) -> None:
        try:
            cnf = control_binding(self.transport)
            if cnf is None or self._verify is None:
                raise AuthError("channel_binding")
            tokens = payload.decode("ascii").split(",")
            self._verify(tokens, cnf)
        except AuthError as exc:
            self._fail(exc.reason)
            return
        except (UnicodeDecodeError, ValueError):
            self._fail("malformed")
            return
        except Exception:  # untrusted bytes never raise past here (issue 12): refuse, do not crash
            self._fail("error")
            return
        self._cancel_deadline()
        transport: Any = self.transport
        inner = self._factory.buildProtocol(transport.getPeer())
        if inner is None:
            self._fail("refused by the local protocol factory")
            return
        self.inner = inner
        inner.makeConnection(transport)
        self.ready.callback(inner)
        if rest and self.inner is not None:
            self.inner.dataReceived(rest)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_deadline()
        if self.inner is not None:
            inner, self.inner = self.inner, None
            inner.connectionLost(reason)
        elif not self.ready.called:
            # Lost before the proof: a TLS failure says why (unknown CA...); a clean close does not.
            if reason.check(SSL.Error):
                self.ready.errback(reason)
            else:
                self.ready.errback(ChannelProofError("connection closed before the proof"))


@implementer(IStreamClientEndpoint)
class ChannelBoundEndpoint:
    """Connects through ``tls_endpoint`` (offering only :data:`CTL_ALPN`) and fires with the
    protocol of the given factory once the server proved the session; fails with
    :class:`ChannelProofError` otherwise."""

    def __init__(
        self,
        tls_endpoint: IStreamClientEndpoint,
        verify: ProofVerifier | None,
        clock: IReactorTime,
        timeout: float,
        on_bound: Callable[[object], None] | None = None,
    ) -> None:
        self._endpoint = tls_endpoint
        self._verify = verify
        self._clock = clock
        self._timeout = timeout
        self._on_bound = on_bound

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:  # noqa: N803
        verify, on_bound = self._verify, self._on_bound
        if verify is not None and on_bound is not None:
            checked = verify

            def verify_and_report(tokens: list[str], cnf: str) -> object:
                proof = checked(tokens, cnf)
                on_bound(proof)
                return proof

            verify = verify_and_report
        proto = ChannelProofClientProtocol(protocolFactory, verify, self._clock, self._timeout)
        connecting = connectProtocol(self._endpoint, proto)

        def not_connected(failure: Failure) -> None:
            if not proto.ready.called:
                proto.ready.errback(failure)

        connecting.addErrback(not_connected)

        def cancel(d: defer.Deferred[IProtocol]) -> None:
            if not connecting.called:
                connecting.cancel()
            else:
                proto._abort()
            if not proto.ready.called:
                proto.ready.errback(defer.CancelledError())

        result: defer.Deferred[IProtocol] = defer.Deferred(cancel)
        proto.ready.chainDeferred(result)
        return result


@implementer(IAgentEndpointFactory)
class ControlEndpointFactory:
    """``Agent.usingEndpointFactory`` for node-to-node control: TLS through ``policy`` (whose ALPN
    is :data:`CTL_ALPN` only), then the proof check.

    ``verify`` is set once the node's cluster authority exists (``ClusterAuthority.verify_channel_proof``);
    until then every connection is refused (fail closed). The first bound connection to each server is
    logged once (``control connections to ... are bound to their TLS session``).
    """

    log = Logger()
    _ANNOUNCED_LIMIT = 4096

    def __init__(
        self,
        reactor: Any,
        policy: IPolicyForHTTPS,
        timeout: float,
        verify: ProofVerifier | None = None,
        handshake_timeout: float | None = None,
    ) -> None:
        self._reactor = reactor
        self._policy = policy
        #: TCP connect deadline
        self._timeout = timeout
        #: TLS handshake and proof deadline, from the TCP connection on
        self._handshake_timeout = timeout if handshake_timeout is None else handshake_timeout
        self.verify = verify
        self._announced: set[tuple[bytes, int]] = set()

    def _bound(self, uri: URI, proof: object) -> None:
        key = (uri.host, uri.port)
        if key in self._announced:
            return
        if len(self._announced) >= self._ANNOUNCED_LIMIT:
            self._announced.clear()
        self._announced.add(key)
        self.log.info(
            "control connections to {host}:{port} are bound to their TLS session (proved by {node})",
            host=uri.host.decode("ascii", "replace"),
            port=uri.port,
            node=getattr(proof, "iss", "?"),
        )

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:  # noqa: N802 (Twisted's name)
        if uri.scheme != b"https":
            raise SchemeNotSupported(f"control requests go over https only, not {uri.scheme!r}")
        tcp = tcp_client_endpoint(self._reactor, uri.host, uri.port, self._timeout)
        tls = wrapClientTLS(self._policy.creatorForNetloc(uri.host, uri.port), tcp)
        return ChannelBoundEndpoint(
            tls, self.verify, self._reactor, self._handshake_timeout, on_bound=lambda proof: self._bound(uri, proof)
        )
