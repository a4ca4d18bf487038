"""The ``tunmesh`` command: ``run`` (a node), the ``health`` probe, the local admin commands (``status``,
``reload``) and config tooling (example-config, check-config, gen-secret, gen-cert, cert, peers, docs,
completion, man).

Config problems are reported one per line on stderr, without a traceback and without any secret.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from tunmesh import __version__, certcli, clidocs
from tunmesh.config import ConfigError, dump_config, load_config, resolve_config_path
from tunmesh.config.docs import config_reference_markdown, example_config

PROG = "tunmesh"
SECRET_BYTES = 32


def generate_secret() -> str:
    """A fresh cluster secret: 32 random bytes, base64url without padding (43 characters)."""
    return base64.urlsafe_b64encode(os.urandom(SECRET_BYTES)).rstrip(b"=").decode("ascii")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="tunmesh: a Layer 3 mesh VPN sidecar.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser("example-config", help="print an annotated example config")
    check = commands.add_parser(
        "check-config",
        help="run the daemon's start-up checks on a config file and print the resolved config (secrets redacted)",
        description="FILE defaults to $TUNMESH_CONFIG_PATH, then /etc/tunmesh/config.yaml. Checks what the "
        "daemon refuses at start (keys, values, TLS files, certificate validity, files process.uid must read). "
        "Exit status: 0 usable (warnings are printed to stderr), 1 refused (one line per problem).",
    )
    check.add_argument("file", nargs="?", metavar="FILE", help="config file to check")
    commands.add_parser("gen-secret", help="print a new random cluster secret")
    cert = commands.add_parser(
        "gen-cert",
        help="write a self-signed ECDSA P-256 certificate and key for the API port",
        description="The key file is written with mode 0600. One certificate may be shared by all nodes.",
    )
    cert.add_argument("--cert", required=True, metavar="PATH", help="certificate output file (PEM)")
    cert.add_argument("--key", required=True, metavar="PATH", help="private key output file (PEM)")
    cert.add_argument(
        "--hostname", action="append", default=[], metavar="NAME", help="DNS subjectAltName (repeatable)"
    )
    cert.add_argument("--ip", action="append", default=[], metavar="ADDR", help="IP subjectAltName (repeatable)")
    cert.add_argument("--days", type=int, default=3650, help="validity in days (default 3650)")
    certcli.add_parser(commands)
    peers = commands.add_parser(
        "peers",
        help="show a node's view of the mesh (authenticated with the cluster secret from the config)",
        description="GETs /tunmesh/control/v0/peers with a cluster token and verifies the signed answer. "
        "URL defaults to the config's control_api_advertise_url.",
    )
    peers.add_argument("--config", metavar="FILE", help="config file (as for check-config)")
    peers.add_argument("url", nargs="?", metavar="URL", help="node API URL, e.g. https://198.18.0.11:4567/")
    status = commands.add_parser(
        "status",
        help="show this node and its peers: links, sessions, traffic, RTT, failures with hints",
        description="Asks the local node over its admin socket (process.admin_socket; no cluster secret). "
        "The socket is --socket, else $TUNMESH_ADMIN_SOCKET, else process.admin_socket of the config file, "
        "else /run/tunmesh/admin.sock. Run as the node's process.uid or root.",
    )
    _admin_options(status)
    status.add_argument("--json", action="store_true", help="print the status document as JSON (for scripts)")
    status.add_argument(
        "--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
        help="redraw every SECONDS (default 2) until interrupted, like `tinc top`",
    )
    status.add_argument("--count", type=int, metavar="N", help="with --watch: stop after N refreshes")
    reload_cmd = commands.add_parser(
        "reload",
        help="ask the local node to reload its config now (what SIGHUP does) and print what changed",
        description="Same socket as `tunmesh status`. Prints what was applied, what was refused (the node "
        "keeps the running value and logs why) and what needs a restart. Exit status 1 when a part was refused.",
    )
    _admin_options(reload_cmd)
    reload_cmd.add_argument("--json", action="store_true", help="print the result as JSON")
    commands.add_parser("docs", help="print the Markdown configuration reference")
    completion = commands.add_parser(
        "completion",
        help="print the shell completion script for bash or zsh (needs the docs extra: shtab)",
        description="bash: source it, or install it as ~/.local/share/bash-completion/completions/tunmesh. "
        "zsh: install it as _tunmesh in a directory of $fpath. pip install puts both under share/.",
    )
    completion.add_argument("shell", choices=clidocs.SHELLS, help="the shell")
    commands.add_parser("man", help="print the tunmesh(1) man page (needs the docs extra: argparse-manpage)")
    run = commands.add_parser(
        "run",
        help="run a node in the foreground (what `twistd -n tunmesh` runs)",
        description="Runs the node until SIGTERM/SIGINT (it then tells its peers it leaves). SIGHUP reloads "
        "the TLS files, bootstrap groups and log level from the config file. Needs root to create the TUN "
        "device; drops to process.uid once the device and the port are open.",
    )
    run.add_argument("--config", metavar="FILE", help="config file (as for check-config)")
    run.add_argument("--logfile", metavar="PATH", help="log to PATH instead of stdout")
    health = commands.add_parser(
        "health",
        help="probe the local node's /health as its config says (for HEALTHCHECK and exec probes)",
        description="GETs /health on the config's listen_address (wildcard: loopback) and listen_port over "
        "TLS, trusting ca_file_path or the node's certificate. Exit 0 when it answers 200, else 1 with one line.",
    )
    health.add_argument("--config", metavar="FILE", help="config file (as for check-config)")
    health.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS", help="default 3")
    return parser


def _health(args: argparse.Namespace, env: Mapping[str, str], err: TextIO) -> int:
    from tunmesh.probe import check_health

    try:
        cfg = load_config(resolve_config_path(args.config, env), env=env)
    except ConfigError as e:
        more = f" (and {len(e.errors) - 1} more: see tunmesh check-config)" if len(e.errors) > 1 else ""
        print(f"{PROG}: health: config error: {e.errors[0]}{more}", file=err)
        return 1
    problem = check_health(cfg, timeout=args.timeout)
    if problem is not None:
        print(f"{PROG}: health: {problem}", file=err)
        return 1
    return 0


def _admin_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", metavar="PATH", help="the node's admin socket")
    parser.add_argument("--config", metavar="FILE", help="read process.admin_socket from this config file")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the node (default 10)")


def _admin_socket(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    from tunmesh.admin.client import socket_path

    config = resolve_config_path(args.config, env)
    return socket_path(args.socket, env, config if args.config or config.exists() else None)


def _status(
    args: argparse.Namespace, env: Mapping[str, str], out: TextIO, err: TextIO, sleep: Any = None
) -> int:
    import json
    import time

    from tunmesh.admin.client import AdminError, request
    from tunmesh.admin.render import render_status

    sleep = sleep or time.sleep
    try:
        path = _admin_socket(args, env)
    except AdminError as e:
        print(f"{PROG}: status: {e}", file=err)
        return 1
    refreshes = 0
    while True:
        try:
            doc = request(path, "status", timeout=args.timeout)
            text = json.dumps(doc, indent=2, sort_keys=True) + "\n" if args.json else render_status(doc)
            failed = False
        except AdminError as e:
            text, failed = f"{PROG}: status: {e}\n", True
        if args.watch is None:
            (err if failed else out).write(text)
            return 1 if failed else 0
        # Home, clear, draw: a terminal shows the latest state in place (as `tinc top`, `watch`).
        out.write("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S ") + f"every {args.watch:g}s\n" + text)
        out.flush()
        refreshes += 1
        if args.count is not None and refreshes >= args.count:
            return 1 if failed else 0
        try:
            sleep(max(0.2, args.watch))
        except KeyboardInterrupt:
            return 0


def _reload(args: argparse.Namespace, env: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    import json

    from tunmesh.admin.client import AdminError, request
    from tunmesh.admin.render import render_reload

    try:
        result = request(_admin_socket(args, env), "reload", timeout=args.timeout)
    except AdminError as e:
        print(f"{PROG}: reload: {e}", file=err)
        return 1
    out.write(json.dumps(result, indent=2, sort_keys=True) + "\n" if args.json else render_reload(result))
    return 1 if result.get("refused") else 0


def _peers(args: argparse.Namespace, env: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    import json
    import uuid

    from tunmesh import ctlquery, strictjson
    from tunmesh.auth.cluster import ClusterAuthority, ClusterKeyring
    from tunmesh.auth.errors import AuthError
    from tunmesh.clocks import WallClock
    from tunmesh.tls.contexts import CA_FILE_KEY, CERT_FILE_KEY, TLSConfigError

    try:
        cfg = load_config(resolve_config_path(args.config, env), env=env)
    except ConfigError as e:
        for problem in e.errors:
            print(f"{PROG}: config error: {problem}", file=err)
        return 1
    base = (args.url or cfg.clustering.control_api_advertise_url).rstrip("/")
    ssl_cfg = cfg.control_api.ssl

    path = "/tunmesh/control/v0/peers"
    try:
        # tunmesh-ctl/1: the node proves the TLS session first and the request is bound to it (W5).
        auth = cfg.clustering.auth
        keyring = ClusterKeyring(auth.accepted_secrets, auth.signing_id)
        authority = ClusterAuthority(keyring, str(uuid.uuid4()), WallClock())
        answer = ctlquery.request(
            base,
            "GET",
            path,
            b"",
            authority,
            ssl_cfg.ca_file_path or ssl_cfg.cert_file_path,
            bool(ssl_cfg.verify_hostname),
            trust_key=CA_FILE_KEY if ssl_cfg.ca_file_path is not None else CERT_FILE_KEY,
        )
        if answer.status != 200:
            print(f"{PROG}: peers: {base} answered {answer.status}", file=err)
            return 1
        body = answer.body
    except (OSError, ValueError, KeyError, TLSConfigError) as e:
        print(f"{PROG}: peers: cannot query {base}: {e}", file=err)
        return 1
    except ctlquery.ProofRefused as e:
        print(
            f"{PROG}: peers: {base} did not prove the TLS session under a cluster secret of this config "
            f"({e.reason}): another secret, or a relay; nothing was sent",
            file=err,
        )
        return 1
    except AuthError as e:
        print(f"{PROG}: peers: the answer from {base} is not signed by the cluster ({e.reason})", file=err)
        return 1
    json.dump(strictjson.loads(body), out, indent=2, sort_keys=True)
    out.write("\n")
    return 0


def _gen_cert(args: argparse.Namespace, err: TextIO) -> int:
    from pathlib import Path

    from tunmesh.tls.certs import write_self_signed

    hostnames = args.hostname or ([] if args.ip else ["tunmesh.local"])
    try:
        write_self_signed(Path(args.cert), Path(args.key), hostnames=hostnames, ips=args.ip, days=args.days)
    except (ValueError, OSError) as e:
        print(f"{PROG}: gen-cert: {e}", file=err)
        return 1
    return 0


def _check_config(file: str | None, env: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    """``tunmesh.preflight.preflight``: the checks the daemon runs before it starts, with the same lines.

    Exit 1 on any error; warnings are printed but leave the status 0.
    """
    from tunmesh.preflight import preflight

    report = preflight(resolve_config_path(file, env), env)
    for line in report.lines():
        print(line, file=err)
    if report.config is None or not report.ok:
        return 1
    out.write(dump_config(report.config, redact=True))
    return 0


def main(
    argv: Sequence[str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run one command and return the exit status (0 ok, 1 config problem, 2 usage error)."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    environ = env if env is not None else os.environ
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse reports usage errors (and --help/--version) by exiting
        return int(e.code) if isinstance(e.code, int) else 2
    if args.command == "example-config":
        out.write(example_config())
    elif args.command == "check-config":
        return _check_config(args.file, environ, out, err)
    elif args.command == "gen-secret":
        print(generate_secret(), file=out)
    elif args.command == "peers":
        return _peers(args, environ, out, err)
    elif args.command == "gen-cert":
        return _gen_cert(args, err)
    elif args.command == "cert":
        return certcli.run(args, out, err)
    elif args.command == "status":
        try:
            return _status(args, environ, out, err)
        except KeyboardInterrupt:
            return 0
    elif args.command == "reload":
        return _reload(args, environ, out, err)
    elif args.command == "docs":
        out.write(config_reference_markdown())
    elif args.command in ("completion", "man"):
        try:
            out.write(clidocs.completion(_parser(), args.shell) if args.command == "completion"
                      else clidocs.manpage(_parser()))
        except clidocs.MissingExtra as e:
            print(f"{PROG}: {args.command}: {e}", file=err)
            return 1
    elif args.command == "run":
        from tunmesh.tap import run as run_node

        run_node(args.config, args.logfile)
    elif args.command == "health":
        return _health(args, environ, err)
    return 0
