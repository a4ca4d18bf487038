"""
After the privilege drop, the node works or it exits (security contract W19, ``docs/security.md``).

:class:`SelfCheck` runs right after the drop, as ``process.uid``, before the reactor starts. It serves a few
real requests through the node's own ``Site`` in memory (``/health``, ``/ready``, ``/metrics``,
``node_info``, a 405, a 404, a POST with a JSON body), so the whole request path runs as the new uid: werkzeug's routing and its codec
lookups, klein's error handling, the JSON renderers, Content-Type parsing. It also looks up the codecs the
node uses, signs and verifies a cluster token with a throwaway key, generates an X25519 key (the session
exchange) and reads the files the node re-reads later. The first failure raises :class:`SelfCheckError`,
whose message is one line naming the cause; when a directory of the interpreter is unreadable by the uid,
that directory is named, since it is the usual cause (:func:`blocking_paths`).

When everything passes but part of the installation is unreadable, the check logs one warning naming it:
what the node needs was imported before the drop (:mod:`tunmesh.preload`), but a path never seen before
would fail.
"""

from __future__ import annotations

import codecs
import os
import sys
import sysconfig
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IProducer, ITransport
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.server import Site
from zope.interface import implementer

from tunmesh.auth.cluster import ClusterAuthority
from tunmesh.config.tree import TunMeshConfig
from tunmesh.preflight import files_read_after_drop
from tunmesh.preload import PRELOAD_CODECS

log = Logger(namespace="tunmesh.selfcheck")

#: Packages whose directories must be readable for a module first imported after the drop to load.
INSTALLATION_PACKAGES: Sequence[str] = ("tunmesh", "twisted", "klein", "werkzeug", "treq", "cryptography", "OpenSSL")


class SelfCheckError(Exception):
    """The node would not work as the dropped uid; ``str()`` is one line naming the cause."""


@dataclass(frozen=True)
class Probe:
    """One in-memory request and the statuses that mean the path works (anything else, a 500 above
    all, is a failure)."""

    method: bytes
    path: bytes
    expect: frozenset[int]
    body: bytes = b""
    content_type: bytes | None = None


#: The requests the self-check serves through the node's ``Site``. ``/health`` and ``/ready`` may
#: answer 503: the check runs before the services have started; ``/metrics`` is 404 when monitoring is
#: off. None of them counts in a metric or touches membership.
DEFAULT_PROBES: Sequence[Probe] = (
    Probe(b"GET", b"/health", frozenset({200, 503})),
    Probe(b"GET", b"/ready", frozenset({200, 503})),
    Probe(b"GET", b"/metrics", frozenset({200, 404})),
    Probe(b"GET", b"/tunmesh/control/v0/node_info", frozenset({200})),
    Probe(b"DELETE", b"/health", frozenset({405})),
    Probe(b"GET", b"/tunmesh-self-check", frozenset({404})),
    Probe(b"POST", b"/tunmesh-self-check", frozenset({404, 405}), b"{}", b"application/json; charset=utf-8"),
)


# --------------------------------------------------------------------------- in-memory requests


@implementer(ITransport, IConsumer)
class MemoryTransport:
    """The smallest transport an ``HTTPChannel`` runs on: collects what is written, never blocks."""

    disconnecting = False

    def __init__(self) -> None:
        self.data = bytearray()
        self.producer: IProducer | None = None
        self._peer = IPv4Address("TCP", "127.0.0.1", 0)

    def write(self, data: bytes) -> None:
        self.data += data

    def writeSequence(self, data: Iterable[bytes]) -> None:  # noqa: N802
        for chunk in data:
            self.write(chunk)

    def loseConnection(self) -> None:  # noqa: N802
        self.disconnecting = True

    def abortConnection(self) -> None:  # noqa: N802
        self.disconnecting = True

    def getPeer(self) -> IPv4Address:  # noqa: N802
        return self._peer

    def getHost(self) -> IPv4Address:  # noqa: N802
        return self._peer

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:  # noqa: N802
        self.producer = producer

    def unregisterProducer(self) -> None:  # noqa: N802
        self.producer = None

    def setTcpNoDelay(self, enabled: bool) -> None:  # noqa: N802
        """Nothing to set in memory."""


@dataclass(frozen=True)
class ProbeResult:
    """The status of an in-memory request (0 when none was written) and the first failure logged while
    it was served (``Type: message``), if any."""

    status: int
    failure: str | None


def _status_of(response: bytes) -> int:
    first = response.split(b"\r\n", 1)[0].split(b" ")
    if len(first) >= 2 and first[0].startswith(b"HTTP/") and first[1].isdigit():
        return int(first[1])
    return 0


def request_through(site: Site, probe: Probe) -> ProbeResult:
    """Serve ``probe`` through ``site`` on a :class:`MemoryTransport`, synchronously (the node's handlers
    answer these without waiting on the reactor, which is not running yet)."""
    failures: list[str] = []

    @implementer(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        failure = event.get("log_failure")
        if failure is not None and not failures:
            failures.append(f"{failure.type.__name__}: {failure.getErrorMessage()}")

    headers = [b"Host: tunmesh.self-check", b"Connection: close", b"Content-Length: %d" % len(probe.body)]
    if probe.content_type is not None:
        headers.append(b"Content-Type: " + probe.content_type)
    raw = b"%s %s HTTP/1.1\r\n%s\r\n\r\n%s" % (probe.method, probe.path, b"\r\n".join(headers), probe.body)
    transport = MemoryTransport()
    protocol = site.buildProtocol(transport.getPeer())
    globalLogPublisher.addObserver(observe)
    try:
        protocol.makeConnection(transport)
        protocol.dataReceived(raw)
    finally:
        protocol.connectionLost(Failure(ConnectionDone("self-check done")))
        globalLogPublisher.removeObserver(observe)
    return ProbeResult(_status_of(bytes(transport.data)), failures[0] if failures else None)


# --------------------------------------------------------------------------- readability


def installation_paths(packages: Sequence[str] = INSTALLATION_PACKAGES) -> dict[str, str]:
    """What must stay readable for late imports: the interpreter's library directories and the
    directories of the packages the node runs, as ``{path: what}``."""
    paths: dict[str, str] = {}
    for key, what in (("stdlib", "the standard library"), ("platstdlib", "the standard library"),
                      ("purelib", "site-packages"), ("platlib", "site-packages")):
        path = sysconfig.get_paths().get(key)
        if path and os.path.isdir(path):
            paths.setdefault(os.path.realpath(path), what)
    for name in packages:
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None)
        if file:
            paths.setdefault(os.path.realpath(os.path.dirname(file)), f"the {name} package")
    return paths


def first_blocker(path: str, access: Callable[[str, int], bool] = os.access) -> str | None:
    """The first directory on the way to ``path`` this process cannot enter, or ``path`` itself when it
    cannot be listed; None when ``path`` is readable."""
    parts = Path(path).parts
    for i in range(1, len(parts)):
        ancestor = str(Path(*parts[:i]))
        if not access(ancestor, os.X_OK):
            return ancestor
    if not access(path, os.R_OK | os.X_OK):
        return path
    return None


def blocking_paths(
    paths: dict[str, str], access: Callable[[str, int], bool] = os.access
) -> list[tuple[str, str, str]]:
    """``(blocker, path, what)`` for every path in ``paths`` this process cannot read."""
    found = []
    for path, what in paths.items():
        blocker = first_blocker(path, access)
        if blocker is not None:
            found.append((blocker, path, what))
    return found


def describe_blockers(uid: int, blockers: list[tuple[str, str, str]]) -> str:
    """One clause naming what the uid cannot read, e.g. ``uid 65534 cannot read /root (on the way to
    the standard library /root/.pyenv/versions/3.11.7/lib/python3.11)``."""
    blocker, path, what = blockers[0]
    where = f"{what} {path}" if blocker == path else f"{blocker} (on the way to {what} {path})"
    more = f" and {len(blockers) - 1} more installation path(s)" if len(blockers) > 1 else ""
    return f"uid {uid} cannot read {where}{more}"


# --------------------------------------------------------------------------- the check


class _WallClock:
    def seconds(self) -> float:
        return time.time()


def _token_round_trip() -> None:
    authority = ClusterAuthority(os.urandom(32), "self-check", _WallClock())
    signed = authority.sign_request("self-check", "POST", "/tunmesh/self-check", b"{}")
    authority.verify_request_head(signed.header_value, "POST", "/tunmesh/self-check").verify_body(b"{}")


def _x25519() -> None:
    X25519PrivateKey.generate().exchange(X25519PrivateKey.generate().public_key())


def _read_one_byte(path: Path) -> None:
    with open(path, "rb") as f:
        f.read(1)


class SelfCheck:
    """
    The check that runs as the dropped uid (see the module docstring). Call it; it returns or raises
    :class:`SelfCheckError`.

    :param site: the node's ``Site``, served through in memory.
    :param reread_files: ``(path, why)`` of files the node opens again after the drop.
    """

    def __init__(
        self,
        site: Site,
        reread_files: Sequence[tuple[Path, str]] = (),
        *,
        probes: Sequence[Probe] = DEFAULT_PROBES,
        codec_names: Sequence[str] = PRELOAD_CODECS,
        exercises: Sequence[tuple[str, Callable[[], None]]] = (
            ("signing and verifying a cluster token", _token_round_trip),
            ("an X25519 key exchange", _x25519),
        ),
        paths: Callable[[], dict[str, str]] = installation_paths,
        access: Callable[[str, int], bool] = os.access,
        read_file: Callable[[Path], None] = _read_one_byte,
        getuid: Callable[[], int] = os.getuid,
    ) -> None:
        self.site = site
        self.reread_files = tuple(reread_files)
        self.probes = tuple(probes)
        self.codec_names = tuple(codec_names)
        self.exercises = tuple(exercises)
        # Gathered now, as root: sysconfig imports its data module on first use.
        self.installation = paths()
        self._access = access
        self._read_file = read_file
        self._getuid = getuid

    def __call__(self) -> None:
        uid = self._getuid()
        blockers: list[tuple[str, str, str]] = []
        cause = ""
        try:
            blockers = blocking_paths(self.installation, self._access)
            cause = f"; {describe_blockers(uid, blockers)}" if blockers else ""
            self._run(uid, cause)
        except SelfCheckError:
            raise
        except Exception as e:  # the check itself broke: still one line, still an exit
            raise SelfCheckError(f"self-check as uid {uid} failed: {type(e).__name__}: {e}{cause}") from e
        if blockers:
            log.warn(
                "{clause}: what the node needs was imported before the privilege drop and the self-check "
                "passed, but code first run later would fail to import",
                clause=describe_blockers(uid, blockers),
            )
        log.info("self-check as uid {uid} passed", uid=uid)

    def _run(self, uid: int, cause: str) -> None:
        for name in self.codec_names:
            try:
                codecs.lookup(name)
            except LookupError as e:
                raise SelfCheckError(f"as uid {uid}, codec {name!r} is unavailable ({e}){cause}") from None
        for what, exercise in self.exercises:
            try:
                exercise()
            except Exception as e:
                raise SelfCheckError(f"as uid {uid}, {what} failed ({type(e).__name__}: {e}){cause}") from None
        for probe in self.probes:
            result = request_through(self.site, probe)
            if result.status not in probe.expect:
                got = f"answered {result.status}" if result.status else "answered nothing"
                detail = f" ({result.failure})" if result.failure else ""
                raise SelfCheckError(
                    f"as uid {uid}, {probe.method.decode()} {probe.path.decode()} {got}{detail}{cause}"
                )
        for path, why in self.reread_files:
            try:
                self._read_file(path)
            except OSError as e:
                raise SelfCheckError(
                    f"uid {uid} cannot read {path} ({why}): {e.strerror or e}"
                ) from None


def reread_files(cfg: TunMeshConfig, config_path: Path | None) -> list[tuple[Path, str]]:
    """The files the node opens again as ``process.uid``, with why: the preflight's list
    (:func:`tunmesh.preflight.files_read_after_drop`), which checks them before the TUN device exists; the
    self-check reads them for real after the drop."""
    return [(path, f"{key}: {why}") for key, path, why in files_read_after_drop(cfg, config_path)]


def node_self_check(site: Site, cfg: TunMeshConfig, config_path: Path | None) -> SelfCheck:
    """The self-check of one node: its ``Site`` and the files its config makes it re-read."""
    return SelfCheck(site, reread_files(cfg, config_path))


__all__ = [
    "DEFAULT_PROBES",
    "MemoryTransport",
    "Probe",
    "ProbeResult",
    "SelfCheck",
    "SelfCheckError",
    "blocking_paths",
    "describe_blockers",
    "first_blocker",
    "installation_paths",
    "node_self_check",
    "request_through",
    "reread_files",
]
