"""TLS policy tests: real OpenSSL handshakes, in memory (iosim), no sockets.

Each refusal test has a control: the same client against a permissive server succeeds, so a
refusal is the policy's doing and not an OpenSSL build that cannot speak the old protocol at all.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from zope.interface import implementer

from tests.unit.tls_support import handshake, self_signed, temp_dir
from tunmesh.tls.certs import certificate_sha256
from tunmesh.tls.contexts import (
    CA_FILE_KEY,
    CERT_FILE_KEY,
    KEY_FILE_KEY,
    MeshTLSPolicy,
    TLSConfigError,
    client_context,
    is_system_trust_store,
    local_certificate_sha256,
    peer_certificate_sha256,
    server_context,
)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _sign(subject: str, public: Any, issuer: str, issuer_key: Any, ca: bool, san: list[str] | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in san]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem_key(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def ca_chain(directory: Path, leaf_key: Any = None) -> dict[str, Path]:
    """CA -> intermediate -> leaf (SAN node1.mesh); leaf file holds leaf + intermediate."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    int_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = leaf_key or ec.generate_private_key(ec.SECP256R1())
    ca = _sign("Test CA", ca_key.public_key(), "Test CA", ca_key, True)
    inter = _sign("Test Intermediate", int_key.public_key(), "Test CA", ca_key, True)
    leaf = _sign("node1.mesh", leaf_key.public_key(), "Test Intermediate", int_key, False, ["node1.mesh"])
    paths = {"ca": directory / "ca.crt", "chain": directory / "chain.crt", "key": directory / "leaf.key",
             "leaf_only": directory / "leaf.crt"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["chain"].write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + inter.public_bytes(serialization.Encoding.PEM))
    paths["leaf_only"].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(_pem_key(leaf_key))
    return paths


def rsa_self_signed(directory: Path, bits: int = 2048) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    cert = _sign("tunmesh.local", key.public_key(), "tunmesh.local", key, False, ["tunmesh.local"])
    cert_path, key_path = directory / f"rsa{bits}.crt", directory / f"rsa{bits}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_pem_key(key))
    return cert_path, key_path


@implementer(IOpenSSLClientConnectionCreator)
class RawClient:
    """A client creator from a bare pyOpenSSL context (to offer what our policy would not)."""

    def __init__(self, ctx: SSL.Context) -> None:
        self.ctx = ctx

    def clientConnectionForTLS(self, tls: Any) -> SSL.Connection:
        conn = SSL.Connection(self.ctx, None)
        conn.set_app_data(tls)
        return conn


@implementer(IOpenSSLServerConnectionCreator)
class RawServer:
    """A permissive server from a bare pyOpenSSL context: the control for refusal tests."""

    def __init__(self, ctx: SSL.Context) -> None:
        self.ctx = ctx

    def serverConnectionForTLS(self, tls: Any) -> SSL.Connection:
        return SSL.Connection(self.ctx, None)


def raw_client(min_v: int, max_v: int, ciphers: bytes = b"ALL:@SECLEVEL=0") -> RawClient:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(min_v)
    ctx.set_max_proto_version(max_v)
    ctx.set_cipher_list(ciphers)
    ctx.set_verify(SSL.VERIFY_NONE)
    return RawClient(ctx)


def permissive_server(cert: Path, key: Path) -> RawServer:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_VERSION)
    ctx.set_cipher_list(b"ALL:@SECLEVEL=0")
    ctx.use_certificate_chain_file(str(cert))
    ctx.use_privatekey_file(str(key))
    return RawServer(ctx)


# ---------------------------------------------------------------- tests


class ServerPolicyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = temp_dir(self)
        self.cert, self.key = self_signed(self.dir, "node")

    def _assert_refused(self, client: RawClient, control_cert: Path, control_key: Path, server: Any) -> None:
        _, _, control_app, _ = handshake(permissive_server(control_cert, control_key), client)
        if not control_app.handshake_done:
            raise SkipTest("this OpenSSL cannot negotiate the offered protocol at all")
        ctls, _, capp, sapp = handshake(server, client)
        self.assertFalse(capp.handshake_done)
        self.assertFalse(sapp.handshake_done)
        self.assertEqual(sapp.data, b"")

    def test_tls11_refused(self) -> None:
        self._assert_refused(raw_client(SSL.TLS1_1_VERSION, SSL.TLS1_1_VERSION), self.cert, self.key,
                             server_context(self.cert, self.key))

    def test_tls12_without_forward_secrecy_refused(self) -> None:
        rsa_cert, rsa_key = rsa_self_signed(self.dir)
        client = raw_client(SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION, b"AES128-GCM-SHA256:@SECLEVEL=0")
        self._assert_refused(client, rsa_cert, rsa_key, server_context(rsa_cert, rsa_key))

    def test_tls12_cbc_refused(self) -> None:
        client = raw_client(SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION, b"ECDHE-ECDSA-AES128-SHA256:@SECLEVEL=0")
        self._assert_refused(client, self.cert, self.key, server_context(self.cert, self.key))

    def test_tls12_ecdhe_aesgcm_accepted(self) -> None:
        client = raw_client(SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION, b"ECDHE-ECDSA-AES128-GCM-SHA256")
        ctls, _, capp, sapp = handshake(server_context(self.cert, self.key), client)
        self.assertTrue(capp.handshake_done)
        self.assertEqual(sapp.data, b"ping")
        self.assertEqual(ctls.getHandle().get_protocol_version_name(), "TLSv1.2")
        self.assertEqual(ctls.getHandle().get_cipher_name(), "ECDHE-ECDSA-AES128-GCM-SHA256")

    def test_tls12_rsa_key_ecdhe_accepted(self) -> None:
        rsa_cert, rsa_key = rsa_self_signed(self.dir)
        client = raw_client(SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION, b"ECDHE-RSA-CHACHA20-POLY1305")
        ctls, _, capp, _ = handshake(server_context(rsa_cert, rsa_key), client)
        self.assertTrue(capp.handshake_done)

    def test_server_prefers_its_own_order(self) -> None:
        client = raw_client(SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION,
                            b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384")
        ctls, _, capp, _ = handshake(server_context(self.cert, self.key), client)
        self.assertEqual(ctls.getHandle().get_cipher_name(), "ECDHE-ECDSA-AES256-GCM-SHA384")

    def test_tls13_accepted(self) -> None:
        client = raw_client(SSL.TLS1_3_VERSION, SSL.TLS1_3_VERSION, b"DEFAULT")
        ctls, _, capp, sapp = handshake(server_context(self.cert, self.key), client)
        self.assertTrue(capp.handshake_done)
        self.assertEqual(ctls.getHandle().get_protocol_version_name(), "TLSv1.3")
        self.assertEqual(sapp.data, b"ping")


class ServerConfigErrorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = temp_dir(self)
        self.cert, self.key = self_signed(self.dir, "node")

    def _error(self, cert: Path, key: Path) -> TLSConfigError:
        return self.assertRaises(TLSConfigError, server_context, cert, key)

    def test_garbage_cert(self) -> None:
        bad = self.dir / "bad.crt"
        bad.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
        err = self._error(bad, self.key)
        self.assertEqual(err.path, CERT_FILE_KEY)
        self.assertTrue(str(err).startswith(CERT_FILE_KEY + ": "))

    def test_missing_cert(self) -> None:
        self.assertEqual(self._error(self.dir / "absent.crt", self.key).path, CERT_FILE_KEY)

    def test_garbage_key(self) -> None:
        bad = self.dir / "bad.key"
        bad.write_bytes(b"nonsense")
        self.assertEqual(self._error(self.cert, bad).path, KEY_FILE_KEY)

    def test_missing_key(self) -> None:
        self.assertEqual(self._error(self.cert, self.dir / "absent.key").path, KEY_FILE_KEY)

    def test_mismatched_key(self) -> None:
        _, other_key = self_signed(self.dir, "other")
        err = self._error(self.cert, other_key)
        self.assertEqual(err.path, KEY_FILE_KEY)
        self.assertIn("does not match", err.message)

    def test_encrypted_key(self) -> None:
        key = serialization.load_pem_private_key(self.key.read_bytes(), None)
        enc = self.dir / "enc.key"
        enc.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.BestAvailableEncryption(b"pw")))
        self.assertIn("encrypted", self._error(self.cert, enc).message)

    def test_small_rsa_key(self) -> None:
        cert, key = rsa_self_signed(self.dir, bits=1024)
        self.assertIn("1024", self._error(cert, key).message)

    def test_unsupported_key_type(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ed25519

        key = self.dir / "ed.key"
        key.write_bytes(_pem_key(ed25519.Ed25519PrivateKey.generate()))
        self.assertIn("only RSA and ECDSA", self._error(self.cert, key).message)

    def test_chain_and_rsa_load(self) -> None:
        paths = ca_chain(self.dir)
        self.assertIsNotNone(server_context(paths["chain"], paths["key"]))


class ClientVerificationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = temp_dir(self)
        self.cert, self.key = self_signed(self.dir, "node", hostnames=("tunmesh.local",), ips=("127.0.0.1",))
        self.server = server_context(self.cert, self.key)

    def _client_ok(self, client: Any, server: Any = None) -> tuple[Any, Any]:
        ctls, _, capp, sapp = handshake(server or self.server, client)
        return ctls, capp

    def test_own_certificate_as_trust_anchor(self) -> None:
        ctls, capp = self._client_ok(client_context(self.cert, "198.18.0.9", verify_hostname=False))
        self.assertTrue(capp.handshake_done)
        self.assertEqual(peer_certificate_sha256(ctls), certificate_sha256(self.cert))
        self.assertEqual(local_certificate_sha256(self.cert), certificate_sha256(self.cert))

    def test_unknown_self_signed_rejected(self) -> None:
        other_cert, _ = self_signed(self.dir, "other")
        _, capp = self._client_ok(client_context(other_cert, "tunmesh.local", verify_hostname=False))
        self.assertFalse(capp.handshake_done)
        self.assertIsNotNone(capp.lost)

    def test_hostname_mismatch_accepted_without_verify_hostname(self) -> None:
        _, capp = self._client_ok(client_context(self.cert, "wrong.example", verify_hostname=False))
        self.assertTrue(capp.handshake_done)

    def test_hostname_mismatch_refused_with_verify_hostname(self) -> None:
        ctls, _, capp, sapp = handshake(self.server, client_context(self.cert, "wrong.example", verify_hostname=True))
        self.assertTrue(capp.lost.check(VerificationError))
        self.assertEqual(sapp.data, b"")

    def test_hostname_and_ip_match_with_verify_hostname(self) -> None:
        for host in ("tunmesh.local", "127.0.0.1"):
            _, capp = self._client_ok(client_context(self.cert, host, verify_hostname=True))
            self.assertTrue(capp.handshake_done, host)

    def test_ca_chain_with_intermediate(self) -> None:
        paths = ca_chain(self.dir)
        server = server_context(paths["chain"], paths["key"])
        _, capp = self._client_ok(client_context(paths["ca"], "node1.mesh", verify_hostname=True), server)
        self.assertTrue(capp.handshake_done)
        # Without the intermediate in the cert file the chain cannot be built.
        leaf_only = server_context(paths["leaf_only"], paths["key"])
        _, capp = self._client_ok(client_context(paths["ca"], "node1.mesh", verify_hostname=False), leaf_only)
        self.assertFalse(capp.handshake_done)

    def test_client_refuses_tls11_server(self) -> None:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_1_VERSION)
        ctx.set_max_proto_version(SSL.TLS1_1_VERSION)
        ctx.set_cipher_list(b"ALL:@SECLEVEL=0")
        ctx.use_certificate_chain_file(str(self.cert))
        ctx.use_privatekey_file(str(self.key))
        _, capp = self._client_ok(client_context(self.cert, "tunmesh.local", False), RawServer(ctx))
        self.assertFalse(capp.handshake_done)

    def test_policy_for_https_and_alpn(self) -> None:
        policy = MeshTLSPolicy(self.cert, verify_hostname=True, alpn=(b"tunmesh-link/1",))
        server = server_context(self.cert, self.key, alpn=(b"http/1.1", b"tunmesh-link/1"))
        creator = policy.creatorForNetloc(b"tunmesh.local", 4567)
        self.assertIs(creator, policy.creatorForNetloc(b"tunmesh.local", 4567))
        ctls, capp = self._client_ok(creator, server)
        self.assertTrue(capp.handshake_done)
        self.assertEqual(ctls.negotiatedProtocol, b"tunmesh-link/1")
        _, _, capp, sapp = handshake(server, policy.creatorForNetloc(b"other.name", 4567))
        self.assertTrue(capp.lost.check(VerificationError))
        self.assertEqual(sapp.data, b"")

    def test_peer_hash_without_tls_is_none(self) -> None:
        self.assertIsNone(peer_certificate_sha256(StringTransport()))


class TrustBundleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = temp_dir(self)

    def test_system_store_refused(self) -> None:
        for path in ("/etc/ssl/certs/ca-certificates.crt", "/etc/ssl/certs/some-ca.pem"):
            err = self.assertRaises(TLSConfigError, client_context, Path(path), "x", False)
            self.assertEqual(err.path, CA_FILE_KEY)
            self.assertIn("system CA store", err.message)
        self.assertFalse(is_system_trust_store(self.dir / "ca.crt"))

    def test_symlink_to_system_store_refused(self) -> None:
        system = Path("/etc/ssl/certs/ca-certificates.crt")
        if not system.exists():
            raise SkipTest("no system bundle here")
        link = self.dir / "innocent.crt"
        os.symlink(system, link)
        self.assertRaises(TLSConfigError, MeshTLSPolicy, link, False)

    def test_big_bundle_warns(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        certs = []
        for i in range(11):
            cert, _ = self_signed(self.dir, f"n{i}")
            certs.append(cert.read_bytes())
        bundle = self.dir / "bundle.crt"
        bundle.write_bytes(b"".join(certs))
        client_context(bundle, "x", False)
        self.assertTrue(any(e.get("count") == 11 for e in events))
        seen = len(events)
        client_context(self.dir / "n0.crt", "x", False)
        self.assertFalse(any("count" in e for e in events[seen:]))

    def test_trust_key_named_in_error(self) -> None:
        err = self.assertRaises(TLSConfigError, client_context, self.dir / "absent", "x", False,
                                trust_key=CERT_FILE_KEY)
        self.assertEqual(err.path, CERT_FILE_KEY)


