"""The link frame codec: roundtrips, stream splitting, tamper/replay rejection, rotation, limits."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tunmesh.dataplane import frames as F

KEY1 = bytes(range(32))
KEY2 = bytes(range(1, 33))

packet_lists = st.lists(st.binary(min_size=0, max_size=300), min_size=0, max_size=20)


def sealed(sealer: F.DataSealer, packets: list[bytes], flags: int = 0) -> bytes:
    frame, tag = sealer.seal(packets, flags)
    return frame + tag


def opener(*keys: tuple[int, bytes]) -> F.DataOpener:
    o = F.DataOpener()
    for key_id, key in keys:
        o.install(key_id, key)
    return o


class DataFrameTests(SynchronousTestCase):
    @given(st.lists(packet_lists, min_size=1, max_size=5), st.sampled_from([0, F.FLAG_VNET_HDR]))
    def test_roundtrip(self, batches: list[list[bytes]], flags: int) -> None:
        s = F.DataSealer(7, KEY1)
        o = opener((7, KEY1))
        for packets in batches:
            self.assertEqual(o.open(sealed(s, packets, flags)), (flags, packets))

    @given(packet_lists, st.lists(st.integers(0, 10_000), max_size=8), st.integers(1, 4))
    def test_stream_split_anywhere(self, packets: list[bytes], cuts: list[int], nframes: int) -> None:
        s = F.DataSealer(1, KEY1)
        stream = b"".join(sealed(s, packets) for _ in range(nframes)) + F.encode_ping(F.PING, 9)
        points = sorted({c % (len(stream) + 1) for c in cuts})
        d = F.FrameDecoder()
        got: list[bytes] = []
        prev = 0
        for p in [*points, len(stream)]:
            got.extend(d.feed(stream[prev:p]))
            prev = p
        self.assertEqual(len(got), nframes + 1)
        self.assertEqual(d.buffered(), 0)
        o = opener((1, KEY1))
        for frame in got[:-1]:
            self.assertEqual(F.frame_type(frame), F.DATA)
            self.assertEqual(o.open(frame)[1], packets)
        self.assertEqual(F.decode_ping(got[-1]), 9)

    @given(packet_lists.filter(lambda p: sum(map(len, p)) > 0), st.data())
    @settings(max_examples=200)
    def test_any_single_bit_flip_rejected(self, packets: list[bytes], data: st.DataObject) -> None:
        frame = bytearray(sealed(F.DataSealer(3, KEY1), packets))
        bit = data.draw(st.integers(0, len(frame) * 8 - 1))
        frame[bit // 8] ^= 1 << (bit % 8)
        o = opener((3, KEY1))
        with self.assertRaises(F.FrameError) as ctx:
            o.open(bytes(frame))
        self.assertIn(ctx.exception.reason, (F.BAD_TAG, F.UNKNOWN_KEY, F.REPLAY, F.MALFORMED_FRAME))

    def test_every_bit_flip_of_one_frame(self) -> None:
        frame = sealed(F.DataSealer(3, KEY1), [b"abc", b"", b"defgh"])
        for bit in range(len(frame) * 8):
            tampered = bytearray(frame)
            tampered[bit // 8] ^= 1 << (bit % 8)
            with self.assertRaises(F.FrameError):
                opener((3, KEY1)).open(bytes(tampered))

    def test_wrong_key(self) -> None:
        with self.assertRaises(F.FrameError) as ctx:
            opener((3, KEY2)).open(sealed(F.DataSealer(3, KEY1), [b"x"]))
        self.assertEqual(ctx.exception.reason, F.BAD_TAG)

    def test_replay_and_reorder_rejected(self) -> None:
        s = F.DataSealer(1, KEY1)
        f1, f2, f3 = (sealed(s, [bytes([i])]) for i in range(3))
        o = opener((1, KEY1))
        o.open(f1)
        o.open(f3)
        for old in (f1, f2, f3):
            with self.assertRaises(F.FrameError) as ctx:
                o.open(old)
            self.assertEqual(ctx.exception.reason, F.REPLAY)

    def test_forged_counter_does_not_advance_state(self) -> None:
        s = F.DataSealer(1, KEY1)
        f1 = sealed(s, [b"a"])
        forged = bytearray(sealed(s, [b"b"]))
        forged[10:18] = (2**63).to_bytes(8, "big")
        o = opener((1, KEY1))
        with self.assertRaises(F.FrameError):
            o.open(bytes(forged))
        self.assertEqual(o.open(f1)[1], [b"a"])

    def test_rotation_previous_and_current_accepted(self) -> None:
        old, new = F.DataSealer(1, KEY1), F.DataSealer(2, KEY2)
        o = opener((1, KEY1), (2, KEY2))
        self.assertEqual(o.open(sealed(old, [b"old"]))[1], [b"old"])
        self.assertEqual(o.open(sealed(new, [b"new"]))[1], [b"new"])
        self.assertEqual(o.open(sealed(old, [b"late"]))[1], [b"late"])
        # a third key evicts the oldest
        o.install(3, KEY1)
        self.assertEqual(o.key_ids(), [2, 3])
        with self.assertRaises(F.FrameError) as ctx:
            o.open(sealed(old, [b"gone"]))
        self.assertEqual(ctx.exception.reason, F.UNKNOWN_KEY)

    def test_unknown_key(self) -> None:
        with self.assertRaises(F.FrameError) as ctx:
            opener((1, KEY1)).open(sealed(F.DataSealer(9, KEY1), [b"x"]))
        self.assertEqual(ctx.exception.reason, F.UNKNOWN_KEY)

    def test_malformed_authentic_frames(self) -> None:
        """A peer holding the key but sending inconsistent lengths is rejected, not crashed on."""
        import struct

        s = F.DataSealer(1, KEY1)
        gcm = s._gcm
        for count, lens, payload in ((3, [1], b"a"), (1, [5], b"ab"), (2, [1, 1], b"abc")):
            body = struct.pack(f">{len(lens)}I", *lens) + payload
            head = struct.pack(">IBBIQH", 16 + len(body) + 16, F.DATA, 0, 1, 1, count)
            frame = head + body
            tag = gcm.encrypt(F.nonce(1, 1), b"", frame)
            with self.assertRaises(F.FrameError) as ctx:
                opener((1, KEY1)).open(frame + tag)
            self.assertEqual(ctx.exception.reason, F.MALFORMED_FRAME)
        with self.assertRaises(F.FrameError):
            opener((1, KEY1)).open(b"\x00\x00\x00\x05\x04abcd")

    def test_split_batch_limits(self) -> None:
        big = [b"x" * 70_000] * 10
        runs = F.split_batch(big)
        self.assertEqual([len(r) for r in runs], [3, 3, 3, 1])
        many = [b"y"] * 2500
        self.assertEqual([len(r) for r in F.split_batch(many)], [1024, 1024, 452])
        self.assertEqual(F.split_batch([b"z" * 300_000]), [[b"z" * 300_000]])
        for run in runs + F.split_batch(many):
            frame, tag = F.DataSealer(1, KEY1).seal(run)
            self.assertLessEqual(len(frame) + len(tag) - 4, F.MAX_FRAME)


class DecoderTests(SynchronousTestCase):
    def test_oversized_length_raises(self) -> None:
        d = F.FrameDecoder()
        with self.assertRaises(F.FrameError) as ctx:
            d.feed((F.MAX_FRAME + 1).to_bytes(4, "big") + b"\x04")
        self.assertEqual(ctx.exception.reason, F.MALFORMED_FRAME)

    def test_zero_length_raises(self) -> None:
        with self.assertRaises(F.FrameError):
            F.FrameDecoder().feed(b"\x00\x00\x00\x00")

    def test_max_frame_accepted(self) -> None:
        d = F.FrameDecoder()
        frame = F.MAX_FRAME.to_bytes(4, "big") + b"\x04" + bytes(F.MAX_FRAME - 1)
        self.assertEqual(d.feed(frame[:1000]), [])
        self.assertEqual(d.feed(frame[1000:]), [frame])

    def test_byte_at_a_time(self) -> None:
        s = F.DataSealer(1, KEY1)
        stream = sealed(s, [b"abc"]) + sealed(s, [b"de", b"f"])
        d = F.FrameDecoder()
        got = []
        for i in range(len(stream)):
            got.extend(d.feed(stream[i : i + 1]))
        o = opener((1, KEY1))
        self.assertEqual([o.open(f)[1] for f in got], [[b"abc"], [b"de", b"f"]])


class ControlFrameTests(SynchronousTestCase):
    def test_hello_roundtrip(self) -> None:
        rnd = os.urandom(16)
        frame = F.encode_hello("Bearer a.b.c", rnd, 5, F.FLAG_VNET_HDR)
        self.assertEqual(F.frame_type(frame), F.HELLO)
        flags, r, key_id, token, binding = F.decode_hello(frame)
        self.assertEqual((flags, r, key_id, token), (F.FLAG_VNET_HDR, rnd, 5, "Bearer a.b.c"))
        self.assertEqual(binding, F.hello_binding(rnd, 5, F.FLAG_VNET_HDR))

    def test_hello_malformed(self) -> None:
        good = F.encode_hello("tok", bytes(16), 1)
        bad = {
            "short": good[:20],
            "token length": good + b"x",
            "version": good[:5] + b"\x09" + good[6:],
            "non-ascii": good[:-1] + b"\xff",
            "server key id": F.encode_hello("tok", bytes(16), F.SERVER_NONCE_BIT | 1),
        }
        for name, frame in bad.items():
            with self.subTest(name), self.assertRaises(F.FrameError):
                F.decode_hello(frame)

    def test_hello_ok_err_ping(self) -> None:
        rnd = os.urandom(16)
        ok = F.encode_hello_ok(rnd, KEY1, 1, 1)
        self.assertEqual(F.decode_hello_ok(ok), (1, rnd))
        F.verify_hello_ok(KEY1, 1, ok)
        for key, key_id in ((KEY2, 1), (KEY1, 2)):
            with self.assertRaises(F.FrameError):
                F.verify_hello_ok(key, key_id, ok)
        self.assertEqual(F.decode_hello_err(F.encode_hello_err(F.ERR_NO_SESSION)), F.ERR_NO_SESSION)
        self.assertEqual(F.decode_ping(F.encode_ping(F.PONG, 2**64 - 1)), 2**64 - 1)
        for fn, frame in (
            (F.decode_hello_ok, F.encode_hello_ok(rnd, KEY1, 1)[:-1]),
            (F.decode_hello_err, F.encode_hello_err(1) + b"\x00"),
            (F.decode_ping, F.encode_ping(F.PING, 1)[:-2]),
        ):
            with self.assertRaises(F.FrameError):
                fn(frame)

    def test_rekey(self) -> None:
        frame = F.encode_rekey(KEY2, 2, "kid-2")
        self.assertEqual(F.decode_rekey(frame), (2, "kid-2"))
        F.verify_rekey(KEY2, frame)
        with self.assertRaises(F.FrameError) as ctx:
            F.verify_rekey(KEY1, frame)
        self.assertEqual(ctx.exception.reason, F.BAD_TAG)
        tampered = frame[:-20] + b"X" + frame[-19:]
        with self.assertRaises(F.FrameError):
            F.verify_rekey(KEY2, tampered)
        with self.assertRaises(F.FrameError):
            F.decode_rekey(frame[:-1])

    def test_link_keys_differ_per_connection_and_direction(self) -> None:
        a = F.derive_link_key(KEY1, b"c" * 16, b"s" * 16, "n1", "n2", "k")
        self.assertEqual(len(a), 32)
        self.assertNotEqual(a, F.derive_link_key(KEY1, b"d" * 16, b"s" * 16, "n1", "n2", "k"))
        self.assertNotEqual(a, F.derive_link_key(KEY1, b"c" * 16, b"t" * 16, "n1", "n2", "k"))
        self.assertNotEqual(a, F.derive_link_key(KEY1, b"c" * 16, b"s" * 16, "n2", "n1", "k"))
        self.assertNotEqual(a, F.derive_link_key(KEY1, b"c" * 16, b"s" * 16, "n1", "n2k", ""))
