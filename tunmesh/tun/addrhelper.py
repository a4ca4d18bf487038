"""The address helper: the one privileged thing a dynamically addressed node still needs after the drop.

With dynamic addressing (docs/addressing.md) a node may have to move its TUN address long after it dropped
root (W19), and changing an address needs ``CAP_NET_ADMIN``. Rather than keep that capability in the
network-facing process (it could then rewrite every route and firewall rule of the pod), the node starts
this helper before the drop (docs/security.md, "Dynamic addressing and privileges"):

* a separate process (``python -m tunmesh.addrhelper``, :mod:`tunmesh.addrhelper`), spawned as root while the TUN is opened; it
  switches to ``process.uid``/``gid`` itself, keeping **only** ``CAP_NET_ADMIN`` (``PR_SET_KEEPCAPS`` then
  ``capset``), sets ``no_new_privs`` and verifies all of it in ``/proc/self/status`` before it says ready;
* it speaks one line protocol over a socketpair, ``set <address>/<prefix>`` -> ``ok`` | ``error <why>``, and
  only ever touches the one TUN interface it was started for, with an address inside a configured
  ``network_cidr`` carrying exactly that network's prefix (not its network or broadcast address);
* it exits when the node closes the socket (or dies).

A compromised node process can therefore at worst renumber its own TUN inside the mesh range, which it
could do to its traffic anyway.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Protocol

from twisted.logger import Logger

from tunmesh.mesh.structs import IPInterface, IPNetwork
from tunmesh.tun.helpers import spawn_helper

#: seconds the node waits for the helper to start (many nodes may start at once on a busy host), and for
#: one answer
TIMEOUT = 30.0


class AddressChangeError(Exception):
    """The TUN address could not be changed; ``str()`` says why in one line."""


class AddressSetter(Protocol):
    """Moves the node's TUN address of one family (what the address observer calls)."""

    def set_address(self, address: IPInterface) -> None: ...

    def close(self) -> None: ...


# -- the node's side ------------------------------------------------------------------------------------


class AddressHelper:
    """The node's handle on the helper process. Requests block the caller for a few milliseconds (an
    address moves rarely); every failure is :class:`AddressChangeError`."""

    log = Logger()

    def __init__(self, process: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.process = process
        self._sock = sock
        self._reader = sock.makefile("rb")
        hello = self._read("starting")
        if not hello.startswith("ready "):
            self.close()
            raise AddressChangeError(f"address helper failed to start: {hello}")
        self.pid = process.pid

    @classmethod
    def spawn(
        cls,
        ifname: str,
        networks: Sequence[IPNetwork],
        uid: int | None,
        gid: int | None,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
    ) -> AddressHelper:
        """Start the helper (call as root, before the privilege drop)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.settimeout(TIMEOUT)
        args = ["--fd", str(theirs.fileno()), "--ifname", ifname]
        for net in networks:
            args += ["--network", str(net)]
        if uid is not None:
            args += ["--uid", str(uid)]
        if gid is not None:
            args += ["--gid", str(gid)]
        try:
            process = spawn_helper("tunmesh.addrhelper", args, python, env, pass_fds=(theirs.fileno(),))
        except OSError as e:
            ours.close()
            raise AddressChangeError(f"cannot start the address helper: {e}") from None
        finally:
            theirs.close()
        return cls(process, ours)

    def _read(self, what: str) -> str:
        try:
            line = self._reader.readline()
        except OSError as e:
            raise AddressChangeError(f"address helper did not answer ({what}): {e}") from None
        if not line:
            raise AddressChangeError(f"address helper exited ({what}), status {self.process.poll()}")
        return line.decode("ascii", "replace").strip()

    def set_address(self, address: IPInterface) -> None:
        """Move the TUN's address of ``address``'s family to ``address``."""
        try:
            self._sock.sendall(f"set {address}\n".encode("ascii"))
        except OSError as e:
            raise AddressChangeError(f"address helper unreachable: {e}") from None
        answer = self._read(f"set {address}")
        if answer != "ok":
            raise AddressChangeError(f"address helper refused {address}: {answer.removeprefix('error ')}")

    def close(self) -> None:
        """Stop the helper (it exits on EOF) and reap it."""
        self._reader.close()
        self._sock.close()
        try:
            self.process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

