"""The command's end of the admin socket: one request, one answer (:mod:`tunmesh.admin.protocol`).

Plain blocking sockets: the command does nothing else meanwhile. Run as root where root has no
``CAP_DAC_OVERRIDE`` (a Kubernetes container with ``capabilities: drop: [ALL]``), root cannot open the
0600 socket of ``process.uid``; the command then switches to the socket's owner first (it needs nothing
else as root), which only works with ``CAP_SETUID``/``CAP_SETGID``, as the node's own container has.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

DEFAULT_SOCKET = "/run/tunmesh/admin.sock"
SOCKET_ENV = "TUNMESH_ADMIN_SOCKET"
MAX_ANSWER = 16 * 1024 * 1024


class AdminError(Exception):
    """The node could not be asked, or refused; ``str()`` is one line for the operator."""


def socket_path(option: str | None, env: Mapping[str, str], config_path: Path | None) -> str:
    """``--socket``, else ``$TUNMESH_ADMIN_SOCKET``, else the config's ``process.admin_socket`` (read
    without the other checks: the command needs no secret), else the default."""
    if option:
        return option
    if env.get(SOCKET_ENV):
        return env[SOCKET_ENV]
    if config_path is not None:
        try:
            data = yaml.safe_load(config_path.read_text())
            value = data["tun_mesh"]["process"]["admin_socket"]
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            value = None
        if isinstance(value, str):
            if not value:
                raise AdminError(f"{config_path}: process.admin_socket is empty: this node has no admin socket")
            return value
    return DEFAULT_SOCKET


def _become_owner(path: str) -> bool:
    """As root without the right to open the socket: switch to its owner. False when that is not possible."""
    if os.geteuid() != 0:
        return False
    try:
        st = os.stat(path)
        if st.st_uid == 0:
            return False
        os.setgroups([])
        os.setgid(st.st_gid)
        os.setuid(st.st_uid)
    except OSError:
        return False
    return True


def _connect(path: str, timeout: float) -> socket.socket:
    for attempt in (1, 2):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            return sock
        except PermissionError:
            sock.close()
            if attempt == 1 and _become_owner(path):
                continue
            raise AdminError(
                f"permission denied on {path}: run as the node's process.uid or as root"
            ) from None
        except FileNotFoundError:
            sock.close()
            raise AdminError(
                f"no admin socket at {path}: is the node running? (process.admin_socket, or --socket PATH)"
            ) from None
        except ConnectionRefusedError:
            sock.close()
            raise AdminError(f"nothing listens on {path} (left behind by a node that stopped?)") from None
        except OSError as e:
            sock.close()
            raise AdminError(f"cannot connect to {path}: {e.strerror or e}") from None
    raise AdminError(f"cannot connect to {path}")  # pragma: no cover - the loop returns or raises


def request(path: str, command: str, timeout: float = 10.0) -> Any:
    """Send ``command`` to the node at ``path`` and return its result; raises :class:`AdminError`."""
    sock = _connect(path, timeout)
    try:
        sock.sendall(json.dumps({"command": command}).encode("utf-8") + b"\n")
        chunks = []
        size = 0
        while True:
            data = sock.recv(65536)
            if not data:
                break
            size += len(data)
            if size > MAX_ANSWER:
                raise AdminError(f"the answer from {path} is larger than {MAX_ANSWER} bytes")
            chunks.append(data)
    except TimeoutError:
        raise AdminError(f"no answer from {path} within {timeout}s") from None
    except OSError as e:
        raise AdminError(f"talking to {path} failed: {e.strerror or e}") from None
    finally:
        sock.close()
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        raise AdminError(f"the answer from {path} is not JSON") from None
    if not isinstance(answer, dict) or not answer.get("ok"):
        error = answer.get("error") if isinstance(answer, dict) else None
        raise AdminError(f"the node refused: {error or 'no reason given'}")
    return answer.get("result")
