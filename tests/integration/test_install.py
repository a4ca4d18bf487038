"""The project installed for real, as an operator does: ``pip install .`` and ``pip install -e .`` into a
fresh virtualenv, then ``twistd tunmesh`` and ``tunmesh run`` from that environment only.

Each test copies the source tree (so the build never writes into the checkout), makes a venv whose
dependencies come from the running interpreter's site-packages (a plain path entry: its own ``.pth``
files, such as another editable install of tunmesh, are not processed) and Debian's setuptools/wheel
(``--system-site-packages``), installs with ``--no-deps --no-build-isolation`` (offline, seconds), and
runs the commands with neither ``PYTHONPATH`` nor the checkout as the working directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.netns import REPO_ROOT

SOURCES = ("tunmesh", "twisted", "setup.py", "pyproject.toml", "README.md", "docs/man", "contrib/completion")
#: What the package installs besides Python code (setup.py data_files), under the environment's prefix.
DATA_FILES = {
    "share/man/man1/tunmesh.1": "docs/man/tunmesh.1",
    "share/bash-completion/completions/tunmesh": "contrib/completion/bash/tunmesh",
    "share/zsh/site-functions/_tunmesh": "contrib/completion/zsh/_tunmesh",
}
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache", "*.egg-info", "build")


class InstalledCommandTests(TestCase):
    timeout = 300

    def setUp(self) -> None:
        self.tmp = Path(self.mktemp()).resolve()
        self.src = self.tmp / "src"
        self.src.mkdir(parents=True)
        for name in SOURCES:
            path = REPO_ROOT / name
            if path.is_dir():
                shutil.copytree(path, self.src / name, ignore=IGNORE)
            else:
                shutil.copy2(path, self.src / name)
        self.venv = self.tmp / "venv"
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", "--without-pip", "--system-site-packages", str(self.venv)], check=True)
        self.python = self.venv / "bin" / "python"
        purelib = self.run_py("-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
        Path(purelib, "_tunmesh_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        probe = self.run_py("-c", "import pip, setuptools, twisted, klein, treq, yaml")
        self.assertEqual(probe.returncode, 0, f"the test venv cannot see the dependencies: {probe.stderr}")
        wheel = self.run_py(
            "-c", "import importlib.util as u, sys; sys.exit(0 if u.find_spec('wheel') or "
            "u.find_spec('setuptools.command.bdist_wheel') else 1)"
        )
        self.assertEqual(wheel.returncode, 0, "no offline wheel builder: install python3-wheel (or pip install wheel)")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
        # setuptools' distutils shim comes from a .pth file the dependency path entry does not run
        env["SETUPTOOLS_USE_DISTUTILS"] = "stdlib"
        return env

    def run_py(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.python), *args], cwd=self.tmp, env=self.env(), capture_output=True, text=True, timeout=timeout
        )

    def run_cmd(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), cwd=self.tmp, env=self.env(), capture_output=True, text=True, timeout=120)

    def install(self, *mode: str) -> None:
        r = self.run_py(
            "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--ignore-installed",
            "--disable-pip-version-check", *mode, str(self.src), timeout=240,
        )
        self.assertEqual(r.returncode, 0, f"pip install {' '.join(mode)} failed:\n{r.stdout}\n{r.stderr}")

    def twistd(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run_py("-c", "from twisted.scripts.twistd import run; run()", *args)

    def assert_commands_work(self, plugin_under: Path, data_files: bool = True) -> None:
        listing = self.twistd("--help")
        self.assertEqual(listing.returncode, 0, listing.stderr)
        self.assertRegex(listing.stdout, r"(?m)^\s+tunmesh\s+Layer 3 mesh VPN", listing.stdout)
        options = self.twistd("tunmesh", "--help")
        self.assertIn("--config=", options.stdout, options.stderr)
        where = self.run_py("-c", "import twisted.plugins.tunmesh_plugin as p, tunmesh; print(p.__file__); "
                                  "print(tunmesh.__file__)")
        self.assertEqual(where.returncode, 0, where.stderr)
        for line in where.stdout.split():
            self.assertTrue(Path(line).resolve().is_relative_to(plugin_under), (line, plugin_under))

        run_help = self.run_cmd(str(self.venv / "bin" / "tunmesh"), "run", "--help")
        self.assertEqual(run_help.returncode, 0, run_help.stderr)
        self.assertIn("--config FILE", run_help.stdout)
        # `tunmesh run` reaches the node's config loading (and refuses a missing file in one line)
        missing = self.run_cmd(str(self.venv / "bin" / "tunmesh"), "run", "--config", str(self.tmp / "nope.yaml"))
        self.assertEqual(missing.returncode, 1, missing.stdout + missing.stderr)
        self.assertIn("tunmesh: config error:", missing.stderr)
        self.assertNotIn("Traceback", missing.stderr)

        if not data_files:
            return
        # the man page and the completion scripts, where man and bash-completion look under the prefix
        for installed, source in DATA_FILES.items():
            path = self.venv / installed
            self.assertTrue(path.is_file(), f"{installed} not installed")
            self.assertEqual(path.read_bytes(), (REPO_ROOT / source).read_bytes(), installed)
        man = shutil.which("man")
        if man is not None:
            page = self.run_cmd(man, "-M", str(self.venv / "share" / "man"), "tunmesh")
            self.assertEqual(page.returncode, 0, page.stderr)
            self.assertIn("tunmesh cert sign", page.stdout.replace("\u2010", "-"))

    def test_pip_install(self) -> None:
        self.install()
        self.assert_commands_work(self.venv)

    def test_pip_install_editable(self) -> None:
        self.install("-e")
        # setuptools' editable install leaves data_files out: they stay in the checkout
        self.assert_commands_work(self.src, data_files=False)
