"""X25519 session exchange (W2 b, W15)."""

from __future__ import annotations

import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from twisted.trial.unittest import SynchronousTestCase

from tunmesh.auth import kex
from tunmesh.auth.errors import KexError
from tunmesh.auth.keys import KEX, b64url, derive_key

K_KEX = derive_key("x" * 43, KEX)


class KexTests(SynchronousTestCase):
    def test_both_sides_derive_same_secret(self) -> None:
        initiator = kex.KexInitiator(K_KEX, "node-a", "node-b")
        result = kex.respond(K_KEX, initiator.request_body(), "node-a", "node-b")
        kid, secret = initiator.complete(result.body)
        self.assertEqual((kid, secret), (result.kid, result.secret))
        self.assertEqual(len(secret), 32)
        self.assertNotIn(secret.hex(), repr(result))
        body = json.loads(result.body)
        self.assertEqual(set(body), {"kid", "public_key"})

    def test_fresh_secret_every_time(self) -> None:
        secrets = set()
        for _ in range(3):
            initiator = kex.KexInitiator(K_KEX, "node-a", "node-b")
            secrets.add(initiator.complete(kex.respond(K_KEX, initiator.request_body(), "node-a", "node-b").body)[1])
        self.assertEqual(len(secrets), 3)

    def test_mitm_without_cluster_secret(self) -> None:
        """A relay that swaps in its own keys still cannot compute either side's secret."""
        initiator = kex.KexInitiator(K_KEX, "node-a", "node-b")
        mallory_key = derive_key("m" * 43, KEX)
        # Mallory answers a herself, with her own ephemeral key and a guessed K_kex.
        fake = kex.respond(mallory_key, initiator.request_body(), "node-a", "node-b")
        kid, a_secret = initiator.complete(fake.body)
        self.assertNotEqual(a_secret, fake.secret)

    def test_bound_to_identities_and_kid(self) -> None:
        a_priv, b_priv = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        base = kex.derive_session_secret(a_priv, b_priv.public_key(), K_KEX, "node-a", "node-b", "kid1")
        self.assertEqual(base, kex.derive_session_secret(b_priv, a_priv.public_key(), K_KEX, "node-a", "node-b", "kid1"))
        for args in (("node-b", "node-a", "kid1"), ("node-a", "node-b", "kid2"), ("node-an", "ode-b", "kid1")):
            self.assertNotEqual(base, kex.derive_session_secret(a_priv, b_priv.public_key(), K_KEX, *args))

    def test_bad_public_keys(self) -> None:
        cases: dict[str, list[Any]] = {
            "bad_public_key": [b64url(b"\x00" * 32), b64url(b"\x01" + b"\x00" * 31), b64url(b"\x01" * 31),
                               b64url(b"\x01" * 33)],
            "malformed": ["not base64!", 42, None, b64url(b"\x01" * 32) + "="],
        }
        for reason, values in cases.items():
            for value in values:
                body = json.dumps({"public_key": value}).encode()
                with self.assertRaises(KexError) as ctx:
                    kex.respond(K_KEX, body, "node-a", "node-b")
                self.assertEqual(ctx.exception.reason, reason, value)
                self.assertEqual(ctx.exception.status, 400)

    def test_bad_bodies(self) -> None:
        for body in (b"", b"[]", b"{", b"\xff", b'{"public_key": "' + b"A" * 9000 + b'"}'):
            with self.assertRaises(KexError):
                kex.respond(K_KEX, body, "node-a", "node-b")

    def test_bad_responses(self) -> None:
        good_pub = b64url(X25519PrivateKey.generate().public_key().public_bytes_raw())
        for body in (
            {"kid": "cluster", "public_key": good_pub},
            {"kid": "a b", "public_key": good_pub},
            {"public_key": good_pub},
            {"kid": "k1", "public_key": b64url(b"\x00" * 32)},
            {"kid": "k1"},
        ):
            initiator = kex.KexInitiator(K_KEX, "node-a", "node-b")
            self.assertRaises(KexError, initiator.complete, json.dumps(body).encode())

    def test_initiator_single_use(self) -> None:
        initiator = kex.KexInitiator(K_KEX, "node-a", "node-b")
        body = kex.respond(K_KEX, initiator.request_body(), "node-a", "node-b").body
        initiator.complete(body)
        with self.assertRaises(KexError) as ctx:
            initiator.complete(body)
        self.assertEqual(ctx.exception.reason, "already_used")

    def test_invalid_ids(self) -> None:
        self.assertRaises(ValueError, kex.KexInitiator, K_KEX, "node a", "node-b")
        self.assertRaises(ValueError, kex.respond, K_KEX, b"{}", "node-a", "")
