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

    def report(self, **kw: object) -> dict[str, object]:
        process = spawn_helper("tunmesh.example", ["--x", "1"], self.interpreter(), stdout=subprocess.PIPE, **kw)
        out, _ = process.communicate(timeout=30)
        self.assertEqual(process.returncode, 0)
        return dict(json.loads(out))

    def test_runs_the_module_with_its_arguments_and_no_stdin(self) -> None:
        seen = self.report()
        self.assertEqual(seen["argv"], ["-m", "tunmesh.example", "--x", "1"])
        self.assertEqual(seen["stdin"], "")

    def test_the_helper_inherits_only_what_finds_the_interpreter(self) -> None:
        self.patch(os, "environ", dict(os.environ, TUNMESH_CLUSTER_SECRET="s3cret", PYTHONPATH="/x"))
        env = set(self.report()["env"])  # type: ignore[arg-type]
        self.assertIn("PYTHONPATH", env)
        self.assertNotIn("TUNMESH_CLUSTER_SECRET", env)
        self.assertLessEqual(env - {"LC_CTYPE"}, HELPER_ENV)  # Python's locale coercion may add LC_CTYPE

    def test_an_explicit_environment_is_used_as_given(self) -> None:
        env = set(self.report(env={"PATH": "/usr/bin", "OTHER": "1"})["env"])  # type: ignore[arg-type]
        self.assertEqual(env - {"LC_CTYPE"}, {"PATH", "OTHER"})
