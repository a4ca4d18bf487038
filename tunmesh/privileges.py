"""
Dropping root after the TUN device and the listening port are open
(security contract W19).

Order, as OpenVPN's ``--user``: ``setgroups([])`` (root's supplementary groups
would otherwise survive), ``setgid``, ``setuid`` (last: after it, the group
calls are refused), then ``prctl(PR_SET_NO_NEW_PRIVS, 1)`` so no exec can
gain privileges back.  Then the drop is checked rather than trusted:
``setuid(0)`` and ``setgid(0)`` must fail, real/effective/saved IDs must all be
the target, no supplementary groups remain, and the kernel reports no
capabilities and ``NoNewPrivs: 1``.

Consequence for operators: the cert and key are read before the drop, so a
renewed certificate needs a restart (or files readable by the service UID).

After the drop the node works or exits: :class:`PrivilegeDropService` imports, as
root, what the node would otherwise import later (:mod:`tunmesh.preload`), then
runs a self-check as the new uid (:mod:`tunmesh.selfcheck`); a failed check ends
the process with status 1 and one line naming the cause, instead of a node
that answers 500 to every request.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TextIO

from twisted.application.service import Service
from twisted.logger import Logger

PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39

Prctl = Callable[[int, int], int]


class PrivilegeError(Exception):
    """The process could not drop to, or did not end up at, the requested IDs."""


class StartupCheckFailed(SystemExit):
    """
    The self-check after the drop failed: the process exits with status 1.
    ``message`` is the one line already written to stderr and logged.
    """

    def __init__(self, message: str) -> None:
        super().__init__(1)
        self.message = message


@dataclass(frozen=True)
class DropResult:
    """What :func:`drop_privileges` did and verified."""

    uid: int
    gid: int
    #: True when the process already ran as ``uid`` (not root) and was only verified.
    already_unprivileged: bool


_libc: Any = None


def libc_prctl(option: int, arg2: int) -> int:
    """``prctl(2)`` through ctypes; ``OSError`` on failure."""
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        libc.prctl.restype = ctypes.c_int
        _libc = libc
    result = int(_libc.prctl(option, arg2, 0, 0, 0))
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def read_proc_status() -> str:
    """
    The kernel's view of this process (IDs, capabilities, NoNewPrivs).

    Read as bytes and decoded without a codec lookup: after the drop, the
    interpreter may no longer be able to import ``encodings.*`` (a Python
    installed under ``/root``), and a text-mode open would need that.
    """
    with open("/proc/self/status", "rb") as f:
        return f.read().decode("ascii", "replace")


def parse_proc_status(text: str) -> dict[str, str]:
    """``Key:<tab>value`` lines of ``/proc/<pid>/status`` to a dict."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _primary_gid(uid: int, pwd_module: Any) -> int:
    try:
        return int(pwd_module.getpwuid(uid).pw_gid)
    except KeyError:
        # No passwd entry (common in containers): use the uid as gid, as
        # container runtimes do for numeric --user values.
        return uid


def _check_id(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PrivilegeError(f"{what} must be a non-negative integer, not {value!r}")
    if value == 0:
        raise PrivilegeError(f"refusing to run with {what} 0 (root)")
    return value


def _regain_must_fail(call: Callable[[int], None], name: str) -> None:
    try:
        call(0)
    except OSError:
        return
    raise PrivilegeError(f"{name}(0) succeeded after the drop: root can be regained")


def _verify(
    uid: int,
    gid: int,
    *,
    os_module: Any,
    prctl: Prctl,
    read_status: Callable[[], str] | None,
    expect_no_groups: bool,
) -> None:
    _regain_must_fail(os_module.setuid, "setuid")
    _regain_must_fail(os_module.setgid, "setgid")
    ids = {
        "getuid": os_module.getuid(),
        "geteuid": os_module.geteuid(),
        "getgid": os_module.getgid(),
        "getegid": os_module.getegid(),
    }
    expected = {"getuid": uid, "geteuid": uid, "getgid": gid, "getegid": gid}
    if ids != expected:
        raise PrivilegeError(f"IDs after drop are {ids}, expected {expected}")
    if hasattr(os_module, "getresuid"):
        if tuple(os_module.getresuid()) != (uid, uid, uid):
            raise PrivilegeError(f"real/effective/saved uid is {os_module.getresuid()}, expected {uid}")
        if tuple(os_module.getresgid()) != (gid, gid, gid):
            raise PrivilegeError(f"real/effective/saved gid is {os_module.getresgid()}, expected {gid}")
    groups = list(os_module.getgroups())
    if expect_no_groups and groups:
        raise PrivilegeError(f"supplementary groups {groups} survived setgroups([])")
    if 0 in groups:
        raise PrivilegeError("supplementary group 0 (root) is still held")
    if prctl(PR_GET_NO_NEW_PRIVS, 0) != 1:
        raise PrivilegeError("no_new_privs is not set")
    if read_status is not None:
        status = parse_proc_status(read_status())
        for cap in ("CapEff", "CapPrm", "CapAmb"):
            if cap in status and int(status[cap], 16) != 0:
                raise PrivilegeError(f"{cap} is {status[cap]} after the drop, expected 0")
        if status.get("NoNewPrivs") != "1":
            raise PrivilegeError(f"kernel reports NoNewPrivs {status.get('NoNewPrivs')!r}, expected 1")
        for key, want in (("Uid", uid), ("Gid", gid)):
            values = [int(v) for v in status.get(key, "").split()]
            if not values or any(v != want for v in values):
                raise PrivilegeError(f"kernel reports {key} {values}, expected all {want}")


def drop_privileges(
    uid: int,
    gid: int | None = None,
    *,
    os_module: ModuleType | Any = os,
    prctl: Prctl = libc_prctl,
    pwd_module: ModuleType | Any = pwd,
    read_status: Callable[[], str] | None = read_proc_status,
) -> DropResult:
    """
    Become ``uid``/``gid`` for good (``gid`` defaults to the uid's primary group,
    or to ``uid`` when it has no passwd entry).

    Run as root, this drops and verifies.  Run as ``uid`` already (a developer
    run, or a container started with ``--user``), it only sets no_new_privs and
    verifies.  Any other starting uid cannot switch and raises.

    :raises PrivilegeError: refused IDs (0), cannot switch, or the verification
        found a way back to root.  The caller must not continue.
    """
    uid = _check_id(uid, "uid")
    gid = _check_id(_primary_gid(uid, pwd_module) if gid is None else gid, "gid")

    euid = os_module.geteuid()
    if euid != 0:
        if os_module.getuid() != uid or euid != uid:
            raise PrivilegeError(
                f"running as uid {os_module.getuid()} (effective {euid}), not root: "
                f"cannot switch to uid {uid}; start as root or as uid {uid}"
            )
        try:
            prctl(PR_SET_NO_NEW_PRIVS, 1)
        except OSError as e:
            raise PrivilegeError(f"setting no_new_privs failed: {e}") from e
        _verify(uid, gid, os_module=os_module, prctl=prctl, read_status=read_status, expect_no_groups=False)
        return DropResult(uid=uid, gid=gid, already_unprivileged=True)

    try:
        os_module.setgroups([])
        os_module.setgid(gid)
        os_module.setuid(uid)
        prctl(PR_SET_NO_NEW_PRIVS, 1)
    except OSError as e:
        raise PrivilegeError(f"dropping to uid {uid} gid {gid} failed: {e}") from e
    _verify(uid, gid, os_module=os_module, prctl=prctl, read_status=read_status, expect_no_groups=True)
    return DropResult(uid=uid, gid=gid, already_unprivileged=False)


class PrivilegeDropService(Service):
    """
    Drops privileges in ``privilegedStartService``.  Add it as the **last**
    child of the node's MultiService: children start in order, so the TUN
    device and the listening port are opened (as root) before it runs.

    Before the drop it calls ``preload`` (as root: import what the node needs
    later); after it, ``self_check`` (as the new uid).  A ``self_check`` that
    raises ends the process: one line ``tunmesh: startup error: <cause>`` on
    stderr and in the log, then :exc:`StartupCheckFailed` (exit status 1).
    """

    name: str | None = "privileges"  # type: ignore[assignment]
    log = Logger()

    def __init__(
        self,
        uid: int,
        gid: int | None = None,
        *,
        drop: Callable[[int, int | None], DropResult] = drop_privileges,
        preload: Callable[[], None] | None = None,
        self_check: Callable[[], None] | None = None,
        stderr: TextIO | None = None,
    ) -> None:
        self.uid = uid
        self.gid = gid
        self._drop = drop
        self._preload = preload
        self._self_check = self_check
        self._stderr = stderr
        self.result: DropResult | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self._preload is not None:
            try:
                self._preload()
            except Exception as e:
                self._exit(str(e))
        try:
            self.result = self._drop(self.uid, self.gid)
        except PrivilegeError as e:
            self.log.critical("privilege drop failed: {error}", error=str(e))
            raise
        if self.result.already_unprivileged:
            self.log.info(
                "already running as uid {uid} gid {gid}; verified, no_new_privs set",
                uid=self.result.uid,
                gid=self.result.gid,
            )
        else:
            self.log.info(
                "dropped root to uid {uid} gid {gid}; no groups, no capabilities, no_new_privs set",
                uid=self.result.uid,
                gid=self.result.gid,
            )
        if self._self_check is not None:
            try:
                self._self_check()
            except Exception as e:
                self._exit(str(e))

    def _exit(self, cause: str) -> None:
        line = f"tunmesh: startup error: {' '.join(cause.split())}"
        self.log.critical("{line}", line=line)
        # twistd has redirected sys.stderr into the log by now: write to the process's own stderr.
        stream = self._stderr or sys.__stderr__
        if stream is not None:
            stream.write(line + "\n")
            stream.flush()
        raise StartupCheckFailed(line)
