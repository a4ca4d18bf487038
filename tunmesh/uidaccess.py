"""Can ``process.uid`` read a file? Answered as that uid, before the node drops root.

The node opens some files after the privilege drop (``tunmesh.privileges``), as ``process.uid`` with
``process.gid`` (default: the uid's primary group, or the uid itself without a passwd entry) and no
supplementary groups. Whether that works depends on more than the file's mode: every parent directory's
execute bit, ACLs, LSMs, root-squashing network file systems. So, when we are root, a forked child takes
exactly those ids and opens each file; the kernel answers. When we already run as the uid, we open the file
ourselves. Only when neither is possible (``tunmesh check-config`` run by some other user) the answer is
estimated from permission bits and ownership of the file and of each parent directory (ACLs not read), and
says so.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import attrs


@attrs.frozen
class Access:
    """The answer for one file: ``problem`` is None when the uid can read it."""

    path: Path
    problem: str | None
    #: False when the answer comes from permission bits rather than from the kernel.
    exact: bool = True


class ReadCheck(Protocol):
    """What the preflight needs: whether ``uid``/``gid`` (no supplementary groups) can read each of ``paths``."""

    def __call__(self, uid: int, gid: int, paths: Sequence[Path]) -> list[Access]: ...


def effective_gid(uid: int, gid: int | None) -> int:
    """The group the node runs as after the drop (the rule of ``tunmesh.privileges.drop_privileges``)."""
    if gid is not None:
        return gid
    try:
        return int(pwd.getpwuid(uid).pw_gid)
    except KeyError:
        return uid


def readable_as(uid: int, gid: int, paths: Sequence[Path]) -> list[Access]:
    """Whether ``uid``/``gid`` can open each path for reading, as exactly as this process can tell."""
    if not paths:
        return []
    if os.geteuid() == uid and os.getegid() == gid:
        return [Access(p, _open_problem(p)) for p in paths]
    if os.geteuid() == 0:
        answers = _in_child(uid, gid, paths)
        if answers is not None:
            return answers
    return [Access(p, _estimate(uid, gid, p), exact=False) for p in paths]


def _open_problem(path: Path) -> str | None:
    code = _open_errno(path)
    return None if code == 0 else os.strerror(code)


def _open_errno(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        return e.errno or errno.EIO
    os.close(fd)
    return 0


def _in_child(uid: int, gid: int, paths: Sequence[Path]) -> list[Access] | None:
    """Fork; the child drops to ``uid``/``gid`` like the node does and reports one errno per path.

    The child only makes system calls and leaves with ``os._exit``: nothing of the parent (reactor, threads,
    buffered files) runs in it. None when the child could not take the ids.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child; its result is what the tests check
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            report = ",".join(str(_open_errno(p)) for p in paths).encode("ascii")
            while report:
                report = report[os.write(write_end, report):]
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb") as reader:
        while chunk := reader.read(65536):
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        return None
    codes = [int(c) for c in b"".join(chunks).decode("ascii").split(",")]
    return [Access(p, None if code == 0 else os.strerror(code)) for p, code in zip(paths, codes, strict=True)]


def _permits(st: os.stat_result, uid: int, gid: int, owner: int, group: int, other: int) -> bool:
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & owner)
    if st.st_gid == gid:
        return bool(st.st_mode & group)
    return bool(st.st_mode & other)


def _estimate(uid: int, gid: int, path: Path) -> str | None:
    """Permission bits of the file and of every directory on the way to it (ACLs and LSMs not read)."""
    try:
        real = Path(os.path.realpath(path))
        for directory in reversed(real.parents):
            if not _permits(os.stat(directory), uid, gid, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
                return f"{os.strerror(errno.EACCES)} (directory {directory} is not searchable; estimated from modes)"
        if not _permits(os.stat(real), uid, gid, stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH):
            return f"{os.strerror(errno.EACCES)} (estimated from modes)"
    except OSError as e:
        return f"cannot tell: {e.strerror} (run the check as root to get the kernel's answer)"
    return None


__all__ = ["Access", "ReadCheck", "effective_gid", "readable_as"]
