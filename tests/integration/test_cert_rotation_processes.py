"""A CA rollover on a running mesh, with real processes: 3 ``twistd tunmesh`` nodes in 3 namespaces.

The nodes start with certificates from an old CA (``tunmesh cert ca`` / ``tunmesh cert sign``, the real
commands), each node trusting a bundle file of its own (``ca_file_path``) with ``verify_hostname: true``
against IP subjectAltNames. Then the three steps of docs/deployment.md, *Rotating certificates*, node by
node with SIGHUP:

1. the new CA is added to every bundle;
2. every node certificate is re-issued from the new CA;
3. the old CA is removed from every bundle.

Pings run between the nodes' apps the whole time (a raw-socket pinger every 50 ms, so each echo has its
own send time). After each step's reloads, every TCP connection on the port is cut (``ss -K``) so every
link is re-established with a fresh handshake under the new files: the reloads themselves must not drop
a link, and the forced reconnection must succeed within seconds. The figures (loss and longest gap per
step and phase) are printed, and written to ``$TUNMESH_FIGURES_DIR/cert-rotation-figures.txt`` when that
is set.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from twisted.trial.unittest import TestCase

from tests.integration.cluster import UNPRIVILEGED_UID, Cluster, node_config, overlay_v4
from tests.netns import REPO_ROOT, NetnsError, Underlay, requires_root_netns
from tunmesh.tls.certs import load_certificates

BOOT = ["https://198.18.0.1:4567/"]
LINK_UP = "packet link to "
INTERVAL = 0.05
PAIRS = ((1, 2), (2, 3), (3, 1))
RECONNECT_LIMIT = 10.0

PINGER = r"""
import json, os, select, signal, socket, struct, sys, time
dst, interval, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident = os.getpid() & 0xFFFF
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))

def checksum(b):
    if len(b) % 2:
        b += b"\0"
    total = sum(struct.unpack(f"!{len(b) // 2}H", b))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF

sent, got, seq, due = {}, {}, 0, time.monotonic()
def receive(timeout):
    r, _, _ = select.select([s], [], [], max(0.0, timeout))
    if r:
        data = s.recv(2048)
        icmp = data[(data[0] & 0x0F) * 4:]
        kind, _, _, rid, rseq = struct.unpack("!BBHHH", icmp[:8])
        if kind == 0 and rid == ident and rseq in sent:
            got.setdefault(rseq, time.time())
print("started", flush=True)
while not stop:
    if time.monotonic() >= due:
        seq += 1
        head = struct.pack("!BBHHH", 8, 0, 0, ident, seq & 0xFFFF)
        body = b"tunmesh-rotation"
        packet = struct.pack("!BBHHH", 8, 0, checksum(head + body), ident, seq & 0xFFFF) + body
        sent[seq & 0xFFFF] = time.time()
        s.sendto(packet, (dst, 0))
        due += interval
    receive(due - time.monotonic())
end = time.monotonic() + 1.0
while time.monotonic() < end:
    receive(end - time.monotonic())
with open(out, "w") as f:
    json.dump({"sent": sent, "got": got}, f)
"""


def config(i: int) -> str:
    """The cluster's config with node i's own certificate, key and CA bundle under node<i>/tls/, and
    the name check on (the certificates carry the node's underlay IP as subjectAltName)."""
    text = node_config(i, bootstrap=BOOT if i != 1 else [])
    text = text.replace("cert_file_path: ../cert.pem", "cert_file_path: tls/cert.pem")
    text = text.replace(
        "key_file_path: ../key.pem",
        "key_file_path: tls/key.pem\n      ca_file_path: tls/ca.pem\n      verify_hostname: true",
    )
    assert "verify_hostname: true" in text
    return text


def stop_process(proc: subprocess.Popen[str]) -> None:
    """Kill ``proc`` unless it has exited."""
    if proc.poll() is None:
        proc.kill()


def wait_for(predicate, timeout: float, what: str, logs=lambda: "") -> float:
    """Poll ``predicate`` every 50 ms; return the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise NetnsError(f"timed out after {timeout}s waiting for {what}\n{logs()}")
        time.sleep(0.05)
    return time.monotonic() - start


class PingLog:
    """The echoes of one pinger: send time (wall clock) and whether a reply came within 1 s."""

    def __init__(self, path: Path) -> None:
        data = json.loads(path.read_text())
        got = {int(k): v for k, v in data["got"].items()}
        self.echoes = sorted(
            (t, int(k) in got and got[int(k)] - t < 1.0) for k, t in data["sent"].items()
        )

    def window(self, start: float, end: float) -> tuple[int, int, float]:
        """(sent, lost, longest run of lost echoes in seconds) for echoes sent in [start, end)."""
        inside = [ok for t, ok in self.echoes if start <= t < end]
        longest = run = 0
        for ok in inside:
            run = 0 if ok else run + 1
            longest = max(longest, run)
        return len(inside), inside.count(False), longest * INTERVAL


@requires_root_netns
class CARolloverTests(TestCase):
    timeout = 400

    def setUp(self) -> None:
        self.underlay = Underlay(nodes=3, tag="r").__enter__()
        self.addCleanup(self.underlay.__exit__, None, None, None)
        self.workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"tmt-carollover-{os.getpid()}"
        self.cluster = Cluster(self.underlay, self.workdir, config)
        self.addCleanup(self.cluster.stop_all)
        self.pki = self.workdir / "pki"
        self.pki.mkdir(exist_ok=True)
        # The old CA ends in 10 days (the expiry WARN and gauge are what prompt a rollover); the new one in 10 years.
        self.tunmesh("cert", "ca", "--cert", "old-ca.pem", "--key", "old-ca.key", "--name", "tunmesh CA", "--days", "10")
        self.tunmesh("cert", "ca", "--cert", "new-ca.pem", "--key", "new-ca.key", "--name", "tunmesh CA")
        self.old_ca = (self.pki / "old-ca.pem").read_bytes()
        self.new_ca = (self.pki / "new-ca.pem").read_bytes()
        for i in (1, 2, 3):
            self.tls(i).mkdir(exist_ok=True)
            self.sign(i, "old")
            self.write_bundle(i, self.old_ca)

    # -- helpers ------------------------------------------------------------------------------------

    def tunmesh(self, *argv: str) -> str:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        r = subprocess.run([sys.executable, "-m", "tunmesh", *argv], cwd=self.pki, env=env,
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, f"tunmesh {' '.join(argv)}: {r.stderr}")
        self.assertIn("SHA-256 fingerprint", r.stdout)
        return r.stdout

    def tls(self, i: int) -> Path:
        return self.workdir / f"node{i}" / "tls"

    def sign(self, i: int, ca: str) -> None:
        """``tunmesh cert sign`` straight into node i's files (``--force`` replaces them in place)."""
        out = self.tunmesh(
            "cert", "sign", "--ca-cert", f"{ca}-ca.pem", "--ca-key", f"{ca}-ca.key", "--cert",
            str(self.tls(i) / "cert.pem"), "--key", str(self.tls(i) / "key.pem"), "--ip", f"198.18.0.{i}",
            "--hostname", f"node{i}.mesh", "--force",
        )
        self.assertIn(f"subjectAltName DNS:node{i}.mesh, IP:198.18.0.{i}", out)
        self.readable_by_node(self.tls(i) / "cert.pem", self.tls(i) / "key.pem")

    def write_bundle(self, i: int, *pems: bytes) -> None:
        path = self.tls(i) / "ca.pem"
        path.write_bytes(b"".join(pems))
        self.readable_by_node(path)

    @staticmethod
    def readable_by_node(*paths: Path) -> None:
        for path in paths:  # SIGHUP re-reads the files as process.uid (root is dropped by then)
            os.chown(path, UNPRIVILEGED_UID, -1)
            path.chmod(0o600)

    def log(self, i: int) -> str:
        node = self.cluster.nodes[i]
        if node.proc.poll() is not None:
            self.fail(f"node {i} exited ({node.proc.returncode})\n{node.log_tail()}")
        return node.log_path.read_text(errors="replace")

    def links_up(self) -> dict[tuple[int, int], int]:
        """How often each packet link (from, to) came up so far (its client logs it)."""
        logs = {i: self.log(i) for i in (1, 2, 3)}
        # "packet link to NAME (ID) up (...)": counted by the peer's id, whatever its name
        return {
            (a, b): len(re.findall(rf"{LINK_UP}\S* ?\(?{re.escape(self.ids[b])}\)? up", logs[a]))
            for a in (1, 2, 3) for b in (1, 2, 3) if a != b
        }

    def served(self, from_node: int, to_node: int) -> bytes:
        """The certificate a new connection from ``from_node`` to ``to_node`` is shown, verified by OpenSSL
        against ``from_node``'s bundle and ``to_node``'s IP (the checks the node itself makes)."""
        bundle = self.tls(from_node) / "ca.pem"
        r = self.cluster.ns(from_node).run(
            ["sh", "-c", f"openssl s_client -connect 198.18.0.{to_node}:4567 -CAfile {bundle} "
             f"-verify_return_error -verify_ip 198.18.0.{to_node} </dev/null 2>/dev/null | openssl x509"],
            check=False, timeout=30,
        )
        if r.returncode != 0 or "BEGIN CERTIFICATE" not in r.stdout:
            raise NetnsError(f"node {from_node} cannot verify node {to_node} against its bundle: {r.stderr}")
        return r.stdout.encode()

    def assert_serving(self, i: int, cert_file: Path) -> None:
        expected = load_certificates(cert_file)[0]
        for j in (1, 2, 3):
            if j != i:
                shown = self.served(j, i)
                self.assertEqual(x509.load_pem_x509_certificate(shown), expected, f"node {i} as seen from {j}")

    def gauge(self, i: int, which: str) -> float:
        return self.cluster.metric(i, "tunmesh_cert_expiry_timestamp_seconds", which=which)

    def not_after(self, pem: bytes | Path) -> float:
        data = pem.read_bytes() if isinstance(pem, Path) else pem
        return x509.load_pem_x509_certificate(data).not_valid_after_utc.timestamp()

    def reload(self, i: int, line: str) -> None:
        """SIGHUP node i and wait for ``line`` to appear once more in its log."""
        before = self.log(i).count(line)
        os.kill(self.cluster.nodes[i].pid, signal.SIGHUP)
        wait_for(lambda: self.log(i).count(line) > before, 20, f"node {i} to log {line!r}", self.cluster.logs)

    def cut_connections(self) -> float:
        """Cut every TCP connection on the port in every namespace; the seconds until all six packet
        links are up again (new handshakes with the files now in use)."""
        before = self.links_up()
        start = time.monotonic()
        for i in (1, 2, 3):
            self.cluster.ns(i).run(["ss", "-K", "-t", "( sport = :4567 or dport = :4567 )"], timeout=10)
        wait_for(
            lambda: all(n > before[pair] for pair, n in self.links_up().items()),
            RECONNECT_LIMIT, "all packet links to come back", self.cluster.logs,
        )
        return time.monotonic() - start

    # -- the test -----------------------------------------------------------------------------------

    def test_ca_rollover_with_a_bundle_and_sighup_keeps_the_mesh_up(self) -> None:
        self.cluster.start_all()
        self.ids = self.cluster.wait_full_mesh(timeout=60)
        wait_for(lambda: all(n >= 1 for n in self.links_up().values()), 30, "links up", self.cluster.logs)
        old_node_end = self.not_after(self.tls(1) / "cert.pem")
        self.assertEqual(old_node_end, self.not_after(self.old_ca))  # capped at the CA's end
        for i in (1, 2, 3):
            self.assertEqual(self.gauge(i, "ca"), self.not_after(self.old_ca))
            self.assertEqual(self.gauge(i, "node"), old_node_end)
            self.assertRegex(self.log(i), r"ca certificate CN=tunmesh CA expires in (9|10)\.\d days")
            self.assert_serving(i, self.tls(i) / "cert.pem")

        pingers: dict[tuple[int, int], Any] = {}
        for a, b in PAIRS:
            out = self.workdir / f"ping-{a}-{b}.json"
            proc = self.cluster.ns(a).popen([sys.executable, "-c", PINGER, overlay_v4(b), str(INTERVAL), str(out)],
                                            stdout=subprocess.PIPE, text=True)
            self.addCleanup(stop_process, proc)
            self.assertEqual(proc.stdout.readline().strip(), "started")
            pingers[(a, b)] = (proc, out)

        phases: list[tuple[str, str, float, float, dict[str, Any]]] = []

        def phase(step: str, what: str, action) -> None:
            links = self.links_up()
            start = time.time()
            extra = action() or {}
            time.sleep(settle)  # what happens just after counts too
            end = time.time()
            if what == "reloads":  # SIGHUP alone must not drop or re-open a link
                self.assertEqual(self.links_up(), links, f"{step}: a reload re-opened a link\n{self.cluster.logs()}")
            phases.append((step, what, start, end, extra))

        def reconnect() -> dict[str, Any]:
            return {"reconnect_s": self.cut_connections()}

        settle = 1.0
        time.sleep(settle)
        phase("0 before", "steady", lambda: time.sleep(2))

        # Step 1: the new CA joins every bundle.
        def step1() -> None:
            for i in (1, 2, 3):
                self.write_bundle(i, self.old_ca, self.new_ca)
                self.reload(i, "ca_file_path: new connections verify peers against 2 certificate(s)")

        phase("1 add new CA", "reloads", step1)
        for i in (1, 2, 3):
            self.assert_serving(i, self.tls(i) / "cert.pem")
            self.assertEqual(self.gauge(i, "ca"), self.not_after(self.old_ca))  # still the soonest
        phase("1 add new CA", "all links cut", reconnect)

        # Step 2: node certificates from the new CA.
        def step2() -> None:
            for i in (1, 2, 3):
                self.sign(i, "new")
                self.reload(i, "cert_file_path: new connections get the certificate")

        phase("2 re-issue node certs", "reloads", step2)
        for i in (1, 2, 3):
            self.assert_serving(i, self.tls(i) / "cert.pem")
            self.assertEqual(self.gauge(i, "node"), self.not_after(self.tls(i) / "cert.pem"))
            self.assertGreater(self.gauge(i, "node"), old_node_end + 300 * 86400)
        phase("2 re-issue node certs", "all links cut", reconnect)

        # Step 3: the old CA leaves every bundle.
        warned = {i: self.log(i).count("expires in") for i in (1, 2, 3)}

        def step3() -> None:
            for i in (1, 2, 3):
                self.write_bundle(i, self.new_ca)
                self.reload(i, "ca_file_path: new connections verify peers against 1 certificate(s)")

        phase("3 remove old CA", "reloads", step3)
        for i in (1, 2, 3):
            self.assert_serving(i, self.tls(i) / "cert.pem")
            self.assertEqual(self.gauge(i, "ca"), self.not_after(self.new_ca))
            self.assertEqual(self.log(i).count("expires in"), warned[i], f"node {i} still warns")
        phase("3 remove old CA", "all links cut", reconnect)

        for proc, _ in pingers.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in pingers.values():
            proc.wait(timeout=10)
        logs = {pair: PingLog(out) for pair, (_, out) in pingers.items()}

        lines = [
            "CA rollover, 3 tunmesh nodes in namespaces, SIGHUP reloads, rolling node by node "
            f"(tests/integration/test_cert_rotation_processes.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
            f"pings: 3 pairs ({', '.join(f'{a}->{b}' for a, b in PAIRS)}), one echo every {INTERVAL * 1000:.0f} ms each",
            f"{'step':<24}{'phase':<16}{'seconds':>8}{'echoes':>8}{'lost':>6}{'longest gap':>13}{'links back in':>15}",
        ]
        total_reload_lost = 0
        for step, what, start, end, extra in phases:
            sent = lost = 0
            gap = 0.0
            for log in logs.values():
                s, lo, g = log.window(start, end)
                sent, lost, gap = sent + s, lost + lo, max(gap, g)
            if what == "reloads":
                total_reload_lost += lost
            back = f"{extra['reconnect_s']:.2f} s" if "reconnect_s" in extra else "-"
            lines.append(f"{step:<24}{what:<16}{end - start:>8.1f}{sent:>8}{lost:>6}{gap:>11.2f} s{back:>15}")
        lines += [
            "reloads: the step's files written and SIGHUP sent to node 1, 2, 3 in turn (each waited for its log"
            " line), plus 1 s; no link may be re-opened",
            "all links cut: ss -K on port 4567 in every namespace, until all six packet links are up again"
            " (fresh handshakes under the new files), plus 1 s",
        ]
        report = "\n".join(lines) + "\n"
        self.write_figures(report)

        self.assertEqual(total_reload_lost, 0, report)
        for step, _, _, _, extra in phases:
            if "reconnect_s" in extra:
                self.assertLess(extra["reconnect_s"], RECONNECT_LIMIT, f"{step}\n{report}")
        for i in (1, 2, 3):
            self.assertEqual(self.cluster.nodes[i].get("/ready")[0], 200)
            self.assertNotIn("Traceback", self.log(i))

        # Control: the old CA is really out of the nodes' trust. Node 3 serves an old-CA certificate again;
        # after a cut, nodes 1 and 2 refuse to open their links to it (node 3's own links, verifying them
        # against the new CA, come back). Re-issued from the new CA, node 3 is accepted again.
        self.sign(3, "old")
        self.reload(3, "cert_file_path: new connections get the certificate")
        self.assertIn("which is not in ca_file_path", self.log(3))  # the reload says why peers will refuse it
        before = self.links_up()
        for i in (1, 2, 3):
            self.cluster.ns(i).run(["ss", "-K", "-t", "( sport = :4567 or dport = :4567 )"], timeout=10)
        wait_for(lambda: all(self.links_up()[pair] > before[pair] for pair in ((3, 1), (3, 2), (1, 2), (2, 1))),
                 RECONNECT_LIMIT, "the links that do not need node 3's certificate", self.cluster.logs)
        time.sleep(5)
        refused = {pair: self.links_up()[pair] - before[pair] for pair in ((1, 3), (2, 3))}
        self.assertEqual(refused, {(1, 3): 0, (2, 3): 0}, f"links to node 3 came up (logs under {self.workdir})")
        self.sign(3, "new")
        self.reload(3, "cert_file_path: new connections get the certificate")
        reissued = wait_for(lambda: all(self.links_up()[pair] > before[pair] for pair in ((1, 3), (2, 3))), 60,
                        "links to node 3 after its new certificate", self.cluster.logs)
        self.write_figures(
            report + "control after step 3: a node serving an old-CA certificate again: its peers refuse it"
            f" (links to it stay down); re-issued from the new CA: links back {reissued:.1f} s after its reload\n"
        )

    def write_figures(self, report: str) -> None:
        print("\n" + report)
        (self.workdir / "cert-rotation-figures.txt").write_text(report)
        if os.environ.get("TUNMESH_FIGURES_DIR"):
            Path(os.environ["TUNMESH_FIGURES_DIR"], "cert-rotation-figures.txt").write_text(report)
