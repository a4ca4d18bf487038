"""Every docstring in the package is reStructuredText in the one dialect docs/internals.md describes.

docutils parses each docstring (module, class, function) with warnings as failures, so malformed reST
(an unclosed ``literal``, a bad field list, a broken indent) fails the suite. On top of what docutils
accepts, the dialect refuses what another dialect would read differently: single backticks (a literal is
double backticks, a Python name a role such as :class:), epytext markup (``C{x}``, ``L{x}``,
``@param``) and Google sections (``Args:``).
"""

from __future__ import annotations

import ast
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

REPO = Path(__file__).resolve().parents[2]
#: The trees whose docstrings are checked.
CHECKED = (REPO / "tunmesh", REPO / "twisted" / "plugins")
#: Files not converted yet (parallel work rewrites them); each entry is a follow-up, the list only shrinks.
NOT_YET: frozenset[str] = frozenset()

#: The Python-domain roles of the dialect (Sphinx's names); the test gives them a plain rendering.
PYTHON_ROLES = ("class", "func", "meth", "attr", "mod", "data", "obj", "exc", "const")

EPYTEXT = re.compile(r"\b[CLIBUM]\{|^\s*@(param|type|return|rtype|raise|raises|ivar|cvar|see|note)\b", re.M)
GOOGLE = re.compile(r"^\s*(Args|Arguments|Returns|Raises|Yields|Attributes|Parameters|Example|Examples):\s*$", re.M)


def docstrings(root: Path) -> Iterator[tuple[str, int, str]]:
    """Yield ``(path, line, docstring)`` for every module, class and function docstring below ``root``."""
    for path in sorted(root.rglob("*.py")):
        rel = str(path.relative_to(REPO))
        if rel in NOT_YET:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                text = ast.get_docstring(node, clean=True)
                if text:
                    line = node.body[0].lineno if node.body else 1
                    yield rel, line, text


class _Checker:
    """One docutils parser and settings for all docstrings (building them per docstring is the slow part)."""

    def __init__(self) -> None:
        from docutils import nodes, utils
        from docutils.frontend import get_default_settings
        from docutils.parsers.rst import Parser, roles

        def python_role(
            name: str, rawtext: str, text: str, lineno: int, inliner: object, options: object = None,
            content: object = (),
        ) -> tuple[list[Any], list[Any]]:
            return [nodes.literal(rawtext, utils.unescape(text))], []

        for role in PYTHON_ROLES:
            roles.register_local_role(role, python_role)
        self._nodes = nodes
        self._utils = utils
        self._parser = Parser()
        self._settings = get_default_settings(Parser)
        self._settings.report_level = 2  # warnings and worse are reported ...
        self._settings.halt_level = 5  # ... and collected, never raised

    def problems(self, text: str) -> list[str]:
        """What is wrong with ``text`` as a docstring of the dialect (empty: nothing)."""
        stream = io.StringIO()
        self._settings.warning_stream = stream
        document = self._utils.new_document("<docstring>", self._settings)
        self._parser.parse(text, document)
        found = [
            f"line {msg.get('line', '?')}: {msg.astext()}"
            for msg in document.findall(self._nodes.system_message)
            if msg["level"] >= 2
        ]
        for ref in document.findall(self._nodes.title_reference):
            found.append(f"single backticks around {ref.astext()!r}: ``literal`` or a role such as :class:")
        for match in EPYTEXT.finditer(text):
            found.append(f"epytext {match.group(0).strip()!r}")
        for match in GOOGLE.finditer(text):
            found.append(f"Google section {match.group(0).strip()!r}: use :param x: / :returns: / :raises E:")
        return found


class DocstringDialectTests(SynchronousTestCase):
    def setUp(self) -> None:
        try:
            self.checker = _Checker()
        except ImportError as e:  # the dev extras install docutils
            self.fail(f"docutils is needed for the docstring check (pip install -e '.[dev]'): {e}")

    def test_every_docstring_is_the_dialect(self) -> None:
        """Each docstring parses as reST without warnings and uses no other dialect's markup."""
        failures: list[str] = []
        count = 0
        for root in CHECKED:
            for path, line, text in docstrings(root):
                count += 1
                failures.extend(f"{path}:{line}: {problem}" for problem in self.checker.problems(text))
        self.assertGreater(count, 500)  # the walk found the package
        self.assertEqual(failures, [], "\n" + "\n".join(failures))

    def test_the_checker_refuses_each_foreign_form(self) -> None:
        """The check can fail: each rule of the dialect refuses an example that breaks it."""
        good = "Summary with a ``literal`` and :class:`Name`.\n\n:param x: the thing.\n:returns: ``x``.\n"
        self.assertEqual(self.checker.problems(good), [])
        for bad in [
            "A `single backtick` span.",
            "An unclosed ``literal.",
            "Epytext C{literal}.",
            "Epytext L{Name}.",
            "Summary.\n\n@param x: the thing.",
            "Summary.\n\nArgs:\n    x: the thing.",
            "Summary.\n\n:param x: the thing\n  badly indented.\n more.",
        ]:
            self.assertNotEqual(self.checker.problems(bad), [], bad)

    def test_not_yet_names_existing_files(self) -> None:
        """The allowlist only names files that exist (a moved or finished file leaves it)."""
        for rel in NOT_YET:
            self.assertTrue((REPO / rel).is_file(), rel)
