"""Tests for L{tunmesh.privileges}: a fake os for the order, a forked child for the real thing."""

from __future__ import annotations

import io
import json
import os
import pwd
from collections import namedtuple
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.netns import require_root
from tunmesh.preload import PreloadError
from tunmesh.privileges import (
    PR_GET_NO_NEW_PRIVS,
    PR_SET_NO_NEW_PRIVS,
    DropResult,
    PrivilegeDropService,
    PrivilegeError,
    StartupCheckFailed,
    drop_privileges,
    libc_prctl,
    parse_proc_status,
    read_proc_status,
)
from tunmesh.selfcheck import SelfCheckError

PwEntry = namedtuple("PwEntry", "pw_uid pw_gid")


class FakePwd:
    def __init__(self, entries: dict[int, int]) -> None:
        self.entries = entries

    def getpwuid(self, uid: int) -> PwEntry:
        if uid not in self.entries:
            raise KeyError(uid)
        return PwEntry(uid, self.entries[uid])


class FakeOS:
    """
    A process's credentials as Linux handles them, recording every call.
    Root may set anything; a non-root process may only "set" its current IDs.
    """

    def __init__(self, uid: int = 0, gid: int = 0, groups: list[int] | None = None) -> None:
        self.ruid = self.euid = self.suid = uid
        self.rgid = self.egid = self.sgid = gid
        self.groups = [0, 10] if groups is None else groups
        self.calls: list[tuple[str, Any]] = []

    def _privileged(self) -> bool:
        return self.euid == 0

    def setgroups(self, groups: list[int]) -> None:
        self.calls.append(("setgroups", list(groups)))
        if not self._privileged():
            raise PermissionError(1, "Operation not permitted")
        self.groups = list(groups)

    def setgid(self, gid: int) -> None:
        self.calls.append(("setgid", gid))
        if self._privileged():
            self.rgid = self.egid = self.sgid = gid
        elif gid in (self.rgid, self.sgid):
            self.egid = gid
        else:
            raise PermissionError(1, "Operation not permitted")

    def setuid(self, uid: int) -> None:
        self.calls.append(("setuid", uid))
        if self._privileged():
            self.ruid = self.euid = self.suid = uid
        elif uid in (self.ruid, self.suid):
            self.euid = uid
        else:
            raise PermissionError(1, "Operation not permitted")

    def getuid(self) -> int:
        return self.ruid

    def geteuid(self) -> int:
        return self.euid

    def getgid(self) -> int:
        return self.rgid

    def getegid(self) -> int:
        return self.egid

    def getresuid(self) -> tuple[int, int, int]:
        return (self.ruid, self.euid, self.suid)

    def getresgid(self) -> tuple[int, int, int]:
        return (self.rgid, self.egid, self.sgid)

    def getgroups(self) -> list[int]:
        return list(self.groups)


class FakePrctl:
    def __init__(self, fake_os: FakeOS) -> None:
        self.fake_os = fake_os
        self.no_new_privs = 0

    def __call__(self, option: int, arg2: int) -> int:
        self.fake_os.calls.append(("prctl", (option, arg2)))
        if option == PR_SET_NO_NEW_PRIVS:
            if arg2 != 1:
                raise OSError(22, "Invalid argument")
            self.no_new_privs = 1
            return 0
        if option == PR_GET_NO_NEW_PRIVS:
            return self.no_new_privs
        raise OSError(22, "Invalid argument")


def status_of(fake_os: FakeOS, prctl: FakePrctl, cap_eff: str = "0000000000000000") -> str:
    return (
        f"Name:\tpython\nUid:\t{fake_os.ruid}\t{fake_os.euid}\t{fake_os.suid}\t{fake_os.euid}\n"
        f"Gid:\t{fake_os.rgid}\t{fake_os.egid}\t{fake_os.sgid}\t{fake_os.egid}\n"
        f"Groups:\t{' '.join(map(str, fake_os.groups))}\nCapInh:\t0000000000000000\n"
        f"CapPrm:\t{cap_eff}\nCapEff:\t{cap_eff}\nCapAmb:\t0000000000000000\nNoNewPrivs:\t{prctl.no_new_privs}\n"
    )


class DropOrderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.os = FakeOS()
        self.prctl = FakePrctl(self.os)
        self.pwd = FakePwd({1000: 1001})

    def drop(self, uid: Any, gid: Any = None, **kw: Any) -> DropResult:
        kw.setdefault("read_status", lambda: status_of(self.os, self.prctl))
        return drop_privileges(uid, gid, os_module=self.os, prctl=self.prctl, pwd_module=self.pwd, **kw)

    def test_order_and_verification(self) -> None:
        result = self.drop(1000, 2000)
        self.assertEqual(result, DropResult(uid=1000, gid=2000, already_unprivileged=False))
        self.assertEqual(
            self.os.calls,
            [
                ("setgroups", []),
                ("setgid", 2000),
                ("setuid", 1000),
                ("prctl", (PR_SET_NO_NEW_PRIVS, 1)),
                ("setuid", 0),
                ("setgid", 0),
                ("prctl", (PR_GET_NO_NEW_PRIVS, 0)),
            ],
        )
        self.assertEqual((self.os.getresuid(), self.os.getresgid(), self.os.groups), ((1000,) * 3, (2000,) * 3, []))

    def test_gid_defaults_to_primary_group(self) -> None:
        self.assertEqual(self.drop(1000).gid, 1001)

    def test_gid_defaults_to_uid_without_passwd_entry(self) -> None:
        self.assertEqual(self.drop(4242).gid, 4242)

    def test_refuses_root_and_bad_ids(self) -> None:
        for uid, gid in ((0, 5), (1000, 0), (-1, 5), (1000, -3), (True, 5), ("1000", 5), (1.0, 5)):
            self.assertRaises(PrivilegeError, self.drop, uid, gid)
        self.assertEqual(self.os.calls, [])

    def test_refuses_primary_group_root(self) -> None:
        self.pwd.entries[1000] = 0
        self.assertRaises(PrivilegeError, self.drop, 1000)
        self.assertEqual(self.os.calls, [])

    def test_regained_root_is_detected(self) -> None:
        """A kernel or wrapper where setuid(0) still works after the drop."""

        class LeakyOS(FakeOS):
            def setuid(self, uid: int) -> None:
                self.calls.append(("setuid", uid))
                self.ruid = self.euid = uid
                # saved uid stays root, as with a seteuid()-style drop
                if uid != 0:
                    self.suid = 0

        self.os = LeakyOS()
        self.prctl = FakePrctl(self.os)
        e = self.assertRaises(PrivilegeError, self.drop, 1000, 1000)
        self.assertIn("setuid(0)", str(e))

    def test_regained_gid_root_is_detected(self) -> None:
        class LeakyGidOS(FakeOS):
            def setgid(self, gid: int) -> None:
                self.calls.append(("setgid", gid))
                self.rgid = self.egid = gid  # saved gid left at 0

        self.os = LeakyGidOS()
        self.prctl = FakePrctl(self.os)
        e = self.assertRaises(PrivilegeError, self.drop, 1000, 1000)
        self.assertIn("setgid(0)", str(e))

    def test_groups_surviving_is_detected(self) -> None:
        class NoSetgroups(FakeOS):
            def setgroups(self, groups: list[int]) -> None:
                self.calls.append(("setgroups", groups))

        self.os = NoSetgroups(groups=[27])
        self.prctl = FakePrctl(self.os)
        e = self.assertRaises(PrivilegeError, self.drop, 1000, 1000)
        self.assertIn("supplementary groups", str(e))

    def test_no_new_privs_not_set_is_detected(self) -> None:
        class IgnoringPrctl(FakePrctl):
            def __call__(self, option: int, arg2: int) -> int:
                if option == PR_SET_NO_NEW_PRIVS:
                    return 0
                return super().__call__(option, arg2)

        self.prctl = IgnoringPrctl(self.os)
        self.assertRaises(PrivilegeError, self.drop, 1000, 1000, read_status=None)

    def test_capabilities_left_are_detected(self) -> None:
        e = self.assertRaises(
            PrivilegeError,
            self.drop,
            1000,
            1000,
            read_status=lambda: status_of(self.os, self.prctl, cap_eff="0000000000003000"),
        )
        self.assertIn("CapEff", str(e))

    def test_kernel_ids_disagreeing_are_detected(self) -> None:
        def lying_status() -> str:
            return status_of(self.os, self.prctl).replace("Uid:\t1000\t1000\t1000\t1000", "Uid:\t1000\t1000\t0\t1000")

        e = self.assertRaises(PrivilegeError, self.drop, 1000, 1000, read_status=lying_status)
        self.assertIn("Uid", str(e))

    def test_kernel_no_new_privs_missing_is_detected(self) -> None:
        def status() -> str:
            return status_of(self.os, self.prctl).replace("NoNewPrivs:\t1", "NoNewPrivs:\t0")

        e = self.assertRaises(PrivilegeError, self.drop, 1000, 1000, read_status=status)
        self.assertIn("NoNewPrivs", str(e))

    def test_syscall_failure_becomes_privilege_error(self) -> None:
        class NoCapSetgid(FakeOS):
            def setgid(self, gid: int) -> None:
                raise PermissionError(1, "Operation not permitted")

        self.os = NoCapSetgid()
        self.prctl = FakePrctl(self.os)
        self.assertRaises(PrivilegeError, self.drop, 1000, 1000)

    def test_not_root_already_target_only_verifies(self) -> None:
        self.os = FakeOS(uid=1000, gid=1001, groups=[])
        self.prctl = FakePrctl(self.os)
        result = self.drop(1000)
        self.assertEqual(result, DropResult(uid=1000, gid=1001, already_unprivileged=True))
        self.assertNotIn("setgroups", [c[0] for c in self.os.calls])
        self.assertEqual(self.os.calls[0], ("prctl", (PR_SET_NO_NEW_PRIVS, 1)))
        self.assertEqual(self.prctl.no_new_privs, 1)

    def test_not_root_already_target_but_root_group(self) -> None:
        self.os = FakeOS(uid=1000, gid=1001, groups=[0])
        self.prctl = FakePrctl(self.os)
        self.assertRaises(PrivilegeError, self.drop, 1000)

    def test_not_root_other_uid_refused(self) -> None:
        self.os = FakeOS(uid=1234, gid=1234, groups=[])
        self.prctl = FakePrctl(self.os)
        e = self.assertRaises(PrivilegeError, self.drop, 1000, 1000)
        self.assertIn("not root", str(e))
        self.assertEqual(self.os.calls, [])

    def test_parse_proc_status(self) -> None:
        fields = parse_proc_status("Name:\tx\nCapEff:\t0000000000000000\nbroken line\nUid:\t1\t2\t3\t4\n")
        self.assertEqual(fields, {"Name": "x", "CapEff": "0000000000000000", "Uid": "1\t2\t3\t4"})


class PrivilegeDropServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]

    def test_drops_after_earlier_children(self) -> None:
        order: list[str] = []

        class Opener(Service):
            def privilegedStartService(self) -> None:
                order.append("open tun and port")

        def fake_drop(uid: int, gid: int | None) -> DropResult:
            order.append(f"drop {uid} {gid}")
            return DropResult(uid=uid, gid=5, already_unprivileged=False)

        top = MultiService()
        Opener().setServiceParent(top)
        drop = PrivilegeDropService(1000, None, drop=fake_drop)
        drop.setServiceParent(top)
        top.privilegedStartService()
        self.assertEqual(order, ["open tun and port", "drop 1000 None"])
        self.assertEqual(drop.result, DropResult(uid=1000, gid=5, already_unprivileged=False))
        infos = [e for e in self.events if e.get("log_level") == LogLevel.info and e.get("uid") == 1000]
        self.assertEqual(len(infos), 1)

    def test_failure_propagates_and_is_logged(self) -> None:
        def failing(uid: int, gid: int | None) -> DropResult:
            raise PrivilegeError("cannot")

        service = PrivilegeDropService(1000, 1000, drop=failing)
        self.assertRaises(PrivilegeError, service.privilegedStartService)
        self.assertTrue(any(e.get("log_level") == LogLevel.critical for e in self.events))


class PrivilegeDropSelfCheckTests(SynchronousTestCase):
    """Preload as root before the drop, self-check after it; a failed check ends the process with one line."""

    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        self.order: list[str] = []
        self.stderr = io.StringIO()

    def service(self, check: Any = None, preload: Any = None) -> PrivilegeDropService:
        def fake_drop(uid: int, gid: int | None) -> DropResult:
            self.order.append("drop")
            return DropResult(uid=uid, gid=uid, already_unprivileged=False)

        return PrivilegeDropService(
            1000,
            drop=fake_drop,
            preload=preload or (lambda: self.order.append("preload")),
            self_check=check or (lambda: self.order.append("check")),
            stderr=self.stderr,
        )

    def test_preload_before_the_drop_and_the_check_after(self) -> None:
        self.service().privilegedStartService()
        self.assertEqual(self.order, ["preload", "drop", "check"])
        self.assertEqual(self.stderr.getvalue(), "")

    def test_a_failed_check_exits_1_with_one_line_on_stderr_and_in_the_log(self) -> None:
        def check() -> None:
            raise SelfCheckError("as uid 1000, GET /health answered 500 (LookupError: unknown encoding: idna)")

        e = self.assertRaises(StartupCheckFailed, self.service(check).privilegedStartService)
        self.assertIsInstance(e, SystemExit)
        self.assertEqual(e.code, 1)
        line = "tunmesh: startup error: as uid 1000, GET /health answered 500 (LookupError: unknown encoding: idna)"
        self.assertEqual(self.stderr.getvalue(), line + "\n")
        self.assertEqual(e.message, line)
        critical = [ev for ev in self.events if ev.get("log_level") == LogLevel.critical]
        self.assertEqual([ev.get("line") for ev in critical], [line])

    def test_a_multi_line_cause_still_makes_one_line(self) -> None:
        def check() -> None:
            raise RuntimeError("first\nsecond")

        self.assertRaises(StartupCheckFailed, self.service(check).privilegedStartService)
        self.assertEqual(self.stderr.getvalue(), "tunmesh: startup error: first second\n")

    def test_a_failed_preload_exits_before_the_drop(self) -> None:
        def preload() -> None:
            raise PreloadError("cannot import encodings.idna before the privilege drop: gone")

        self.assertRaises(StartupCheckFailed, self.service(preload=preload).privilegedStartService)
        self.assertEqual(self.order, [])
        self.assertIn("encodings.idna", self.stderr.getvalue())




class RealDropTests(SynchronousTestCase):
    """Drop for real in a forked child, which reports over a pipe."""

    def run_child(self, uid: int, gid: int | None, before: Any = None) -> dict[str, Any]:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            report: dict[str, Any] = {}
            try:
                os.close(read_fd)
                if before is not None:
                    before()
                result = drop_privileges(uid, gid)
                report["result"] = [result.uid, result.gid, result.already_unprivileged]
                try:
                    os.setuid(0)
                    report["setuid0"] = "succeeded"
                except PermissionError:
                    report["setuid0"] = "EPERM"
                try:
                    os.setgid(0)
                    report["setgid0"] = "succeeded"
                except PermissionError:
                    report["setgid0"] = "EPERM"
                report["status"] = parse_proc_status(read_proc_status())
                report["no_new_privs"] = libc_prctl(PR_GET_NO_NEW_PRIVS, 0)
            except BaseException as e:
                report["error"] = f"{type(e).__name__}: {e}"
            finally:
                try:
                    os.write(write_fd, json.dumps(report).encode())
                    os.close(write_fd)
                finally:
                    os._exit(0)
        os.close(write_fd)
        chunks = []
        while True:
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        answer: dict[str, Any] = json.loads(b"".join(chunks))
        return answer

    def test_drop_to_nobody(self) -> None:
        require_root()
        report = self.run_child(65534, 65534)
        self.assertNotIn("error", report)
        self.assertEqual(report["result"], [65534, 65534, False])
        self.assertEqual(report["setuid0"], "EPERM")
        self.assertEqual(report["setgid0"], "EPERM")
        status = report["status"]
        self.assertEqual(status["NoNewPrivs"], "1")
        self.assertEqual(status["Uid"].split(), ["65534"] * 4)
        self.assertEqual(status["Gid"].split(), ["65534"] * 4)
        self.assertEqual(status["Groups"], "")
        self.assertEqual(int(status["CapEff"], 16), 0)
        self.assertEqual(int(status["CapPrm"], 16), 0)
        self.assertEqual(report["no_new_privs"], 1)
        # the parent is untouched
        self.assertEqual(os.geteuid(), 0)

    def test_default_gid_from_passwd(self) -> None:
        require_root()
        try:
            expected = pwd.getpwuid(65534).pw_gid
        except KeyError:
            expected = 65534
        report = self.run_child(65534, None)
        self.assertNotIn("error", report)
        self.assertEqual(report["result"], [65534, expected, False])

    def test_already_unprivileged_for_real(self) -> None:
        require_root()

        def become_nobody() -> None:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)

        report = self.run_child(65534, 65534, before=become_nobody)
        self.assertNotIn("error", report)
        self.assertEqual(report["result"], [65534, 65534, True])
        self.assertEqual(report["status"]["NoNewPrivs"], "1")

    def test_unprivileged_other_uid_for_real(self) -> None:
        require_root()

        def become_nobody() -> None:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)

        report = self.run_child(1000, 1000, before=become_nobody)
        self.assertIn("PrivilegeError", report["error"])
        self.assertIn("not root", report["error"])

    def test_refuses_root_for_real(self) -> None:
        require_root()
        report = self.run_child(0, 0)
        self.assertIn("PrivilegeError", report["error"])


class RequireRootTests(SynchronousTestCase):
    """The real tests skip without root, unless CI demands them."""

    def test_skip_when_not_root(self) -> None:
        self.patch(os, "geteuid", lambda: 1000)
        self.patch(os, "environ", {})
        self.assertRaises(SkipTest, require_root)

    def test_fail_when_required(self) -> None:
        self.patch(os, "geteuid", lambda: 1000)
        self.patch(os, "environ", {"TUNMESH_REQUIRE_ROOT_TESTS": "1"})
        self.assertRaises(AssertionError, require_root)

    def test_root_runs(self) -> None:
        self.patch(os, "geteuid", lambda: 0)
        self.assertIsNone(require_root())  # type: ignore[func-returns-value]
