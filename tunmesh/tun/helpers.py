"""How the node starts its root helper processes (:mod:`tunmesh.netconf`, :mod:`tunmesh.addrhelper`): one way.

A helper is ``python -m <module>`` run with the node's own interpreter, as root before the privilege drop,
with an environment that holds only what finds the interpreter and the package (never the cluster secret or
other settings). Helper modules import the standard library and pyroute2 only: they start while the node
starts, often next to many others on a busy host.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

#: the variables a helper inherits from the node
HELPER_ENV = frozenset({"PATH", "PYTHONPATH", "PYTHONHOME", "LANG", "LC_ALL"})


def spawn_helper(
    module: str,
    args: Sequence[str],
    python: str = sys.executable,
    env: Mapping[str, str] | None = None,
    **popen_kwargs: Any,
) -> subprocess.Popen[bytes]:
    """Start ``python -m module args...`` (stdin ``/dev/null``). ``env`` defaults to the node's
    :data:`HELPER_ENV` variables; ``popen_kwargs`` go to :class:`subprocess.Popen` (``pass_fds``,
    ``stdout``...). Raises ``OSError`` when the interpreter cannot be started."""
    if env is None:
        env = {k: v for k, v in os.environ.items() if k in HELPER_ENV}
    return subprocess.Popen(
        [python, "-m", module, *args], env=dict(env), stdin=subprocess.DEVNULL, **popen_kwargs
    )
