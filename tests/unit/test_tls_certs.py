"""Tests for tunmesh.tls.certs: self-signed generation and fingerprints."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import stat

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.tls_support import temp_dir
from tunmesh.tls.certs import CertificateFileError, certificate_sha256, load_certificates, write_self_signed


class SelfSignedTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = temp_dir(self)
        self.cert, self.key = self.dir / "c.pem", self.dir / "k.pem"

    def test_key_mode_sans_and_curve(self) -> None:
        self.key.write_bytes(b"old")
        os.chmod(self.key, 0o644)
        write_self_signed(self.cert, self.key, ("a.mesh", "b.mesh"), ("198.18.0.1", "fd00::1"), days=10)
        self.assertEqual(stat.S_IMODE(os.stat(self.key).st_mode), 0o600)
        cert = load_certificates(self.cert)[0]
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["a.mesh", "b.mesh"])
        self.assertEqual(san.get_values_for_type(x509.IPAddress),
                         [ipaddress.ip_address("198.18.0.1"), ipaddress.ip_address("fd00::1")])
        key = serialization.load_pem_private_key(self.key.read_bytes(), None)
        self.assertIsInstance(key, ec.EllipticCurvePrivateKey)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.assertEqual(key.curve.name, "secp256r1")
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        self.assertLess(abs(lifetime.days - 10), 2)

    def test_bad_arguments(self) -> None:
        self.assertRaises(ValueError, write_self_signed, self.cert, self.key, (), ())
        self.assertRaises(ValueError, write_self_signed, self.cert, self.key, ("a",), (), 0)
        self.assertRaises(ValueError, write_self_signed, self.cert, self.key, ("a",), ("not-an-ip",))

    def test_sha256_is_of_the_der_leaf(self) -> None:
        write_self_signed(self.cert, self.key)
        der = load_certificates(self.cert)[0].public_bytes(serialization.Encoding.DER)
        self.assertEqual(certificate_sha256(self.cert), hashlib.sha256(der).digest())
        other = self.dir / "o.pem"
        write_self_signed(other, self.dir / "ok.pem")
        self.assertNotEqual(certificate_sha256(self.cert), certificate_sha256(other))

    def test_unreadable_or_empty_file(self) -> None:
        self.assertRaises(CertificateFileError, certificate_sha256, self.dir / "absent.pem")
        self.cert.write_bytes(b"no pem here")
        self.assertRaises(CertificateFileError, certificate_sha256, self.cert)
