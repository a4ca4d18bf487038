"""The admin endpoint (issue 8): the line-JSON protocol, the socket file, the client, the table, the commands.

Protocol tests run in memory (``StringTransport`` and a ``Clock``); the socket tests bind real UNIX sockets
in a temporary directory and talk to them from a thread with the blocking client, as ``tunmesh status`` does.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor, threads
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.netns import require_root
from tunmesh.admin.client import AdminError, request, socket_path
from tunmesh.admin.protocol import AdminFactory, peer_uid
from tunmesh.admin.render import count, duration, render_reload, render_status, size
from tunmesh.admin.service import AdminSocketError, AdminSocketService, listen_admin_socket
from tunmesh.cli import main

SAMPLE: dict[str, Any] = {
    "format": 1,
    "node": {
        "name": "alpha", "id": "11111111-aaaa-4bbb-8ccc-000000000001", "url": "https://198.18.0.1:4567",
        "addresses": {"ipv4": "100.64.0.1/24"}, "version": "1.2.3", "uptime_s": 3725.0, "ready": False,
        "not_ready": [{"check": "mesh", "hint": "not joined: no peer yet"}], "live": True, "peers": 2,
        "inbound_auth_failures": {"count": 3, "reason": "bad_signature", "where": "register", "age_s": 4.0,
                                  "hint": "a node with another cluster secret is contacting this node"},
    },
    "peers": [
        {
            "name": "bravo", "id": "22222222-aaaa-4bbb-8ccc-000000000002", "url": "https://198.18.0.2:4567",
            "addresses": ["100.64.0.2/32"], "class": "local", "state": "up", "hint": "",
            "last_contact_age_s": 1.5, "first_seen_age_s": 300.0, "last_renewal_age_s": 1.5,
            "sessions": {"out": {"kid": "KO", "age_s": 290.0}, "in": {"kid": "KI", "age_s": 291.0}},
            "link": {
                "out": {"state": "up", "since_s": 299.0, "packets": 12345, "bytes": 3 * 1024 * 1024,
                        "rtt_ms": 0.412, "last_error": None, "last_error_age_s": None},
                "in": {"state": "up", "since_s": 298.0, "packets": 950, "bytes": 2048, "rtt_ms": None},
            },
            "drops": {"queue_full": 2},
            "last_failure": None,
        },
        {
            "name": None, "id": "33333333-aaaa-4bbb-8ccc-000000000003", "url": "https://198.18.0.3:4567",
            "addresses": ["100.64.0.3/32"], "class": "local", "state": "unreachable",
            "hint": "nothing listens there: check that the peer runs and listens on the port of its URL",
            "last_contact_age_s": 12.0, "first_seen_age_s": 300.0, "last_renewal_age_s": 12.0,
            "sessions": {"out": None, "in": None},
            "link": {"out": {"state": "connecting", "since_s": 11.0, "packets": 7, "bytes": 700, "rtt_ms": None,
                             "last_error": "connection refused", "last_error_age_s": 0.5}, "in": None},
            "drops": {},
            "last_failure": {"operation": "register", "reason": "transport", "status": None,
                             "detail": "connection refused", "failures": 4, "age_s": 2.0, "ok_age_s": None,
                             "hint": "nothing listens there"},
        },
    ],
    "urls": [
        {"url": "https://198.18.0.9:4567", "bootstrap": True, "operation": "bootstrap", "reason": "status_401",
         "status": 401, "detail": "answered 401", "failures": 5, "age_s": 3.0, "ok_age_s": None,
         "hint": "the peer refused our token: check the secret"},
        {"url": "https://198.18.0.8:4567", "bootstrap": False, "operation": "bootstrap", "reason": "timeout",
         "status": None, "detail": "", "failures": 0, "age_s": 90.0, "ok_age_s": 30.0, "hint": ""},
    ],
    "removed": [{"id": "44444444", "name": "delta", "url": "https://198.18.0.4:4567", "reason": "stale",
                 "age_s": 65.0}],
}


def short_dir(test: SynchronousTestCase) -> Path:
    """A fresh directory with a short path (a UNIX socket path must fit in 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="tm-admin-"))
    test.addCleanup(shutil.rmtree, path, True)
    return path


class ProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.calls: list[str] = []

        def boom() -> Any:
            raise ValueError("no file")

        self.factory = AdminFactory({"status": lambda: {"peers": []}, "reload": boom}, self.clock, {0})

    def exchange(self, data: bytes) -> tuple[dict[str, Any], StringTransport]:
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(data)
        return json.loads(transport.value()), transport

    def test_one_request_one_answer_then_closed(self) -> None:
        answer, transport = self.exchange(b'{"command": "status"}\n')
        self.assertEqual(answer, {"ok": True, "result": {"peers": []}})
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_refusals(self) -> None:
        for data, error in (
            (b"garbage\n", "not a JSON request"),
            (b'{"cmd": 1}\n', "not a JSON request"),
            (b'{"command": "shutdown"}\n', "unknown command; known: reload, status"),
            (b'{"command": "reload"}\n', "reload failed: ValueError: no file"),
            (b"x" * 5000, "request too long"),
        ):
            answer, transport = self.exchange(data)
            self.assertEqual(answer["ok"], False)
            self.assertIn(error, answer["error"])
            self.assertTrue(transport.disconnecting)
        self.flushLoggedErrors(ValueError)

    def test_a_silent_client_is_answered_and_closed_at_the_deadline(self) -> None:
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertIn(b"no request within the deadline", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_a_client_with_another_uid_is_refused(self) -> None:
        here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(here.close)
        self.addCleanup(there.close)
        self.assertEqual(peer_uid(_SocketTransport(here)), os.getuid())
        strict = AdminFactory({"status": dict}, self.clock, {os.getuid() + 1})
        proto = strict.buildProtocol(None)
        transport = _SocketTransport(here)
        proto.makeConnection(transport)
        self.assertIn(f"uid {os.getuid()} may not use the admin socket".encode(), transport.value())
        proto.dataReceived(b'{"command": "status"}\n')
        self.assertNotIn(b'"ok":true', transport.value())
        allowed = AdminFactory({"status": dict}, self.clock, {os.getuid()}).buildProtocol(None)
        transport = _SocketTransport(here)
        allowed.makeConnection(transport)
        allowed.dataReceived(b'{"command": "status"}\n')
        self.assertIn(b'"ok":true', transport.value())


class _SocketTransport(StringTransport):
    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock

    def getHandle(self) -> socket.socket:  # noqa: N802
        return self._sock


class SocketFileTests(TestCase):
    """Real UNIX sockets on the reactor, as the node creates them."""

    def setUp(self) -> None:
        self.dir = short_dir(self)
        self.factory = AdminFactory({"status": dict}, reactor, {0})

    def listen(self, path: Path, uid: int | None = None) -> Any:
        port = listen_admin_socket(reactor, path, self.factory, uid, uid)
        self.addCleanup(port.stopListening)
        return port

    def test_created_0600_owned_by_the_uid_in_a_new_directory(self) -> None:
        path = self.dir / "sub" / "admin.sock"
        uid = 65534 if os.geteuid() == 0 else None
        self.listen(path, uid)
        st = path.stat()
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(path.parent.stat().st_mode), 0o755)
        if uid is not None:
            self.assertEqual((st.st_uid, st.st_gid), (65534, 65534))

    @inlineCallbacks
    def test_without_cap_chown_the_socket_stays_roots_and_listens(self) -> Any:
        """``--cap-drop ALL``: root creates the socket but cannot give it away; the node still serves it."""
        from tunmesh.admin.service import ChownRefused

        def refused(path: Path, uid: int, gid: int) -> None:
            raise PermissionError(1, "Operation not permitted")

        path = self.dir / "admin.sock"
        with self.assertRaises(ChownRefused) as caught:
            listen_admin_socket(reactor, path, self.factory, 65534, 65534, chown=refused)
        port = caught.exception.port
        st = path.stat()
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_uid), (0o600, os.geteuid()))
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(path))  # listening
        client.close()
        yield port.stopListening()
        self.assertFalse(path.exists())

    @inlineCallbacks
    def test_a_stale_socket_is_replaced_a_live_one_and_other_files_are_not(self) -> Any:
        path = self.dir / "admin.sock"
        port = listen_admin_socket(reactor, path, self.factory, None, None)
        with self.assertRaises(AdminSocketError) as caught:
            listen_admin_socket(reactor, path, self.factory, None, None)
        self.assertIn("in use by another process", str(caught.exception))
        yield port.stopListening()
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(path))  # left behind, as after a kill: nothing listens
        stale.close()
        self.listen(path)
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        other = self.dir / "file"
        other.write_text("x")
        with self.assertRaises(AdminSocketError):
            listen_admin_socket(reactor, other, self.factory, None, None)
        self.assertEqual(other.read_text(), "x")


class SocketPathTests(SynchronousTestCase):
    def test_option_then_env_then_config_then_default(self) -> None:
        config = Path(self.mktemp())
        config.write_text("tun_mesh:\n  process:\n    admin_socket: /x/from-config.sock\n")
        env = {"TUNMESH_ADMIN_SOCKET": "/x/env.sock"}
        self.assertEqual(socket_path("/x/opt.sock", env, config), "/x/opt.sock")
        self.assertEqual(socket_path(None, env, config), "/x/env.sock")
        self.assertEqual(socket_path(None, {}, config), "/x/from-config.sock")
        self.assertEqual(socket_path(None, {}, None), "/run/tunmesh/admin.sock")
        self.assertEqual(socket_path(None, {}, Path("/nonexistent/config.yaml")), "/run/tunmesh/admin.sock")
        config.write_text("tun_mesh:\n  process:\n    admin_socket: ''\n")
        with self.assertRaises(AdminError):
            socket_path(None, {}, config)

    def test_errors_name_the_problem(self) -> None:
        base = short_dir(self)
        with self.assertRaises(AdminError) as caught:
            request(str(base / "none.sock"), "status", timeout=1)
        self.assertIn("is the node running?", str(caught.exception))
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(str(base / "dead.sock"))
        dead.close()
        with self.assertRaises(AdminError) as caught:
            request(str(base / "dead.sock"), "status", timeout=1)
        self.assertIn("nothing listens", str(caught.exception))


class EndToEndTests(TestCase):
    """A real ``AdminSocketService`` on the reactor, asked by the blocking client from a thread."""

    def setUp(self) -> None:
        self.path = short_dir(self) / "admin.sock"
        self.reloads: list[int] = []

        def reload() -> dict[str, list[str]]:
            self.reloads.append(1)
            return {"changed": ["tun_mesh/logging/level"], "refused": ["tun_mesh/control_api/ssl"],
                    "restart_needed": []}

        factory = AdminFactory({"status": lambda: SAMPLE, "reload": reload}, reactor, {0, os.getuid()})
        self.service = AdminSocketService(self.path, factory, reactor, None, None)
        self.service.privilegedStartService()
        self.service.startService()
        self.addCleanup(self.service.stopService)

    @inlineCallbacks
    def test_status_json_table_watch_and_reload(self) -> Any:
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)
        result = yield threads.deferToThread(request, str(self.path), "status")
        self.assertEqual(result, SAMPLE)

        def cli(*argv: str) -> tuple[int, str, str]:
            out, err = io.StringIO(), io.StringIO()
            code = main([*argv, "--socket", str(self.path)], stdout=out, stderr=err, env={})
            return code, out.getvalue(), err.getvalue()

        code, out, _ = yield threads.deferToThread(cli, "status", "--json")
        self.assertEqual((code, json.loads(out)), (0, SAMPLE))
        code, out, _ = yield threads.deferToThread(cli, "status")
        self.assertEqual((code, out), (0, render_status(SAMPLE)))
        code, out, _ = yield threads.deferToThread(cli, "status", "--watch", "0.2", "--count", "2")
        self.assertEqual((code, out.count("\x1b[H\x1b[2J"), out.count("node alpha")), (0, 2, 2))
        code, out, _ = yield threads.deferToThread(cli, "reload")
        self.assertEqual(code, 1)  # a part was refused
        self.assertEqual(out, render_reload({"changed": ["tun_mesh/logging/level"],
                                             "refused": ["tun_mesh/control_api/ssl"]}))
        self.assertEqual(len(self.reloads), 1)
        yield self.service.stopService()
        self.assertFalse(self.path.exists())
        code, _, err = yield threads.deferToThread(cli, "status")
        self.assertEqual(code, 1)
        self.assertIn("no admin socket at", err)


class RenderTests(SynchronousTestCase):
    def test_units(self) -> None:
        self.assertEqual([duration(x) for x in (None, 0.25, 9.0, 59.9, 125, 3725, 90000)],
                         ["-", "0.2s", "9s", "59s", "2m05s", "1h02m", "1d01h"])
        self.assertEqual([count(x) for x in (0, 999, 12345, 4_500_000, 2_000_000_000)],
                         ["0", "999", "12.3k", "4.5M", "2.0G"])
        self.assertEqual([size(x) for x in (512, 3 * 1024 + 400, 12 * 1024**2, 3 * 1024**3)],
                         ["512 B", "3.4 KiB", "12.0 MiB", "3.0 GiB"])

    def test_table(self) -> None:
        text = render_status(SAMPLE)
        lines = text.splitlines()
        self.assertEqual(lines[0], "node alpha  id 11111111-aaaa-4bbb-8ccc-000000000001  https://198.18.0.1:4567")
        self.assertIn("  version 1.2.3, up 1h02m, 2 peer(s), addresses 100.64.0.1/24", lines)
        self.assertIn("  ready: NO", lines)
        self.assertIn("    mesh: not joined: no peer yet", lines)
        self.assertIn("  inbound auth failures: 3 (last: bad_signature on register, 4s ago)", lines)
        header = [line for line in lines if line.startswith("NAME")][0]
        self.assertEqual(header.split(), ["NAME", "ID", "STATE", "ENDPOINT", "OVERLAY", "LINK", "OUT", "LINK",
                                          "IN", "RTT", "TX", "RX", "CONTACT"])
        bravo = [line for line in lines if line.startswith("bravo ")][0].split()
        self.assertEqual(bravo[:5], ["bravo", "22222222", "up", "https://198.18.0.2:4567", "100.64.0.2"])
        self.assertIn("0.41ms", bravo)
        self.assertIn("12.3k", " ".join(bravo))
        unnamed = [line for line in lines if line.startswith("-  ")][0].split()
        self.assertEqual(unnamed[2], "unreachable")
        self.assertIn("  keys: out KO (4m50s old), in KI (4m51s old)", lines)
        self.assertIn("  drops: queue_full 2", lines)
        self.assertIn("  link out: connection refused (0.5s ago)", lines)
        self.assertIn("  register failing: transport, 4 time(s), last 2s ago: connection refused", lines)
        self.assertIn("  hint: nothing listens there: check that the peer runs and listens on the port of its URL",
                      lines)
        failing = [line for line in lines if line.startswith("https://198.18.0.9")][0]
        self.assertIn("status_401 (401)", failing)
        self.assertIn("check the secret", failing)
        self.assertFalse([line for line in lines if line.startswith("https://198.18.0.8")])  # recovered
        self.assertIn("removed: delta 44444444 (https://198.18.0.4:4567) 1m05s ago: stale", lines)
        self.assertTrue(text.endswith("\n") and not text.endswith("\n\n"))

    def test_reload_answer(self) -> None:
        self.assertEqual(render_reload({"changed": [], "refused": [], "restart_needed": []}), "no change\n")
        self.assertEqual(
            render_reload({"changed": ["a"], "restart_needed": ["b"]}),
            "applied:\n  a\nchanged in the file, applied at the next start:\n  b\n",
        )


class MakeServiceTests(SynchronousTestCase):
    """``makeService`` wires the admin socket to this node's status and reload (built, not started)."""

    def build(self, **process: Any) -> Any:
        import yaml
        from twisted.internet.testing import MemoryReactorClock

        from tests.unit.support import minimal_data
        from tunmesh import service
        from tunmesh.config import load_config
        from tunmesh.testing import FakeTun
        from tunmesh.tls.certs import write_self_signed

        base = Path(self.mktemp()).resolve()
        (base / "ssl").mkdir(parents=True)
        write_self_signed(base / "ssl" / "cert.pem", base / "ssl" / "key.pem")
        data = minimal_data()
        data["tun_mesh"]["clustering"]["node_name"] = "alpha"
        data["tun_mesh"]["process"].update(process)
        path = base / "config.yaml"
        path.write_text(yaml.safe_dump(data))
        tun = FakeTun()
        self.addCleanup(tun.close)
        return service.makeService(load_config(path), MemoryReactorClock(), lambda networking: tun, config_path=path)

    def test_the_admin_socket_answers_with_this_nodes_status_and_reload(self) -> None:
        top = self.build(admin_socket="/run/tunmesh-test/admin.sock")
        admin = top.getServiceNamed("admin")
        self.assertIsInstance(admin, AdminSocketService)
        self.assertEqual(admin.path, Path("/run/tunmesh-test/admin.sock"))
        names = [s.name for s in top]
        self.assertLess(names.index("admin"), len(names) - 1)  # bound before the privilege drop
        doc = admin.factory.handlers["status"]()
        self.assertEqual(doc["node"]["name"], "alpha")
        self.assertEqual(doc["node"]["id"], top.getServiceNamed("mesh").membership.node_id)
        self.assertEqual(doc["peers"], [])
        json.dumps(doc)
        self.assertEqual(admin.factory.handlers["reload"](), {"changed": [], "refused": [], "restart_needed": []})
        self.assertIn(0, admin.factory.allowed_uids)

    def test_an_empty_admin_socket_means_none(self) -> None:
        top = self.build(admin_socket="")
        self.assertNotIn("admin", [s.name for s in top])




class PermissionTests(TestCase):
    """The socket as a Kubernetes container sees it: owned by process.uid (65534 here), mode 0600; ``tunmesh
    status`` runs as root without CAP_DAC_OVERRIDE (``capabilities: drop: [ALL]``), or as another user."""

    def setUp(self) -> None:
        require_root()
        directory = short_dir(self)
        directory.chmod(0o755)  # as /run/tunmesh (created 0755) or an emptyDir (0777)
        self.path = directory / "admin.sock"
        factory = AdminFactory({"status": lambda: SAMPLE}, reactor, {0, 65534})
        self.service = AdminSocketService(self.path, factory, reactor, 65534, 65534)
        self.service.privilegedStartService()
        self.addCleanup(self.service.stopService)
        st = self.path.stat()
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_uid), (0o600, 65534))

    def run_status(self, *setpriv: str) -> Any:
        import sys

        from twisted.internet.utils import getProcessOutputAndValue

        from tests.netns import REPO_ROOT

        argv = [*setpriv, "--", sys.executable, "-m", "tunmesh", "status", "--json", "--socket", str(self.path)]
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        return getProcessOutputAndValue("/usr/bin/setpriv", argv, env=env, path=str(REPO_ROOT))

    @inlineCallbacks
    def test_root_without_dac_override_switches_to_the_socket_owner(self) -> Any:
        out, err, code = yield self.run_status("--bounding-set=-dac_override,-dac_read_search")
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out), SAMPLE)

    @inlineCallbacks
    def test_another_user_is_refused_by_the_file_mode(self) -> Any:
        out, err, code = yield self.run_status("--reuid=65533", "--regid=65533", "--clear-groups")
        self.assertEqual(code, 1)
        self.assertIn(b"permission denied on", err)
        self.assertEqual(out, b"")
