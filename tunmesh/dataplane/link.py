"""Peer links: one persistent TLS stream per direction and peer, carrying batches of packets.

The client side (:class:`LinkClient`, one per peer) connects to the peer's API port offering ALPN
``tunmesh-link/1``, proves itself with a ``tm-link+jwt`` HELLO, then writes DATA frames.  The
server side (:class:`LinkServerFactory`, mounted behind the ALPN dispatcher) checks the HELLO and
hands verified packets to the data plane.  Datagram semantics (security contract): nothing is
retransmitted, queues are bounded and drop the oldest packets, every drop is counted.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from OpenSSL import SSL
from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from tunmesh.auth.errors import AuthError
from tunmesh.dataplane import datagram as D
from tunmesh.dataplane import frames as F
from tunmesh.dataplane.drops import DropCounter
from tunmesh.dataplane.linkqueue import PacketQueue
from tunmesh.dataplane.linkstats import LinkStats
from tunmesh.dataplane.ticker import KeepaliveTicker
from tunmesh.failures import describe_failure
from tunmesh.interfaces import LinkAuthorityLike, MetricsLike, SessionsLike
from tunmesh.logutil import RateLimitedLog
from tunmesh.names import label
from tunmesh.tls.binding import exporter_value
from tunmesh.twisted_internals import (
    direct_write_possible,
    flush_small_writes,
    immediate_write,
    ordered_write,
    tcp_send_idle,
    tls_cleartext_idle,
)

#: Socket buffer size asked for on both ends (the kernel caps it at net.core.[rw]mem_max).
SOCKET_BUFFER = 4 * 1024 * 1024
#: Bytes read from a link socket per reactor wakeup.
READ_CHUNK = 256 * 1024
HELLO_TIMEOUT = 5.0
KEEPALIVE = 10.0
#: Buckets of ``tunmesh_link_rtt_seconds`` (a LAN is under 1 ms, a region ~1-50 ms, a busy link more).
RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# Drop reasons of the links (the queue has its own, linkqueue.QUEUE_FULL).
PEER_DOWN = "peer_down"
PEER_REMOVED = "peer_removed"
EXPIRED = "expired"

#: on_packets(peer_id, packets, vnet_hdr): verified packets from a peer's link.
PacketSink = Callable[[str, list[bytes], bool], None]
#: connector(url, protocol) -> Deferred firing when ``protocol`` is connected (or failing).
Connector = Callable[[str, Protocol], "defer.Deferred[Any]"]


def tune_socket(transport: Any, buffer_size: int = SOCKET_BUFFER) -> bool:
    """TCP_NODELAY (mandatory: Nagle costs ~10 ms per round trip) and large socket buffers.

    ``transport`` may be a TLS wrapper (or an ALPN dispatcher around one): the TCP transport is
    the innermost ``.transport``.  Best effort (memory transports in tests have no socket);
    returns whether the socket was tuned.
    """
    t = tcp_transport(transport)
    try:
        t.setTcpNoDelay(True)
        if isinstance(getattr(t, "bufferSize", None), int):
            # Twisted reads 64 KiB per wakeup; a DATA frame is up to 256 KiB.
            t.bufferSize = READ_CHUNK
        sock = t.getHandle()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_size)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_size)
    except (OSError, AttributeError, NotImplementedError):
        return False
    return True


def tcp_transport(transport: Any) -> Any:
    """The TCP transport under ``transport`` (a TLS wrapper, or an ALPN dispatcher around one): its
    innermost ``.transport``."""
    t = transport
    for _ in range(4):
        inner = getattr(t, "transport", None)
        if inner is None:
            break
        t = inner
    return t


def tcp_socket(transport: Any) -> socket.socket | None:
    """The TCP socket under ``transport``, None without one (memory transports in tests)."""
    try:
        sock = tcp_transport(transport).getHandle()
    except (AttributeError, NotImplementedError):
        return None
    return sock if isinstance(sock, socket.socket) else None


def tls_channel(transport: Any) -> bytes | None:
    """The link's channel binding: the TLS exporter value (RFC 5705/8446) of ``transport``'s
    session, ``b""`` when there is no TLS under the link (memory transports in tests), ``None``
    when there is TLS but no value can be had (not handshaken yet, or an OpenSSL error)."""
    return exporter_value(transport, F.CHANNEL_LABEL, F.CHANNEL_LEN)


class LinkMetrics:
    """The link counters, created once and shared by every link of a node."""

    def __init__(self, metrics: MetricsLike, drops: DropCounter) -> None:
        self.drops = drops
        frames = metrics.counter("link_frames_total", "DATA frames over peer links, by direction (tx, rx).", ["direction"])
        self.frames_tx = frames.labels(direction="tx")
        self.frames_rx = frames.labels(direction="rx")
        link_bytes = metrics.counter("link_bytes_total", "Bytes of DATA frames, by direction (tx, rx).", ["direction"])
        self.bytes_tx = link_bytes.labels(direction="tx")
        self.bytes_rx = link_bytes.labels(direction="rx")
        self._frame_drops = metrics.counter(
            "link_frames_dropped_total", "DATA frames rejected by a link, by reason.", ["reason"]
        )
        self._hello = metrics.counter(
            "link_hello_failures_total", "Link handshakes refused or failed, by reason.", ["reason"]
        )
        connected = metrics.gauge(
            "links_connected", "Peer links up, by direction (out: ours, in: the peers').", ["direction"]
        )
        self.connected_out = connected.labels(direction="out")
        self.connected_in = connected.labels(direction="in")
        self.rtt = metrics.histogram(
            "link_rtt_seconds",
            "Round-trip time of the keepalive PING/PONG on outbound peer links (every peer; no labels).",
            buckets=RTT_BUCKETS,
        )
        self._peer_up = metrics.gauge(
            "peer_link_up",
            "1 while the outbound packet link to the peer is up, 0 while it is down, by peer_id "
            "(join tunmesh_peer_info for the name); removed with the peer.",
            ["peer_id"],
        )
        self._peer_rtt = metrics.gauge(
            "peer_link_rtt_seconds",
            "Last keepalive round-trip time of the outbound link to the peer, by peer_id; removed with the peer.",
            ["peer_id"],
        )

    def peer_up(self, peer_id: str) -> Any:
        """The link-up gauge of ``peer_id``'s outbound link."""
        return self._peer_up.labels(peer_id=peer_id)

    def peer_rtt(self, peer_id: str) -> Any:
        """The RTT gauge of ``peer_id``'s outbound link (created at the first measurement: no 0 before)."""
        return self._peer_rtt.labels(peer_id=peer_id)

    def forget_peer(self, peer_id: str) -> None:
        """``peer_id`` left the mesh: its series go (the series count stays bounded by the pool)."""
        for gauge in (self._peer_up, self._peer_rtt):
            try:
                gauge.remove(peer_id)
            except KeyError:
                pass

    def frame_dropped(self, reason: str) -> None:
        self._frame_drops.labels(reason=reason).inc()

    def hello_failed(self, reason: str) -> None:
        self._hello.labels(reason=reason).inc()


#: Largest TLS record payload: frames are handed to OpenSSL in pieces of this size.
TLS_RECORD = 16384


class DirectTLSWriter:
    """Writes DATA frames through an established TLS-over-TCP link with the fewest steps.

    Twisted's path costs, per frame piece, one ``SSL_write`` plus one ``bio_read`` and one
    buffered TCP write, and the socket ``send`` only happens on the next reactor iteration (after
    two ``epoll_ctl`` calls to watch for writability): one loop of latency per hop.  Here a frame
    goes to OpenSSL in record-sized ``memoryview`` slices with the tag joined to the last one (no
    extra record for the tag), the TLS bytes of a whole batch come out of the BIO in one read,
    and :meth:`flush` sends them on the socket at once when nothing is queued before them.
    Whatever cannot go directly (an OpenSSL error, a full socket, a closing connection) is handed
    to Twisted's own path, which keeps its ordering and error handling.  Built only for Twisted's
    ``TLSMemoryBIOProtocol`` over a ``tcp.Connection`` whose private names it needs are all there
    (:mod:`tunmesh.twisted_internals`); :meth:`wrap` returns ``None`` otherwise.
    """

    __slots__ = ("_tls", "_tcp", "_conn", "_sock", "_slow", "_pending")

    def __init__(self, tls: Any, tcp: Any, slow: Callable[[bytes], None]) -> None:
        self._tls = tls
        self._tcp = tcp
        self._conn = tls.getHandle()
        self._sock = tcp.getHandle()
        #: Twisted's immediate TLS write, for what cannot go directly
        self._slow = slow
        #: TLS bytes written into OpenSSL and not yet read from its BIO (an estimate)
        self._pending = 0

    @classmethod
    def wrap(cls, transport: Any) -> DirectTLSWriter | None:
        slow = immediate_write(transport)
        if slow is None or not direct_write_possible(transport):
            return None
        return cls(transport, transport.transport, slow)

    def usable(self) -> bool:
        """Whether the fast path keeps stream order; if so, first pushes out control frames that
        Twisted's small-write aggregator still holds (a REKEY must precede the DATA it keys)."""
        tls = self._tls
        if not tls_cleartext_idle(tls):
            return False
        flush_small_writes(tls)
        return tls_cleartext_idle(tls)

    def write(self, frame: bytes, tag: bytes) -> None:
        """Encrypt ``frame`` then ``tag`` into the TLS stream (sent by :meth:`flush`)."""
        send = self._conn.send
        n = len(frame)
        # Record-sized slices of the frame, then what is left of it joined with the tag.
        body = n - (n % TLS_RECORD or TLS_RECORD) if n > TLS_RECORD else 0
        pos = 0
        try:
            if body:
                mv = memoryview(frame)
                while pos < body:
                    pos += send(mv[pos : pos + TLS_RECORD])
            tail = frame[pos:] + tag if pos else frame + tag
            start = pos
            while pos - start < len(tail):
                done = pos - start
                pos += send(tail[done:] if done else tail)
        except SSL.Error:
            # Let Twisted's path redo what is left and handle the error (buffer or close).
            self._pending += 1
            self.flush()
            rest = (frame + tag)[pos:]
            if rest:
                self._slow(rest)
            return
        self._pending += n + F.TAG_LEN + 32 * (n // TLS_RECORD + 1)

    def flush(self) -> None:
        """Read the TLS bytes out of OpenSSL and send them, on the socket at once when possible."""
        if not self._pending:
            return
        want = self._pending + 256
        self._pending = 0
        conn = self._conn
        chunks = []
        while True:
            try:
                data = conn.bio_read(want)
            except SSL.WantReadError:  # the BIO is empty
                break
            chunks.append(data)
            if len(data) < want:
                break
        if not chunks:
            return
        out = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        tcp = self._tcp
        if tcp_send_idle(tcp):
            try:
                sent = self._sock.send(out)
            except OSError:
                sent = 0  # a full socket, or an error the reactor reports on its next write
            if sent == len(out):
                return
            out = out[sent:]
        tcp.write(out)


# --- server side ----------------------------------------------------------------------------


class LinkServerProtocol(Protocol):
    """One inbound link: HELLO within a deadline, then DATA / REKEY / PING frames."""

    log = Logger()

    def __init__(self, factory: LinkServerFactory) -> None:
        self.factory = factory
        self.peer_id: str | None = None
        self._decoder = F.FrameDecoder(max_frame=F.MAX_HELLO_FRAME)
        self._opener = F.DataOpener()
        self._client_random = b""
        self._server_random = b""
        self._channel = b""
        self._pending_rekey: tuple[int, str, bytes] | None = None
        self._timer: IDelayedCall | None = None
        self._last_rx = 0.0
        self._closed = False
        self.stats: LinkStats | None = None
        #: this link's datagram path (receiver index, keys), once offered
        self._dgram_index = 0
        self._dgram_opener: D.DatagramOpener | None = None

    def connectionMade(self) -> None:
        tune_socket(self.transport)
        clock = self.factory.clock
        self._last_rx = clock.seconds()
        self._timer = clock.callLater(self.factory.hello_timeout, self._hello_deadline)

    def _hello_deadline(self) -> None:
        self._timer = None
        if self.peer_id is None:
            self.factory.link_metrics.hello_failed("timeout")
            self._abort()

    def _idle_check(self) -> None:
        """Close a link that has been silent for three keepalive periods (dead client)."""
        clock = self.factory.clock
        idle = self.factory.keepalive * 3
        if clock.seconds() - self._last_rx >= idle:
            self.factory.ticker.remove(self)
            self.factory.link_metrics.frame_dropped("idle_timeout")
            self._abort()

    def _abort(self) -> None:
        if not self._closed:
            self._closed = True
            self.transport.abortConnection()  # type: ignore[union-attr]

    def _refuse(self, code: int, reason: str) -> None:
        self.factory.link_metrics.hello_failed(reason)
        self.transport.write(F.encode_hello_err(code))  # type: ignore[union-attr]
        self._closed = True
        self.transport.loseConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        """Untrusted bytes in: any failure ends as a counted refusal, never in Twisted (W18)."""
        try:
            self._data_received(data)
        except Exception as exc:
            self.factory.unexpected_log.emit(
                "link_rx",
                LogLevel.error,
                "link input from {peer} refused: unexpected {error_type}: {error}",
                peer=self.peer_id or "an unauthenticated client",
                error_type=type(exc).__name__,
                error=str(exc)[:200],
            )
            if not self._closed:
                if self.peer_id is None:
                    self._refuse(F.ERR_PROTOCOL, "internal_error")
                else:
                    self.factory.link_metrics.frame_dropped("internal_error")
                    self._abort()

    def _data_received(self, data: bytes) -> None:
        if self._closed:
            return
        lm = self.factory.link_metrics
        try:
            frames = self._decoder.feed(data)
        except F.FrameError as e:
            lm.frame_dropped(e.reason)
            self._abort()
            return
        if not frames:
            return
        self._last_rx = self.factory.clock.seconds()
        batch: list[bytes] = []
        batch_flags = -1
        nframes = nbytes = npackets = 0
        for frame in frames:
            kind = frame[4]
            if self.peer_id is None:
                if kind != F.HELLO:
                    self._refuse(F.ERR_PROTOCOL, "protocol")
                    return
                self._hello(frame)
                if self._closed:
                    return
                continue
            if kind == F.DATA:
                try:
                    flags, packets = self._open(frame)
                except F.FrameError as e:
                    lm.frame_dropped(e.reason)
                    if e.reason in (F.MALFORMED_FRAME, F.BAD_TAG):
                        # Authentic-looking garbage or forgery inside TLS: not a peer we keep.
                        self._abort()
                        break
                    continue
                nframes += 1
                nbytes += len(frame)
                npackets += len(packets)
                if flags != batch_flags and batch:
                    self._deliver(batch, batch_flags)
                    batch = []
                batch_flags = flags
                batch.extend(packets)
            elif kind == F.REKEY:
                try:
                    self._rekey(frame)
                except F.FrameError as e:
                    lm.frame_dropped(e.reason)
                    self._abort()
                    break
            elif kind == F.PING:
                try:
                    opaque = F.decode_ping(frame)
                except F.FrameError as e:
                    lm.frame_dropped(e.reason)
                    self._abort()
                    break
                self.transport.write(F.encode_ping(F.PONG, opaque))  # type: ignore[union-attr]
            else:
                lm.frame_dropped(F.MALFORMED_FRAME)
                self._abort()
                break
        stats = self.stats
        if stats is not None:
            stats.last_rx = self._last_rx
            stats.packets += npackets
            stats.bytes += nbytes
        if nframes:
            lm.frames_rx.inc(nframes)
            lm.bytes_rx.inc(nbytes)
        if batch:
            self._deliver(batch, batch_flags)

    def _open(self, frame: bytes) -> tuple[int, list[bytes]]:
        try:
            return self._opener.open(frame)
        except F.FrameError as e:
            pending = self._pending_rekey
            if (
                e.reason != F.UNKNOWN_KEY
                or pending is None
                or pending[0] != int.from_bytes(frame[6:10], "big")
            ):
                raise
            # The REKEY arrived before our session store had the new inbound key: try again.
            self._rekey(pending[2])
            return self._opener.open(frame)

    def _deliver(self, packets: list[bytes], flags: int) -> None:
        assert self.peer_id is not None
        try:
            self.factory.on_packets(self.peer_id, packets, bool(flags & F.FLAG_VNET_HDR))
        except Exception:
            self.log.failure("delivering packets from {peer_id} failed", peer_id=self.peer_id)

    def _hello(self, frame: bytes) -> None:
        f = self.factory
        try:
            flags, client_random, key_id, token, binding = F.decode_hello(frame)
        except F.FrameError:
            self._refuse(F.ERR_PROTOCOL, "protocol")
            return
        channel = tls_channel(self.transport)
        if channel is None:
            self._refuse(F.ERR_PROTOCOL, "channel_binding")
            return
        try:
            # The token signs the client's view of the TLS session; ours must be the same.
            claims = f.authority.verify_link_hello(None, token, body=binding + channel)
        except AuthError as e:
            self._refuse(F.ERR_BAD_TOKEN, f"auth_{e.reason}")
            return
        peer_id, kid = claims.iss, claims.kid
        if not f.mesh_lookup(peer_id):
            self._refuse(F.ERR_UNKNOWN_PEER, "unknown_peer")
            return
        session = f.sessions.inbound(peer_id, kid)
        if session is None:
            self._refuse(F.ERR_NO_SESSION, "no_session")
            return
        self._client_random = client_random
        self._server_random = os.urandom(F.RANDOM_LEN)
        self._channel = channel
        key = self._link_key(session.frame_key, peer_id, kid)
        self._opener.install(key_id, key)
        self.peer_id = peer_id
        self._decoder.max_frame = F.MAX_FRAME
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        f.ticker.add(self, self._idle_check)
        out_flags = F.FLAG_VNET_HDR if f.vnet_hdr else 0
        endpoint = f.datagrams
        offer = flags & F.FLAG_DGRAM and endpoint is not None and endpoint.active
        if offer:
            out_flags |= F.FLAG_DGRAM
        self.transport.write(  # type: ignore[union-attr]
            F.encode_hello_ok(self._server_random, key, key_id, out_flags)
        )
        if offer:
            assert endpoint is not None
            self._dgram_opener = D.DatagramOpener()
            self._dgram_opener.install(key_id, D.derive_datagram_key(key))
            self._dgram_index = endpoint.register(self)
            self.transport.write(F.encode_dgram_offer(self._dgram_index))  # type: ignore[union-attr]
        f.link_opened(self, kid)

    def _link_key(self, frame_key: bytes, peer_id: str, kid: str) -> bytes:
        """This connection's key under session ``kid`` of ``peer_id`` (the client)."""
        return F.derive_link_key(
            frame_key, self._client_random, self._server_random, peer_id, self.factory.node_id, kid, self._channel
        )

    def _rekey(self, frame: bytes) -> None:
        assert self.peer_id is not None
        key_id, kid = F.decode_rekey(frame)
        session = self.factory.sessions.inbound(self.peer_id, kid)
        if session is None:
            self._pending_rekey = (key_id, kid, frame)
            return
        key = self._link_key(session.frame_key, self.peer_id, kid)
        F.verify_rekey(key, frame)
        self._pending_rekey = None
        self._opener.install(key_id, key)
        if self._dgram_opener is not None:
            self._dgram_opener.install(key_id, D.derive_datagram_key(key))
        if self.stats is not None:
            self.stats.kid = kid

    def datagram_received(self, data: bytes) -> None:
        """A datagram under this link's index (:class:`~tunmesh.dataplane.datagram.DatagramEndpoint`): a
        packet to deliver, or a probe to acknowledge on the link. Refusals are counted, never logged."""
        opener = self._dgram_opener
        f = self.factory
        metrics = f.datagrams.metrics if f.datagrams is not None else None
        if opener is None or self._closed or metrics is None:
            return
        try:
            kind, flags, payload = opener.open(data)
            if kind == D.KIND_PROBE:
                opaque = D.probe_opaque(payload)
        except D.DatagramError as e:
            metrics.dropped(e.reason)
            return
        self._last_rx = now = f.clock.seconds()
        stats = self.stats
        if stats is not None:
            stats.last_rx = now
        if kind == D.KIND_PROBE:
            self.transport.write(F.encode_ping(F.DGRAM_ACK, opaque))  # type: ignore[union-attr]
            return
        metrics.rx.inc()
        if stats is not None:
            stats.packets += 1
            stats.bytes += len(data)
        self._deliver([payload], flags)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self._closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.factory.ticker.remove(self)
        if self._dgram_index and self.factory.datagrams is not None:
            self.factory.datagrams.unregister(self._dgram_index, self)
            self._dgram_index = 0
        if self.peer_id is not None:
            self.factory.link_closed(self)


class LinkServerFactory(Factory):
    """Builds inbound link protocols; mount under ALPN ``tunmesh-link/1``.

    ``mesh_lookup(peer_id)`` says whether the peer is a known, authenticated member; links of a
    peer that is later removed are closed with :meth:`close_peer`.
    """

    protocol = LinkServerProtocol

    def __init__(
        self,
        node_id: str,
        sessions: SessionsLike,
        authority: LinkAuthorityLike,
        mesh_lookup: Callable[[str], bool],
        on_packets: PacketSink,
        clock: IReactorTime,
        link_metrics: LinkMetrics,
        *,
        vnet_hdr: bool = False,
        hello_timeout: float = HELLO_TIMEOUT,
        keepalive: float = KEEPALIVE,
        ticker: KeepaliveTicker | None = None,
        datagrams: D.DatagramEndpoint | None = None,
    ) -> None:
        self.node_id = node_id
        self.sessions = sessions
        #: the node's UDP endpoint: links whose client asks get a datagram path (None: never offered)
        self.datagrams = datagrams
        self.authority = authority
        self.mesh_lookup = mesh_lookup
        self.on_packets = on_packets
        self.clock = clock
        self.link_metrics = link_metrics
        self.vnet_hdr = vnet_hdr
        self.hello_timeout = hello_timeout
        self.keepalive = keepalive
        #: checks every inbound link once per ``keepalive`` (shared with the outbound links by the data plane)
        self.ticker = ticker if ticker is not None else KeepaliveTicker(clock, keepalive)
        self.links: dict[str, LinkServerProtocol] = {}
        #: the inbound direction of each member's link, kept across reconnects until the peer is forgotten
        self.rx_stats: dict[str, LinkStats] = {}
        self.unexpected_log = RateLimitedLog(Logger(namespace="tunmesh.dataplane.link"), clock)

    def buildProtocol(self, addr: Any) -> LinkServerProtocol:
        return LinkServerProtocol(self)

    def link_opened(self, proto: LinkServerProtocol, kid: str = "") -> None:
        """A peer completed its HELLO; a newer link of the same peer replaces the older one."""
        assert proto.peer_id is not None
        now = self.clock.seconds()
        stats = self.rx_stats.get(proto.peer_id)
        if stats is None:
            stats = self.rx_stats[proto.peer_id] = LinkStats(now)
        stats.up(now, kid)
        proto.stats = stats
        old = self.links.get(proto.peer_id)
        self.links[proto.peer_id] = proto
        self.link_metrics.connected_in.inc()
        if old is not None and old is not proto:
            old._abort()

    def link_closed(self, proto: LinkServerProtocol) -> None:
        assert proto.peer_id is not None
        self.link_metrics.connected_in.dec()
        if self.links.get(proto.peer_id) is proto:
            del self.links[proto.peer_id]
            if proto.stats is not None:
                proto.stats.failed(self.clock.seconds(), "the peer's link closed", state="down")

    def forget(self, peer_id: str) -> None:
        """The peer left the mesh: close its inbound link and forget its counters."""
        self.close_peer(peer_id)
        self.rx_stats.pop(peer_id, None)

    def rx_age(self, peer_id: str) -> float | None:
        """Seconds since ``peer_id``'s inbound link (past its authenticated HELLO) last carried a frame
        or a datagram (its PINGs at rest), None when it has none."""
        proto = self.links.get(peer_id)
        if proto is None or proto._closed:
            return None
        return max(0.0, self.clock.seconds() - proto._last_rx)

    def close_peer(self, peer_id: str) -> None:
        """Drop the inbound link of a removed peer."""
        proto = self.links.get(peer_id)
        if proto is not None:
            proto._abort()


# --- client side ----------------------------------------------------------------------------


def retry_policy(initial: float, maximum: float, rng: Callable[[], float]) -> Callable[[int], float]:
    """The link's ``ClientService`` retry policy: ``initial`` doubling per failure up to ``maximum``,
    times U(0.5, 1) (the shape of :class:`tunmesh.mesh.backoff.Backoff`, per attempt count)."""

    def policy(failures: int) -> float:
        step = min(maximum, initial * 2 ** min(max(failures - 1, 0), 30))
        return step * (0.5 + 0.5 * rng())

    return policy


@implementer(IHandshakeListener)
class LinkClientProtocol(Protocol):
    """The wire end of one connection of a :class:`LinkClient`: frames in, events out to the owner.

    Over TLS the HELLO waits for the handshake (it signs the session's exporter value); without TLS
    (memory transports) it goes at once.  :attr:`authenticated` fires once HELLO_OK is verified, or
    fails with the reason the link did not come up; the connection's ``ClientService`` end
    (:attr:`service_end`) hears of the connection's loss only after that, when the link was up:
    ``ClientService`` has no transition for a connection lost while ``prepareConnection`` runs.
    """

    def __init__(self, owner: LinkClient, service_end: Any) -> None:
        self.owner = owner
        self.service_end = service_end
        self.up = False
        self.authenticated: defer.Deferred[None] = defer.Deferred(self._cancel)
        self._decoder = F.FrameDecoder(max_frame=1024)

    def _cancel(self, d: defer.Deferred[None]) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionMade(self) -> None:
        tune_socket(self.transport)
        self.service_end.makeConnection(self.transport)
        tls = ISSLTransport.providedBy(self.transport)
        if self.owner._connection_made(self) and not tls:
            self.owner._send_hello(self)

    def handshakeCompleted(self) -> None:
        self.owner._send_hello(self)

    def dataReceived(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except F.FrameError:
            self.owner._protocol_error(self, F.MALFORMED_FRAME)
            return
        for frame in frames:
            if not self.owner._frame(self, frame):
                return

    def fail(self, reason: str) -> None:
        """The link did not come up on this connection (the owner closes it)."""
        if not self.authenticated.called:
            self.authenticated.errback(LinkRefused(reason))

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.owner._connection_lost(self, reason)
        if not self.authenticated.called:
            self.authenticated.errback(reason)
        elif self.up:
            self.service_end.connectionLost(reason)


class LinkRefused(Exception):
    """The link's HELLO exchange failed (refused, timed out, not authentic); ``str()`` says how."""


class _ServiceEnd(Protocol):
    """What the link's ``ClientService`` holds of a connection: it only learns that it was lost."""


@implementer(IStreamClientEndpoint)
class _ConnectorEndpoint:
    """The link's :data:`Connector` as the endpoint of its ``ClientService``."""

    def __init__(self, owner: LinkClient) -> None:
        self._owner = owner

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        owner = self._owner
        owner.retry_at = None
        if owner._sessions.outbound(owner.peer_id) is None:
            # No session with the peer yet (the mesh sets one up; ``session_ready`` connects at once
            # then): a HELLO could not be signed, so do not pay a TCP and a TLS handshake on both sides
            # for it. A join used to open two or three such connections per peer (docs/performance.md).
            owner._no_session()
            return defer.fail(LinkRefused("no session"))
        service_end = factory.buildProtocol(None)
        proto = LinkClientProtocol(owner, service_end)
        owner._attempt = proto
        owner._attempt_started = owner._clock.seconds()
        try:
            d = owner._connector(owner.url, proto)
        except Exception:
            owner.log.failure("connecting to {peer_id} failed", peer_id=owner.peer_id)
            d = defer.fail()
        return d.addCallbacks(lambda _: service_end, owner._connect_failed)

    def __repr__(self) -> str:
        return f"<packet link to {self._owner.peer} at {self._owner.url}>"


@implementer(IPushProducer)
class LinkClient(Service):
    """The outbound link to one peer: connect, HELLO, send batches, queue, reconnect, rekey.

    A service of the data plane (one per peer).  Connecting and retrying is a ``ClientService``
    (:func:`retry_policy`) whose ``prepareConnection`` is the HELLO exchange; waiting packets are a
    :class:`~tunmesh.dataplane.linkqueue.PacketQueue`.  ``send_batch`` writes at once when the link
    is up and the transport is not pushing back; otherwise packets wait in the queue
    (``max_queue_packets`` / ``max_queue_bytes``, oldest dropped first as ``queue_full``) for at
    most ``packet_expiration`` seconds (then ``peer_down`` if the link is not up, ``expired`` if it
    was only congested).
    """

    log = Logger()

    def __init__(
        self,
        node_id: str,
        peer_id: str,
        url: str,
        connector: Connector,
        sessions: SessionsLike,
        authority: LinkAuthorityLike,
        clock: IReactorTime,
        link_metrics: LinkMetrics,
        *,
        vnet_hdr: bool = False,
        packet_expiration: float = 0.1,
        max_queue_packets: int = 1024,
        max_queue_bytes: int = 4 * 1024 * 1024,
        hello_timeout: float = HELLO_TIMEOUT,
        keepalive: float = KEEPALIVE,
        backoff_initial: float = 0.1,
        backoff_max: float = 30.0,
        rng: Callable[[], float] = random.random,
        peer_name: str | None = None,
        ticker: KeepaliveTicker | None = None,
        datagrams: D.DatagramEndpoint | None = None,
    ) -> None:
        self.node_id = node_id
        self.peer_id = peer_id
        #: the node's UDP endpoint (None: this link never asks for a datagram path)
        self._endpoint = datagrams
        #: the datagram path once the peer offered one (:class:`~tunmesh.dataplane.datagram.DatagramPath`)
        self.datagram_path: D.DatagramPath | None = None
        #: when DATA last went over the TLS link, and whether the socket has been seen drained since
        self._tls_at = 0.0
        self._tls_drained = True
        #: the TCP socket under the link, whose unacknowledged bytes the datagram path waits out
        self._link_socket: socket.socket | None = None
        self._dgram_probes = 0
        #: how log lines name the peer: ``name (id)`` (``tunmesh.names.label``)
        self.peer = label(peer_name, peer_id)
        self.url = url
        self._connector = connector
        self._sessions = sessions
        self._authority = authority
        self._clock = clock
        self._lm = link_metrics
        self._drops = link_metrics.drops
        self._flags = F.FLAG_VNET_HDR if vnet_hdr else 0
        self.hello_timeout = hello_timeout
        self.keepalive = keepalive
        #: sends this link's keepalive once per ``keepalive`` (the data plane's one ticker for all links)
        self._ticker = ticker if ticker is not None else KeepaliveTicker(clock, keepalive)
        self._rng = rng
        self._policy = retry_policy(backoff_initial, backoff_max, lambda: self._rng())
        self._service = ClientService(
            _ConnectorEndpoint(self),
            Factory.forProtocol(_ServiceEnd),
            retryPolicy=self._retry_delay,
            clock=clock,
            prepareConnection=self._prepare,
        )

        self._proto: LinkClientProtocol | None = None
        self._attempt: LinkClientProtocol | None = None
        self.ready = False
        self.paused = False
        self._stopped = True
        #: failed attempts since the link was last up (or its backoff reset)
        self.attempts = 0
        #: when the next attempt is due while the link waits out its backoff, else None
        self.retry_at: float | None = None
        #: the connection's HELLO deadline (the keepalives are the ticker's)
        self._timer: IDelayedCall | None = None
        self._last_rx = 0.0
        self._attempt_started = 0.0
        #: link up/down and RTT gauges of this peer (tunmesh_peer_link_*); the RTT one from the first PONG.
        self._up_gauge = link_metrics.peer_up(peer_id)
        self._up_gauge.set(0)
        self._rtt_gauge: Any = None
        self._client_random = b""
        self._server_random = b""
        self._channel = b""
        self._kid = ""
        self._key_id = 0
        self._sealer: F.DataSealer | None = None
        self._link_key_now = b""
        self._direct: DirectTLSWriter | None = None
        self._pending_session_key: bytes | None = None
        #: the outbound direction as ``tunmesh status`` shows it
        self.stats = LinkStats(clock.seconds())
        self._queue = PacketQueue(
            clock, packet_expiration, max_queue_packets, max_queue_bytes, self._dropped, self._expiry_reason
        )

    @property
    def queued_packets(self) -> int:
        return self._queue.packets

    @property
    def queued_bytes(self) -> int:
        return self._queue.bytes

    @property
    def packet_expiration(self) -> float:
        return self._queue.expiration

    def _dropped(self, reason: str, count: int) -> None:
        self._drops.add(reason, count, self.peer_id)

    def _expiry_reason(self) -> str:
        return EXPIRED if self.ready else PEER_DOWN

    # -- lifecycle --------------------------------------------------------------------------

    def startService(self) -> None:
        self.start()

    def stopService(self) -> defer.Deferred[None]:
        """Stopped with the data plane: queued packets count as ``peer_down``."""
        return self.stop(PEER_DOWN)

    def start(self) -> None:
        """Begin connecting (idempotent)."""
        if not self._stopped:
            return
        self._stopped = False
        super().startService()
        self.stats.connecting(self._clock.seconds())
        self._service.startService()

    def stop(self, reason: str = PEER_REMOVED) -> defer.Deferred[None]:
        """Close the link for good; queued packets are dropped and counted as ``reason``.  The
        Deferred fires once the connection is closed."""
        if self._stopped:
            return defer.succeed(None)
        self._stopped = True
        super().stopService()
        self._cancel_timer()
        self.retry_at = None
        self.stats.stopped(self._clock.seconds())
        self._queue.clear(reason)
        if reason == PEER_REMOVED:
            self._lm.forget_peer(self.peer_id)
        else:
            self._up_gauge.set(0)
        for proto in (self._proto, self._attempt):
            if proto is not None and proto.transport is not None:
                proto.transport.abortConnection()  # type: ignore[attr-defined]
        return self._service.stopService()

    def session_ready(self) -> None:
        """An outbound session to the peer now exists: a link waiting to reconnect (its last HELLO
        found none) connects at once, with its backoff reset; a connected or connecting link is left alone."""
        if self._stopped or self.retry_at is None:
            return
        self.attempts = 0
        self.retry_at = None
        # Waiting -> Stopped at once (the retry is cancelled), then a fresh attempt.
        self._service.stopService()
        self._service.startService()

    def _retry_delay(self, failures: int) -> float:
        self.attempts += 1
        delay = self._policy(self.attempts)
        self.retry_at = self._clock.seconds() + delay
        return delay

    def _connect_failed(self, failure: Failure) -> Failure:
        self.stats.failed(self._clock.seconds(), connect_error(failure))
        return failure

    def _prepare(self, service_end: Any) -> defer.Deferred[None]:
        """``prepareConnection``: the link is usable once the HELLO exchange succeeded."""
        proto = self._attempt
        assert proto is not None and proto.service_end is service_end
        return proto.authenticated

    # -- protocol events --------------------------------------------------------------------

    def _connection_made(self, proto: LinkClientProtocol) -> bool:
        """TCP is up: own the connection and start the HELLO deadline (it covers the TLS
        handshake too); False when the link was stopped meanwhile."""
        if self._stopped:
            proto.transport.abortConnection()  # type: ignore[union-attr]
            return False
        self._proto = proto
        self.retry_at = None
        self._last_rx = self._attempt_started = self._clock.seconds()
        self._cancel_timer()
        self._timer = self._clock.callLater(self.hello_timeout, self._hello_deadline)
        return True

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._ticker.remove(self)

    def _give_up(self, proto: LinkClientProtocol, reason: str, abort: bool = True) -> None:
        """This connection will not carry the link: say why to the service, and close it."""
        proto.fail(reason)
        if abort:
            proto.transport.abortConnection()  # type: ignore[union-attr]
        else:
            proto.transport.loseConnection()  # type: ignore[union-attr]

    def _send_hello(self, proto: LinkClientProtocol) -> None:
        if self._proto is not proto or self.ready:
            return
        channel = tls_channel(proto.transport)
        if channel is None:
            self._lm.hello_failed("channel_binding")
            self._give_up(proto, "no TLS channel binding")
            return
        self._channel = channel
        self._client_random = os.urandom(F.RANDOM_LEN)
        self._key_id = 1
        endpoint = self._endpoint
        # FLAG_DGRAM: we can use a datagram path (signed with the rest of the HELLO's fixed fields).
        hello_flags = self._flags | (F.FLAG_DGRAM if endpoint is not None and endpoint.active else 0)
        binding = F.hello_binding(self._client_random, self._key_id, hello_flags, channel)
        try:
            signed = self._authority.sign_link_hello(self.peer_id, body=binding)
        except AuthError:
            signed = None
        session = self._sessions.outbound(self.peer_id)
        if signed is None or session is None or session.kid != signed.kid:
            # The session went away while the connection was made (checked before connecting too):
            # retry with backoff.
            self._no_session()
            self._give_up(proto, "no session")
            return
        self._kid = signed.kid
        self._pending_session_key = session.frame_key
        proto.transport.write(  # type: ignore[union-attr]
            F.encode_hello(signed.header_value, self._client_random, self._key_id, hello_flags)
        )

    def _no_session(self) -> None:
        self._lm.hello_failed("no_session")
        self.stats.failed(self._clock.seconds(), "no session with the peer yet (the mesh sets one up)")

    def _hello_deadline(self) -> None:
        self._timer = None
        if not self.ready and self._proto is not None:
            self._lm.hello_failed("timeout")
            self.stats.failed(self._clock.seconds(), "no HELLO answer within the deadline")
            self._give_up(self._proto, "no HELLO answer within the deadline")

    def _frame(self, proto: LinkClientProtocol, frame: bytes) -> bool:
        """Handle a frame from the server; False when the link was closed."""
        self._last_rx = self._clock.seconds()
        kind = frame[4]
        try:
            if kind == F.HELLO_OK and not self.ready:
                _flags, self._server_random = F.decode_hello_ok(frame)
                return self._established(proto, frame)
            if kind == F.HELLO_ERR and not self.ready:
                code = F.decode_hello_err(frame)
                self._lm.hello_failed("refused_" + F.ERR_NAMES.get(code, "unknown"))
                self.stats.failed(self._clock.seconds(), f"the peer refused our link: {F.ERR_NAMES.get(code, code)}")
                self.log.warn(
                    "peer {peer} refused our link: {reason}",
                    peer=self.peer,
                    peer_id=self.peer_id,
                    reason=F.ERR_NAMES.get(code, str(code)),
                )
                self._give_up(proto, "refused", abort=False)
                return False
            if kind == F.PONG and self.ready:
                if self.stats.echoed(F.decode_ping(frame), self._last_rx):
                    self._pong()
                return True
            if kind == F.DGRAM_ACK and self.ready and self.datagram_path is not None:
                opaque = F.decode_ping(frame)
                path = self.datagram_path
                was = path.proven
                if path.acked(opaque):
                    if not was:
                        self.log.info(
                            "datagram path to {peer} proven: small packets go over UDP {addr}",
                            peer=self.peer, peer_id=self.peer_id, addr=f"{path.addr[0]}:{path.addr[1]}",
                        )
                    if self.stats.echoed(opaque, self._last_rx):
                        self._pong()
                return True
            if kind == F.DGRAM_OFFER and self.ready and self.datagram_path is None:
                self._datagram_offered(proto, F.decode_dgram_offer(frame))
                return True
        except F.FrameError:
            pass
        self._protocol_error(proto, F.MALFORMED_FRAME)
        return False

    def _protocol_error(self, proto: LinkClientProtocol, reason: str) -> None:
        self._lm.frame_dropped(reason)
        self._give_up(proto, reason)

    def _established(self, proto: LinkClientProtocol, hello_ok: bytes) -> bool:
        self._cancel_timer()
        frame_key = self._pending_session_key
        assert frame_key is not None
        key = self._link_key(frame_key, self._kid)
        try:
            F.verify_hello_ok(key, self._key_id, hello_ok)
        except F.FrameError:
            # Not the peer (it would know the session): never send it a packet.
            self._lm.hello_failed("server_not_authentic")
            self.stats.failed(self._clock.seconds(), "the peer's HELLO_OK is not authentic")
            self.log.warn("link to {peer}: HELLO_OK not authentic", peer=self.peer, peer_id=self.peer_id)
            self._give_up(proto, "HELLO_OK not authentic")
            return False
        self._sealer = F.DataSealer(self._key_id, key)
        self._link_key_now = key
        self._direct = DirectTLSWriter.wrap(proto.transport)
        self.log.info(
            "packet link to {peer} up ({binding})",
            peer=self.peer,
            peer_id=self.peer_id,
            binding="bound to its TLS session" if self._channel else "no TLS",
        )
        self.ready = True
        self.paused = False
        self.attempts = 0
        self.retry_at = None
        self._lm.connected_out.inc()
        self.stats.up(self._clock.seconds(), self._kid)
        self._up_gauge.set(1)
        proto.up = True
        proto.authenticated.callback(None)
        proto.transport.registerProducer(self, True)  # type: ignore[union-attr]
        # A first probe now: the RTT is known from the start, not one keepalive period later.
        proto.transport.write(F.encode_ping(F.PING, self.stats.probe(self._clock.seconds())))  # type: ignore[union-attr]
        self._ticker.add(self, self._keepalive)
        self._flush()
        return True

    def _datagram_offered(self, proto: LinkClientProtocol, index: int) -> None:
        """The peer offered a datagram path under ``index``: set it up towards the address this TLS
        link reached, and probe it at once (it carries packets once a probe is acknowledged)."""
        endpoint = self._endpoint
        peer = proto.transport.getPeer() if proto.transport is not None else None
        host, port = getattr(peer, "host", None), getattr(peer, "port", None)
        if endpoint is None or not isinstance(host, str) or not isinstance(port, int):
            return
        addr = endpoint.destination(host, port)
        if addr is None:
            return
        key = D.derive_datagram_key(self._link_key_now)
        self._link_socket = tcp_socket(proto.transport)
        self.datagram_path = D.DatagramPath(
            endpoint, addr, D.DatagramSealer(index, self._key_id, key), self._flags, endpoint.metrics.paths
        )
        self._probe_datagrams(self.datagram_path)

    def _probe_datagrams(self, path: D.DatagramPath) -> None:
        # Numbered apart from the keepalive probes (top bit set), so an answer is never taken for a PONG.
        self._dgram_probes += 1
        path.probe((1 << 63) | self._dgram_probes)

    def _keepalive(self) -> None:
        """The ticker's call: close a link silent for three periods, else send a PING (or, while the
        datagram path is proven, a PROBE datagram, whose acknowledgement on the link is the PONG)."""
        proto = self._proto
        if proto is None or not self.ready:
            self._ticker.remove(self)
            return
        if self._clock.seconds() - self._last_rx >= 3 * self.keepalive:
            self._ticker.remove(self)
            self._lm.frame_dropped("idle_timeout")
            proto.transport.abortConnection()  # type: ignore[union-attr]
            return
        path = self.datagram_path
        probe_now = path.tick() if path is not None else False
        # The peer echoes the number: the PONG gives the link's round-trip time (``LinkStats``).
        opaque = self.stats.probe(self._clock.seconds())
        if path is not None and path.proven and path.probe(opaque):
            return
        proto.transport.write(F.encode_ping(F.PING, opaque))  # type: ignore[union-attr]
        if path is not None and probe_now:
            self._probe_datagrams(path)

    def _pong(self) -> None:
        """A PONG answered the outstanding probe: the RTT ``LinkStats`` measured goes to the metrics."""
        rtt = self.stats.rtt
        if rtt is None:
            return
        self._lm.rtt.observe(rtt)
        if self._rtt_gauge is None:
            self._rtt_gauge = self._lm.peer_rtt(self.peer_id)
        self._rtt_gauge.set(rtt)

    @property
    def last_rx(self) -> float:
        """When (clock seconds) the peer last sent a frame on this link (HELLO_OK, PONG)."""
        return self._last_rx

    @property
    def rtt(self) -> float | None:
        """Last measured keepalive round trip (seconds), None before the first PONG."""
        return self.stats.rtt

    def _connection_lost(self, proto: LinkClientProtocol, reason: Failure) -> None:
        if self._attempt is proto:
            self._attempt = None
        if self._proto is not proto:
            return
        self._proto = None
        self._sealer = None
        self._direct = None
        if self.datagram_path is not None:
            self.datagram_path.close()
            self.datagram_path = None
        self._link_socket = None
        self._cancel_timer()
        was_ready = self.ready
        if self.ready:
            self.ready = False
            self._lm.connected_out.dec()
            self._up_gauge.set(0)
        if not self._stopped:
            # Lost before HELLO_OK: the TLS handshake (or the peer) refused us; say so, not just "lost".
            # A more precise reason noted during this attempt (no session, refused, timeout) is kept.
            noted = self.stats.last_error_at
            if was_ready or noted is None or noted < self._attempt_started:
                error = f"link lost: {reason.getErrorMessage()[:160]}" if was_ready else connect_error(reason)
                self.stats.failed(self._clock.seconds(), error)
        self.paused = False

    # -- IPushProducer (transport backpressure) ---------------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._flush()

    def stopProducing(self) -> None:
        self.paused = True

    # -- sending ----------------------------------------------------------------------------

    def send_batch(self, packets: Sequence[bytes]) -> None:
        """Send packets to the peer now, or queue them (bounded, oldest dropped first)."""
        if not packets:
            return
        if self.ready and not self.paused and not self._queue.packets:
            self._write(packets)
            return
        if self._stopped:
            self._drops.add(PEER_DOWN, len(packets), self.peer_id)
            return
        self._queue.push(packets)

    def _write(self, packets: Sequence[bytes]) -> None:
        sealer = self._sealer
        proto = self._proto
        assert sealer is not None and proto is not None
        transport = proto.transport
        session = self._sessions.outbound(self.peer_id)
        if session is not None and session.kid != self._kid:
            sealer = self._rotate(session.kid, session.frame_key)
        path = self.datagram_path
        if path is not None and len(packets) <= 2 and path.proven:
            sent = self._send_datagrams(path, packets)
            if sent == len(packets):
                return
            packets = packets[sent:]
        self._link_used()
        direct = self._direct
        if direct is not None and direct.usable():
            write_frame = direct.write
        else:
            direct = None
            send = ordered_write(transport)

            def write_frame(frame: bytes, tag: bytes) -> None:
                send(frame)
                send(tag)

        nbytes = 0
        runs = F.split_batch(packets)
        for run in runs:
            frame, tag = sealer.seal(run, self._flags)
            write_frame(frame, tag)
            nbytes += len(frame) + F.TAG_LEN
        if direct is not None:
            direct.flush()
        self._lm.frames_tx.inc(len(runs))
        self._lm.bytes_tx.inc(nbytes)
        stats = self.stats
        stats.packets += len(packets)
        stats.bytes += nbytes

    def _link_used(self) -> None:
        """DATA (or a REKEY) went over the TLS link: lone packets stay on it for the next QUIET seconds."""
        self._tls_at = self._clock.seconds()
        self._tls_drained = False

    def _send_datagrams(self, path: D.DatagramPath, packets: Sequence[bytes]) -> int:
        """Send a lone small batch as datagrams when that cannot reorder a flow: the TLS link has carried
        no DATA for :data:`~tunmesh.dataplane.datagram.QUIET` seconds and its socket has nothing
        unacknowledged. Returns how many packets went (the caller sends the rest over the link)."""
        for p in packets:
            if len(p) > D.MAX_PACKET:
                return 0
        if not self._tls_drained:
            if self._clock.seconds() - self._tls_at < D.QUIET:
                return 0
            if not D.tcp_idle(self._link_socket):
                return 0
            self._tls_drained = True
        sent = 0
        for p in packets:
            if not path.send(p):
                break
            sent += 1
        if sent:
            path.endpoint.metrics.tx.inc(sent)
            self.stats.packets += sent
        return sent

    def _link_key(self, frame_key: bytes, kid: str) -> bytes:
        """This connection's key under our outbound session ``kid`` (same derivation as the server's)."""
        return F.derive_link_key(
            frame_key, self._client_random, self._server_random, self.node_id, self.peer_id, kid, self._channel
        )

    def _rotate(self, kid: str, frame_key: bytes) -> F.DataSealer:
        """Switch to the new outbound session on the live link (make-before-break: the peer
        accepts the previous key until it has seen this REKEY, so nothing is lost)."""
        assert self._proto is not None
        key_id = self._key_id + 1
        key = self._link_key(frame_key, kid)
        ordered_write(self._proto.transport)(F.encode_rekey(key, key_id, kid))
        self._key_id = key_id
        self._kid = kid
        self.stats.kid = kid
        self._sealer = F.DataSealer(key_id, key)
        self._link_key_now = key
        if self.datagram_path is not None:
            self.datagram_path.rekey(key_id, D.derive_datagram_key(key))
            # The REKEY travels on the link: datagrams under the new key wait until it has arrived.
            self._link_used()
        return self._sealer

    def _flush(self) -> None:
        """Write queued batches while the link is up and the transport takes them."""
        queue = self._queue
        queue.expire()
        while queue.packets and self.ready and not self.paused:
            batch = queue.pop()
            if batch is None:
                break
            self._write(batch)


def connect_error(failure: Failure) -> str:
    """A failed link connection, for people: what happened, with what to check (the same words as a failed
    control request: :func:`tunmesh.failures.describe_failure`)."""
    return describe_failure(failure)[1]


# --- the real connector ---------------------------------------------------------------------


class TLSLinkConnector:
    """Connects a link protocol over TLS to a peer's advertise URL (``https://host:port/``).

    ``context_for(hostname)`` gives the client TLS connection creator
    (``tunmesh.tls.client_context(cfg, hostname, alpn=(b"tunmesh-link/1",))``).
    """

    def __init__(
        self, reactor: Any, context_for: Callable[[str], Any], timeout: float = 10.0
    ) -> None:
        self._reactor = reactor
        self._context_for = context_for
        self._timeout = timeout

    def __call__(self, url: str, protocol: Protocol) -> defer.Deferred[Any]:
        from twisted.internet.endpoints import connectProtocol, wrapClientTLS

        from tunmesh.endpoints import tcp_client_endpoint

        parts = urlsplit(url)
        host = parts.hostname
        if parts.scheme != "https" or not host:
            return defer.fail(ValueError(f"not an https URL: {url!r}"))
        port = parts.port or 443
        endpoint = wrapClientTLS(
            self._context_for(host),
            tcp_client_endpoint(self._reactor, host, port, self._timeout),
        )
        return connectProtocol(endpoint, protocol)
