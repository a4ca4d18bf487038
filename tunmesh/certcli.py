"""``tunmesh cert ca`` and ``tunmesh cert sign``: a private CA and per-node certificates.

The second certificate model next to ``gen-cert`` (one self-signed certificate shared by all nodes):
a CA whose certificate every node trusts (``ca_file_path``) and one certificate per node with its own
names, so a node's key can be replaced alone and the CA can be rolled over with a bundle holding the
old and the new CA (docs/deployment.md, *Rotating certificates*). The work is in
``tunmesh.tls.certs``; this module is the command line: it refuses to overwrite without ``--force`` and
prints each file written and the certificate's SHA-256 fingerprint.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
from pathlib import Path
from typing import Any, TextIO

from cryptography import x509

from tunmesh.tls.certs import (
    CA_DAYS,
    NODE_DAYS,
    CAError,
    Issued,
    fingerprint,
    load_ca,
    make_ca,
    sign_node,
    write_issued,
)

PROG = "tunmesh"


def add_parser(commands: Any) -> None:
    """Add ``cert`` (with ``ca`` and ``sign``) to the ``tunmesh`` sub-command parsers ``commands``."""
    cert = commands.add_parser(
        "cert",
        help="make a private CA and per-node certificates signed by it",
        description="A private CA (`cert ca`) and one certificate per node signed by it (`cert sign`); "
        "nodes trust the CA through control_api.ssl.ca_file_path. For one self-signed certificate shared "
        "by all nodes, use gen-cert instead. Keys are ECDSA P-256, written with mode 0600; existing files "
        "are only replaced with --force.",
    )
    actions = cert.add_subparsers(dest="cert_command", metavar="ACTION", required=True)
    ca = actions.add_parser(
        "ca",
        help="write a new CA key and self-signed CA certificate",
        description="Writes an ECDSA P-256 key (mode 0600) and a self-signed CA certificate (CA:TRUE, "
        "pathlen 0, keyCertSign). Keep the key off the nodes: only the certificate goes into their "
        "ca_file_path.",
    )
    ca.add_argument("--cert", required=True, metavar="PATH", help="CA certificate output file (PEM)")
    ca.add_argument("--key", required=True, metavar="PATH", help="CA private key output file (PEM)")
    ca.add_argument(
        "--name", metavar="CN", help="the CA's common name (default: 'tunmesh CA' and today's date, so an old and "
        "a new CA are told apart in logs)"
    )
    ca.add_argument("--org", metavar="ORG", help="organization name (O=) of the CA")
    ca.add_argument("--days", type=int, default=CA_DAYS, help=f"validity in days (default {CA_DAYS})")
    ca.add_argument("--force", action="store_true", help="replace existing output files")

    sign = actions.add_parser(
        "sign",
        help="write a node key and a certificate signed by the CA",
        description="Writes an ECDSA P-256 key (mode 0600) and a certificate for one node, signed by the "
        "CA: subjectAltNames from --hostname/--ip (what verify_hostname checks against the host of the "
        "node's control_api_advertise_url), extended key usage serverAuth and clientAuth. The validity "
        "ends with the CA's at the latest.",
    )
    sign.add_argument("--ca-cert", required=True, metavar="PATH", help="CA certificate (from `cert ca`)")
    sign.add_argument("--ca-key", required=True, metavar="PATH", help="CA private key (from `cert ca`)")
    sign.add_argument("--cert", required=True, metavar="PATH", help="node certificate output file (PEM)")
    sign.add_argument("--key", required=True, metavar="PATH", help="node private key output file (PEM)")
    sign.add_argument(
        "--hostname", action="append", default=[], metavar="NAME", help="DNS subjectAltName (repeatable)"
    )
    sign.add_argument("--ip", action="append", default=[], metavar="ADDR", help="IP subjectAltName (repeatable)")
    sign.add_argument("--name", metavar="CN", help="common name (default: the first --hostname or --ip)")
    sign.add_argument("--days", type=int, default=NODE_DAYS, help=f"validity in days (default {NODE_DAYS})")
    sign.add_argument("--force", action="store_true", help="replace existing output files")


def run(args: argparse.Namespace, out: TextIO, err: TextIO, now: datetime.datetime | None = None) -> int:
    """Run ``tunmesh cert <action>``; 0 when both files were written, 1 otherwise (one line on ``err``)."""
    now = now or datetime.datetime.now(datetime.UTC)
    action = f"cert {args.cert_command}"
    try:
        if args.cert_command == "ca":
            issued = make_ca(args.name or f"tunmesh CA {now:%Y-%m-%d}", args.org, args.days, now=now)
            kind = "CA certificate"
        else:
            for ip in args.ip:
                ipaddress.ip_address(ip)  # a bad address is named here, not as a cryptography error
            ca = load_ca(Path(args.ca_cert), Path(args.ca_key), now=now)
            issued = sign_node(ca, args.hostname, args.ip, args.name, args.days, now=now)
            kind = "node certificate"
        write_issued(issued, Path(args.cert), Path(args.key), force=args.force)
    except (CAError, ValueError, OSError) as e:
        print(f"{PROG}: {action}: {e}", file=err)
        return 1
    _report(issued, kind, Path(args.cert), Path(args.key), args.days, now, out)
    return 0


def _report(issued: Issued, kind: str, cert: Path, key: Path, days: int, now: datetime.datetime, out: TextIO) -> None:
    c = issued.cert
    print(f"wrote {key}: private key (ECDSA P-256), mode 0600", file=out)
    until = f"{c.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
    if c.not_valid_after_utc < now + datetime.timedelta(days=days) - datetime.timedelta(seconds=1):
        until += " (the CA's end: a certificate cannot outlive its CA)"
    print(f"wrote {cert}: {kind} {c.subject.rfc4514_string()}, valid until {until}", file=out)
    if kind != "CA certificate":
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
        names += [f"IP:{a}" for a in san.get_values_for_type(x509.IPAddress)]
        print(f"  issuer {c.issuer.rfc4514_string()}; subjectAltName {', '.join(names)}", file=out)
    print(f"  SHA-256 fingerprint {fingerprint(c)}", file=out)


__all__ = ["add_parser", "run"]
