"""``tunmesh health`` against a real TLS server in this process: exit status and the one line it prints."""

from __future__ import annotations

import io
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml
from twisted.trial.unittest import SynchronousTestCase

from tests.unit.support import SECRET
from tunmesh.cli import main
from tunmesh.probe import probe_address
from tunmesh.tls.certs import write_self_signed


class _Handler(BaseHTTPRequestHandler):
    server: _HealthServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.requests.append((self.path, self.headers.get("Host", ""), self.connection.selected_alpn_protocol()))
        body = b'{"status": "ok"}' if self.server.status == 200 else b'{"status": "unhealthy"}'
        self.send_response(self.server.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _HealthServer(ThreadingHTTPServer):
    def __init__(self, cert: Path, key: Path, status: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        context.set_alpn_protocols(["http/1.1"])
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.status = status
        self.requests: list[tuple[str, str, str | None]] = []


class HealthCommandTests(SynchronousTestCase):
    """The probe follows the config: address, port, trust and hostname policy all come from it."""

    def setUp(self) -> None:
        self.base = Path(self.mktemp()).absolute()
        self.base.mkdir(parents=True)
        write_self_signed(self.base / "cert.pem", self.base / "key.pem", hostnames=("node1.tunmesh.test",))
        write_self_signed(self.base / "other.pem", self.base / "other.key", hostnames=("node1.tunmesh.test",))

    def serve(self, status: int = 200, cert: str = "cert.pem", key: str = "key.pem") -> _HealthServer:
        server = _HealthServer(self.base / cert, self.base / key, status)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 5)
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        return server

    def write_config(self, port: int, listen_address: str = "0.0.0.0", verify_hostname: bool = False,
                     advertise_host: str = "node1.tunmesh.test") -> str:
        doc = {
            "tun_mesh": {
                "config_version": 1.1,
                "clustering": {
                    "control_api_advertise_url": f"https://{advertise_host}:{port}",
                    "bootstrap_groups": {"default": {"bootstrap_node_urls": []}},
                    "auth": {"secret": SECRET},
                },
                "control_api": {
                    "listen_address": listen_address,
                    "listen_port": port,
                    "ssl": {"cert_file_path": "cert.pem", "key_file_path": "key.pem",
                            "verify_hostname": verify_hostname},
                },
                "networking": {"ipv4": {"network_cidr": "100.64.0.0/24", "node_address_cidr": "100.64.0.1/24"}},
                "process": {"uid": 10001},
            }
        }
        path = self.base / "config.yaml"
        path.write_text(yaml.safe_dump(doc))
        return str(path)

    def health(self, *argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(["health", *argv], stdout=out, stderr=err, env=env or {})
        return code, out.getvalue(), err.getvalue()

    def test_healthy_node_exits_zero_silently(self) -> None:
        server = self.serve(200)
        port = server.server_address[1]
        self.assertEqual(self.health("--config", self.write_config(port)), (0, "", ""))
        self.assertEqual(server.requests, [("/health", f"node1.tunmesh.test:{port}", "http/1.1")])

    def test_config_comes_from_the_environment_like_the_node(self) -> None:
        server = self.serve(200)
        path = self.write_config(server.server_address[1])
        self.assertEqual(self.health(env={"TUNMESH_CONFIG_PATH": path}), (0, "", ""))
        self.assertEqual(len(server.requests), 1)

    def test_unhealthy_answer_is_one_line_with_the_status(self) -> None:
        server = self.serve(503)
        port = server.server_address[1]
        code, out, err = self.health("--config", self.write_config(port))
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, f"tunmesh: health: https://127.0.0.1:{port}/health answered 503 Service Unavailable\n")

    def test_port_follows_the_config(self) -> None:
        server = self.serve(200)
        port = server.server_address[1]
        # Nothing listens on the port next to it (the server's port was free, so bind and close one to be sure).
        import socket

        spare = socket.socket()
        spare.bind(("127.0.0.1", 0))
        closed_port = spare.getsockname()[1]
        spare.close()
        code, out, err = self.health("--config", self.write_config(closed_port))
        self.assertEqual((code, out), (1, ""))
        self.assertRegex(err, rf"^tunmesh: health: cannot connect to https://127.0.0.1:{closed_port}/health: "
                              r"[^\n]*refused[^\n]*\n$")
        self.assertEqual(server.requests, [])
        self.assertEqual(self.health("--config", self.write_config(port))[0], 0)

    def test_untrusted_certificate_is_refused(self) -> None:
        server = self.serve(200, cert="other.pem", key="other.key")
        code, _, err = self.health("--config", self.write_config(server.server_address[1]))
        self.assertEqual(code, 1)
        self.assertRegex(err, r"^tunmesh: health: TLS to https://127\.0\.0\.1:\d+/health failed: .*certificate.*\n$")
        self.assertEqual(server.requests, [])

    def test_hostname_checked_only_when_configured(self) -> None:
        server = self.serve(200)
        port = server.server_address[1]
        wrong = self.write_config(port, verify_hostname=True, advertise_host="elsewhere.tunmesh.test")
        code, _, err = self.health("--config", wrong)
        self.assertEqual(code, 1)
        self.assertIn("elsewhere.tunmesh.test", err)
        self.assertEqual(err.count("\n"), 1)
        right = self.write_config(port, verify_hostname=True)
        self.assertEqual(self.health("--config", right), (0, "", ""))
        unchecked = self.write_config(port, verify_hostname=False, advertise_host="elsewhere.tunmesh.test")
        self.assertEqual(self.health("--config", unchecked), (0, "", ""))

    def test_specific_listen_address_is_used(self) -> None:
        server = self.serve(200)
        path = self.write_config(server.server_address[1], listen_address="127.0.0.1")
        self.assertEqual(self.health("--config", path)[0], 0)
        path = self.write_config(server.server_address[1], listen_address="127.0.0.2")
        code, _, err = self.health("--config", path, "--timeout", "1")
        self.assertEqual(code, 1)
        self.assertIn("https://127.0.0.2:", err)

    def test_config_error_is_one_line(self) -> None:
        path = self.base / "bad.yaml"
        path.write_text("tun_mesh:\n  config_version: 1.1\n")
        code, out, err = self.health("--config", str(path))
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err.count("\n"), 1, err)
        self.assertRegex(err, r"^tunmesh: health: config error: tun_mesh/.+ \(and \d+ more: see tunmesh check-config\)\n$")

    def test_wildcards_probe_the_loopback_of_their_family(self) -> None:
        self.assertEqual(probe_address("0.0.0.0"), "127.0.0.1")
        self.assertEqual(probe_address("::"), "::1")
        self.assertEqual(probe_address("198.18.0.7"), "198.18.0.7")
        self.assertEqual(probe_address("fd00::7"), "fd00::7")
