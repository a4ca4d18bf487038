"""Tests for :mod:`tunmesh.selfcheck` and :mod:`tunmesh.preload`: the node works after the privilege drop
or says in one line why not."""

from __future__ import annotations

import codecs
import json
import os
from pathlib import Path
from typing import Any, cast

import yaml
from twisted.internet.interfaces import ITransport
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from tests.netns import require_root
from tests.unit.support import SECRET, del_key, minimal_data, set_key
from tunmesh.api.server import RouteLimits, make_site
from tunmesh.config import load_config
from tunmesh.preload import PRELOAD_CODECS, PRELOAD_MODULES, PreloadError, preload
from tunmesh.privileges import PrivilegeDropService, drop_privileges
from tunmesh.selfcheck import (
    DEFAULT_PROBES,
    MemoryTransport,
    Probe,
    SelfCheck,
    SelfCheckError,
    blocking_paths,
    describe_blockers,
    first_blocker,
    installation_paths,
    request_through,
    reread_files,
)
from tunmesh.service import makeService
from tunmesh.testing import FakeTun
from tunmesh.tls.certs import write_self_signed

STDLIB = "/root/.pyenv/versions/3.11.7/lib/python3.11"


def deny(*denied: str) -> Any:
    """An ``os.access`` that refuses ``denied`` paths and allows everything else."""

    def access(path: str, mode: int) -> bool:
        return path not in denied

    return access


def readable_installation() -> dict[str, str]:
    return {STDLIB: "the standard library"}


class Broken(Resource):
    """Fails every request the way the codec lookup did after the drop."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        raise LookupError("unknown encoding: idna")


def broken_site() -> Site:
    return make_site(Broken(), RouteLimits(), MemoryReactorClock())


class NodeFixture:
    """A node built by ``makeService`` on a memory reactor and a fake TUN, as root would build it."""

    def __init__(self, test: SynchronousTestCase, **keys: Any) -> None:
        base = Path(test.mktemp()).resolve()
        (base / "ssl").mkdir(parents=True)
        write_self_signed(base / "ssl" / "cert.pem", base / "ssl" / "key.pem")
        data = minimal_data()
        for key, value in keys.items():
            set_key(data, key.replace("__", "/"), value)
        if "clustering/auth/secret_file" in {k.replace("__", "/") for k in keys}:
            del_key(data, "clustering/auth/secret")
            (base / keys["clustering__auth__secret_file"]).write_text(SECRET + "\n")
        self.base = base
        self.config_path = base / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(data))
        # Readable by process.uid (the preflight in makeService checks it as that uid); mktemp makes 0700 dirs.
        for path in (base, *base.parents):
            if path == Path.cwd():
                break
            path.chmod(0o755)
        for path in base.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        self.cfg = load_config(self.config_path, env={})
        devices: list[FakeTun] = []

        def open_tun(networking: Any) -> FakeTun:
            devices.append(FakeTun())
            return devices[-1]

        self.top = makeService(self.cfg, reactor=MemoryReactorClock(), open_tun=open_tun,
                               config_path=self.config_path)
        def close_devices() -> None:
            for device in devices:
                device.close()

        test.addCleanup(close_devices)
        self.drop = next(s for s in self.top if isinstance(s, PrivilegeDropService))

    @property
    def self_check(self) -> SelfCheck:
        check = self.drop._self_check
        assert isinstance(check, SelfCheck)
        return check


class NodeSiteTests(TestCase):
    """The check as the node runs it: its own Site, served in memory."""

    def setUp(self) -> None:
        self.node = NodeFixture(self)

    def test_every_probe_gets_its_expected_status_from_the_node_site(self) -> None:
        statuses = {(p.method, p.path): request_through(self.node.self_check.site, p) for p in DEFAULT_PROBES}
        self.assertEqual(
            {k: v.status for k, v in statuses.items()},
            {
                (b"GET", b"/health"): 503,  # before startService: the port is not running yet
                (b"GET", b"/ready"): 503,
                (b"GET", b"/metrics"): 404,  # monitoring is off in the minimal config
                (b"GET", b"/tunmesh/control/v0/node_info"): 200,
                (b"DELETE", b"/health"): 405,
                (b"GET", b"/tunmesh-self-check"): 404,
                (b"POST", b"/tunmesh-self-check"): 404,
            },
        )
        self.assertEqual({v.failure for v in statuses.values()}, {None})

    def test_the_check_of_a_working_node_passes_and_says_so(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        SelfCheck(self.node.self_check.site, paths=readable_installation, access=deny())()
        self.assertEqual([e["log_format"] for e in events if e["log_level"] == LogLevel.warn], [])
        self.assertTrue(any(e["log_format"].startswith("self-check as uid") for e in events))

    def test_node_info_body_is_the_node_json(self) -> None:
        transport = MemoryTransport()
        protocol = self.node.self_check.site.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET /tunmesh/control/v0/node_info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head, _, body = bytes(transport.data).partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        self.assertIn(b"application/json", head)
        self.assertIn(b'"id"', body)
        self.assertTrue(transport.disconnecting)

    def test_the_service_gets_preload_and_the_node_check(self) -> None:
        self.assertIs(self.node.drop._preload, preload)
        self.assertEqual(self.node.self_check.reread_files, ())

    def test_a_reloading_node_rereads_what_the_preflight_lists(self) -> None:
        node = NodeFixture(self, clustering__reload_config_on_bootstrap=True,
                           clustering__auth__secret_file="cluster.secret")
        files = [path for path, why in node.self_check.reread_files]
        ssl = node.base / "ssl"
        self.assertEqual(files, [node.config_path, ssl / "cert.pem", ssl / "key.pem", node.base / "cluster.secret"])
        self.assertTrue(all("reload_config_on_bootstrap" in why for _, why in node.self_check.reread_files))

    def test_memory_transport_is_a_transport(self) -> None:
        self.assertTrue(verifyObject(ITransport, MemoryTransport()))


class FailureMessageTests(TestCase):
    """Each failure is one line naming the uid and the cause."""

    def assert_one_line(self, error: SelfCheckError) -> str:
        text = str(error)
        self.assertNotIn("\n", text)
        return text

    def test_a_500_names_the_request_the_exception_and_the_unreadable_directory(self) -> None:
        check = SelfCheck(broken_site(), paths=readable_installation, access=deny("/root"), getuid=lambda: 65534)
        text = self.assert_one_line(self.assertRaises(SelfCheckError, check))
        self.assertEqual(len(self.flushLoggedErrors(LookupError)), 1)
        self.assertEqual(
            text,
            "as uid 65534, GET /health answered 500 (LookupError: unknown encoding: idna); uid 65534 cannot "
            f"read /root (on the way to the standard library {STDLIB})",
        )

    def test_a_500_with_a_readable_installation_names_the_exception(self) -> None:
        check = SelfCheck(broken_site(), paths=readable_installation, access=deny(), getuid=lambda: 65534)
        text = self.assert_one_line(self.assertRaises(SelfCheckError, check))
        self.flushLoggedErrors(LookupError)
        self.assertEqual(text, "as uid 65534, GET /health answered 500 (LookupError: unknown encoding: idna)")

    def test_an_unexpected_status_fails(self) -> None:
        probe = Probe(b"GET", b"/anything", frozenset({200}))
        site = make_site(Resource(), RouteLimits(), MemoryReactorClock())
        check = SelfCheck(site, probes=[probe], paths=readable_installation, access=deny(), getuid=lambda: 7)
        self.assertEqual(str(self.assertRaises(SelfCheckError, check)), "as uid 7, GET /anything answered 404")

    def test_a_codec_missing_after_the_drop_is_named(self) -> None:
        check = SelfCheck(broken_site(), probes=[], codec_names=["tunmesh-no-such-codec"], paths=readable_installation,
                          access=deny(), getuid=lambda: 7)
        text = self.assert_one_line(self.assertRaises(SelfCheckError, check))
        self.assertTrue(text.startswith("as uid 7, codec 'tunmesh-no-such-codec' is unavailable"), text)

    def test_a_failing_exercise_is_named(self) -> None:
        def fails() -> None:
            raise ModuleNotFoundError("No module named 'cryptography.hazmat.backends.openssl'")

        check = SelfCheck(broken_site(), probes=[], exercises=[("an X25519 key exchange", fails)],
                          paths=readable_installation, access=deny(STDLIB), getuid=lambda: 7)
        text = self.assert_one_line(self.assertRaises(SelfCheckError, check))
        self.assertEqual(
            text,
            "as uid 7, an X25519 key exchange failed (ModuleNotFoundError: No module named "
            f"'cryptography.hazmat.backends.openssl'); uid 7 cannot read the standard library {STDLIB}",
        )

    def test_an_unreadable_reread_file_is_named(self) -> None:
        def read(path: Path) -> None:
            raise PermissionError(13, "Permission denied", str(path))

        check = SelfCheck(broken_site(), [(Path("/etc/tunmesh/config.yaml"), "re-read later")], probes=[],
                          paths=readable_installation, access=deny(), read_file=read, getuid=lambda: 7)
        self.assertEqual(
            str(self.assertRaises(SelfCheckError, check)),
            "uid 7 cannot read /etc/tunmesh/config.yaml (re-read later): Permission denied",
        )

    def test_a_check_that_breaks_is_still_one_line(self) -> None:
        class NoSite:
            def buildProtocol(self, addr: object) -> None:  # noqa: N802
                raise RuntimeError("no protocol\nfor you")

        check = SelfCheck(cast(Site, NoSite()), probes=DEFAULT_PROBES[:1], paths=readable_installation, access=deny(),
                          getuid=lambda: 7)
        text = str(self.assertRaises(SelfCheckError, check))
        self.assertTrue(text.startswith("self-check as uid 7 failed: "), text)

    def test_an_unreadable_installation_that_works_is_a_warning(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        SelfCheck(broken_site(), probes=[], paths=readable_installation, access=deny("/root"), getuid=lambda: 7)()
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["clause"],
                         f"uid 7 cannot read /root (on the way to the standard library {STDLIB})")


class ReadabilityTests(SynchronousTestCase):
    def test_first_blocker_is_the_first_directory_that_cannot_be_entered(self) -> None:
        self.assertEqual(first_blocker(STDLIB, deny("/root", "/root/.pyenv")), "/root")
        self.assertEqual(first_blocker(STDLIB, deny(STDLIB)), STDLIB)
        self.assertIsNone(first_blocker(STDLIB, deny("/usr")))

    def test_describe_counts_the_rest(self) -> None:
        blockers = blocking_paths({STDLIB: "the standard library", "/root/site": "site-packages",
                                   "/usr/lib": "the twisted package"}, deny("/root"))
        self.assertEqual(
            describe_blockers(65534, blockers),
            f"uid 65534 cannot read /root (on the way to the standard library {STDLIB}) and 1 more "
            "installation path(s)",
        )

    def test_installation_paths_hold_the_stdlib_and_the_packages(self) -> None:
        paths = installation_paths()
        self.assertIn(os.path.realpath(os.path.dirname(os.__file__)), paths)
        import tunmesh

        self.assertEqual(paths[os.path.realpath(os.path.dirname(tunmesh.__file__))], "the tunmesh package")

    def test_reread_files_are_empty_without_reload(self) -> None:
        base = Path(self.mktemp()).resolve()
        base.mkdir()
        (base / "ssl").mkdir()
        for name in ("cert.pem", "key.pem"):
            (base / "ssl" / name).write_text("x\n")
        path = base / "config.yaml"
        path.write_text(yaml.safe_dump(minimal_data()))
        self.assertEqual(reread_files(load_config(path, env={}), path), [])


class PreloadTests(SynchronousTestCase):
    def test_everything_listed_loads(self) -> None:
        preload()
        import sys

        self.assertEqual([m for m in PRELOAD_MODULES if m not in sys.modules], [])
        self.assertIn("idna", PRELOAD_CODECS)

    def test_every_encoding_json_can_detect_is_preloaded(self) -> None:
        # PyJWT json.loads() every HMAC key; a key starting with a zero byte needed utf-16/32 after the drop.
        samples = [codecs.BOM_UTF32_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF16_LE,
                   codecs.BOM_UTF8, b"\x00\x01ab", b"\x00\x00\x00a", b"a\x00b\x00", b"a\x00\x00\x00",
                   b"a\x00", b"{}", b"\x00"]
        detected = {codecs.lookup(json.detect_encoding(b)).name for b in samples}
        preloaded = {codecs.lookup(name).name for name in PRELOAD_CODECS}
        self.assertEqual(detected - preloaded, set())
        self.assertEqual(len(detected), 8)

    def test_a_missing_module_is_named(self) -> None:
        e = self.assertRaises(PreloadError, preload, modules=["tunmesh.no_such_module"])
        self.assertIn("cannot import tunmesh.no_such_module before the privilege drop", str(e))

    def test_a_missing_codec_is_named(self) -> None:
        e = self.assertRaises(PreloadError, preload, modules=[], codec_names=["tunmesh-no-such-codec"])
        self.assertIn("'tunmesh-no-such-codec'", str(e))

    def test_a_failing_warm_up_is_named(self) -> None:
        def _warm_thing() -> None:
            raise ValueError("broken")

        e = self.assertRaises(PreloadError, preload, modules=[], codec_names=[], warm_ups=[_warm_thing])
        self.assertEqual(str(e), "warm_thing failed before the privilege drop: broken")


class AsDroppedUidTests(SynchronousTestCase):
    """The real thing: a forked child drops to uid 65534 and runs the node's check."""

    def run_dropped(self, check: SelfCheck) -> str:
        require_root()
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            outcome = "passed"
            try:
                os.close(read_fd)
                drop_privileges(65534, 65534)
                check()
            except SelfCheckError as e:
                outcome = f"SelfCheckError: {e}"
            except BaseException as e:
                outcome = f"{type(e).__name__}: {e}"
            finally:
                try:
                    os.write(write_fd, outcome.encode())
                finally:
                    os._exit(0)
        os.close(write_fd)
        chunks = []
        while chunk := os.read(read_fd, 65536):
            chunks.append(chunk)
        os.close(read_fd)
        os.waitpid(pid, 0)
        return b"".join(chunks).decode()

    def test_the_node_check_passes_as_the_dropped_uid(self) -> None:
        node = NodeFixture(self)
        self.assertEqual(self.run_dropped(node.self_check), "passed")

    def test_a_config_closed_after_the_preflight_fails_as_the_dropped_uid(self) -> None:
        # The preflight (in makeService) found it readable; then it changed before the drop. The check
        # reads it for real, as the uid the process now runs as.
        node = NodeFixture(self, process__uid=65534, clustering__reload_config_on_bootstrap=True)
        node.config_path.chmod(0o600)
        outcome = self.run_dropped(node.self_check)
        self.assertTrue(outcome.startswith(f"SelfCheckError: uid 65534 cannot read {node.config_path} ("), outcome)
        self.assertIn("reload_config_on_bootstrap", outcome)
        self.assertTrue(outcome.endswith("): Permission denied"), outcome)
