"""Human node names (``clustering.node_name``): what a name may be, and where the default comes from.

A name is for people (logs, ``tunmesh status``, the ``peer_info`` metric); the node id stays the identity,
and two nodes may share a name. Names travel in registrations, so they are restricted to characters that are
safe in a log line, a terminal and a metric label: what a Kubernetes pod name or a hostname uses.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Mapping

#: 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit (a DNS label, a pod name).
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}"
NAME_HELP = "1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
MAX_NAME = 63
POD_NAME_ENV = "POD_NAME"
_NAME = re.compile(NAME_PATTERN)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def valid_name(value: object) -> bool:
    """Whether ``value`` is a usable node name."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def sanitize(text: str) -> str | None:
    """``text`` made into a name (unsafe characters become ``-``, cut to 63), or None when nothing is left."""
    cleaned = _UNSAFE.sub("-", text.strip()).lstrip("._-")[:MAX_NAME]
    return cleaned if valid_name(cleaned) else None


def resolve_node_name(
    configured: str | None,
    env: Mapping[str, str],
    hostname: Callable[[], str] = socket.gethostname,
) -> str:
    """The node's name: ``clustering.node_name``, else ``$POD_NAME``, else the hostname (sanitized);
    ``"unnamed"`` when none of them gives a usable name."""
    if configured:
        return configured
    for candidate in (env.get(POD_NAME_ENV, ""), _safe_hostname(hostname)):
        name = sanitize(candidate) if candidate else None
        if name:
            return name
    return "unnamed"


def _safe_hostname(hostname: Callable[[], str]) -> str:
    try:
        return hostname()
    except OSError:
        return ""


def label(name: str | None, node_id: str) -> str:
    """How a peer is named in log lines and tables: ``name (id)``, or the id alone when it has no name."""
    return f"{name} ({node_id})" if name else node_id
