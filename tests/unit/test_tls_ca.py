"""The private CA model (tunmesh.tls.certs make_ca/sign_node, ``tunmesh cert ca|sign``): what the files hold,
and real OpenSSL handshakes (in memory) through the node's own TLS policy, including a CA rollover with a
bundle holding the old and the new CA under the same name."""

from __future__ import annotations

import datetime
import io
import ipaddress
import os
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.tls_support import handshake
from tunmesh.cli import main
from tunmesh.testing import FakeMetrics
from tunmesh.tls.certs import (
    CAError,
    Issued,
    certificate_sha256,
    fingerprint,
    load_ca,
    load_certificates,
    make_ca,
    sign_node,
    signed_by,
    write_issued,
    write_self_signed,
)
from tunmesh.tls.contexts import MeshTLSPolicy, client_context, peer_certificate_sha256, server_context
from tunmesh.tls.expiry import CertExpiryWatch

NOW = datetime.datetime(2026, 11, 29, 12, 0, tzinfo=datetime.UTC)


def write_pem(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


class MakeAndSignTests(SynchronousTestCase):
    def test_ca_is_a_p256_ca_that_signs_certificates_only(self) -> None:
        ca = make_ca("Example CA", "Example Org", days=100, now=NOW)
        self.assertIsInstance(ca.key, ec.EllipticCurvePrivateKey)
        self.assertEqual(ca.key.curve.name, "secp256r1")
        c = ca.cert
        self.assertEqual(c.subject, c.issuer)
        self.assertEqual(c.subject.rfc4514_string(), "CN=Example CA,O=Example Org")
        basic = c.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertTrue(basic.critical)
        self.assertEqual((basic.value.ca, basic.value.path_length), (True, 0))
        usage = c.extensions.get_extension_for_class(x509.KeyUsage)
        self.assertTrue(usage.critical)
        self.assertTrue(usage.value.key_cert_sign and usage.value.crl_sign)
        self.assertEqual(c.not_valid_after_utc - NOW, datetime.timedelta(days=100))
        self.assertLessEqual(c.not_valid_before_utc, NOW)
        self.assertTrue(signed_by(c, c))

    def test_node_certificate_has_sans_eku_and_points_at_its_ca(self) -> None:
        ca = make_ca("CA", now=NOW)
        node = sign_node(ca, ["n1.mesh"], ["198.18.0.1", "fd00::1"], days=30, now=NOW).cert
        self.assertEqual(node.issuer, ca.cert.subject)
        self.assertEqual(node.subject.rfc4514_string(), "CN=n1.mesh")
        san = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["n1.mesh"])
        self.assertEqual(san.get_values_for_type(x509.IPAddress),
                         [ipaddress.ip_address("198.18.0.1"), ipaddress.ip_address("fd00::1")])
        self.assertFalse(node.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        self.assertEqual(list(node.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value),
                         [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
        aki = node.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        self.assertEqual(aki.key_identifier, ski.digest)
        self.assertEqual(node.not_valid_after_utc - NOW, datetime.timedelta(days=30))
        self.assertTrue(signed_by(node, ca.cert))
        self.assertFalse(signed_by(node, make_ca("CA", now=NOW).cert))  # same name, other key

    def test_node_certificate_ends_with_its_ca_at_the_latest(self) -> None:
        ca = make_ca("CA", days=10, now=NOW)
        node = sign_node(ca, ["n1"], days=365, now=NOW).cert
        self.assertEqual(node.not_valid_after_utc, ca.cert.not_valid_after_utc)

    def test_bad_arguments(self) -> None:
        ca = make_ca("CA", now=NOW)
        self.assertRaises(ValueError, sign_node, ca, [], [])
        self.assertRaises(ValueError, sign_node, ca, ["n"], [], None, 0)
        self.assertRaises(ValueError, sign_node, ca, [], ["1.2.3.x"])
        self.assertRaises(ValueError, make_ca, "CA", None, 0)
        self.assertRaises(ValueError, make_ca, "")


class LoadCATests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.ca = make_ca("CA", now=NOW)
        self.cert, self.key = self.dir / "ca.pem", self.dir / "ca.key"
        write_issued(self.ca, self.cert, self.key)

    def test_round_trip(self) -> None:
        loaded = load_ca(self.cert, self.key, now=NOW)
        self.assertEqual(loaded.cert, self.ca.cert)
        self.assertEqual(loaded.key_pem, self.ca.key_pem)

    def test_refusals_name_the_problem(self) -> None:
        other = make_ca("Other", now=NOW)
        write_issued(other, self.dir / "o.pem", self.dir / "o.key")
        leaf = sign_node(self.ca, ["n1"], now=NOW)
        write_issued(leaf, self.dir / "leaf.pem", self.dir / "leaf.key")
        (self.dir / "junk").write_text("junk")
        cases = {
            (self.cert, self.dir / "o.key"): "does not match",
            (self.dir / "leaf.pem", self.dir / "leaf.key"): "not a CA certificate",
            (self.cert, self.dir / "absent"): "cannot read",
            (self.cert, self.dir / "junk"): "no valid PEM private key",
            (self.dir / "junk", self.key): "no valid PEM certificate",
        }
        for (cert, key), words in cases.items():
            with self.subTest(cert=cert.name, key=key.name):
                e = self.assertRaises(CAError, load_ca, cert, key, NOW)
                self.assertIn(words, str(e))
        later = NOW + datetime.timedelta(days=4000)
        self.assertIn("expired", str(self.assertRaises(CAError, load_ca, self.cert, self.key, later)))


class WriteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.cert, self.key = self.dir / "c.pem", self.dir / "k.pem"

    def test_key_is_0600_and_existing_files_are_kept_without_force(self) -> None:
        first = make_ca("CA", now=NOW)
        self.addCleanup(os.umask, os.umask(0))  # whatever the umask, the key is 0600
        write_issued(first, self.cert, self.key)
        self.assertEqual(stat.S_IMODE(os.stat(self.key).st_mode), 0o600)
        second = make_ca("CA", now=NOW)
        for existing in (self.cert, self.key):
            other = self.dir / ("k2.pem" if existing == self.cert else "c2.pem")
            paths = (existing, other) if existing == self.cert else (other, existing)
            e = self.assertRaises(FileExistsError, write_issued, second, *paths)
            self.assertIn("--force", str(e))
            self.assertFalse(other.exists(), "nothing is written when one file exists")
        self.assertEqual(load_certificates(self.cert)[0], first.cert)
        self.key.chmod(0o644)
        write_issued(second, self.cert, self.key, force=True)
        self.assertEqual(load_certificates(self.cert)[0], second.cert)
        self.assertEqual(self.key.read_bytes(), second.key_pem)
        self.assertEqual(stat.S_IMODE(os.stat(self.key).st_mode), 0o600)

    def test_one_path_for_both_is_refused(self) -> None:
        self.assertRaises(ValueError, write_issued, make_ca("CA"), self.cert, self.cert)

    def test_fingerprint_is_openssl_style_sha256_of_der(self) -> None:
        ca = make_ca("CA")
        write_issued(ca, self.cert, self.key)
        self.assertEqual(fingerprint(ca.cert), certificate_sha256(self.cert).hex(":").upper())


class HandshakeTests(SynchronousTestCase):
    """Node certificates from a CA through ``server_context`` / ``client_context`` / ``MeshTLSPolicy``."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        # Both CAs carry the same name: a bundle must tell them apart by key (authority key identifier).
        self.old, self.new = make_ca("tunmesh CA"), make_ca("tunmesh CA")
        self.old_pem = write_pem(self.dir / "old.pem", self.old.cert)
        self.new_pem = write_pem(self.dir / "new.pem", self.new.cert)
        self.both_pem = write_pem(self.dir / "both.pem", self.old.cert, self.new.cert)
        self.new_first_pem = write_pem(self.dir / "both2.pem", self.new.cert, self.old.cert)

    def node(self, ca: Issued, name: str) -> tuple[Path, Path]:
        cert, key = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        write_issued(sign_node(ca, ["node.mesh"], ["198.18.0.1"]), cert, key)
        return cert, key

    def connects(self, server: tuple[Path, Path], trust: Path, host: str = "198.18.0.1", verify: bool = True) -> bool:
        """Whether a client verifying against ``trust`` completes a handshake and keeps the connection
        (a name mismatch is found after the handshake and closes it)."""
        ctls, _, capp, sapp = handshake(server_context(*server), client_context(trust, host, verify))
        ok = bool(capp.handshake_done) and capp.lost is None and sapp.data == b"ping"
        if ok:
            self.assertEqual(peer_certificate_sha256(ctls), certificate_sha256(server[0]))
        return ok

    def test_node_certificate_verifies_against_its_ca_with_names(self) -> None:
        server = self.node(self.old, "n1")
        self.assertTrue(self.connects(server, self.old_pem))
        self.assertTrue(self.connects(server, self.old_pem, host="node.mesh"))
        self.assertFalse(self.connects(server, self.old_pem, host="198.18.0.2"))
        self.assertTrue(self.connects(server, self.old_pem, host="198.18.0.2", verify=False))
        self.assertFalse(self.connects(server, self.new_pem))
        # a CA-issued leaf is not a trust anchor by itself (OpenSSL wants the chain to end at a root)
        self.assertFalse(self.connects(server, server[0]))

    def test_bundle_with_old_and_new_ca_accepts_both_in_either_order(self) -> None:
        old_node, new_node = self.node(self.old, "o"), self.node(self.new, "n")
        for bundle in (self.both_pem, self.new_first_pem):
            self.assertTrue(self.connects(old_node, bundle), bundle.name)
            self.assertTrue(self.connects(new_node, bundle), bundle.name)

    def test_rollover_steps_through_one_policy(self) -> None:
        """The three steps of the documented rollover, as a node's policy sees them after each reload."""
        old_node, new_node = self.node(self.old, "o"), self.node(self.new, "n")
        policy = MeshTLSPolicy(self.old_pem, True)

        def accepts(server: tuple[Path, Path]) -> bool:
            _, _, capp, sapp = handshake(server_context(*server), policy.creatorForNetloc(b"198.18.0.1", 4567))
            return bool(capp.handshake_done) and capp.lost is None and sapp.data == b"ping"

        self.assertEqual((accepts(old_node), accepts(new_node)), (True, False))
        policy.replace_trust(load_certificates(self.both_pem), True)  # 1. new CA added to the bundle
        self.assertEqual((accepts(old_node), accepts(new_node)), (True, True))  # 2. nodes re-issued meanwhile
        policy.replace_trust(load_certificates(self.new_pem), True)  # 3. old CA removed
        self.assertEqual((accepts(old_node), accepts(new_node)), (False, True))

    def test_expiry_gauge_follows_the_soonest_ca_of_the_bundle(self) -> None:
        old = make_ca("old", days=10)
        new = make_ca("new", days=3650)
        metrics = FakeMetrics()
        watch = CertExpiryWatch(metrics, None)  # type: ignore[arg-type]
        node = sign_node(new, ["n"]).cert
        watch.set_certificates(node, [old.cert, new.cert])
        self.assertEqual(metrics.value("cert_expiry_timestamp_seconds", "ca"), old.cert.not_valid_after_utc.timestamp())
        self.assertEqual(metrics.value("cert_expiry_timestamp_seconds", "node"), node.not_valid_after_utc.timestamp())
        watch.set_certificates(node, [new.cert])
        self.assertEqual(metrics.value("cert_expiry_timestamp_seconds", "ca"), new.cert.not_valid_after_utc.timestamp())


class CertCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()

    def cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(list(argv), stdout=out, stderr=err, env={})
        return code, out.getvalue(), err.getvalue()

    def p(self, name: str) -> str:
        return str(self.dir / name)

    def make_ca(self, *extra: str) -> tuple[int, str, str]:
        return self.cli("cert", "ca", "--cert", self.p("ca.pem"), "--key", self.p("ca.key"), *extra)

    def sign(self, *extra: str) -> tuple[int, str, str]:
        return self.cli("cert", "sign", "--ca-cert", self.p("ca.pem"), "--ca-key", self.p("ca.key"),
                        "--cert", self.p("n1.pem"), "--key", self.p("n1.key"), *extra)

    def test_ca_then_sign_print_files_and_fingerprints(self) -> None:
        code, out, err = self.make_ca("--name", "Mesh CA", "--org", "Example", "--days", "20")
        self.assertEqual((code, err), (0, ""))
        ca = load_certificates(self.dir / "ca.pem")[0]
        self.assertEqual(ca.subject.rfc4514_string(), "CN=Mesh CA,O=Example")
        self.assertIn(f"wrote {self.p('ca.key')}: private key (ECDSA P-256), mode 0600", out)
        self.assertIn(f"wrote {self.p('ca.pem')}: CA certificate CN=Mesh CA,O=Example, valid until", out)
        self.assertIn(f"SHA-256 fingerprint {fingerprint(ca)}", out)
        self.assertEqual(stat.S_IMODE(os.stat(self.dir / "ca.key").st_mode), 0o600)

        code, out, err = self.sign("--hostname", "n1.mesh", "--ip", "198.18.0.1", "--days", "365")
        self.assertEqual((code, err), (0, ""))
        node = load_certificates(self.dir / "n1.pem")[0]
        self.assertTrue(signed_by(node, ca))
        self.assertIn("subjectAltName DNS:n1.mesh, IP:198.18.0.1", out)
        self.assertIn("(the CA's end: a certificate cannot outlive its CA)", out)
        self.assertIn(f"SHA-256 fingerprint {fingerprint(node)}", out)
        self.assertEqual(stat.S_IMODE(os.stat(self.dir / "n1.key").st_mode), 0o600)
        # what the daemon loads: the pair matches and verifies against the CA with the IP name
        ctls, _, capp, _ = handshake(server_context(self.dir / "n1.pem", self.dir / "n1.key"),
                                     client_context(self.dir / "ca.pem", "198.18.0.1", True))
        self.assertTrue(capp.handshake_done)

    def test_default_ca_name_has_the_date(self) -> None:
        self.assertEqual(self.make_ca()[0], 0)
        name = load_certificates(self.dir / "ca.pem")[0].subject.rfc4514_string()
        self.assertRegex(name, r"^CN=tunmesh CA \d{4}-\d\d-\d\d$")

    def test_existing_files_are_refused_without_force(self) -> None:
        self.make_ca()
        before = (self.dir / "ca.pem").read_bytes(), (self.dir / "ca.key").read_bytes()
        code, out, err = self.make_ca()
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, f"tunmesh: cert ca: {self.p('ca.key')} and {self.p('ca.pem')} already exist; "
                              "use --force to replace\n")
        self.assertEqual(((self.dir / "ca.pem").read_bytes(), (self.dir / "ca.key").read_bytes()), before)
        self.assertEqual(self.make_ca("--force")[0], 0)
        self.assertNotEqual((self.dir / "ca.pem").read_bytes(), before[0])

        self.assertEqual(self.sign("--ip", "198.18.0.1")[0], 0)
        code, _, err = self.sign("--ip", "198.18.0.1")
        self.assertEqual(code, 1)
        self.assertIn("already exist; use --force to replace", err)
        self.assertEqual(self.sign("--ip", "198.18.0.1", "--force")[0], 0)

    def test_sign_errors_are_one_line(self) -> None:
        self.make_ca()
        write_self_signed(self.dir / "ss.pem", self.dir / "ss.key")
        cases = {
            ("--ip", "198.18.0.x"): "does not appear to be an IPv4 or IPv6 address",
            (): "at least one hostname (--hostname) or IP address (--ip)",
            ("--ip", "198.18.0.1", "--days", "0"): "days must be >= 1",
        }
        for extra, words in cases.items():
            code, out, err = self.sign(*extra)
            self.assertEqual((code, out, err.count("\n")), (1, "", 1), err)
            self.assertIn(words, err)
        code, _, err = self.cli("cert", "sign", "--ca-cert", self.p("ss.pem"), "--ca-key", self.p("ss.key"),
                                "--cert", self.p("x.pem"), "--key", self.p("x.key"), "--ip", "198.18.0.1")
        self.assertEqual(code, 1)
        self.assertIn("is not a CA certificate", err)
        self.assertFalse((self.dir / "x.pem").exists() or (self.dir / "x.key").exists())

    def test_usage_errors(self) -> None:
        self.assertEqual(self.cli("cert")[0], 2)
        self.assertEqual(self.cli("cert", "ca")[0], 2)
        self.assertEqual(self.cli("cert", "sign", "--cert", "x", "--key", "y")[0], 2)
