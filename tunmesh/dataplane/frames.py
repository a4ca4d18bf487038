"""The peer-link frame codec (``tunmesh-link/1``): framing, DATA authentication, incremental parsing.

Every frame is ``u32 length`` (bytes that follow) | ``u8 type`` | body, big-endian.  DATA frames
carry a batch of packets and a 16-byte AES-GCM tag over the whole frame (GMAC: empty plaintext,
the frame as associated data) under a per-link key; see docs/protocols.md for the layout, the
key schedule and the measurements behind the choices.  Built for speed: a frame is produced with
one ``struct.pack`` and one ``b"".join``, and taken apart with one ``unpack_from`` of the length
table and one slice per packet.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ALPN: Final = b"tunmesh-link/1"
PROTOCOL_VERSION: Final = 1

# Frame types.
HELLO: Final = 1
HELLO_OK: Final = 2
HELLO_ERR: Final = 3
DATA: Final = 4
REKEY: Final = 5
PING: Final = 6
PONG: Final = 7
#: server → client: the receiver index of this link's datagram path (tunmesh.dataplane.datagram)
DGRAM_OFFER: Final = 8
#: server → client: a datagram PROBE arrived (echoes its number, as PONG echoes PING)
DGRAM_ACK: Final = 9

# Flags (HELLO, HELLO_OK, DATA): packets carry a 10-byte virtio_net_hdr.
FLAG_VNET_HDR: Final = 0x01
#: HELLO: the client can use a datagram path; HELLO_OK: the server offers one (a DGRAM_OFFER follows).
#: Peers without it never see the datagram frames.
FLAG_DGRAM: Final = 0x02

# HELLO_ERR reason codes.
ERR_BAD_TOKEN: Final = 1
ERR_UNKNOWN_PEER: Final = 2
ERR_NO_SESSION: Final = 3
ERR_PROTOCOL: Final = 4
ERR_NAMES: Final = {
    ERR_BAD_TOKEN: "bad_token",
    ERR_UNKNOWN_PEER: "unknown_peer",
    ERR_NO_SESSION: "no_session",
    ERR_PROTOCOL: "protocol",
}

TAG_LEN: Final = 16
RANDOM_LEN: Final = 16
#: Packet bytes per DATA frame, and packets per frame, at most.
MAX_PAYLOAD: Final = 256 * 1024
MAX_PACKETS: Final = 1024
#: Largest acceptable value of a frame's length prefix; a larger one closes the link.
MAX_FRAME: Final = MAX_PAYLOAD + 4 * MAX_PACKETS + 64
MAX_TOKEN: Final = 8192
#: Largest frame accepted before the HELLO (an unauthenticated client buffers no more).
MAX_HELLO_FRAME: Final = MAX_TOKEN + 64

# Drop / close reasons (label values).
MALFORMED_FRAME: Final = "malformed_frame"
REPLAY: Final = "replay"
UNKNOWN_KEY: Final = "unknown_key"
BAD_TAG: Final = "bad_tag"

_U32 = struct.Struct(">I")
_HEAD = struct.Struct(">IB")
#: length, type, flags, key_id, counter, count
_DATA_HEAD = struct.Struct(">IBBIQH")
DATA_HEAD_LEN: Final = _DATA_HEAD.size
_HELLO = struct.Struct(">IBBB16sIH")
_HELLO_OK = struct.Struct(">IBB16s")
_HELLO_ERR = struct.Struct(">IBB")
_PING = struct.Struct(">IBQ")
_REKEY = struct.Struct(">IBIH")
_OFFER = struct.Struct(">IBI")
_LENS: dict[int, struct.Struct] = {}


class FrameError(Exception):
    """A frame that cannot be accepted; ``reason`` is the counted label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


def _lens(count: int) -> struct.Struct:
    s = _LENS.get(count)
    if s is None:
        s = _LENS[count] = struct.Struct(f">{count}I")
    return s


def nonce(key_id: int, counter: int) -> bytes:
    """96-bit GCM nonce: the 4-byte key id (salt) then the 64-bit frame counter."""
    return _NONCE.pack(key_id, counter)


_NONCE = struct.Struct(">IQ")


def derive_link_key(
    frame_key: bytes,
    client_random: bytes,
    server_random: bytes,
    client_id: str,
    server_id: str,
    kid: str,
    channel: bytes = b"",
) -> bytes:
    """The key of one link (one TCP connection, client → server) under one session.

    Both randoms make every connection's key fresh, so frame counters can start at 1 on each
    connection without ever reusing a (key, nonce) pair, and frames recorded on one connection
    are worthless on another.  The ids and kid are length-prefixed (W3: no ambiguous joins).
    ``channel`` is the TLS exporter value of the connection (:data:`CHANNEL_LEN` bytes; empty
    only without TLS, in memory tests): a relay terminating TLS on both sides has two different
    values, so its two halves derive different keys (W5 channel binding).
    """
    info = b"tunmesh link v1"
    for part in (client_id.encode(), server_id.encode(), kid.encode()):
        info += _U32.pack(len(part)) + part
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=client_random + server_random + channel, info=info
    ).derive(frame_key)


# --- control frames -------------------------------------------------------------------------

#: RFC 5705 / RFC 8446 exporter label and length of the link channel binding.
CHANNEL_LABEL: Final = b"EXPORTER-tunmesh-link-v1"
CHANNEL_LEN: Final = 32


_HELLO_BOUND = struct.Struct(">BB16sI")


def hello_binding(client_random: bytes, key_id: int, flags: int = 0, channel: bytes = b"") -> bytes:
    """What the HELLO token signs (its ``bh`` claim): version, flags, random, key id, and the
    TLS exporter value of the connection.

    Binding the client random ties the token to one connection; the exporter value ties it to
    this TLS session, so a relay that terminates TLS (W5) cannot forward the HELLO to the real
    server: the server computes its own session's value and the token does not verify.
    """
    return _HELLO_BOUND.pack(PROTOCOL_VERSION, flags, client_random, key_id) + channel


def encode_hello(token: str, client_random: bytes, key_id: int, flags: int = 0) -> bytes:
    """HELLO (client → server): version, flags, client random, the key id naming the
    session of ``token``, and the ``tm-link+jwt`` token."""
    tok = token.encode("ascii")
    body_len = _HELLO.size - 4 + len(tok)
    return (
        _HELLO.pack(body_len, HELLO, PROTOCOL_VERSION, flags, client_random, key_id, len(tok))
        + tok
    )


def decode_hello(frame: bytes) -> tuple[int, bytes, int, str, bytes]:
    """``(flags, client_random, key_id, token, binding)`` of a HELLO frame."""
    if len(frame) < _HELLO.size:
        raise FrameError(MALFORMED_FRAME, "short HELLO")
    _, _, version, flags, rnd, key_id, tlen = _HELLO.unpack_from(frame)
    if version != PROTOCOL_VERSION:
        raise FrameError(MALFORMED_FRAME, f"HELLO version {version}")
    if key_id & SERVER_NONCE_BIT:
        raise FrameError(MALFORMED_FRAME, "HELLO key id")
    if tlen != len(frame) - _HELLO.size or tlen > MAX_TOKEN:
        raise FrameError(MALFORMED_FRAME, "HELLO token length")
    try:
        token = frame[_HELLO.size :].decode("ascii")
    except UnicodeDecodeError:
        raise FrameError(MALFORMED_FRAME, "HELLO token not ASCII") from None
    return flags, rnd, key_id, token, frame[5 : 5 + _HELLO_BOUND.size]


#: Key ids are below this; the bit marks nonces of server → client frames (HELLO_OK).
SERVER_NONCE_BIT: Final = 0x80000000


def encode_hello_ok(server_random: bytes, link_key: bytes, key_id: int, flags: int = 0) -> bytes:
    """HELLO_OK (server → client), tagged under the new link key.

    The tag proves the server holds the session secret too, so a client never sends packets to
    a TLS man-in-the-middle that lacks it.  Its nonce has :data:`SERVER_NONCE_BIT` set, which no
    client frame uses.
    """
    head = _HELLO_OK.pack(_HELLO_OK.size - 4 + TAG_LEN, HELLO_OK, flags, server_random)
    return head + AESGCM(link_key).encrypt(nonce(SERVER_NONCE_BIT | key_id, 0), b"", head)


def decode_hello_ok(frame: bytes) -> tuple[int, bytes]:
    """``(flags, server_random)``; check the tag with :func:`verify_hello_ok` once the link key
    is derived from ``server_random``."""
    if len(frame) != _HELLO_OK.size + TAG_LEN:
        raise FrameError(MALFORMED_FRAME, "HELLO_OK size")
    _, _, flags, rnd = _HELLO_OK.unpack_from(frame)
    return flags, rnd


def verify_hello_ok(link_key: bytes, key_id: int, frame: bytes) -> None:
    """Raise :class:`FrameError` (``bad_tag``) unless the HELLO_OK is authentic."""
    mv = memoryview(frame)
    try:
        AESGCM(link_key).decrypt(
            nonce(SERVER_NONCE_BIT | key_id, 0), mv[-TAG_LEN:], mv[:-TAG_LEN]
        )
    except InvalidTag:
        raise FrameError(BAD_TAG, "HELLO_OK") from None


def encode_hello_err(code: int) -> bytes:
    return _HELLO_ERR.pack(_HELLO_ERR.size - 4, HELLO_ERR, code)


def decode_hello_err(frame: bytes) -> int:
    if len(frame) != _HELLO_ERR.size:
        raise FrameError(MALFORMED_FRAME, "HELLO_ERR size")
    return _HELLO_ERR.unpack(frame)[2]


def encode_ping(kind: int, opaque: int) -> bytes:
    """PING or PONG carrying a u64 the peer echoes."""
    return _PING.pack(_PING.size - 4, kind, opaque)


def decode_ping(frame: bytes) -> int:
    if len(frame) != _PING.size:
        raise FrameError(MALFORMED_FRAME, "PING size")
    return _PING.unpack(frame)[2]


def encode_dgram_offer(index: int) -> bytes:
    """DGRAM_OFFER (server → client): datagrams of this link carry receiver index ``index``."""
    return _OFFER.pack(_OFFER.size - 4, DGRAM_OFFER, index)


def decode_dgram_offer(frame: bytes) -> int:
    if len(frame) != _OFFER.size:
        raise FrameError(MALFORMED_FRAME, "DGRAM_OFFER size")
    index = _OFFER.unpack(frame)[2]
    if not index:
        raise FrameError(MALFORMED_FRAME, "DGRAM_OFFER index")
    return int(index)


def frame_type(frame: bytes) -> int:
    """The type byte of a complete frame (as returned by :class:`FrameDecoder`)."""
    return frame[4]


def encode_rekey(key: bytes, key_id: int, kid: str) -> bytes:
    """REKEY (client → server): from now on DATA uses ``key_id``, the link key of session ``kid``.

    Authenticated under the new key with counter 0 (DATA counters start at 1), which proves the
    sender holds the new session secret.
    """
    k = kid.encode("ascii")
    head = _REKEY.pack(_REKEY.size - 4 + len(k) + TAG_LEN, REKEY, key_id, len(k)) + k
    return head + AESGCM(key).encrypt(nonce(key_id, 0), b"", head)


def decode_rekey(frame: bytes) -> tuple[int, str]:
    """``(key_id, kid)`` of a REKEY frame, not yet verified (see :func:`verify_rekey`)."""
    if len(frame) < _REKEY.size + TAG_LEN:
        raise FrameError(MALFORMED_FRAME, "short REKEY")
    _, _, key_id, klen = _REKEY.unpack_from(frame)
    if _REKEY.size + klen + TAG_LEN != len(frame):
        raise FrameError(MALFORMED_FRAME, "REKEY kid length")
    if key_id & SERVER_NONCE_BIT:
        raise FrameError(MALFORMED_FRAME, "REKEY key id")
    try:
        kid = frame[_REKEY.size : _REKEY.size + klen].decode("ascii")
    except UnicodeDecodeError:
        raise FrameError(MALFORMED_FRAME, "REKEY kid not ASCII") from None
    return key_id, kid


def verify_rekey(key: bytes, frame: bytes) -> None:
    """Raise :class:`FrameError` (``bad_tag``) unless ``frame`` is authentic under ``key``."""
    key_id = _REKEY.unpack_from(frame)[2]
    mv = memoryview(frame)
    try:
        AESGCM(key).decrypt(nonce(key_id, 0), mv[-TAG_LEN:], mv[:-TAG_LEN])
    except InvalidTag:
        raise FrameError(BAD_TAG, "REKEY") from None


# --- DATA frames ----------------------------------------------------------------------------


class DataSealer:
    """Builds authenticated DATA frames under one link key; the counter starts at 1."""

    __slots__ = ("key_id", "counter", "_gcm")

    def __init__(self, key_id: int, key: bytes) -> None:
        self.key_id = key_id
        self.counter = 0
        self._gcm = AESGCM(key)

    def seal(self, packets: Sequence[bytes], flags: int = 0) -> tuple[bytes, bytes]:
        """One DATA frame for ``packets`` as ``(frame_without_tag, tag)``: write both, in order.

        The caller keeps within :data:`MAX_PACKETS` and :data:`MAX_PAYLOAD` (see
        :func:`split_batch`).  Two pieces avoid copying the frame once more to append the tag.
        """
        count = len(packets)
        lens = [len(p) for p in packets]
        self.counter += 1
        body_len = DATA_HEAD_LEN - 4 + 4 * count + sum(lens) + TAG_LEN
        head = _DATA_HEAD.pack(body_len, DATA, flags, self.key_id, self.counter, count)
        frame = b"".join((head, _lens(count).pack(*lens), *packets))
        return frame, self._gcm.encrypt(_NONCE.pack(self.key_id, self.counter), b"", frame)


def split_batch(
    packets: Sequence[bytes], max_payload: int = MAX_PAYLOAD, max_packets: int = MAX_PACKETS
) -> list[Sequence[bytes]]:
    """Cut a batch into runs that each fit in one DATA frame.

    A single packet larger than ``max_payload`` still gets a frame of its own (the router bounds
    packet sizes far below the frame limit).
    """
    total = 0
    for p in packets:
        total += len(p)
    if total <= max_payload and len(packets) <= max_packets:
        return [packets]
    runs: list[Sequence[bytes]] = []
    start = 0
    size = 0
    for i, p in enumerate(packets):
        n = len(p)
        if i > start and (size + n > max_payload or i - start >= max_packets):
            runs.append(packets[start:i])
            start = i
            size = 0
        size += n
    runs.append(packets[start:])
    return runs


class _RecvKey:
    __slots__ = ("gcm", "last")

    def __init__(self, key: bytes) -> None:
        self.gcm = AESGCM(key)
        self.last = 0


class DataOpener:
    """Verifies DATA frames of one link, under its current and previous key.

    Counters must strictly increase per key id (the stream is ordered; anything else is a replay).
    At most two keys are live (make-before-break rotation): installing a third forgets the oldest.
    """

    def __init__(self) -> None:
        self._keys: dict[int, _RecvKey] = {}

    def install(self, key_id: int, key: bytes) -> None:
        """Accept ``key_id`` from now on (an already known id keeps its counter state)."""
        if key_id in self._keys:
            return
        self._keys[key_id] = _RecvKey(key)
        while len(self._keys) > 2:
            del self._keys[next(iter(self._keys))]

    def key_ids(self) -> list[int]:
        return list(self._keys)

    def open(self, frame: bytes) -> tuple[int, list[bytes]]:
        """``(flags, packets)`` of an authentic, fresh DATA frame; else :class:`FrameError`."""
        n = len(frame)
        if n < DATA_HEAD_LEN + TAG_LEN:
            raise FrameError(MALFORMED_FRAME, "short DATA")
        _, _, flags, key_id, counter, count = _DATA_HEAD.unpack_from(frame)
        state = self._keys.get(key_id)
        if state is None:
            raise FrameError(UNKNOWN_KEY)
        if counter <= state.last:
            raise FrameError(REPLAY)
        end = n - TAG_LEN
        mv = memoryview(frame)
        try:
            state.gcm.decrypt(_NONCE.pack(key_id, counter), mv[end:], mv[:end])
        except InvalidTag:
            raise FrameError(BAD_TAG) from None
        finally:
            mv.release()
        state.last = counter
        pos = DATA_HEAD_LEN + 4 * count
        if pos > end:
            raise FrameError(MALFORMED_FRAME, "DATA count")
        lens = _lens(count).unpack_from(frame, DATA_HEAD_LEN)
        if sum(lens) != end - pos:
            raise FrameError(MALFORMED_FRAME, "DATA lengths")
        packets = []
        for size in lens:
            nxt = pos + size
            packets.append(frame[pos:nxt])
            pos = nxt
        return flags, packets


# --- stream parsing -------------------------------------------------------------------------


class FrameDecoder:
    """Incremental parser: feed stream bytes, get complete frames (length prefix included).

    Incoming chunks (TLS hands over at most 16 KiB at a time) are kept in a list until the frame
    they belong to is complete, then joined once: each frame byte is copied once, however many
    chunks it arrived in (no quadratic re-buffering).  A frame that fills a chunk exactly is
    returned without any copy.  A length prefix of 0 or above ``max_frame`` raises
    :class:`FrameError` (``malformed_frame``): the link closes.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        #: may be raised later (a link accepts only small frames before its HELLO)
        self.max_frame = max_frame
        self._chunks: list[bytes] = []
        self._have = 0
        #: total size of the frame being assembled (0 while its length prefix is incomplete)
        self._need = 0

    def feed(self, data: bytes) -> list[bytes]:
        if self._chunks:
            self._chunks.append(data)
            self._have += len(data)
            if self._have < (self._need or 4):
                return []
            data = b"".join(self._chunks)
            self._chunks = []
            self._have = self._need = 0
        return self._parse(data)

    def _parse(self, data: bytes) -> list[bytes]:
        frames: list[bytes] = []
        n = len(data)
        off = 0
        end = 0
        while n - off >= 4:
            (length,) = _U32.unpack_from(data, off)
            if length == 0 or length > self.max_frame:
                raise FrameError(MALFORMED_FRAME, f"frame length {length}")
            end = off + 4 + length
            if end > n:
                break
            frames.append(data if off == 0 and end == n else data[off:end])
            off = end
        if off < n:
            self._chunks = [data[off:] if off else data]
            self._have = n - off
            self._need = end - off if n - off >= 4 else 0
        return frames

    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return self._have
