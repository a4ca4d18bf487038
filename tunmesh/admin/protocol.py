"""The admin exchange: one JSON request line in, one JSON answer line out, then the node closes.

Request: ``{"command": "status"}`` (or ``"reload"``). Answer: ``{"ok": true, "result": {...}}`` or
``{"ok": false, "error": "..."}``. The request line is bounded (``MAX_REQUEST``) and must arrive within
``REQUEST_TIMEOUT`` seconds. A connecting process whose uid is neither root nor ``process.uid`` is refused
(``SO_PEERCRED``), on top of the socket file's mode 0600 (docs/security.md).
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Callable, Collection, Mapping
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

MAX_REQUEST = 4096
REQUEST_TIMEOUT = 5.0
#: command name -> handler returning the JSON-ready result (may raise; the error text is sent back)
Handlers = Mapping[str, Callable[[], Any]]


def peer_uid(transport: Any) -> int | None:
    """The uid of the process at the other end of a UNIX socket transport (``SO_PEERCRED``), or None
    when the transport has no such socket (memory transports in tests)."""
    get_handle = getattr(transport, "getHandle", None)
    sock = get_handle() if get_handle is not None else None
    if not isinstance(sock, socket.socket) or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), sort_keys=True).encode("utf-8") + b"\n"


class AdminProtocol(LineOnlyReceiver):
    """One admin connection (see module docstring)."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_REQUEST
    log = Logger()

    def __init__(self, factory: AdminFactory) -> None:
        self.factory = factory
        self._timer: IDelayedCall | None = None
        self._answered = False

    def connectionMade(self) -> None:
        uid = peer_uid(self.transport)
        if uid is not None and uid not in self.factory.allowed_uids:
            self.log.warn("admin socket: refused a client running as uid {uid}", uid=uid)
            self._answer({"ok": False, "error": f"uid {uid} may not use the admin socket"})
            return
        self._timer = self.factory.clock.callLater(REQUEST_TIMEOUT, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        self._answer({"ok": False, "error": "no request within the deadline"})

    def lineLengthExceeded(self, line: bytes) -> None:
        self._answer({"ok": False, "error": "request too long"})

    def lineReceived(self, line: bytes) -> None:
        if self._answered:
            return
        try:
            request = json.loads(line)
            command = request["command"]
        except (ValueError, TypeError, KeyError):
            self._answer({"ok": False, "error": "not a JSON request with a command"})
            return
        handler = self.factory.handlers.get(command) if isinstance(command, str) else None
        if handler is None:
            self._answer({"ok": False, "error": f"unknown command; known: {', '.join(sorted(self.factory.handlers))}"})
            return
        try:
            result = handler()
        except Exception as exc:
            self.log.failure("admin command {command} failed", command=command)
            self._answer({"ok": False, "error": f"{command} failed: {type(exc).__name__}: {exc}"})
            return
        self._answer({"ok": True, "result": result})

    def _answer(self, message: Mapping[str, Any]) -> None:
        if self._answered:
            return
        self._answered = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        assert self.transport is not None
        self.transport.write(encode(message))
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class AdminFactory(Factory):
    """Builds :class:`AdminProtocol` with the node's command handlers."""

    def __init__(self, handlers: Handlers, clock: IReactorTime, allowed_uids: Collection[int]) -> None:
        self.handlers = handlers
        self.clock = clock
        self.allowed_uids = frozenset(allowed_uids)

    def buildProtocol(self, addr: Any) -> AdminProtocol:
        return AdminProtocol(self)
