"""A Python installation the node's dropped uid cannot read, for the privilege-drop tests.

The setup it reproduces: a pyenv (or any) interpreter under a ``0700`` home, tunmesh and its dependencies
installed into it, the node started as root and dropping to ``process.uid``. After the drop, every file of
the interpreter, the standard library and site-packages is unreadable, so anything imported (or any codec
looked up) for the first time after the drop fails.

:func:`sealed_python` builds such a tree from the running interpreter, under a fresh root-owned ``0700``
directory ``/tmp/tmt-py<pid>-*``: a copy of the base interpreter and its standard library, a venv on top
of it holding a copy of every distribution tunmesh requires (closure of its ``Requires-Dist``), and the
tunmesh package and twistd plugin of this checkout. It is removed on exit, also on failure.
:class:`SealedCluster` starts nodes of a :class:`~tests.integration.cluster.Cluster` with it.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

from tests.integration.cluster import PORT, Cluster
from tests.netns import REPO_ROOT, NodeProcess, Underlay

_STDLIB_SKIP = shutil.ignore_patterns("test", "idlelib", "tkinter", "turtledemo", "ensurepip", "site-packages",
                                      "dist-packages", "lib2to3")


@dataclass(frozen=True)
class SealedPython:
    """The tree: ``root`` (``0700``, root-owned), ``python`` (the venv's interpreter), ``stdlib``,
    ``site_packages``."""

    root: Path
    python: Path
    stdlib: Path
    site_packages: Path


def requirement_closure(name: str, extras: frozenset[str] = frozenset()) -> set[str]:
    """Names of the installed distributions ``name`` needs at run time (itself included; markers and
    extras evaluated, so dev extras are left out)."""
    names: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo: list[tuple[str, frozenset[str]]] = [(name, extras)]
    while todo:
        dist_name, dist_extras = todo.pop()
        key = dist_name.lower().replace("_", "-")
        if (key, dist_extras) in seen:
            continue
        seen.add((key, dist_extras))
        names.add(key)
        envs = [{"extra": ""}, *({"extra": e} for e in dist_extras)]
        for text in md.distribution(dist_name).requires or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, frozenset(req.extras)))
    return names


def _copy_distribution(name: str, site_packages: Path) -> None:
    dist = md.distribution(name)
    for f in dist.files or []:
        src = Path(str(dist.locate_file(f))).resolve()
        if ".." in f.parts or not src.is_file():
            continue
        dest = site_packages / f
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)


def build_sealed_python(root: Path) -> SealedPython:
    """Fill ``root`` (which must exist) with a base interpreter, its stdlib and a venv with tunmesh."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base_exe = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
    base = root / "base"
    (base / "bin").mkdir(parents=True)
    shutil.copy2(base_exe, base / "bin" / version)
    stdlib = base / "lib" / version
    shutil.copytree(sysconfig.get_paths()["stdlib"], stdlib, ignore=_STDLIB_SKIP, symlinks=False)
    platstdlib = Path(sysconfig.get_paths()["platstdlib"])
    if not (stdlib / "lib-dynload").exists() and (platstdlib / "lib-dynload").is_dir():
        shutil.copytree(platstdlib / "lib-dynload", stdlib / "lib-dynload")

    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(
        f"home = {base / 'bin'}\ninclude-system-site-packages = false\n"
        f"version = {'.'.join(map(str, sys.version_info[:3]))}\n"
    )
    python = venv / "bin" / "python"
    python.symlink_to(base / "bin" / version)
    site_packages = venv / "lib" / version / "site-packages"
    site_packages.mkdir(parents=True)
    for dist in sorted(requirement_closure("tunmesh") - {"tunmesh"}):
        _copy_distribution(dist, site_packages)
    # This checkout's tunmesh (not the editable install's path finder) and its twistd plugin.
    shutil.copytree(REPO_ROOT / "tunmesh", site_packages / "tunmesh",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO_ROOT / "twisted" / "plugins" / "tunmesh_plugin.py",
                 site_packages / "twisted" / "plugins" / "tunmesh_plugin.py")
    (site_packages / "tmt_late_imports.py").write_text(LATE_IMPORT_AUDIT)
    (site_packages / "tmt_late_imports.pth").write_text("import tmt_late_imports\n")
    return SealedPython(root=root, python=python, stdlib=stdlib, site_packages=site_packages)


@contextmanager
def sealed_python() -> Iterator[SealedPython]:
    """A sealed tree (see the module docstring), checked to work as root and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix=f"tmt-py{os.getpid()}-", dir="/tmp"))
    try:
        os.chown(root, 0, 0)
        root.chmod(0o700)
        tree = build_sealed_python(root)
        probe = subprocess.run(
            [str(tree.python), "-c", "import sys, tunmesh.service, klein; print(sys.prefix, tunmesh.__file__)"],
            capture_output=True, text=True, timeout=60, cwd="/", env=sealed_env(),
        )
        if probe.returncode != 0 or str(root) not in probe.stdout:
            raise RuntimeError(f"the sealed interpreter does not run from {root}: {probe.stdout}{probe.stderr}")
        _check_audit_hook(tree)
        yield tree
    finally:
        shutil.rmtree(root, ignore_errors=True)


#: The audit hook of the sealed tree, module ``tmt_late_imports`` loaded by ``tmt_late_imports.pth`` (not a
#: ``sitecustomize``: Debian's stdlib has one, which would shadow it). With ``$TMT_LATE_IMPORTS`` set, every
#: module imported while the effective uid is not 0 (after the drop) is appended to
#: ``$TMT_LATE_IMPORTS.<pid>``, a file opened at start-up (as root), whether or not the import succeeds.
#: Names only: formatting a stack would import.
LATE_IMPORT_AUDIT = """\
import os, sys
_path = os.environ.get("TMT_LATE_IMPORTS")
if _path:
    _fd = os.open(f"{_path}.{os.getpid()}", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _late_import(event, args, _fd=_fd, _geteuid=os.geteuid, _write=os.write, _modules=sys.modules):
        if event == "import" and _geteuid() != 0 and args[0] not in _modules:
            _write(_fd, args[0].encode() + b"\\n")

    sys.addaudithook(_late_import)
"""


def late_imports(prefix: Path) -> dict[str, list[str]]:
    """What the audit hook recorded under ``prefix`` (``{file name: [module, ...]}``, empty files left out)."""
    found = {}
    for path in sorted(prefix.parent.glob(prefix.name + ".*")):
        names = path.read_text().split()
        if names:
            found[path.name] = names
    return found


def _check_audit_hook(tree: SealedPython) -> None:
    """The hook records an import after a drop to uid 65534 (a test relying on it must be able to fail)."""
    prefix = tree.root / "audit-check"
    code = "import os; os.setgid(65534); os.setuid(65534)\ntry:\n    import colorsys\nexcept ImportError:\n    pass\n"
    subprocess.run([str(tree.python), "-c", code], capture_output=True, timeout=60, cwd="/",
                   env={**sealed_env(), "TMT_LATE_IMPORTS": str(prefix)}, check=True)
    recorded = late_imports(prefix)
    if list(recorded.values()) != [["colorsys"]]:
        raise RuntimeError(f"the late-import audit hook does not work in {tree.root}: {recorded}")


def sealed_env() -> dict[str, str]:
    """The environment for the sealed interpreter: no ``PYTHON*`` variables leaking the test's own paths."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


class SealedCluster(Cluster):
    """A :class:`Cluster` whose nodes run ``twistd tunmesh`` on a :class:`SealedPython` (cwd: the node's
    own directory, so nothing is imported from this checkout)."""

    def __init__(self, tree: SealedPython, underlay: Underlay, workdir: Path, make_config: Callable[[int], str],
                 env: dict[str, str] | None = None) -> None:
        self.tree = tree
        self.env = {**sealed_env(), **(env or {})}
        super().__init__(underlay, workdir, make_config)

    def start(self, i: int) -> NodeProcess:  # type: ignore[override]  # always the sealed interpreter
        d = self.workdir / f"node{i}"
        log_path = d / "node.log"
        argv = [str(self.tree.python), "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", f"--logfile={log_path}", "tunmesh", "--config", str(d / "config.yaml")]
        with open(log_path.with_suffix(".stdout"), "wb") as out:
            proc = self.ns(i).popen(argv, cwd=str(d), env=self.env, stdout=out, stderr=subprocess.STDOUT)
        node = NodeProcess(self.ns(i), d / "config.yaml", log_path, f"https://198.18.0.{i}:{PORT}", proc)
        self.nodes[i] = node
        return node


__all__ = ["LATE_IMPORT_AUDIT", "SealedCluster", "late_imports", "SealedPython", "build_sealed_python", "requirement_closure", "sealed_env",
           "sealed_python"]
