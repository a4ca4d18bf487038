"""Several cluster secrets by id: tokens name their secret, verification picks the key by id (issue 8)."""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tunmesh.auth import kex
from tunmesh.auth.cluster import ClusterAuthority, ClusterKeyring
from tunmesh.auth.errors import AuthError, KexError
from tunmesh.auth.keys import b64url_decode
from tunmesh.auth.sessions import SessionStore
from tunmesh.auth.tokens import (
    TYP_BOOTSTRAP,
    TYP_REQUEST,
    cluster_kid,
    is_cluster_kid,
    secret_id_of_kid,
    valid_kid,
)

OLD = "Qx7vR2mN9pL4kT8wZ3yB6cF1hJ5dG0sAe"
NEW = "Zy8wX3vU6tS1rQ4pO7nM0lK9jI2hG5fEdCbA"
NOW = 1_700_000_000
PATH = "/tunmesh/control/v0/registrations/register"
BODY = b'{"id":"node-a"}'


def kid_of(header_value: str) -> str:
    token = header_value.split(" ", 1)[1]
    kid: str = json.loads(b64url_decode(token.split(".")[0]))["kid"]
    return kid


def authority(node: str, keyring: ClusterKeyring | str, clock: Clock) -> ClusterAuthority:
    return ClusterAuthority(keyring, node, clock)


class KidTests(SynchronousTestCase):
    def test_default_id_keeps_the_old_wire_kid(self) -> None:
        self.assertEqual(cluster_kid("default"), "cluster")
        self.assertEqual(cluster_kid("2027a"), "cluster.2027a")
        self.assertEqual(secret_id_of_kid("cluster"), "default")
        self.assertEqual(secret_id_of_kid("cluster.2027a"), "2027a")

    def test_non_canonical_or_foreign_kids_name_no_secret(self) -> None:
        for kid in ("cluster.default", "cluster.", "cluster.a.b", "cluster.-x", "Cluster", "clusterx", 7, None):
            self.assertIsNone(secret_id_of_kid(kid), kid)
        self.assertRaises(ValueError, cluster_kid, "a.b")
        self.assertRaises(ValueError, cluster_kid, "")

    def test_session_kids_and_cluster_kids_never_overlap(self) -> None:
        self.assertTrue(valid_kid("cluster.2027a"))
        self.assertTrue(is_cluster_kid("cluster.2027a"))
        # Session kids are base64url (no dot): even one that starts with "cluster" is a session kid.
        self.assertTrue(valid_kid("clusterAAAAAAAAAAAAAAA"))
        self.assertFalse(is_cluster_kid("clusterAAAAAAAAAAAAAAA"))
        store = SessionStore("node-a", Clock())
        self.assertRaises(ValueError, store.install_inbound, "node-b", "cluster.2027a", b"k" * 32)

    def test_keyring_checks_and_hides_secrets(self) -> None:
        self.assertRaises(ValueError, ClusterKeyring, {})
        self.assertRaises(ValueError, ClusterKeyring, {"old": OLD}, "new")
        self.assertRaises(ValueError, ClusterKeyring, {"a.b": OLD}, "a.b")
        self.assertRaises(ValueError, ClusterKeyring, {"old": ""}, "old")
        ring = ClusterKeyring({"old": OLD, "new": NEW}, "new")
        self.assertNotIn(OLD, repr(ring))
        self.assertNotIn(NEW, repr(ring))
        self.assertNotEqual(ring.fingerprint("old"), ring.fingerprint("new"))


class VerifyByIdTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)

    def test_tokens_carry_the_signing_id(self) -> None:
        a = authority("node-a", ClusterKeyring({"old": OLD, "new": NEW}, "new"), self.clock)
        signed = a.sign_request("node-b", "POST", PATH, BODY)
        self.assertEqual(kid_of(signed.header_value), "cluster.new")
        self.assertEqual(signed.kid, "cluster.new")
        boot = a.sign_request("x", "POST", PATH, BODY, typ=TYP_BOOTSTRAP)
        self.assertEqual(kid_of(boot.header_value), "cluster.new")
        single = authority("node-a", OLD, self.clock)
        self.assertEqual(kid_of(single.sign_request("node-b", "POST", PATH, BODY).header_value), "cluster")

    def test_verification_picks_the_key_by_id(self) -> None:
        b = authority("node-b", ClusterKeyring({"old": OLD, "new": NEW}, "old"), self.clock)
        for signing in ("old", "new"):
            a = authority("node-a", ClusterKeyring({"old": OLD, "new": NEW}, signing), self.clock)
            signed = a.sign_request("node-b", "POST", PATH, BODY)
            token = b.verify_request_head(signed.header_value, "POST", PATH).verify_body(BODY)
            self.assertEqual(token.kid, f"cluster.{signing}")

    def test_unknown_id_is_unknown_key(self) -> None:
        a = authority("node-a", ClusterKeyring({"new": NEW}, "new"), self.clock)
        b = authority("node-b", ClusterKeyring({"old": OLD}, "old"), self.clock)
        signed = a.sign_request("node-b", "POST", PATH, BODY)
        with self.assertRaises(AuthError) as e:
            b.verify_request_head(signed.header_value, "POST", PATH)
        self.assertEqual(e.exception.reason, "unknown_key")
        self.assertEqual(e.exception.status, 401)

    def test_known_id_with_another_secret_is_bad_signature(self) -> None:
        a = authority("node-a", ClusterKeyring({"k": NEW}, "k"), self.clock)
        b = authority("node-b", ClusterKeyring({"k": OLD}, "k"), self.clock)
        signed = a.sign_request("node-b", "POST", PATH, BODY, typ=TYP_REQUEST)
        with self.assertRaises(AuthError) as e:
            b.verify_request_head(signed.header_value, "POST", PATH)
        self.assertEqual(e.exception.reason, "bad_signature")

    def test_response_is_signed_with_the_requests_secret(self) -> None:
        # b signs with new already; a still signs with old and may not know new yet.
        a = authority("node-a", ClusterKeyring({"old": OLD}, "old"), self.clock)
        b = authority("node-b", ClusterKeyring({"old": OLD, "new": NEW}, "new"), self.clock)
        signed = a.sign_request("node-b", "POST", PATH, BODY)
        token = b.verify_request_head(signed.header_value, "POST", PATH).verify_body(BODY)
        answer = b.sign_response("node-a", token, b"{}")
        self.assertEqual(kid_of(answer), "cluster.old")
        self.assertEqual(a.verify_response(answer, "node-b", signed, b"{}").iss, "node-b")

    def test_a_response_under_another_id_is_refused(self) -> None:
        a = authority("node-a", ClusterKeyring({"old": OLD, "new": NEW}, "old"), self.clock)
        b = authority("node-b", ClusterKeyring({"old": OLD, "new": NEW}, "new"), self.clock)
        signed = a.sign_request("node-b", "POST", PATH, BODY)
        # A response made for a request under "new" cannot answer a request under "old".
        other = b.verify_request_head(
            b.sign_request("node-b", "POST", PATH, BODY).header_value, "POST", PATH
        ).verify_body(BODY)
        answer = b.sign_response("node-a", other, b"{}")
        with self.assertRaises(AuthError) as e:
            a.verify_response(answer, "node-b", signed, b"{}")
        self.assertEqual(e.exception.reason, "unknown_key")

    def test_bootstrap_tokens_by_id(self) -> None:
        a = authority("node-a", ClusterKeyring({"old": OLD, "new": NEW}, "new"), self.clock)
        b = authority("node-b", ClusterKeyring({"old": OLD, "new": NEW}, "old"), self.clock)
        c = authority("node-c", ClusterKeyring({"old": OLD}, "old"), self.clock)
        signed = a.sign_request("x", "POST", PATH, BODY, typ=TYP_BOOTSTRAP)
        b.verify_request_head(signed.header_value, "POST", PATH, accept_bootstrap=True).verify_body(BODY)
        with self.assertRaises(AuthError) as e:
            c.verify_request_head(signed.header_value, "POST", PATH, accept_bootstrap=True)
        self.assertEqual(e.exception.reason, "unknown_key")

    def test_set_keyring_takes_effect_for_the_next_token(self) -> None:
        a = authority("node-a", ClusterKeyring({"old": OLD, "new": NEW}, "old"), self.clock)
        b = authority("node-b", ClusterKeyring({"old": OLD, "new": NEW}, "old"), self.clock)
        signed_old = a.sign_request("node-b", "POST", PATH, BODY)
        a.set_keyring(ClusterKeyring({"old": OLD, "new": NEW}, "new"))
        self.assertEqual(kid_of(a.sign_request("node-b", "POST", PATH, BODY).header_value), "cluster.new")
        b.set_keyring(ClusterKeyring({"new": NEW}, "new"))
        self.assertEqual(b.secret_ids, ("new",))
        with self.assertRaises(AuthError) as e:
            b.verify_request_head(signed_old.header_value, "POST", PATH)
        self.assertEqual(e.exception.reason, "unknown_key")
        with self.assertRaises(AuthError):
            b.kex_key_for("old")


class KexSaltTests(SynchronousTestCase):
    def test_the_request_names_the_salting_secret(self) -> None:
        ring = ClusterKeyring({"old": OLD, "new": NEW}, "new")
        a = ClusterAuthority(ring, "node-a", Clock())
        b = ClusterAuthority(ClusterKeyring({"old": OLD, "new": NEW}, "old"), "node-b", Clock())
        initiator = kex.KexInitiator(a.kex_key, "node-a", "node-b", secret_id=a.signing_id)
        body = initiator.request_body()
        self.assertEqual(json.loads(body)["kex_secret"], "new")
        result = kex.respond(b.kex_key_for, body, "node-a", "node-b")
        kid, secret = initiator.complete(result.body)
        self.assertEqual((kid, secret), (result.kid, result.secret))

    def test_default_id_is_not_named_and_absent_means_default(self) -> None:
        initiator = kex.KexInitiator(ClusterAuthority(OLD, "node-a", Clock()).kex_key, "node-a", "node-b")
        body = initiator.request_body()
        self.assertNotIn(b"kex_secret", body)
        self.assertEqual(kex.KexRequest.from_body(body).secret_id, "default")

    def test_salting_with_another_secret_gives_another_session_secret(self) -> None:
        a = ClusterAuthority(ClusterKeyring({"old": OLD, "new": NEW}, "new"), "node-a", Clock())
        initiator = kex.KexInitiator(a.kex_key, "node-a", "node-b", secret_id="new")
        # A responder that ignored the name and salted with "old" would derive a different key.
        wrong = kex.respond(a.kex_key_for("old"), initiator.request_body(), "node-a", "node-b")
        _, secret = initiator.complete(wrong.body)
        self.assertNotEqual(secret, wrong.secret)

    def test_unknown_or_malformed_salt_id(self) -> None:
        b = ClusterAuthority(ClusterKeyring({"old": OLD}, "old"), "node-b", Clock())
        initiator = kex.KexInitiator(b"k" * 32, "node-a", "node-b", secret_id="new")
        with self.assertRaises(AuthError) as e:
            kex.respond(b.kex_key_for, initiator.request_body(), "node-a", "node-b")
        self.assertEqual(e.exception.reason, "unknown_key")
        body = json.loads(initiator.request_body())
        body["kex_secret"] = "a.b"
        with self.assertRaises(KexError):
            kex.KexRequest.from_body(json.dumps(body).encode())
