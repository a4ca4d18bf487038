"""Shell completion and the man page (tunmesh.clidocs): generated from the parser, committed, current,
and working in the real bash and man."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tunmesh import clidocs
from tunmesh.cli import _parser, main

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "python -m tunmesh.clidocs"


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, env={})
    return code, out.getvalue(), err.getvalue()


def subcommands() -> list[str]:
    return [p.prog.split(" ", 1)[1] for p in clidocs._subparsers(_parser()) if " " in p.prog]


class GeneratedFilesTests(SynchronousTestCase):
    def test_committed_files_are_what_the_parser_generates(self) -> None:
        for relative, make in clidocs.GENERATED.items():
            committed = (ROOT / relative).read_text(encoding="utf-8")
            self.assertEqual(committed, make(_parser()), f"{relative} is out of date: run {REGENERATE}")

    def test_generation_does_not_depend_on_the_terminal(self) -> None:
        import os

        old = os.environ.get("COLUMNS")
        self.addCleanup(lambda: os.environ.__setitem__("COLUMNS", old) if old else os.environ.pop("COLUMNS", None))
        os.environ["COLUMNS"] = "40"
        narrow = clidocs.manpage(_parser())
        os.environ["COLUMNS"] = "200"
        self.assertEqual(narrow, clidocs.manpage(_parser()))
        self.assertEqual(os.environ["COLUMNS"], "200")  # put back

    def test_commands_print_the_same(self) -> None:
        self.assertEqual(cli("man"), (0, (ROOT / "docs/man/tunmesh.1").read_text(), ""))
        self.assertEqual(cli("completion", "bash"), (0, (ROOT / "contrib/completion/bash/tunmesh").read_text(), ""))
        self.assertEqual(cli("completion", "zsh"), (0, (ROOT / "contrib/completion/zsh/_tunmesh").read_text(), ""))
        self.assertEqual(cli("completion", "fish")[0], 2)

    def test_without_the_extra_the_commands_say_what_to_install(self) -> None:
        for module, command in (("shtab", ("completion", "bash")), ("argparse_manpage.manpage", ("man",))):
            saved = sys.modules.get(module)
            sys.modules[module] = None  # type: ignore[assignment]  # makes ``import`` raise ImportError
            try:
                code, out, err = cli(*command)
            finally:
                if saved is None:
                    del sys.modules[module]
                else:
                    sys.modules[module] = saved
            self.assertEqual((code, out), (1, ""), command)
            self.assertIn("pip install 'tunmesh[docs]'", err)
            self.assertEqual(err.count("\n"), 1)

    def test_write_generated_writes_every_file(self) -> None:
        root = Path(self.mktemp())
        written = clidocs.write_generated(root, _parser)
        self.assertEqual(sorted(str(p.relative_to(root)) for p in written), sorted(clidocs.GENERATED))
        for path in written:
            self.assertEqual(path.read_text(), (ROOT / path.relative_to(root)).read_text())


class BashCompletionTests(SynchronousTestCase):
    """The committed script in a real bash: what TAB offers after a few command lines."""

    def complete(self, line: str) -> list[str]:
        bash = shutil.which("bash")
        if bash is None:
            raise SkipTest("no bash")
        script = ROOT / "contrib/completion/bash/tunmesh"
        words = line.split(" ")
        program = (
            f"source {script}\n"
            f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
            f"COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}\n"
            f"_shtab_tunmesh tunmesh {words[-1]!r} {words[-2]!r}\n"
            'printf "%s\\n" "${COMPREPLY[@]}"\n'
        )
        r = subprocess.run([bash, "--norc", "-c", program], capture_output=True, text=True, cwd=ROOT, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        return sorted(filter(None, r.stdout.splitlines()))

    def test_subcommands_actions_and_options(self) -> None:
        self.assertEqual(self.complete("tunmesh ce"), ["cert"])
        self.assertIn("check-config", self.complete("tunmesh "))
        self.assertIn("completion", self.complete("tunmesh "))
        self.assertEqual(self.complete("tunmesh cert "), ["ca", "sign"])
        self.assertEqual(self.complete("tunmesh cert sign --ca"), ["--ca-cert", "--ca-key"])
        self.assertEqual(self.complete("tunmesh completion "), ["bash", "zsh"])

    def test_file_arguments_complete_file_names(self) -> None:
        self.assertIn("setup.py", self.complete("tunmesh cert sign --ca-cert se"))
        self.assertIn("setup.py", self.complete("tunmesh run --config se"))


class ManPageTests(SynchronousTestCase):
    def test_renders_without_warnings_and_names_every_command(self) -> None:
        groff = shutil.which("groff")
        if groff is None:
            raise SkipTest("no groff")
        page = ROOT / "docs/man/tunmesh.1"
        r = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-P-c", str(page)], capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}, timeout=30)
        self.assertEqual((r.returncode, r.stderr), (0, ""))
        text = re.sub(".\x08", "", r.stdout)  # overstrike (bold, underline) off
        for command in subcommands():
            self.assertIn(f"tunmesh {command}", text)
        for section in ("SYNOPSIS", "SIGNALS", "ENVIRONMENT", "FILES", "EXIT STATUS"):
            self.assertIn(section, text)
        self.assertIn("--ca-cert PATH", text)
