"""The one way the node starts its root helpers (:func:`tunmesh.tun.helpers.spawn_helper`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tunmesh.tun.helpers import HELPER_ENV, spawn_helper

#: stands in for the interpreter: reports what it was given
REPORT = """import json, os, sys
print(json.dumps({"argv": sys.argv[1:], "env": sorted(os.environ), "stdin": sys.stdin.read()}))
"""


class SpawnHelperTests(SynchronousTestCase):
    def interpreter(self) -> str:
        path = Path(self.mktemp())
        path.write_text(f"#!{sys.executable}\n{REPORT}")
        path.chmod(0o755)
        return str(path)

    def report(self, env: dict[str, str] | None = None) -> tuple[list[str], set[str], str]:
        """The helper's arguments, environment variable names and stdin."""
        process = spawn_helper("tunmesh.example", ["--x", "1"], self.interpreter(), env, stdout=subprocess.PIPE)
        out, _ = process.communicate(timeout=30)
        self.assertEqual(process.returncode, 0)
        seen = json.loads(out)
        return list(seen["argv"]), set(seen["env"]), str(seen["stdin"])

    def test_runs_the_module_with_its_arguments_and_no_stdin(self) -> None:
        argv, _, stdin = self.report()
        self.assertEqual(argv, ["-m", "tunmesh.example", "--x", "1"])
        self.assertEqual(stdin, "")

    def test_the_helper_inherits_only_what_finds_the_interpreter(self) -> None:
        self.patch(os, "environ", dict(os.environ, TUNMESH_CLUSTER_SECRET="s3cret", PYTHONPATH="/x"))
        _, env, _ = self.report()
        self.assertIn("PYTHONPATH", env)
        self.assertNotIn("TUNMESH_CLUSTER_SECRET", env)
        self.assertLessEqual(env - {"LC_CTYPE"}, HELPER_ENV)  # Python's locale coercion may add LC_CTYPE

    def test_an_explicit_environment_is_used_as_given(self) -> None:
        _, env, _ = self.report({"PATH": "/usr/bin", "OTHER": "1"})
        self.assertEqual(env - {"LC_CTYPE"}, {"PATH", "OTHER"})
