"""One channel-bound control request from a blocking program (``tunmesh peers``), over pyOpenSSL.

The standard library's ``ssl`` has no TLS exporter (Python 3.11), so the CLI speaks
``tunmesh-ctl/1`` with pyOpenSSL as the nodes do (:mod:`tunmesh.tls.binding`): handshake offering
only that ALPN id, read and check the server's proof of the session, then one HTTP/1.1 request
(HTTP/1.0 framing, so the answer is never chunked) whose token carries the session's exporter value
in ``cnf``; the signed answer must carry it too.
A relay holding a trusted certificate is refused before the request is written (W5(a)).
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from OpenSSL import SSL

from tunmesh.auth.cluster import ClusterAuthority
from tunmesh.auth.errors import AuthError
from tunmesh.auth.keys import b64url
from tunmesh.tls.binding import CTL_ALPN, CTL_LABEL, CTL_LEN, MAX_PROOF_BYTES
from tunmesh.tls.contexts import CA_FILE_KEY, load_trust_bundle

MAX_HEAD = 16 * 1024
MAX_BODY = 4 * 1024 * 1024
_T = TypeVar("_T")


class QueryError(ValueError):
    """The query could not be made (connection, TLS, protocol); one line for people."""


class ProofRefused(AuthError):
    """The server did not prove the TLS session under a secret this side accepts (a relay, or
    another cluster secret): nothing was sent. ``reason`` is the proof's refusal."""


@dataclass(frozen=True)
class Answer:
    """The server's verified node id (from its proof), the HTTP status, and the checked body."""

    node_id: str
    status: int
    body: bytes


class _Conn:
    """A blocking-with-deadline wrapper over a non-blocking ``SSL.Connection``."""

    def __init__(self, conn: SSL.Connection, sock: socket.socket, deadline: float) -> None:
        self.conn = conn
        self.sock = sock
        self.deadline = deadline

    def _wait(self, write: bool) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise QueryError("timed out")
        r, w, _ = select.select([] if write else [self.sock], [self.sock] if write else [], [], left)
        if not r and not w:
            raise QueryError("timed out")

    def io(self, op: Callable[[], _T]) -> _T:
        while True:
            try:
                return op()
            except SSL.WantReadError:
                self._wait(False)
            except SSL.WantWriteError:
                self._wait(True)

    def read_exactly(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.read(n - len(out))
            if not chunk:
                raise QueryError("the server closed the connection early")
            out += chunk
        return out

    def read(self, n: int) -> bytes:
        try:
            return self.io(lambda: self.conn.recv(n))
        except (SSL.ZeroReturnError, SSL.SysCallError):
            return b""

    def send_all(self, data: bytes) -> None:
        sent = 0
        while sent < len(data):
            rest = data[sent:]
            sent += self.io(lambda: self.conn.send(rest))  # noqa: B023 (called before the next turn)


def _context(trust_path: Path, trust_key: str) -> SSL.Context:
    from tunmesh.tls.contexts import _client_options  # the nodes' client options, TLS >= 1.2

    return _client_options(load_trust_bundle(trust_path, trust_key), (CTL_ALPN,)).getContext()


def _check_name(conn: SSL.Connection, host: str) -> None:
    from service_identity import VerificationError
    from service_identity.pyopenssl import verify_hostname, verify_ip_address

    try:
        try:
            ip_address(host)
        except ValueError:
            verify_hostname(conn, host)
        else:
            verify_ip_address(conn, host)
    except VerificationError as e:
        raise QueryError(f"certificate does not match {host}: {e}") from None


def request(
    url: str,
    method: str,
    path: str,
    body: bytes,
    authority: ClusterAuthority,
    trust_path: Path,
    verify_hostname: bool,
    trust_key: str = CA_FILE_KEY,
    timeout: float = 10.0,
) -> Answer:
    """``method url+path`` with ``body`` (JSON when not empty) as a cluster-token request bound to the
    TLS session; returns the answer, its body verified when it is a 200. Raises :class:`QueryError`
    (connection, TLS, protocol) or ``AuthError`` (the proof or the answer is not the cluster's: a relay,
    another secret)."""
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme != "https" or not host:
        raise QueryError(f"not an https URL: {url!r}")
    port = parts.port or 443
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise QueryError(f"cannot connect: {e}") from None
    sock.setblocking(False)
    conn = SSL.Connection(_context(trust_path, trust_key), sock)
    try:
        try:
            ip_address(host)
        except ValueError:
            conn.set_tlsext_host_name(host.encode("idna"))
        conn.set_alpn_protos([CTL_ALPN])
        conn.set_connect_state()
        c = _Conn(conn, sock, deadline)
        try:
            c.io(conn.do_handshake)
        except SSL.Error as e:
            raise QueryError(f"TLS handshake failed: {e}") from None
        if verify_hostname:
            _check_name(conn, host)
        if conn.get_alpn_proto_negotiated() != CTL_ALPN:
            raise QueryError("the server does not speak tunmesh-ctl/1 (not a tunmesh node of this version)")
        cnf = b64url(conn.export_keying_material(CTL_LABEL, CTL_LEN))
        size = int.from_bytes(c.read_exactly(4), "big")
        if size > MAX_PROOF_BYTES:
            raise ProofRefused("oversized")
        try:
            tokens = c.read_exactly(size).decode("ascii").split(",")
            node_id = authority.verify_channel_proof(tokens, cnf).iss
        except UnicodeDecodeError:
            raise ProofRefused("malformed") from None
        except AuthError as e:
            raise ProofRefused(e.reason) from None
        signed = authority.sign_request(node_id, method, path, body, cnf=cnf)
        framing = f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n" if body else ""
        c.send_all(
            # HTTP/1.0: one request, the answer delimited by its length or the close, never chunked
            f"{method} {path} HTTP/1.0\r\nHost: {parts.netloc}\r\nAuthorization: {signed.header_value}\r\n"
            f"{framing}\r\n".encode("ascii")
            + body
        )
        status, authorization, body = _read_response(c)
    finally:
        sock.close()
    if status == 200:
        authority.verify_response(authorization, node_id, signed, body, cnf=cnf)
    return Answer(node_id, status, body)


def _read_response(c: _Conn) -> tuple[int, str | None, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.read(4096)
        if not chunk:
            raise QueryError("the server closed the connection before answering")
        data += chunk
        if len(data) > MAX_HEAD:
            raise QueryError("the answer's header is too large")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = lines[0].split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/1.") or not fields[1].isdigit():
        raise QueryError("the answer is not HTTP/1.1")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise QueryError("the answer has a malformed header")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    length_values = headers.get("content-length", [])
    if headers.get("transfer-encoding") or len(length_values) > 1:
        raise QueryError("the answer's framing is not supported")
    if length_values:
        if not length_values[0].isdigit() or int(length_values[0]) > MAX_BODY:
            raise QueryError("the answer's length is invalid")
        want = int(length_values[0])
        if len(body) < want:
            body += c.read_exactly(want - len(body))
        body = body[:want]
    else:
        while len(body) <= MAX_BODY:
            chunk = c.read(65536)
            if not chunk:
                break
            body += chunk
        if len(body) > MAX_BODY:
            raise QueryError("the answer is too large")
    auth = headers.get("authorization", [])
    return int(fields[1]), auth[0] if len(auth) == 1 else None, body
