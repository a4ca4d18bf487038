"""
Import, before the privilege drop, everything the node would otherwise import later (security contract W19).

After the drop the process runs as ``process.uid``. When that uid cannot read the interpreter's files (a
pyenv Python under a ``0700`` home, a venv in root's home directory), every module imported *for the first
time* after the drop fails, and so does every codec looked up for the first time: Python finds codecs by
importing ``encodings.<name>``.  That is how a node used to answer 500 to every request with only
``unexpected LookupError in api`` in its log: werkzeug encodes the request's host with the ``idna`` codec
on every request.

:data:`PRELOAD_MODULES` lists what the request, registration, session and link paths import lazily, found
by running a two-node mesh with an import audit hook (see ``docs/security.md``, privilege drop);
:data:`WARM_UPS` call the lazy paths once, so anything they import transitively is loaded too. The
self-check after the drop (:mod:`tunmesh.selfcheck`) verifies the result as the new uid.
"""

from __future__ import annotations

import codecs
import importlib
from collections.abc import Callable, Sequence

from twisted.logger import Logger

from tunmesh.twisted_internals import private_modules

log = Logger(namespace="tunmesh.preload")

#: Codecs used by name on the node's paths (looked up again by the self-check, as the dropped uid).
#: ``json.loads`` of bytes picks the codec from the first bytes (``json.detect_encoding``): PyJWT runs it on
#: every HMAC key (``HMACAlgorithm.prepare_key`` looks for a JWK), so a derived key starting with a zero
#: byte needs ``utf-16-be`` or ``utf-32-be`` -- one cluster key or session key in a hundred or so -- and a
#: peer's body starting with one does too.
PRELOAD_CODECS: Sequence[str] = (
    "idna",
    "punycode",
    "ascii",
    "latin-1",
    "utf-8",
    # every answer of json.detect_encoding
    "utf-8-sig",
    "utf-16",
    "utf-16-be",
    "utf-16-le",
    "utf-32",
    "utf-32-be",
    "utf-32-le",
)

#: Modules imported lazily on the node's paths, with where.
PRELOAD_MODULES: Sequence[str] = (
    # Codecs: werkzeug's ``Map.bind`` encodes the Host with ``idna`` on every request; ``getaddrinfo`` and
    # twisted's ``_idnaBytes`` encode host names; ``encodings.idna`` imports ``stringprep`` itself.
    "encodings.idna",
    "encodings.punycode",
    "encodings.ascii",
    "encodings.latin_1",
    "encodings.utf_8",
    "stringprep",
    "idna",
    # private: listed in tunmesh.twisted_internals, preloaded where the installed Twisted has it
    *private_modules(),
    # twisted.web.http parses Content-Type with ``email.message.EmailMessage``, whose default policy and
    # header registry are imported on first use (the first request with a body).
    "email.message",
    "email.policy",
    "email.headerregistry",
    "email.contentmanager",
    "email._header_value_parser",
    # cryptography imports its OpenSSL backend on the first X25519 key generation (the session exchange).
    "cryptography.hazmat.backends.openssl.backend",
    # Imported inside functions on the client, session and link paths.
    "twisted.internet.endpoints",
    "twisted.web.client",
    "treq.client",
    "tunmesh.api.server",
)


def _warm_idna() -> None:
    "tunmesh.local".encode("idna")


def _warm_email() -> None:
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["content-type"] = "application/json; charset=utf-8"
    msg.get_content_type()


def _warm_x25519() -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    X25519PrivateKey.generate().public_key()


#: Lazy paths called once, so whatever they import transitively is loaded before the drop.
def _warm_twisted_internals() -> None:
    # The check of Twisted's private names builds sample protocols (importing what they need); done now,
    # as root, its cached result is what the data plane logs at start, after the drop.
    from tunmesh.twisted_internals import fast_path_active

    fast_path_active()


WARM_UPS: Sequence[Callable[[], None]] = (_warm_idna, _warm_email, _warm_x25519, _warm_twisted_internals)


class PreloadError(Exception):
    """A module the node needs later does not import even now; ``str()`` names it."""


def preload(
    modules: Sequence[str] = PRELOAD_MODULES,
    codec_names: Sequence[str] = PRELOAD_CODECS,
    warm_ups: Sequence[Callable[[], None]] = WARM_UPS,
    import_module: Callable[[str], object] = importlib.import_module,
) -> None:
    """
    Import ``modules``, look up ``codec_names`` and call ``warm_ups``, as root, before the drop.

    :raises PreloadError: one of them failed (the installation is broken: refusing now is better than a
        node that fails its first request).
    """
    for name in modules:
        try:
            import_module(name)
        except ImportError as e:
            raise PreloadError(f"cannot import {name} before the privilege drop: {e}") from e
    for codec in codec_names:
        try:
            codecs.lookup(codec)
        except LookupError as e:
            raise PreloadError(f"codec {codec!r} unavailable before the privilege drop: {e}") from e
    for warm_up in warm_ups:
        try:
            warm_up()
        except Exception as e:
            raise PreloadError(f"{warm_up.__name__.strip('_')} failed before the privilege drop: {e}") from e
    log.debug("preloaded {count} modules before the privilege drop", count=len(modules))


__all__ = ["PRELOAD_CODECS", "PRELOAD_MODULES", "WARM_UPS", "PreloadError", "preload"]
