"""TLS policy for the one port: server and client connection creators.

The policy is the security contract's: TLS 1.2 minimum, only forward-secret AEAD suites for TLS 1.2
(W2(a): Twisted's defaults still allow kRSA), server cipher preference, ALPN so the API and the
data-plane links share the port. Clients verify the peer's chain against the configured CA bundle
(or the node's own certificate when there is no CA, as in the original, so one self-signed
certificate shared by all nodes works) and check the hostname only when ``verify_hostname`` is set;
Twisted's ``optionsForClientTLS`` always checks it, hence our own client creator. The server
certificate's SHA-256 is exposed for channel binding (W5(a)).
"""

from __future__ import annotations

import os
import ssl as _stdlib_ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from service_identity.pyopenssl import verify_hostname, verify_ip_address
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    ISSLTransport,
)
from twisted.internet.ssl import (
    AcceptableCiphers,
    Certificate,
    CertificateOptions,
    TLSVersion,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from tunmesh.tls.certs import CertificateFileError, certificate_der_sha256, load_certificates

CERT_FILE_KEY = "tun_mesh/control_api/ssl/cert_file_path"
KEY_FILE_KEY = "tun_mesh/control_api/ssl/key_file_path"
CA_FILE_KEY = "tun_mesh/control_api/ssl/ca_file_path"

#: OpenSSL cipher string for TLS 1.2: ECDHE key exchange and AEAD only (W2(a)).
#: TLS 1.3 suites are configured separately by OpenSSL and are all forward-secret AEAD.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
DEFAULT_ALPN: tuple[bytes, ...] = (b"http/1.1",)
#: More certificates than this in a trust bundle is suspicious: a mesh needs one CA or one cert (W5(b)).
TRUST_BUNDLE_WARN_COUNT = 10
MIN_RSA_BITS = 2048
#: Elliptic curves below 256 bits (secp192r1, secp224r1, the binary sect163/233 curves) are refused.
MIN_EC_BITS = 256

_log = Logger()


def _certifi_bundle() -> str | None:
    try:
        import certifi  # noqa: PLC0415  (optional; only to recognise its bundle)
    except ImportError:
        return None
    return str(certifi.where())


#: certifi's bundle, when certifi is installed. Looked up at import, as root: a SIGHUP reload checks the
#: trust bundle after the privilege drop, when certifi may no longer be importable (tunmesh.preload).
_CERTIFI_BUNDLE = _certifi_bundle()


class TLSConfigError(ValueError):
    """A TLS file is unusable; names the config key so the user knows what to fix.

    ``str()`` is ``"<key path>: <message>"``, the same shape as ``tunmesh.config.ConfigError``.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def _system_trust_paths() -> frozenset[Path]:
    """Files and directories that are (or hold) the system's public CA store."""
    paths = {
        "/etc/ssl/certs",
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/ssl/cert.pem",
        "/etc/pki/tls/certs",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/pki/tls/cert.pem",
        "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
        "/etc/ssl/ca-bundle.pem",
        "/usr/share/ca-certificates",
        "/usr/local/share/certs/ca-root-nss.crt",
    }
    defaults = _stdlib_ssl.get_default_verify_paths()
    for candidate in (defaults.cafile, defaults.capath, defaults.openssl_cafile, defaults.openssl_capath):
        if candidate:
            paths.add(candidate)
    if _CERTIFI_BUNDLE is not None:
        paths.add(_CERTIFI_BUNDLE)
    resolved = set()
    for p in paths:
        resolved.add(Path(p))
        try:
            resolved.add(Path(p).resolve())
        except OSError:
            pass
    return frozenset(resolved)


def is_system_trust_store(path: Path) -> bool:
    """True when ``path`` is, or lies inside, a public/system CA store (refused by W5(b))."""
    candidates = {Path(path), Path(os.path.abspath(path))}
    try:
        candidates.add(Path(path).resolve())
    except OSError:
        pass
    system = _system_trust_paths()
    for candidate in candidates:
        if candidate in system:
            return True
        if any(parent in system and parent.is_dir() for parent in candidate.parents):
            return True
    return False


def _load_chain(cert_path: Path, key_name: str) -> list[x509.Certificate]:
    try:
        return load_certificates(cert_path)
    except CertificateFileError as exc:
        raise TLSConfigError(key_name, str(exc)) from None


def _load_private_key(key_path: Path) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    try:
        data = Path(key_path).read_bytes()
    except OSError as exc:
        raise TLSConfigError(KEY_FILE_KEY, f"cannot read {key_path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSConfigError(KEY_FILE_KEY, f"{key_path} is encrypted; an unencrypted key is required") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSConfigError(KEY_FILE_KEY, f"{key_path} holds no valid PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise TLSConfigError(KEY_FILE_KEY, f"RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} required")
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size < MIN_EC_BITS:
            raise TLSConfigError(
                KEY_FILE_KEY, f"EC key on curve {key.curve.name} ({key.curve.key_size} bits); at least {MIN_EC_BITS} required"
            )
        return key
    raise TLSConfigError(KEY_FILE_KEY, f"{key_path}: only RSA and ECDSA keys are supported")


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _acceptable_ciphers() -> AcceptableCiphers:
    return AcceptableCiphers.fromOpenSSLCipherString(TLS12_CIPHERS)


def server_context(
    cert_path: Path,
    key_path: Path,
    alpn: Sequence[bytes] = DEFAULT_ALPN,
) -> IOpenSSLServerConnectionCreator:
    """The server side of the port: certificate chain + key, TLS >= 1.2, FS AEAD, ALPN ``alpn``.

    The certificate file may hold intermediates after the leaf; they are sent in the handshake.
    Raises :exc:`TLSConfigError` for unreadable or malformed files and for a key that does not match
    the certificate, here at startup rather than at the first handshake.
    """
    chain = _load_chain(cert_path, CERT_FILE_KEY)
    key = _load_private_key(key_path)
    if _spki(chain[0].public_key()) != _spki(key.public_key()):
        raise TLSConfigError(KEY_FILE_KEY, f"{key_path} does not match the certificate in {cert_path}")
    options = CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),
        certificate=crypto.X509.from_cryptography(chain[0]),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in chain[1:]],
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableCiphers=_acceptable_ciphers(),
        acceptableProtocols=list(alpn) or None,
        enableSessionTickets=False,
    )
    try:
        options.getContext()
    except SSL.Error as exc:
        raise TLSConfigError(CERT_FILE_KEY, f"OpenSSL refused the certificate/key pair: {exc}") from None
    return options


def load_trust_bundle(trust_path: Path, key_name: str = CA_FILE_KEY) -> list[x509.Certificate]:
    """Certificates to verify peers against; refuses the system store (W5(b)), warns on big bundles."""
    if is_system_trust_store(trust_path):
        raise TLSConfigError(
            key_name,
            f"{trust_path} is the system CA store; anyone with a public certificate could relay the mesh. "
            "Use a private CA or the nodes' own certificate",
        )
    certs = _load_chain(trust_path, key_name)
    if len(certs) > TRUST_BUNDLE_WARN_COUNT:
        _log.warn(
            "trust bundle {path} holds {count} certificates; a mesh normally needs one CA or one certificate",
            path=str(trust_path),
            count=len(certs),
        )
    return certs


@implementer(IOpenSSLClientConnectionCreator)
class MeshClientTLSCreator:
    """Client connections that verify the chain, send SNI, and check the name only when asked.

    Modelled on Twisted's ``ClientTLSOptions``; the difference is that the hostname check is optional
    (``verify_hostname`` of the original), the chain check never is.
    """

    def __init__(
        self,
        context: SSL.Context,
        hostname: str,
        verify_hostname: bool,
        alpn: Sequence[bytes] = DEFAULT_ALPN,
    ) -> None:
        self._context = context
        self._alpn = list(alpn)
        self._hostname = hostname
        self._verify_hostname = verify_hostname
        self._is_ip = bool(isIPAddress(hostname) or isIPv6Address(hostname))
        self._sni = None if self._is_ip else hostname.encode("idna")
        context.set_info_callback(self._info_callback)

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._alpn:
            connection.set_alpn_protos(self._alpn)
        return connection

    def _info_callback(self, connection: SSL.Connection, where: int, ret: int) -> None:
        # Exceptions must not escape into OpenSSL's callback machinery.
        try:
            if where & SSL.SSL_CB_HANDSHAKE_START and self._sni is not None:
                connection.set_tlsext_host_name(self._sni)
            elif where & SSL.SSL_CB_HANDSHAKE_DONE and self._verify_hostname:
                try:
                    if self._is_ip:
                        verify_ip_address(connection, self._hostname)
                    else:
                        verify_hostname(connection, self._hostname)
                except VerificationError:
                    connection.get_app_data().failVerification(Failure())
        except Exception:
            _log.failure("TLS client info callback failed")
            connection.get_app_data().abortConnection()


def _client_options(trust: Sequence[x509.Certificate], alpn: Sequence[bytes]) -> CertificateOptions:
    return CertificateOptions(
        trustRoot=trustRootFromCertificates([Certificate(crypto.X509.from_cryptography(c)) for c in trust]),
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableCiphers=_acceptable_ciphers(),
        acceptableProtocols=list(alpn) or None,
    )


def client_context(
    trust_path: Path,
    hostname: str,
    verify_hostname: bool,
    alpn: Sequence[bytes] = DEFAULT_ALPN,
    trust_key: str = CA_FILE_KEY,
) -> IOpenSSLClientConnectionCreator:
    """A client creator verifying the peer against ``trust_path`` (CA bundle or the node's own cert).

    ``trust_key`` is the config key named in errors (``cert_file_path`` when the node's own
    certificate is the trust anchor).
    """
    trust = load_trust_bundle(trust_path, trust_key)
    return MeshClientTLSCreator(_client_options(trust, alpn).getContext(), hostname, verify_hostname, alpn)


@implementer(IPolicyForHTTPS)
class MeshTLSPolicy:
    """``IPolicyForHTTPS`` for treq/``Agent``: the mesh trust anchors instead of the system store.

    The bundle is read once; one context per hostname is cached (the name check is bound to it).
    """

    _CACHE_LIMIT = 1024

    def __init__(
        self,
        trust_path: Path,
        verify_hostname: bool,
        alpn: Sequence[bytes] = DEFAULT_ALPN,
        trust_key: str = CA_FILE_KEY,
    ) -> None:
        self._trust = load_trust_bundle(trust_path, trust_key)
        self._verify_hostname = verify_hostname
        self._alpn = tuple(alpn)
        self._creators: dict[str, MeshClientTLSCreator] = {}

    @property
    def trust(self) -> tuple[x509.Certificate, ...]:
        """The trust anchors new connections are verified against."""
        return tuple(self._trust)

    @property
    def verify_hostname(self) -> bool:
        return self._verify_hostname

    def replace_trust(self, trust: Sequence[x509.Certificate], verify_hostname: bool) -> None:
        """Verify connections made from now on against ``trust`` (from :func:`load_trust_bundle`);
        established connections keep the verification they had (SIGHUP reload)."""
        self._trust = list(trust)
        self._verify_hostname = verify_hostname
        self._creators.clear()

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        name = hostname.decode("ascii") if isinstance(hostname, bytes) else hostname
        creator = self._creators.get(name)
        if creator is None:
            if len(self._creators) >= self._CACHE_LIMIT:
                self._creators.clear()
            context = _client_options(self._trust, self._alpn).getContext()
            creator = self._creators[name] = MeshClientTLSCreator(
                context, name, self._verify_hostname, self._alpn
            )
        return creator


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """The server side of the port, replaceable while the node runs (SIGHUP reload).

    Connections accepted after :meth:`replace` use the new certificate and key; established ones
    keep the session they negotiated. ``current`` is a creator from :func:`server_context`.
    """

    def __init__(self, current: IOpenSSLServerConnectionCreator) -> None:
        self.current = current

    def replace(self, creator: IOpenSSLServerConnectionCreator) -> None:
        self.current = creator

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:  # noqa: N802 (Twisted's name)
        return self.current.serverConnectionForTLS(tlsProtocol)


def peer_certificate_sha256(transport: object) -> bytes | None:
    """SHA-256 of the DER of the peer's certificate on a TLS transport, or None before/without TLS."""
    tls = ISSLTransport(transport, None)
    if tls is None:
        return None
    try:
        peer = tls.getPeerCertificate()
    except (SSL.Error, AttributeError):
        return None
    if peer is None:
        return None
    # ISSLTransport declares the certificate as ``object``; on Twisted's TLS transports it is the
    # pyOpenSSL X509 of the connection.
    return certificate_der_sha256(cast(crypto.X509, peer).to_cryptography())


def local_certificate_sha256(cert_path: Path) -> bytes:
    """The SHA-256 (``x5t#S256``) of this node's own (leaf) certificate (diagnostics; W5(a) binds the TLS exporter)."""
    try:
        return certificate_der_sha256(load_certificates(cert_path)[0])
    except CertificateFileError as exc:
        raise TLSConfigError(CERT_FILE_KEY, str(exc)) from None


__all__ = [
    "CA_FILE_KEY",
    "CERT_FILE_KEY",
    "KEY_FILE_KEY",
    "MIN_EC_BITS",
    "MIN_RSA_BITS",
    "TLS12_CIPHERS",
    "MeshClientTLSCreator",
    "MeshTLSPolicy",
    "TLSConfigError",
    "client_context",
    "is_system_trust_store",
    "load_trust_bundle",
    "local_certificate_sha256",
    "peer_certificate_sha256",
    "server_context",
    "ReloadableServerTLS",
]
