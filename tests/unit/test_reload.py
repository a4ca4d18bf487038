"""The SIGHUP reload: what a re-read config changes in a running node, and what it refuses."""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path
from typing import Any

import yaml
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.support import minimal_data, set_key
from tests.unit.tls_support import handshake
from tunmesh import logsetup
from tunmesh.auth.cluster import ClusterKeyring
from tunmesh.config import load_config
from tunmesh.mesh.settings import BootstrapGroupSpec
from tunmesh.reload import AUTH_KEY, GROUPS_KEY, LEVEL_KEY, NodeReloader, ReloadOnSignal
from tunmesh.service import make_server_tls
from tunmesh.tls.certs import certificate_sha256, write_self_signed
from tunmesh.tls.contexts import (
    CA_FILE_KEY,
    CERT_FILE_KEY,
    KEY_FILE_KEY,
    MeshTLSPolicy,
    ReloadableServerTLS,
    client_context,
    peer_certificate_sha256,
)


class RecordingGroups:
    def __init__(self) -> None:
        self.calls: list[tuple[BootstrapGroupSpec, ...]] = []

    def set_bootstrap_groups(self, specs: Any) -> bool:
        self.calls.append(tuple(specs))
        return True


class ReloaderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(self.mktemp()).resolve()
        (self.base / "ssl").mkdir(parents=True)
        self.cert, self.key = self.base / "ssl" / "cert.pem", self.base / "ssl" / "key.pem"
        write_self_signed(self.cert, self.key, hostnames=("node-a.test",))
        self.data = minimal_data()
        self.path = self.base / "config.yaml"
        self.write()
        cfg = load_config(self.path)
        self.server_tls = ReloadableServerTLS(make_server_tls(self.cert, self.key))
        self.policy = MeshTLSPolicy(self.cert, False, trust_key=CERT_FILE_KEY)
        self.groups = RecordingGroups()
        self.levels: list[str] = []
        self.reloader = NodeReloader(
            self.path,
            cfg,
            server_tls=self.server_tls,
            make_server_tls=make_server_tls,
            client_policies=(self.policy,),
            groups=self.groups,
            set_log_level=self.levels.append,
        )
        self.events = EventLoggingObserver.createWithCleanup(self, NodeReloader.log.observer)  # type: ignore[arg-type]

    def write(self, **changes: Any) -> None:
        for key, value in changes.items():
            set_key(self.data, key.replace("__", "/"), value)
        self.path.write_text(yaml.safe_dump(self.data))

    def served_certificate(self) -> bytes:
        """SHA-256 of the certificate a new connection to the port is shown."""
        client = client_context(self.base / "trust.pem", "node-a.test", False)
        ctls, _, capp, _ = handshake(self.server_tls, client)
        self.assertTrue(capp.handshake_done)
        digest = peer_certificate_sha256(ctls)
        assert digest is not None
        return digest

    def logged(self, level: LogLevel) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events if e["log_level"] == level]

    def new_pair(self, name: str) -> tuple[Path, Path]:
        cert, key = self.base / "ssl" / f"{name}.pem", self.base / "ssl" / f"{name}.key"
        write_self_signed(cert, key, hostnames=(f"node-{name}.test",))  # own subject: one trust file holds both
        return cert, key

    def test_changed_certificate_is_served_to_new_connections(self) -> None:
        new_cert, new_key = self.new_pair("b")
        (self.base / "trust.pem").write_bytes(self.cert.read_bytes() + new_cert.read_bytes())
        self.assertEqual(self.served_certificate(), certificate_sha256(self.cert))
        # rotated in place, as cert-manager or a Secret update does
        self.cert.write_bytes(new_cert.read_bytes())
        self.key.write_bytes(new_key.read_bytes())
        report = self.reloader.reload()
        self.assertIn(CERT_FILE_KEY, report.changed)
        self.assertEqual(report.refused, ())
        self.assertEqual(self.served_certificate(), certificate_sha256(new_cert))
        self.assertTrue(any(CERT_FILE_KEY in line for line in self.logged(LogLevel.info)))

    def test_unchanged_files_change_nothing(self) -> None:
        before = self.server_tls.current
        report = self.reloader.reload()
        self.assertEqual((report.changed, report.refused, report.restart_needed), ((), (), ()))
        self.assertIs(self.server_tls.current, before)
        self.assertEqual(self.groups.calls, [])
        self.assertEqual(self.levels, [])

    def test_invalid_certificate_keeps_the_old_one(self) -> None:
        before = self.server_tls.current
        self.cert.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
        report = self.reloader.reload()
        self.assertIn(CERT_FILE_KEY, report.refused)
        self.assertNotIn(CERT_FILE_KEY, report.changed)
        self.assertIs(self.server_tls.current, before)
        errors = self.logged(LogLevel.error)
        self.assertTrue(any(line.startswith(f"reload: {CERT_FILE_KEY}:") for line in errors), errors)
        self.assertTrue(all("keep" in line for line in errors), errors)

    def test_what_a_start_refuses_a_reload_refuses(self) -> None:
        """The preflight's TLS checks: an expired certificate (which OpenSSL itself would load)."""
        import datetime

        from tests.unit.tls_support import write_pair

        before = self.server_tls.current
        now = datetime.datetime.now(datetime.UTC)
        expired = self.base / "expired"
        expired.mkdir()
        cert, key = write_pair(expired, now=now, start_days=-30, valid_days=10)
        self.cert.write_bytes(cert.read_bytes())
        self.key.write_bytes(key.read_bytes())
        report = self.reloader.reload()
        self.assertIn(CERT_FILE_KEY, report.refused)
        self.assertIs(self.server_tls.current, before)
        errors = self.logged(LogLevel.error)
        self.assertTrue(any("expired" in line and CERT_FILE_KEY in line for line in errors), errors)

    def test_expiry_watch_told_the_new_certificates(self) -> None:
        told: list[tuple[Any, Any]] = []

        class Watch:
            def set_certificates(self, node: Any, trust: Any) -> None:
                told.append((node, tuple(trust)))

        self.reloader._certificates = Watch()
        new_cert, new_key = self.new_pair("d")
        self.cert.write_bytes(new_cert.read_bytes())
        self.key.write_bytes(new_key.read_bytes())
        self.reloader.reload()
        self.assertEqual(len(told), 1)
        self.assertEqual(told[0][0], load_certs(new_cert)[0])
        self.assertEqual(told[0][1], tuple(load_certs(new_cert)))  # the certificate is its own trust anchor

    def test_key_that_does_not_match_is_refused_by_its_key_path(self) -> None:
        before = self.server_tls.current
        _, other_key = self.new_pair("c")
        self.key.write_bytes(other_key.read_bytes())
        report = self.reloader.reload()
        self.assertEqual(report.refused, (KEY_FILE_KEY,))
        self.assertIs(self.server_tls.current, before)

    def test_other_parts_still_apply_when_the_certificate_is_refused(self) -> None:
        self.cert.write_text("not a certificate\n")
        self.write(logging__level="debug")
        report = self.reloader.reload()
        self.assertIn(CERT_FILE_KEY, report.refused)
        self.assertIn(LEVEL_KEY, report.changed)
        self.assertEqual(self.levels, ["debug"])

    def test_new_trust_anchors_for_new_client_connections(self) -> None:
        ca_cert, _ = self.new_pair("ca")
        self.write(control_api__ssl__ca_file_path="ssl/ca.pem")
        report = self.reloader.reload()
        self.assertIn(CA_FILE_KEY, report.changed)
        self.assertEqual([c.fingerprint(c.signature_hash_algorithm) for c in self.policy.trust],  # type: ignore[arg-type]
                         [c.fingerprint(c.signature_hash_algorithm) for c in load_certs(ca_cert)])

    def test_system_store_as_trust_is_refused_and_old_trust_kept(self) -> None:
        before = self.policy.trust
        self.write(control_api__ssl__ca_file_path="/etc/ssl/certs/ca-certificates.crt")
        report = self.reloader.reload()
        # refused by the trust policy (or, where the loader already checks it, with the whole file)
        self.assertTrue({CA_FILE_KEY, "tun_mesh"} & set(report.refused), report)
        self.assertEqual(self.policy.trust, before)

    def test_log_level_changed(self) -> None:
        self.write(logging__level="warn")
        report = self.reloader.reload()
        self.assertEqual(report.changed, (LEVEL_KEY,))
        self.assertEqual(self.levels, ["warn"])
        self.assertIn(f"reload: {LEVEL_KEY}: info -> warn", self.logged(LogLevel.info))
        self.assertEqual(self.reloader.reload().changed, ())  # applied once

    def test_bootstrap_groups_changed(self) -> None:
        urls = ["https://198.18.0.7:4567/", "https://198.18.0.8:4567/"]
        self.write(clustering__bootstrap_groups={"default": {"bootstrap_node_urls": urls, "bootstrap_retries": 3}})
        report = self.reloader.reload()
        self.assertEqual(report.changed, (GROUPS_KEY,))
        self.assertEqual(self.groups.calls, [(BootstrapGroupSpec("default", tuple(urls), 3),)])

    def test_config_that_no_longer_loads_is_refused_entirely(self) -> None:
        self.write(logging__level="debug", networking__mtu="huge")
        report = self.reloader.reload()
        self.assertEqual((report.changed, report.refused), ((), ("tun_mesh",)))
        self.assertEqual(self.levels, [])
        self.assertTrue(any("tun_mesh/networking/mtu" in line for line in self.logged(LogLevel.error)))

    def test_changes_that_need_a_restart_are_named(self) -> None:
        self.write(networking__mtu=1400, logging__level="debug")
        report = self.reloader.reload()
        self.assertEqual(report.restart_needed, ("tun_mesh/networking/mtu",))
        self.assertEqual(report.changed, (LEVEL_KEY,))
        warnings = self.logged(LogLevel.warn)
        self.assertEqual(warnings, ["reload: changed but only applied at the next start: tun_mesh/networking/mtu"])

    def test_secret_is_never_logged(self) -> None:
        secret = self.data["tun_mesh"]["clustering"]["auth"]["secret"]
        self.write(clustering__auth__secret=secret[::-1])
        report = self.reloader.reload()
        self.assertIn("tun_mesh/clustering/auth/secret", report.restart_needed)
        for event in self.events:
            self.assertNotIn(secret[::-1], repr(event))

    def secrets_reloader(self) -> tuple[NodeReloader, list[ClusterKeyring]]:
        calls: list[ClusterKeyring] = []

        class Target:
            def set_cluster_keyring(self, keyring: ClusterKeyring) -> None:
                calls.append(keyring)

        reloader = NodeReloader(
            self.path,
            load_config(self.path),
            server_tls=self.server_tls,
            make_server_tls=make_server_tls,
            client_policies=(self.policy,),
            groups=self.groups,
            set_log_level=self.levels.append,
            secrets=Target(),
        )
        return reloader, calls

    def test_rotation_steps_are_applied_by_reload_without_logging_a_secret(self) -> None:
        reloader, calls = self.secrets_reloader()
        old = self.data["tun_mesh"]["clustering"]["auth"]["secret"]
        new = "Zy8wX3vU6tS1rQ4pO7nM0lK9jI2hG5fEdCbA"
        (self.base / "new-secret").write_text(new + "\n")
        steps = [
            ({"default": {"secret": old}, "new": {"secret_file": "new-secret"}}, "default"),
            ({"default": {"secret": old}, "new": {"secret_file": "new-secret"}}, "new"),
            ({"new": {"secret_file": "new-secret"}}, "new"),
        ]
        for secrets, signing in steps:
            self.data["tun_mesh"]["clustering"]["auth"] = {"secrets": secrets, "signing_secret_id": signing}
            self.write()
            report = reloader.reload()
            self.assertEqual(report.changed, (AUTH_KEY,))
            self.assertEqual(report.restart_needed, ())
        self.assertEqual([(c.ids, c.signing_id) for c in calls], [
            (("default", "new"), "default"), (("default", "new"), "new"), (("new",), "new")
        ])
        self.assertEqual(dict(calls[-1].secrets), {"new": new})
        # the same file again: nothing to change
        self.assertEqual(reloader.reload().changed, ())
        # the secret file rewritten in place is a change too (same id, other secret)
        newer = "Kd93jf82HsL0qpWm5ZxR7tYb1VnC4gAe6"
        (self.base / "new-secret").write_text(newer)
        self.assertEqual(reloader.reload().changed, (AUTH_KEY,))
        self.assertEqual(dict(calls[-1].secrets), {"new": newer})
        lines = self.logged(LogLevel.info)
        self.assertTrue(any("accepting cluster secret ids new, signing with new" in line for line in lines), lines)
        for event in self.events:
            for secret in (old, new, newer):
                self.assertNotIn(secret, repr(event))

    def test_a_weak_new_secret_is_refused_and_the_running_ones_kept(self) -> None:
        reloader, calls = self.secrets_reloader()
        old = self.data["tun_mesh"]["clustering"]["auth"]["secret"]
        self.data["tun_mesh"]["clustering"]["auth"] = {
            "secrets": {"default": {"secret": old}, "new": {"secret": "password" * 4}},
            "signing_secret_id": "default",
        }
        self.write()
        report = reloader.reload()
        self.assertEqual(report.refused, ("tun_mesh",))
        self.assertEqual(calls, [])
        self.assertTrue(any("secrets/new/secret" in line for line in self.logged(LogLevel.error)))

    def test_without_a_config_file_nothing_happens(self) -> None:
        reloader = NodeReloader(
            None,
            load_config(self.path),
            server_tls=self.server_tls,
            make_server_tls=make_server_tls,
            client_policies=(),
            groups=self.groups,
            set_log_level=self.levels.append,
        )
        self.assertEqual(reloader.reload().changed, ())


def load_certs(path: Path) -> list[Any]:
    from tunmesh.tls.certs import load_certificates

    return list(load_certificates(path))


class ThreadCalls:
    """``IReactorFromThreads`` that records the calls (run later by the test)."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N802
        self.calls.append((f, args, kwargs))

    def run(self) -> None:
        calls, self.calls = self.calls, []
        for f, args, kwargs in calls:
            f(*args, **kwargs)


class CountingReloader:
    def __init__(self, fail: bool = False) -> None:
        self.count = 0
        self.fail = fail

    def reload(self) -> None:
        self.count += 1
        if self.fail:
            raise RuntimeError("boom")


class ReloadOnSignalTests(SynchronousTestCase):
    def test_sighup_reloads_from_the_reactor_and_does_not_stop_the_process(self) -> None:
        reactor = ThreadCalls()
        reloader = CountingReloader()
        previous = signal.getsignal(signal.SIGHUP)
        service = ReloadOnSignal(reloader, reactor)  # type: ignore[arg-type]
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        os.kill(os.getpid(), signal.SIGHUP)  # the default action would end this test run
        self.assertEqual(reloader.count, 0)  # not inside the signal handler
        reactor.run()
        self.assertEqual(reloader.count, 1)
        service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)

    def test_a_failing_reload_is_logged_and_the_node_keeps_running(self) -> None:
        reactor = ThreadCalls()
        installed: dict[int, Any] = {}

        def install(signum: int, handler: Any) -> Any:
            old = installed.get(signum, signal.SIG_DFL)
            installed[signum] = handler
            return old

        service = ReloadOnSignal(CountingReloader(fail=True), reactor, install=install)  # type: ignore[arg-type]
        events = EventLoggingObserver.createWithCleanup(self, ReloadOnSignal.log.observer)  # type: ignore[arg-type]
        service.startService()
        installed[signal.SIGHUP](signal.SIGHUP, None)
        reactor.run()
        self.assertEqual(len([e for e in events if e.get("log_failure") is not None]), 1)
        self.flushLoggedErrors(RuntimeError)
        service.stopService()
        self.assertEqual(installed[signal.SIGHUP], signal.SIG_DFL)


class LogLevelTests(SynchronousTestCase):
    def test_set_level_changes_what_the_twistd_observer_writes(self) -> None:
        out = io.StringIO()
        self.patch(logsetup.sys, "stdout", out)
        logsetup.configure_twistd("warn", None, True)
        self.addCleanup(logsetup.set_level, "info")
        log = Logger(namespace="t", observer=LogPublisher(logsetup.twistd_observer()))
        log.info("hidden {x}", x=1)
        logsetup.set_level("debug")
        self.assertEqual(logsetup.current_level(), "debug")
        log.debug("shown {x}", x=2)
        logsetup.set_level("error")
        log.warn("hidden {x}", x=3)
        self.assertNotIn("hidden", out.getvalue())
        self.assertIn("shown 2", out.getvalue())

    def test_unknown_level_refused(self) -> None:
        self.assertRaises(ValueError, logsetup.set_level, "loud")
