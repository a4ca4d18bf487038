"""Preflight: ``tunmesh check-config`` refuses what the daemon refuses, with the same line, before any TUN exists.

Each case runs both ways on the same file: the ``check-config`` command, and the daemon's path (the twistd
plugin's option parsing, then ``makeService`` with a TUN opener that records whether it was called).
"""

from __future__ import annotations

import datetime
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.netns import require_root
from tests.unit.support import SECRET, ConfigTestMixin, minimal_data, set_key
from tests.unit.tls_support import certificate, ec_key, rsa_key, write_cert, write_key, write_pair
from tunmesh.cli import main
from tunmesh.config.docs import example_config
from tunmesh.config.tree import Networking
from tunmesh.preflight import EXPIRY_WARNING_DAYS, check_files, preflight
from tunmesh.service import ConfigRefused, makeService
from tunmesh.tap import Options
from tunmesh.testing import FakeTun
from tunmesh.tls.certs import load_certificates
from tunmesh.uidaccess import Access, _estimate, effective_gid, readable_as

KEY = "tun_mesh/control_api/ssl/key_file_path"
CERT = "tun_mesh/control_api/ssl/cert_file_path"
CA = "tun_mesh/control_api/ssl/ca_file_path"
NOBODY = 65534


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class BothWays(ConfigTestMixin):
    """Run a config through ``check-config`` and through the daemon's start, capturing what each prints."""

    base: Path

    def config(self, data: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
        document = data if data is not None else minimal_data()
        document.update(extra or {})
        path = self.base / "config.yaml"
        path.write_text(yaml.safe_dump(document))
        return path

    def check(self, path: Path, env: dict[str, str] | None = None) -> tuple[int, str, list[str]]:
        out, err = io.StringIO(), io.StringIO()
        code = main(["check-config", str(path)], stdout=out, stderr=err, env=env or {})
        return code, out.getvalue(), err.getvalue().splitlines()

    def daemon(self, path: Path, env: dict[str, str] | None = None) -> tuple[int, list[str], list[Any]]:
        """The daemon's start: plugin options (load phase), then makeService; exit code, stderr, TUN opens."""
        err = io.StringIO()
        self.patch(sys, "stderr", err)  # type: ignore[attr-defined]
        self.patch(os, "environ", dict(env or {}))  # type: ignore[attr-defined]
        opened: list[Any] = []

        def open_tun(networking: Any) -> FakeTun:
            opened.append(networking)
            tun = FakeTun()
            self.addCleanup(tun.close)  # type: ignore[attr-defined]
            return tun

        code = 0
        refused: list[str] = []
        try:
            options = Options()
            options.parseOptions(["--config", str(path)])
            makeService(
                options["loaded_config"], reactor=MemoryReactorClock(), open_tun=open_tun,
                config_path=options["config_path"],
            )
        except ConfigRefused as e:
            # the load phase refuses as twistd options do; `tunmesh run` prints these lines, exit 1
            code, refused = 1, e.problems
        except SystemExit as e:
            code = int(e.code or 0)
        return code, err.getvalue().splitlines() + refused, opened

    def assertRefusedBothWays(self, path: Path, expected: list[str], env: dict[str, str] | None = None) -> None:
        """check-config exits 1 printing ``expected``; the daemon prints the same lines and opens no TUN."""
        code, out, lines = self.check(path, env)
        self.assertEqual((code, out, lines), (1, "", expected))  # type: ignore[attr-defined]
        code, lines, opened = self.daemon(path, env)
        self.assertEqual((code, lines, opened), (1, expected, []))  # type: ignore[attr-defined]


class TLSPreflightTests(BothWays, SynchronousTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.ssl = self.base / "ssl"

    def test_good_pair_passes_both_ways_and_the_tun_is_opened(self) -> None:
        write_pair(self.ssl, now=_now())
        path = self.config()
        code, out, lines = self.check(path)
        self.assertEqual((code, lines), (0, []))
        self.assertIn("tun_mesh:", out)
        code, lines, opened = self.daemon(path)
        self.assertEqual((code, lines, len(opened)), (0, [], 1))

    def test_make_service_refuses_before_it_opens_the_tun(self) -> None:
        """Direct ``makeService`` (no twistd): the refused config never reaches the TUN opener."""
        _, key = write_pair(self.ssl, now=_now())
        cfg = self.load(minimal_data())
        write_key(key, rsa_key(1024))
        opened: list[Any] = []
        err = io.StringIO()
        self.patch(sys, "stderr", err)

        def open_tun(networking: Networking) -> FakeTun:
            opened.append(networking)
            return FakeTun()

        with self.assertRaises(SystemExit) as caught:
            makeService(cfg, reactor=MemoryReactorClock(), open_tun=open_tun)
        self.assertEqual((caught.exception.code, opened), (1, []))
        self.assertEqual(err.getvalue(), f"tunmesh: config error: {KEY}: RSA key of 1024 bits; at least 2048 required\n")

    def test_key_that_does_not_match_the_certificate(self) -> None:
        cert, key = write_pair(self.ssl, now=_now())
        write_key(key, ec_key())
        self.assertRefusedBothWays(
            self.config(), [f"tunmesh: config error: {KEY}: {key} does not match the certificate in {cert}"]
        )

    def test_garbage_certificate(self) -> None:
        cert, _ = write_pair(self.ssl, now=_now())
        cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
        self.assertRefusedBothWays(
            self.config(), [f"tunmesh: config error: {CERT}: {cert} holds no valid PEM certificate"]
        )

    def test_garbage_key(self) -> None:
        _, key = write_pair(self.ssl, now=_now())
        key.write_text("garbage\n")
        self.assertRefusedBothWays(self.config(), [f"tunmesh: config error: {KEY}: {key} holds no valid PEM private key"])

    def test_rsa_1024_key(self) -> None:
        write_pair(self.ssl, rsa_key(1024), now=_now())
        self.assertRefusedBothWays(
            self.config(), [f"tunmesh: config error: {KEY}: RSA key of 1024 bits; at least 2048 required"]
        )

    def test_rsa_2048_key_passes(self) -> None:
        write_pair(self.ssl, rsa_key(2048), now=_now())
        self.assertEqual(self.check(self.config())[0], 0)

    def test_weak_curve(self) -> None:
        write_pair(self.ssl, ec_key(ec.SECP192R1()), now=_now())
        self.assertRefusedBothWays(
            self.config(),
            [f"tunmesh: config error: {KEY}: EC key on curve secp192r1 (192 bits); at least 256 required"],
        )

    def test_system_ca_bundle_refused(self) -> None:
        system = Path("/etc/ssl/certs/ca-certificates.crt")
        if not system.is_file():
            raise SkipTest(f"{system} is not on this machine")
        write_pair(self.ssl, now=_now())
        data = set_key(minimal_data(), "control_api/ssl/ca_file_path", str(system))
        code, _, lines = self.check(self.config(data))
        self.assertEqual(code, 1)
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith(f"tunmesh: config error: {CA}: {system} is the system CA store;"), lines)
        self.assertRefusedBothWays(self.config(data), lines)

    def test_certificate_kept_in_a_system_ca_directory_refused_as_trust_anchor(self) -> None:
        """Without ca_file_path the certificate is the trust anchor, and the daemon refuses a system store."""
        from tunmesh.tls import contexts

        cert, _ = write_pair(self.ssl, now=_now())
        self.patch(contexts, "_system_trust_paths", lambda: frozenset({self.ssl}))
        self.assertRefusedBothWays(self.config(), [
            f"tunmesh: config error: {CERT}: {cert} is the system CA store; anyone with a public certificate "
            "could relay the mesh. Use a private CA or the nodes' own certificate"
        ])

    def test_expired_certificate(self) -> None:
        cert, _ = write_pair(self.ssl, now=_now(), start_days=-30, valid_days=29)
        code, _, lines = self.check(self.config())
        self.assertEqual(code, 1)
        self.assertRegex(
            "\n".join(lines),
            rf"^tunmesh: config error: {CERT}: {cert}: certificate \(CN=node1.example\) expired on "
            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$",
        )
        self.assertRefusedBothWays(self.config(), lines)

    def test_not_yet_valid_certificate(self) -> None:
        cert, _ = write_pair(self.ssl, now=_now(), start_days=2)
        code, _, lines = self.check(self.config())
        self.assertEqual(code, 1)
        self.assertRegex("\n".join(lines), rf"^tunmesh: config error: {CERT}: {cert}: certificate .* is not valid before ")
        self.assertRefusedBothWays(self.config(), lines)

    def test_certificate_expiring_soon_is_a_warning_both_ways(self) -> None:
        cert, _ = write_pair(self.ssl, now=_now(), start_days=-10, valid_days=15)
        path = self.config()
        code, out, lines = self.check(path)
        self.assertEqual(code, 0)
        self.assertIn("tun_mesh:", out)
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(lines[0], rf"^tunmesh: config warning: {CERT}: {cert}: certificate .* expires in (4\.9|5\.0) days, on ")
        code, daemon_lines, opened = self.daemon(path)
        self.assertEqual((code, daemon_lines, len(opened)), (0, lines, 1))

    def test_expiry_boundaries(self) -> None:
        """Checked at a fixed moment: just under 14 days warns, 14 days does not; the last second is valid."""
        key = ec_key()
        moment = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
        cfg = self.load(minimal_data())
        for after, expect in (
            (datetime.timedelta(days=EXPIRY_WARNING_DAYS), ([], [])),
            (datetime.timedelta(days=EXPIRY_WARNING_DAYS, seconds=-1), ([], ["expires in 14.0 days"])),
            (datetime.timedelta(seconds=1), ([], ["expires in 0.0 days"])),
            (datetime.timedelta(0), (["expired on 2030-01-01 00:00:00 UTC"], [])),
        ):
            write_cert(cfg.control_api.ssl.cert_file_path,
                       certificate(key, not_before=moment - datetime.timedelta(days=1), not_after=moment + after))
            write_key(cfg.control_api.ssl.key_file_path, key)
            report = check_files(cfg, now=lambda: moment)
            found = ([e.message.split(") ", 1)[1] for e in report.errors],
                     [w.message.split(") ", 1)[1].split(",")[0] for w in report.warnings])
            self.assertEqual(found, expect, after)

    def test_large_ca_bundle_is_a_warning(self) -> None:
        cert, _ = write_pair(self.ssl, now=_now())
        now = _now()
        cas = [certificate(ec_key(), not_before=now - datetime.timedelta(days=1),
                           not_after=now + datetime.timedelta(days=365), name=f"ca{i}", ca=True) for i in range(10)]
        bundle = write_cert(self.base / "ca.pem", *cas, *load_certificates(cert))
        code, _, lines = self.check(self.config(set_key(minimal_data(), "control_api/ssl/ca_file_path", "ca.pem")))
        self.assertEqual((code, lines), (0, [
            f"tunmesh: config warning: {CA}: {bundle} holds 11 certificates; a mesh normally needs one CA or one "
            "certificate"
        ]))

    def test_ca_bundle_with_only_expired_certificates(self) -> None:
        cert, _ = write_pair(self.ssl, now=_now())
        now = _now()
        old = certificate(ec_key(), not_before=now - datetime.timedelta(days=60),
                          not_after=now - datetime.timedelta(days=30), name="old-ca", ca=True)
        bundle = write_cert(self.base / "ca.pem", old)
        data = set_key(minimal_data(), "control_api/ssl/ca_file_path", "ca.pem")
        self.assertRefusedBothWays(
            self.config(data),
            [f"tunmesh: config error: {CA}: {bundle}: no certificate in it is valid now, so no peer can be verified"],
        )
        fresh = certificate(ec_key(), not_before=now - datetime.timedelta(days=1),
                            not_after=now + datetime.timedelta(days=365), name="new-ca", ca=True)
        write_cert(bundle, old, fresh, *load_certificates(cert))
        code, _, lines = self.check(self.config(data))
        self.assertEqual(code, 0, lines)
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(lines[0], rf"^tunmesh: config warning: {CA}: {bundle}: certificate \(CN=old-ca\) expired on ")


    def test_certificate_not_issued_by_the_bundle_is_a_warning_both_ways(self) -> None:
        """Out of order in a CA rollover (a node certificate from the new CA, the bundle still the old CA):
        the node starts, and says why its peers will refuse it."""
        from tunmesh.tls.certs import make_ca, sign_node, write_issued

        old, new = make_ca("old CA"), make_ca("new CA")
        cert, key = self.ssl / "cert.pem", self.ssl / "key.pem"
        self.ssl.mkdir(exist_ok=True)
        write_issued(sign_node(new, ["node-a.test"]), cert, key, force=True)
        bundle = write_cert(self.base / "ca.pem", old.cert)
        path = self.config(set_key(minimal_data(), "control_api/ssl/ca_file_path", "ca.pem"))
        warning = (f"tunmesh: config warning: {CERT}: {cert}: issued by CN=new CA, which is not in ca_file_path "
                   f"({bundle}): peers that trust the same bundle refuse this node (in a CA rollover, the new CA "
                   "goes into every bundle first)")
        code, _, lines = self.check(path)
        self.assertEqual((code, lines), (0, [warning]))
        code, lines, opened = self.daemon(path)
        self.assertEqual((code, lines, len(opened)), (0, [warning], 1))
        write_cert(bundle, old.cert, new.cert)
        self.assertEqual(self.check(path)[::2], (0, []))
        # without ca_file_path the certificate file is the trust anchor: a CA-issued leaf alone is not one
        path = self.config()
        self.assertEqual(self.check(path)[2], [
            f"tunmesh: config warning: {CERT}: {cert}: issued by CN=new CA, which is not in the file: peers using "
            "this file as their trust anchor cannot verify it; set ca_file_path to the CA that issued it"
        ])
        cert.write_bytes(cert.read_bytes() + new.cert_pem)  # the chain with its CA: a working anchor
        self.assertEqual(self.check(path)[::2], (0, []))


class KeyAndValueTests(BothWays, SynchronousTestCase):
    def test_extra_top_level_key_is_a_warning_line_both_ways(self) -> None:
        path = self.config(extra={"tunmesh_extra": {"a": 1}})
        code, out, lines = self.check(path)
        self.assertEqual(code, 0)
        self.assertIn("tun_mesh:", out)
        self.assertEqual(lines, ["tunmesh: config warning: tunmesh_extra: unknown top-level key, ignored: "
                                 "every setting lives under tun_mesh"])
        code, daemon_lines, opened = self.daemon(path)
        self.assertEqual((code, daemon_lines, len(opened)), (0, lines, 1))

    def test_misspelt_top_level_key_suggests_tun_mesh(self) -> None:
        path = self.config({"tunmesh": minimal_data()["tun_mesh"]})
        self.assertRefusedBothWays(path, [
            "tunmesh: config warning: tunmesh: unknown top-level key, ignored: every setting lives under tun_mesh",
            f"tunmesh: config error: tun_mesh: {path}: missing required top-level key "
            "(found 'tunmesh': did you mean tun_mesh?)",
        ])

    def test_misspelt_keys_at_any_level_get_a_suggestion(self) -> None:
        data = set_key(minimal_data(), "control_api/listen_prot", 4568)
        set_key(data, "process/timing/registrations/groom_intervall", 5)
        set_key(data, "clustering/auth/secret_fiel", "x")
        self.assertRefusedBothWays(
            self.config(data),
            [
                "tunmesh: config error: tun_mesh/clustering/auth/secret_fiel: unknown key; did you mean secret_file?",
                "tunmesh: config error: tun_mesh/control_api/listen_prot: unknown key; did you mean listen_port?",
                "tunmesh: config error: tun_mesh/process/timing/registrations/groom_intervall: unknown key; "
                "did you mean groom_interval?",
            ],
        )

    def test_unknown_key_without_a_close_match_lists_the_keys(self) -> None:
        data = set_key(minimal_data(), "networking/ipv4/colour", "red")
        code, _, lines = self.check(self.config(data))
        self.assertEqual((code, lines), (1, [
            "tunmesh: config error: tun_mesh/networking/ipv4/colour: unknown key; "
            "expected one of enable_broadcast, network_cidr, node_address_cidr"
        ]))

    def test_weak_secret_from_the_environment_names_the_variable(self) -> None:
        env = {"TUNMESH_CLUSTER_SECRET": "short-secret"}
        self.assertRefusedBothWays(
            self.config(),
            ["tunmesh: config error: tun_mesh/clustering/auth/secret: is too short: 12 characters, at least 32 are "
             "required (value hidden; generate one with `tunmesh gen-secret`) "
             "(from the environment variable TUNMESH_CLUSTER_SECRET)"],
            env,
        )

    def test_weak_secret_from_the_file_names_no_variable(self) -> None:
        data = set_key(minimal_data(), "clustering/auth/secret", "short-secret")
        code, _, lines = self.check(self.config(data), {"TUNMESH_ADVERTISE_URL": "https://pod.example"})
        self.assertEqual(code, 1)
        self.assertEqual(len(lines), 1)
        self.assertNotIn("environment", lines[0])

    def test_long_advertise_url_from_the_environment_names_the_variable(self) -> None:
        data = set_key(minimal_data(), "clustering/limits/max_url_length", 64)
        env = {"TUNMESH_ADVERTISE_URL": "https://" + "a" * 70 + ".example"}
        self.assertRefusedBothWays(
            self.config(data),
            ["tunmesh: config error: tun_mesh/clustering/control_api_advertise_url: is longer than "
             "limits.max_url_length (64) (from the environment variable TUNMESH_ADVERTISE_URL)"],
            env,
        )

    def test_example_config_placeholders_are_not_replaced_errors(self) -> None:
        path = self.base / "example.yaml"
        path.write_text(example_config())
        code, out, lines = self.check(path)
        self.assertEqual((code, out), (1, ""))
        self.assertIn("tunmesh: config error: tun_mesh/clustering/control_api_advertise_url: placeholder "
                      "'<REQUIRED: url>' not replaced with a real value", lines)
        self.assertIn("tunmesh: config error: tun_mesh/process/uid: placeholder '<REQUIRED: uint>' not replaced "
                      "with a real value", lines)
        self.assertIn("tunmesh: config error: tun_mesh/clustering/bootstrap_groups/default/bootstrap_node_urls/0: "
                      "placeholder '<REQUIRED: url 1>' not replaced with a real value", lines)
        self.assertTrue(all("not replaced with a real value" in line for line in lines), lines)
        self.assertFalse(any("got list" in line for line in lines), lines)
        self.assertRefusedBothWays(path, lines)

    def test_original_list_placeholder_is_recognised(self) -> None:
        data = minimal_data()
        path = self.config(data)
        text = path.read_text().replace("uid: 1000", "uid: [Deployment Unique Value]")
        text = text.replace("- https://node2.example:4567", "- [Deployment Unique Value 1]")
        path.write_text(text)
        self.assertRefusedBothWays(path, [
            "tunmesh: config error: tun_mesh/clustering/bootstrap_groups/default/bootstrap_node_urls/0: "
            "placeholder '[Deployment Unique Value 1]' not replaced with a real value",
            "tunmesh: config error: tun_mesh/process/uid: placeholder '[Deployment Unique Value]' not replaced "
            "with a real value",
        ])

    def test_optional_placeholder_uncommented(self) -> None:
        data = set_key(minimal_data(), "control_api/ssl/ca_file_path", "<OPTIONAL: file>")
        self.assertRefusedBothWays(self.config(data), [
            f"tunmesh: config error: {CA}: placeholder '<OPTIONAL: file>' not replaced with a real value"
        ])

    def test_text_that_only_looks_like_a_placeholder_is_a_value(self) -> None:
        data = set_key(minimal_data(), "clustering/auth/secret", "<REQUIRED-" + SECRET + ">")
        self.assertEqual(self.check(self.config(data))[:2][0], 0)




class ReadableAsUidTests(BothWays, SynchronousTestCase):
    """Files read after the privilege drop: checked as ``process.uid`` by the kernel, in a forked child."""

    def setUp(self) -> None:
        require_root()
        # A directory every uid can search (the trial temp dir may lie under a private one).
        self.base = Path(tempfile.mkdtemp(prefix="tunmesh-preflight-"))
        self.base.chmod(0o755)
        self.addCleanup(shutil.rmtree, self.base)
        (self.base / "ssl").mkdir(mode=0o755)
        self.cert, self.key = write_pair(self.base / "ssl", now=_now())
        self.secret = self.base / "secret"
        self.secret.write_text(SECRET + "\n")
        for f in (self.cert, self.key, self.secret):
            f.chmod(0o644)

    def data(self, reload: bool = True, gid: int | None = None) -> dict[str, Any]:
        data = set_key(minimal_data(), "clustering/reload_config_on_bootstrap", reload)
        set_key(data, "process/uid", NOBODY)
        if gid is not None:
            set_key(data, "process/gid", gid)
        del data["tun_mesh"]["clustering"]["auth"]["secret"]
        set_key(data, "clustering/auth/secret_file", "secret")
        return data

    def why(self, path: Path, gid: int = NOBODY, problem: str = "Permission denied") -> str:
        return (f"{path} is not readable by process.uid {NOBODY} (gid {gid}): {problem}; "
                "clustering.reload_config_on_bootstrap re-reads the config and the files it names after the "
                "privilege drop")

    def test_readable_files_pass(self) -> None:
        path = self.config(self.data())
        path.chmod(0o644)
        self.assertEqual(self.check(path)[::2], (0, []))

    def test_root_only_key_is_refused_when_the_config_is_reloaded_after_the_drop(self) -> None:
        self.key.chmod(0o600)
        path = self.config(self.data())
        path.chmod(0o644)
        self.assertRefusedBothWays(path, [f"tunmesh: config error: {KEY}: {self.why(self.key)}"])

    def test_root_only_key_is_fine_without_reload(self) -> None:
        self.key.chmod(0o600)
        path = self.config(self.data(reload=False))
        path.chmod(0o600)
        self.assertEqual(self.check(path)[::2], (0, []))

    def test_private_directory_and_private_config(self) -> None:
        private = self.base / "private"
        private.mkdir(mode=0o700)
        moved = private / "secret"
        self.secret.rename(moved)
        data = self.data()
        set_key(data, "clustering/auth/secret_file", "private/secret")
        path = self.config(data)
        path.chmod(0o600)
        self.assertRefusedBothWays(path, [
            f"tunmesh: config error: tun_mesh/clustering/reload_config_on_bootstrap: {self.why(path)}",
            f"tunmesh: config error: tun_mesh/clustering/auth/secret_file: {self.why(moved)}",
        ])

    def test_each_file_of_secrets_must_be_readable_after_the_drop(self) -> None:
        other = self.base / "other-secret"
        other.write_text("Zy8wX3vU6tS1rQ4pO7nM0lK9jI2hG5fEdCbA\n")
        other.chmod(0o600)
        data = self.data()
        del data["tun_mesh"]["clustering"]["auth"]["secret_file"]
        set_key(data, "clustering/auth/secrets", {"old": {"secret_file": "secret"}, "s2027": {"secret_file": "other-secret"}})
        set_key(data, "clustering/auth/signing_secret_id", "old")
        path = self.config(data)
        path.chmod(0o644)
        self.assertRefusedBothWays(path, [
            f"tunmesh: config error: tun_mesh/clustering/auth/secrets/s2027/secret_file: {self.why(other)}",
        ])
        other.chmod(0o644)
        self.assertEqual(self.check(path)[::2], (0, []))

    def test_group_bits_follow_process_gid(self) -> None:
        os.chown(self.key, 0, 4242)
        self.key.chmod(0o640)
        path = self.config(self.data(gid=4242))
        path.chmod(0o644)
        self.assertEqual(self.check(path)[::2], (0, []))
        path = self.config(self.data(gid=4343))
        path.chmod(0o644)
        self.assertRefusedBothWays(path, [f"tunmesh: config error: {KEY}: {self.why(self.key, gid=4343)}"])

    def test_kernel_answer_and_mode_estimate_agree(self) -> None:
        """The fallback used by non-root callers gives the forked child's verdicts on plain modes."""
        cases = []
        for mode in (0o644, 0o600, 0o640, 0o604, 0o400):
            f = self.base / f"file-{mode:o}"
            f.write_text("x")
            os.chown(f, 0, 4242)
            f.chmod(mode)
            cases.append(f)
        for dmode in (0o700, 0o711, 0o750, 0o755):
            d = self.base / f"dir-{dmode:o}"
            d.mkdir()
            os.chown(d, 0, 4242)
            d.chmod(dmode)
            (d / "f").write_text("x")
            (d / "f").chmod(0o644)
            cases.append(d / "f")
        for gid in (4242, 4343):
            kernel = readable_as(NOBODY, gid, cases)
            estimate = [Access(p, _estimate(NOBODY, gid, p), exact=False) for p in cases]
            self.assertEqual([a.problem is None for a in kernel], [a.problem is None for a in estimate], gid)
            self.assertTrue(all(a.exact for a in kernel))
        verdicts = {p.name if p.name != "f" else p.parent.name: a.problem is None
                    for p, a in zip(cases, readable_as(NOBODY, 4242, cases), strict=True)}
        self.assertEqual(verdicts, {
            "file-644": True, "file-600": False, "file-640": True, "file-604": False, "file-400": False,
            "dir-700": False, "dir-711": True, "dir-750": True, "dir-755": True,
        })

    def test_effective_gid(self) -> None:
        self.assertEqual(effective_gid(NOBODY, 77), 77)
        self.assertEqual(effective_gid(NOBODY, None), 65534)  # nobody:nogroup
        self.assertEqual(effective_gid(3999999, None), 3999999)  # no passwd entry: the uid

    def test_preflight_function_reports_the_same_as_check_config(self) -> None:
        self.key.chmod(0o600)
        path = self.config(self.data())
        path.chmod(0o644)
        report = preflight(path, {})
        self.assertEqual(report.lines(), self.check(path)[2])
        self.assertFalse(report.ok)
