""":class:`AdminSocketService`: the node's end of the admin UNIX socket (``process.admin_socket``).

The socket is bound in ``privilegedStartService`` (root, before the privilege drop), with a umask that
makes the file 0600 from the start (and mode 0600 for Twisted, which sets the mode after binding: an
adopted descriptor would get its default 0666), then given to ``process.uid``/``gid``. On stop the port
removes the file, which a root-owned directory may not let ``process.uid`` do: the next start replaces
it. A missing directory is created (0755). A file already at the path is replaced only when nothing
answers on it (left by a node that was killed); a live one (another node sharing the filesystem) is left
alone. None of this stops the node: without the socket it routes packets as before and logs one error
naming the key.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from tunmesh.admin.protocol import AdminFactory

KEY = "tun_mesh/process/admin_socket"


class AdminSocketError(Exception):
    """The socket cannot be created; ``str()`` says why."""


def _in_use(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def prepare_admin_path(path: Path) -> None:
    """Make ``path`` free for a new socket: create its directory (0755) when missing, remove a socket file
    nothing answers on; refuse a live socket or a file that is not a socket (:class:`AdminSocketError`)."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise AdminSocketError(f"{path} exists and is not a socket")
    if _in_use(path):
        raise AdminSocketError(f"{path} is in use by another process (another node on this filesystem?)")
    path.unlink()


def listen_admin_socket(reactor: Any, path: Path, factory: AdminFactory, uid: int | None,
                        gid: int | None, chown: Callable[[Path, int, int], None] = os.chown) -> IListeningPort:
    """Listen on ``path``: mode 0600 from the moment the file exists (umask 0177 around the bind, and the
    mode Twisted sets right after it), then owned by ``uid``/``gid`` (when given).

    Without ``CAP_CHOWN`` (a container started with ``--cap-drop ALL``: root may create the file but not give
    it away) the socket stays root's, mode 0600: root (``podman exec``, ``kubectl exec``) reaches it, and the
    per-connection uid check still applies. Raises :class:`ChownRefused` then, with the port listening."""
    prepare_admin_path(path)
    old_umask = os.umask(0o177)
    try:
        port: IListeningPort = reactor.listenUNIX(str(path), factory, mode=0o600)
    except CannotListenError as e:
        raise AdminSocketError(f"cannot listen on {path}: {e.socketError}") from None
    finally:
        os.umask(old_umask)
    if uid is not None:
        try:
            chown(path, uid, gid if gid is not None else -1)
        except PermissionError as e:
            raise ChownRefused(port, str(e)) from None
        except OSError:
            _close_quietly(port, path)
            raise
    return port


class ChownRefused(Exception):
    """The socket listens but stays root's (no ``CAP_CHOWN``); ``port`` is the listening port."""

    def __init__(self, port: IListeningPort, error: str) -> None:
        super().__init__(error)
        self.port = port


def _close_quietly(port: IListeningPort, path: Path) -> None:
    """Stop a port we will not use, removing its file now (the port's own unlink comes a reactor turn
    later, maybe after the privilege drop, when it would fail)."""
    _unlink(path)
    d = port.stopListening()
    if d is not None:
        d.addErrback(lambda failure: failure.trap(OSError))


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


class AdminSocketService(Service):
    """Listens on the admin socket while the node runs (see module docstring)."""

    name = "admin"  # type: ignore[assignment]
    log = Logger()

    def __init__(self, path: Path, factory: AdminFactory, reactor: Any, uid: int | None, gid: int | None) -> None:
        self.path = path
        self.factory = factory
        self.reactor = reactor
        self.uid = uid
        self.gid = gid
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        if self.port is None:  # started without the privileged step (already unprivileged)
            self._listen()

    def _listen(self) -> None:
        try:
            self.port = listen_admin_socket(self.reactor, self.path, self.factory, self.uid, self.gid)
        except ChownRefused as e:
            self.port = e.port
            self.log.info(
                "admin socket listening at {path}, owned by root (cannot give it to uid {uid}: {error}); "
                "`tunmesh status` works as root",
                path=str(self.path),
                uid=self.uid,
                error=str(e),
            )
            return
        except (OSError, AdminSocketError) as e:
            self.log.error(
                "{key}: cannot create the admin socket ({error}); `tunmesh status` and `tunmesh reload` will "
                "not reach this node",
                key=KEY,
                error=str(e),
            )
            return
        self.log.info("admin socket listening at {path}", path=str(self.path))

    def stopService(self) -> Any:
        port, self.port = self.port, None
        super().stopService()
        if port is None:
            return None  # never listened: the file at the path (if any) is not ours
        # Closing the port removes the file (Twisted's UNIX port does, adopted or not).
        d = port.stopListening()
        if d is None:
            return None

        def left_behind(failure: Any) -> None:
            # The directory may not let process.uid remove it; the next start replaces it.
            failure.trap(OSError)
            self.log.info("admin socket {path} left behind: {error}", path=str(self.path),
                          error=failure.getErrorMessage())

        return d.addErrback(left_behind)
