"""The tunmesh command: exit codes and output of each sub-command, with captured streams."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.support import SAMPLE_YAML, SECRET, ConfigTestMixin
from tunmesh.cli import main
from tunmesh.config.docs import config_reference_markdown, example_config
from tunmesh.config.lint import secret_problem


class CLITests(ConfigTestMixin, SynchronousTestCase):
    def run_cli(self, *argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(list(argv), stdout=out, stderr=err, env=env if env is not None else {})
        return code, out.getvalue(), err.getvalue()

    def write(self, text: str) -> str:
        path = self.base / "config.yaml"
        path.write_text(text)
        return str(path)

    def test_example_config(self) -> None:
        self.assertEqual(self.run_cli("example-config"), (0, example_config(), ""))

    def test_docs(self) -> None:
        self.assertEqual(self.run_cli("docs"), (0, config_reference_markdown(), ""))

    def test_gen_secret(self) -> None:
        code, out, err = self.run_cli("gen-secret")
        secret = out.strip()
        self.assertEqual((code, err, len(secret), out.count("\n")), (0, "", 43, 1))
        self.assertRegex(secret, r"^[A-Za-z0-9_-]{43}$")
        self.assertIsNone(secret_problem(secret))
        self.assertNotEqual(secret, self.run_cli("gen-secret")[1].strip())

    def test_check_config_ok_prints_redacted_dump(self) -> None:
        code, out, err = self.run_cli("check-config", self.write(SAMPLE_YAML))
        self.assertEqual((code, err), (0, ""))
        self.assertNotIn(SECRET, out)
        tree = yaml.safe_load(out)["tun_mesh"]
        self.assertEqual(tree["clustering"]["auth"]["secret"], "<redacted>")
        self.assertEqual(tree["control_api"]["listen_port"], 4567)

    def test_check_config_errors_one_line_each(self) -> None:
        bad = SAMPLE_YAML.replace("uid: 1000", "uid: 0").replace("level: debug", "level: loud")
        bad = bad.replace(f"secret: {SECRET}", "secret: " + "z" * 40)
        code, out, err = self.run_cli("check-config", self.write(bad))
        self.assertEqual((code, out), (1, ""))
        lines = err.splitlines()
        self.assertEqual(lines, ["tunmesh: config error: tun_mesh/logging/level: 'loud' must be one of "
                                 "error, warn, info, debug"])
        bad = bad.replace("level: loud", "level: info")
        code, out, err = self.run_cli("check-config", self.write(bad))
        lines = err.splitlines()
        self.assertEqual(code, 1)
        self.assertEqual(len(lines), 2, lines)
        self.assertTrue(all(line.startswith("tunmesh: config error: tun_mesh/") for line in lines))
        self.assertNotIn("z" * 10, err)
        self.assertNotIn("Traceback", err)

    def test_check_config_yaml_error(self) -> None:
        path = self.write("tun_mesh: [\n")
        code, out, err = self.run_cli("check-config", path)
        self.assertEqual((code, out), (1, ""))
        self.assertRegex(err, rf"^tunmesh: config error: {path}:\d+:\d+: invalid YAML: .+\n$")

    def test_check_config_missing_file(self) -> None:
        code, _, err = self.run_cli("check-config", str(self.base / "none.yaml"))
        self.assertEqual(code, 1)
        self.assertEqual(err, f"tunmesh: config error: {self.base / 'none.yaml'}: config file does not exist\n")

    def test_check_config_path_from_env(self) -> None:
        path = self.write(SAMPLE_YAML)
        code, out, _ = self.run_cli("check-config", env={"TUNMESH_CONFIG_PATH": path})
        self.assertEqual(code, 0)
        self.assertIn("tun_mesh:", out)

    def test_check_config_env_overrides(self) -> None:
        path = self.write(SAMPLE_YAML)
        env = {"TUNMESH_ADVERTISE_URL": "https://pod.example", "TUNMESH_CLUSTER_SECRET": "short"}
        code, out, err = self.run_cli("check-config", path, env=env)
        self.assertEqual(code, 1)
        self.assertIn("tun_mesh/clustering/auth/secret: is too short", err)
        self.assertNotIn("short\n", err)

    def test_usage_errors(self) -> None:
        code, out, err = self.run_cli()
        self.assertEqual(code, 2)
        self.assertIn("usage: tunmesh", err)
        self.assertEqual(self.run_cli("bogus")[0], 2)

    def test_version(self) -> None:
        code, out, _ = self.run_cli("--version")
        self.assertEqual((code, out), (0, "tunmesh 0.1.0\n"))

    def test_python_dash_m(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "tunmesh", "gen-secret"], capture_output=True, text=True, check=False,
            cwd=str(Path(__file__).resolve().parents[2]), timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(len(result.stdout.strip()), 43)


class GenCertTests(SynchronousTestCase):
    """`tunmesh gen-cert` writes a usable self-signed pair, and reports bad input without a traceback."""

    def test_writes_cert_and_private_key(self) -> None:
        import io
        import stat
        from pathlib import Path

        from cryptography import x509

        from tunmesh.cli import main

        d = Path(self.mktemp())
        d.mkdir()
        out, err = io.StringIO(), io.StringIO()
        rc = main(
            ["gen-cert", "--cert", str(d / "c.pem"), "--key", str(d / "k.pem"), "--hostname", "a.example",
             "--ip", "198.18.0.1"],
            stdout=out, stderr=err,
        )
        self.assertEqual((rc, err.getvalue()), (0, ""))
        cert = x509.load_pem_x509_certificate((d / "c.pem").read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["a.example"])
        self.assertEqual(stat.S_IMODE((d / "k.pem").stat().st_mode), 0o600)

    def test_bad_ip_is_one_line(self) -> None:
        import io

        from tunmesh.cli import main

        d = self.mktemp()
        err = io.StringIO()
        rc = main(["gen-cert", "--cert", d + "c", "--key", d + "k", "--ip", "not-an-ip"], stdout=io.StringIO(),
                  stderr=err)
        self.assertEqual(rc, 1)
        self.assertTrue(err.getvalue().startswith("tunmesh: gen-cert: "))
        self.assertEqual(err.getvalue().count("\n"), 1)


class PeersAgainstHostileNodeTests(ConfigTestMixin, SynchronousTestCase):
    """``tunmesh peers`` reads unauthenticated bytes first (the handshake, the channel proof frame of
    ``tunmesh-ctl/1``): a server that is no tunmesh node, or sends a hostile proof, is one line, exit 1."""

    def start_tls(self, server: Any, alpn: list[str] | None = None) -> str:
        """Serve ``server`` (a ``socketserver``) over TLS with the config's certificate, in a thread."""
        import ssl
        import threading

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.base / "ssl" / "cert.pem", self.base / "ssl" / "key.pem")
        if alpn:
            context.set_alpn_protocols(alpn)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        return f"https://127.0.0.1:{server.server_address[1]}"

    def serve_proof(self, frame: bytes) -> str:
        """A TLS server that speaks ``tunmesh-ctl/1`` and writes ``frame`` as its proof."""
        import socketserver

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.sendall(frame)

        return self.start_tls(socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler), ["tunmesh-ctl/1"])

    def test_hostile_channel_proof_is_one_line_not_a_traceback(self) -> None:
        path = self.base / "config.yaml"
        path.write_text(SAMPLE_YAML)
        for frame in (b"\xff\xff\xff\xff", b"\x00\x00\x00\x05[[[[[", b"\x00\x00\x00\x02\xff\xfe",
                      b"\x00\x00\x00\x05a.b.c", b"\x00\x00\x10\x00" + b"[" * 4096, b"\x00\x00"):
            url = self.serve_proof(frame)
            out, err = io.StringIO(), io.StringIO()
            code = main(["peers", "--config", str(path), url], stdout=out, stderr=err, env={})
            self.assertEqual(code, 1, frame[:20])
            self.assertEqual(len(err.getvalue().strip().splitlines()), 1, err.getvalue())
            self.assertRegex(err.getvalue(), "cannot query|did not prove the TLS session")
            self.assertEqual(out.getvalue(), "")

    def serve(self, body: bytes) -> str:
        """An HTTPS server that is no tunmesh node: any GET answers ``body`` as JSON."""
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (stdlib name)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return self.start_tls(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler))

    def test_a_server_that_is_no_tunmesh_node_is_one_line_not_a_traceback(self) -> None:
        path = self.base / "config.yaml"
        path.write_text(SAMPLE_YAML)
        for body in (b"[" * 5000 + b"]" * 5000, b"1" * 500, b"[]", b'{"id": 7}'):
            url = self.serve(body)
            out, err = io.StringIO(), io.StringIO()
            code = main(["peers", "--config", str(path), url], stdout=out, stderr=err, env={})
            self.assertEqual(code, 1, body[:20])
            self.assertEqual(len(err.getvalue().strip().splitlines()), 1, err.getvalue())
            self.assertIn("cannot query", err.getvalue())
