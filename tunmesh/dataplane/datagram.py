"""The datagram path: small packets as AEAD datagrams over UDP on the API port number (issue 10).

A round trip through a TLS link pays TLS records, frame tags, TCP and Twisted's stream machinery on both
hops; every peer VPN sends packets as single datagrams instead. Here a packet link (one TLS connection,
client → server, authenticated by its HELLO / HELLO_OK exchange) can carry lone small packets as UDP
datagrams next to it:

* the server, when the client's HELLO says it can (``FLAG_DGRAM``), answers its HELLO_OK with a
  ``DGRAM_OFFER`` frame naming a random receiver index; datagrams under that index are this link's;
* the datagram key is derived from the link key (:func:`derive_datagram_key`), itself bound to both
  connection randoms, the two node ids, the session secret and the TLS session's exporter value, and it
  changes with the link key at every session rotation (REKEY);
* the client proves the path with a PROBE datagram; the server answers each PROBE with a ``DGRAM_ACK``
  frame on the TLS link (never over UDP: nothing is reflected to a source address, so there is no
  amplification). Only an acknowledged path carries packets, and a path that stops acknowledging falls
  back to the TLS link (:class:`DatagramPath`);
* every datagram is ``u8 kind | u8 flags | u32 index | u32 key_id | u64 counter`` then the AES-GCM
  ciphertext of the packet with that header as associated data; counters are checked against a sliding
  replay window (:class:`ReplayWindow`), since UDP may reorder.

Which path a batch takes is the link's choice (``LinkClient``): lone small packets while the TLS link has
been quiet for :data:`QUIET` seconds and has nothing in flight, so packets of one flow never overtake each
other across the two paths. The wire format is in docs/protocols.md, the argument in docs/security.md.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
import termios
from collections.abc import Callable
from typing import Any, Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from twisted.application.service import Service
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from tunmesh.interfaces import MetricsLike

# Datagram kinds (the first byte).
KIND_DATA: Final = 1
KIND_PROBE: Final = 2

_HEAD = struct.Struct(">BBIIQ")
HEAD_LEN: Final = _HEAD.size
TAG_LEN: Final = 16
_NONCE = struct.Struct(">IQ")
_INDEX = struct.Struct(">I")
_OPAQUE = struct.Struct(">Q")
#: The index is bytes 2-5 of a datagram.
_INDEX_AT: Final = 2

#: Largest packet (virtio header included) sent as a datagram: with the 34 bytes of header and tag and
#: 48 of IPv6 + UDP it stays under 1280, the IPv6 minimum MTU, so no underlay needs fragments.
MAX_PACKET: Final = 1196
#: Bytes read per datagram (the largest a link sends is far smaller: MAX_PACKET + 34).
RECV_SIZE: Final = 2048
#: Datagrams read per wake-up at most (then the reactor serves the other descriptors).
READ_BATCH: Final = 64
#: Seconds the TLS link must have been quiet before lone packets go as datagrams again (see module docstring).
QUIET: Final = 0.02
#: Counters accepted behind the highest one seen (UDP reorders a little; older ones are replays).
REPLAY_WINDOW: Final = 2048
#: Unanswered probes after which a path counts as lost and the link carries everything again. One: while a
#: path is proven its probe replaces the link's PING, so a second silent period would bring the link itself
#: close to its three-period idle limit.
LOST_AFTER: Final = 1
#: A path that never answered is probed on every tick this many times, then once every SLOW_PROBE ticks.
FAST_PROBES: Final = 3
SLOW_PROBE: Final = 6

# Datagram drop reasons (``tunmesh_link_datagrams_dropped_total``).
MALFORMED: Final = "malformed"
UNKNOWN_INDEX: Final = "unknown_index"
UNKNOWN_KEY: Final = "unknown_key"
BAD_TAG: Final = "bad_tag"
REPLAY: Final = "replay"
SEND_ERROR: Final = "send_error"


class DatagramError(Exception):
    """A datagram that cannot be accepted; ``reason`` is the counted label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def derive_datagram_key(link_key: bytes) -> bytes:
    """The datagram key of a link under one link key (both directions of derivation are one-way: a
    datagram key reveals nothing of the link key)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"tunmesh datagram v1").derive(link_key)


class ReplayWindow:
    """Accepts each counter at most once, up to :data:`REPLAY_WINDOW` behind the highest seen (RFC 6479's
    idea on a Python integer bitmap: bit ``i`` set = ``highest - i`` seen)."""

    __slots__ = ("highest", "_bits")

    def __init__(self) -> None:
        self.highest = 0
        self._bits = 0

    def accept(self, counter: int) -> bool:
        """Whether ``counter`` is new (and remember it); call only for authentic datagrams."""
        highest = self.highest
        if counter > highest:
            shift = counter - highest
            self._bits = 1 if shift >= REPLAY_WINDOW else ((self._bits << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            self.highest = counter
            return True
        back = highest - counter
        if back >= REPLAY_WINDOW or counter == 0 or (self._bits >> back) & 1:
            return False
        self._bits |= 1 << back
        return True


class DatagramSealer:
    """Seals the datagrams of one link under one key (counters from 1)."""

    __slots__ = ("index", "key_id", "counter", "_gcm")

    def __init__(self, index: int, key_id: int, key: bytes) -> None:
        self.index = index
        self.key_id = key_id
        self.counter = 0
        self._gcm = AESGCM(key)

    def seal(self, kind: int, flags: int, payload: bytes) -> bytes:
        self.counter += 1
        head = _HEAD.pack(kind, flags, self.index, self.key_id, self.counter)
        return head + self._gcm.encrypt(_NONCE.pack(self.key_id, self.counter), payload, head)


class DatagramOpener:
    """Opens the datagrams of one link: at most two keys live (make-before-break, as ``DataOpener``)."""

    __slots__ = ("_keys",)

    def __init__(self) -> None:
        self._keys: dict[int, tuple[AESGCM, ReplayWindow]] = {}

    def install(self, key_id: int, key: bytes) -> None:
        if key_id in self._keys:
            return
        self._keys[key_id] = (AESGCM(key), ReplayWindow())
        while len(self._keys) > 2:
            del self._keys[next(iter(self._keys))]

    def open(self, data: bytes) -> tuple[int, int, bytes]:
        """``(kind, flags, payload)`` of an authentic, fresh datagram; else :class:`DatagramError`."""
        if len(data) < HEAD_LEN + TAG_LEN:
            raise DatagramError(MALFORMED)
        kind, flags, _index, key_id, counter = _HEAD.unpack_from(data)
        state = self._keys.get(key_id)
        if state is None:
            raise DatagramError(UNKNOWN_KEY)
        gcm, window = state
        try:
            payload = gcm.decrypt(_NONCE.pack(key_id, counter), data[HEAD_LEN:], data[:HEAD_LEN])
        except InvalidTag:
            raise DatagramError(BAD_TAG) from None
        if not window.accept(counter):
            raise DatagramError(REPLAY)
        if kind not in (KIND_DATA, KIND_PROBE):
            raise DatagramError(MALFORMED)
        return kind, flags, payload


def probe_payload(opaque: int) -> bytes:
    return _OPAQUE.pack(opaque)


def probe_opaque(payload: bytes) -> int:
    if len(payload) != _OPAQUE.size:
        raise DatagramError(MALFORMED)
    return int(_OPAQUE.unpack(payload)[0])


class Receiver(Protocol):
    """What the endpoint hands a datagram to: the server side of one link."""

    def datagram_received(self, data: bytes) -> None: ...


class DatagramMetrics:
    """``tunmesh_link_datagrams_total`` (by direction) and ``..._dropped_total`` (by reason)."""

    def __init__(self, metrics: MetricsLike) -> None:
        total = metrics.counter(
            "link_datagrams_total",
            "Packets carried as UDP datagrams on the datagram path (small packets), by direction (tx, rx).",
            ["direction"],
        )
        self.tx = total.labels(direction="tx")
        self.rx = total.labels(direction="rx")
        self._dropped = metrics.counter(
            "link_datagrams_dropped_total",
            "Datagrams refused (malformed, unknown_index, unknown_key, bad_tag, replay) or not sent "
            "(send_error: the packet went over the TLS link instead), by reason.",
            ["reason"],
        )
        paths = metrics.gauge("link_datagram_paths", "Outbound links whose datagram path is proven (UDP passes).")
        self.paths = paths

    def dropped(self, reason: str) -> None:
        self._dropped.labels(reason=reason).inc()


def _outq(sock: socket.socket) -> int:
    """Bytes of a TCP socket not yet acknowledged by the peer (``SIOCOUTQ``)."""
    buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return int(struct.unpack("i", buf)[0])


def tcp_idle(sock: socket.socket | None) -> bool:
    """Whether everything written to ``sock`` has been acknowledged (True without a socket: tests)."""
    if sock is None:
        return True
    try:
        return _outq(sock) == 0
    except OSError:
        return False


@implementer(IReadDescriptor)
class DatagramEndpoint:
    """The node's UDP socket on the API port number: sends the links' datagrams, dispatches received ones by
    receiver index. Received datagrams are never answered over UDP.

    The reactor watches it as a plain reader (``IReactorFDSet.addReader``): each wake-up reads one datagram
    and then as many more as ``FIONREAD`` says are waiting (at most :data:`READ_BATCH`), so an empty socket
    is never read. Reading until EAGAIN, as Twisted's UDP port does, raised an ``OSError`` on every wake-up
    (its strerror formatting and traceback were a visible share of a cold wake-up in ``perf``), and
    Twisted's ``write`` checks the address text of every datagram; destinations here are checked once
    (:meth:`destination`).
    """

    log = Logger()

    def __init__(self, metrics: DatagramMetrics, rng: Callable[[int], bytes] = os.urandom) -> None:
        self.metrics = metrics
        self._receivers: dict[int, Receiver] = {}
        self._rng = rng
        #: address family of the bound socket (a v4 peer needs a mapped address on a v6 socket)
        self.family: int | None = None
        self._sock: Any = None
        self._sendto: Callable[[bytes, tuple[str, int]], int] | None = None
        self._pending = bytearray(4)

    def attach(self, sock: Any) -> None:
        """Use ``sock``, a bound non-blocking UDP socket (``family``, ``fileno``, ``recv``, ``sendto``)."""
        self._sock = sock
        self.family = sock.family
        self._sendto = sock.sendto

    def detach(self) -> None:
        self._sock = self._sendto = self.family = None

    # -- IReadDescriptor -----------------------------------------------------------------------------

    def fileno(self) -> int:
        sock = self._sock
        return int(sock.fileno()) if sock is not None else -1

    def doRead(self) -> None:  # noqa: N802 - Twisted's name
        sock = self._sock
        if sock is None:
            return
        recv = sock.recv
        for _ in range(READ_BATCH):
            try:
                data = recv(RECV_SIZE)
            except OSError:
                return  # a spurious wake-up (EAGAIN), or an ICMP error queued on the socket: nothing to read
            self.datagram_in(data)
            try:
                fcntl.ioctl(sock.fileno(), termios.FIONREAD, self._pending, True)
            except OSError:
                return
            if not int.from_bytes(self._pending, "little"):
                return

    def connectionLost(self, reason: Any) -> None:  # noqa: N802 - Twisted's name
        self.detach()

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's name
        return "tunmesh-datagrams"

    @property
    def active(self) -> bool:
        return self.family is not None

    def register(self, receiver: Receiver) -> int:
        """A fresh random non-zero index for ``receiver``."""
        while True:
            index = _INDEX.unpack(self._rng(4))[0]
            if index and index not in self._receivers:
                self._receivers[index] = receiver
                return int(index)

    def unregister(self, index: int, receiver: Receiver) -> None:
        if self._receivers.get(index) is receiver:
            del self._receivers[index]

    def destination(self, host: str, port: int) -> tuple[str, int] | None:
        """Where to send a peer's datagrams (the address and port its TLS link reached), or None when it
        is not an IP address this socket's family can reach."""
        if self.family is None or not 0 < port < 65536:
            return None
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return None
        if self.family == socket.AF_INET6:
            return (str(ip) if ip.version == 6 else f"::ffff:{ip}", port)
        return (str(ip), port) if ip.version == 4 else None

    def send(self, data: bytes, addr: tuple[str, int]) -> bool:
        """Send one datagram; False (counted) when the socket refused it: the caller uses the TLS link."""
        sendto = self._sendto
        if sendto is None:
            return False
        try:
            sendto(data, addr)
        except OSError:  # a full socket buffer, no route, EMSGSIZE...
            self.metrics.dropped(SEND_ERROR)
            return False
        return True

    def datagram_in(self, datagram: bytes) -> None:
        """One datagram from the socket: to its link by receiver index, or counted and dropped."""
        if len(datagram) < HEAD_LEN + TAG_LEN:
            self.metrics.dropped(MALFORMED)
            return
        receiver = self._receivers.get(_INDEX.unpack_from(datagram, _INDEX_AT)[0])
        if receiver is None:
            self.metrics.dropped(UNKNOWN_INDEX)
            return
        receiver.datagram_received(datagram)


class DatagramPath:
    """The client side of one link's datagram path: offered, probed, proven or lost (explicit states).

    ``OFFERED`` once the server named an index: probes go out on every keepalive tick (and one at once);
    ``PROVEN`` from the first acknowledged probe until :data:`LOST_AFTER` probes in a row go unanswered
    (then ``OFFERED`` again, probing at a slower pace after :data:`FAST_PROBES`). Only a proven path
    carries packets.
    """

    OFFERED = "offered"
    PROVEN = "proven"

    __slots__ = ("endpoint", "addr", "sealer", "state", "unanswered", "probes", "_probe", "_flags", "_gauge")

    def __init__(
        self, endpoint: DatagramEndpoint, addr: tuple[str, int], sealer: DatagramSealer, flags: int, gauge: Any
    ) -> None:
        self.endpoint = endpoint
        self.addr = addr
        self.sealer = sealer
        self.state = self.OFFERED
        #: probes sent since the last answer
        self.unanswered = 0
        #: ticks since the path was offered or lost (the probing pace)
        self.probes = 0
        self._probe = 0
        self._flags = flags
        self._gauge = gauge

    @property
    def proven(self) -> bool:
        return self.state == self.PROVEN

    def rekey(self, key_id: int, key: bytes) -> None:
        self.sealer = DatagramSealer(self.sealer.index, key_id, key)

    def send(self, packet: bytes) -> bool:
        return self.endpoint.send(self.sealer.seal(KIND_DATA, self._flags, packet), self.addr)

    def probe(self, opaque: int) -> bool:
        """Send a probe (whatever the state) numbered ``opaque``; the ack echoes it."""
        self._probe = opaque
        self.unanswered += 1
        return self.endpoint.send(self.sealer.seal(KIND_PROBE, 0, probe_payload(opaque)), self.addr)

    def tick(self) -> bool:
        """A keepalive tick: whether to probe now (a proven path that stopped answering is lost first)."""
        if self.state == self.PROVEN and self.unanswered >= LOST_AFTER:
            self.lose()
        if self.state == self.PROVEN:
            return True
        self.probes += 1
        return self.probes <= FAST_PROBES or self.probes % SLOW_PROBE == 0

    def acked(self, opaque: int) -> bool:
        """A ``DGRAM_ACK``: True (the path now proven) when it echoes the last probe."""
        if opaque != self._probe:
            return False
        self.unanswered = 0
        if self.state != self.PROVEN:
            self.state = self.PROVEN
            self.probes = 0
            self._gauge.inc()
        return True

    def lose(self) -> None:
        if self.state == self.PROVEN:
            self.state = self.OFFERED
            self.probes = 0
            self._gauge.dec()

    def close(self) -> None:
        self.lose()


class DatagramService(Service):
    """Binds the endpoint's UDP socket on the API port number (in ``privilegedStartService``, like the TCP
    port) and has the reactor watch it. A port that cannot be bound turns the datagram path off with one
    warning: the TLS links carry everything, as with a peer that UDP does not reach."""

    log = Logger()
    name = "datagrams"  # type: ignore[assignment]

    def __init__(
        self,
        endpoint: DatagramEndpoint,
        port: int,
        interface: str,
        reactor: Any,
        make_socket: Callable[[int], Any] = lambda family: socket.socket(family, socket.SOCK_DGRAM),
    ) -> None:
        self.endpoint = endpoint
        self.port_number = port
        self.interface = interface
        self._reactor = reactor
        self._make_socket = make_socket
        self._sock: Any = None
        self._tried = False

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()

    def _listen(self) -> None:
        if self._tried:
            return
        self._tried = True
        v6 = ":" in self.interface
        family = socket.AF_INET6 if v6 else socket.AF_INET
        address = self.interface or ("::" if v6 else "0.0.0.0")
        sock = None
        try:
            sock = self._make_socket(family)
            if v6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # v4 peers too, as the TCP port
            sock.setblocking(False)
            sock.bind((address, self.port_number))
        except OSError as e:
            if sock is not None:
                sock.close()
            self.log.warn(
                "datagram path off: cannot bind UDP {address} port {port} ({error}); packets use the TLS links "
                "(control_api.listen_port is the port number of both)",
                address=address,
                port=self.port_number,
                error=os.strerror(e.errno) if e.errno else str(e),
            )
            return
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, 1 << 20)
            except OSError:
                pass
        self._sock = sock
        self.endpoint.attach(sock)
        self._reactor.addReader(self.endpoint)

    def stopService(self) -> Any:
        super().stopService()
        sock, self._sock = self._sock, None
        self._tried = False
        if sock is not None:
            self._reactor.removeReader(self.endpoint)
            self.endpoint.detach()
            sock.close()
        return None
