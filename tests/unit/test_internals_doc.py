"""docs/internals.md states contracts; this test keeps each one true.

The page names the package layout and, in code spans, the callables other packages rely on:

- ``tunmesh.x.Name(a, b=1, *, c=None) -> T``: ``tunmesh.x.Name`` exists; when a parameter list is given it
  is the callable's (names, order, keyword-only marker; ``...`` at the end allows more parameters) and every
  default written as a Python literal is the real default. A class's parameters are its constructor's.
- ``.member(...)`` after such a span in the same paragraph: a member of that class, checked the same way.
- the layout block: every ``tunmesh/`` module and package exists, and every one that exists is named.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "internals.md"

SPAN = re.compile(r"`([^`\n]+)`")
QUALIFIED = re.compile(r"^(tunmesh(?:\.\w+)+)(?:\((.*)\))?(?:\s*->.*)?$")
MEMBER = re.compile(r"^\.(\w+)(?:\((.*)\))?(?:\s*->.*)?$")


def resolve(dotted: str) -> Any:
    """The object ``dotted`` names: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def split_params(text: str) -> list[str]:
    """Split a written parameter list at its top-level commas."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def check_signature(obj: Any, written: str) -> list[str]:
    """How ``obj``'s signature differs from the written parameter list (empty: it matches)."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    sig = inspect.signature(target)
    actual = [p for p in sig.parameters.values() if p.name not in ("self", "cls")]
    params = split_params(written)
    more = bool(params) and params[-1] == "..."
    if more:
        params = params[:-1]
    problems = []
    names: list[str] = []
    keyword_only = False
    defaults: dict[str, str] = {}
    for item in params:
        if item == "*":
            keyword_only = True
            continue
        name, _, default = item.partition("=")
        name = name.split(":")[0].strip()
        names.append(name)
        if default:
            defaults[name] = default.strip()
        real = sig.parameters.get(name.lstrip("*"))
        if real is not None and keyword_only and real.kind is not inspect.Parameter.KEYWORD_ONLY:
            problems.append(f"{name} is not keyword-only")
    shown = [("*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else "") + p.name
             for p in actual]
    expected = shown[: len(names)] if more else shown
    if names != expected:
        problems.append(f"parameters {names} (written) != {shown} (code)")
    for name, default in defaults.items():
        if default == "...":
            continue  # "has a default", not which
        try:
            value = ast.literal_eval(default)
        except (ValueError, SyntaxError):
            continue  # a description ("4 MiB", "time.monotonic"), not a literal
        real = sig.parameters.get(name)
        if real is not None and real.default != value:
            problems.append(f"{name} defaults to {real.default!r}, not {default}")
    return problems


def paragraphs(text: str) -> Iterator[str]:
    """Bullets and paragraphs of the page (a contract's members stay in its paragraph)."""
    chunk: list[str] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith(("- ", "#", "```")):
            if chunk:
                yield " ".join(chunk)
            chunk = [] if not line.startswith("- ") else [line]
        else:
            chunk.append(line.strip())
    if chunk:
        yield " ".join(chunk)


def has_instance_attribute(cls: type, name: str) -> bool:
    """Whether instances of ``cls`` get ``name``: annotated, an attrs field, or set in the class's code."""
    for klass in cls.__mro__:
        if name in getattr(klass, "__annotations__", {}):
            return True
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if re.search(rf"\bself\.{name}\s*(:[^=\n]+)?=", source):
            return True
    return name in {a.name for a in getattr(cls, "__attrs_attrs__", ())}


def contract_problems(text: str) -> tuple[int, list[str]]:
    """Check every contract span of ``text``; returns how many were checked and what is wrong."""
    checked, problems = 0, []
    for para in paragraphs(text):
        owner: Any = None
        for span in SPAN.findall(para):
            span = span.strip()
            if m := QUALIFIED.match(span):
                dotted, written = m.group(1), m.group(2)
                try:
                    owner = obj = resolve(dotted)
                except (ImportError, AttributeError) as e:
                    problems.append(f"`{span}`: {dotted} does not exist ({e})")
                    owner = None
                    continue
            elif owner is not None and inspect.isclass(owner) and (m := MEMBER.match(span)):
                name, written = m.group(1), m.group(2)
                obj = inspect.getattr_static(owner, name, None)
                if obj is None and not has_instance_attribute(owner, name):
                    problems.append(f"`{span}`: {owner.__qualname__} has no {name}")
                    continue
                obj = getattr(owner, name, obj)
            else:
                continue
            checked += 1
            if written is not None and callable(obj):
                problems.extend(f"`{span}`: {p}" for p in check_signature(obj, written))
    return checked, problems


def layout_names(text: str) -> set[str]:
    """The modules and packages the layout block names (``name.py``, ``name/``)."""
    block = text.split("```", 2)[1]
    return {m.group(1) for m in re.finditer(r"(?m)^  ([a-z_]+(?:\.py|/))", block)}


class InternalsDocTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.text = DOC.read_text(encoding="utf-8")

    def test_every_contract_holds(self) -> None:
        """Every qualified name on the page exists, with the written parameters and defaults."""
        checked, problems = contract_problems(self.text)
        self.assertGreater(checked, 100)
        self.assertEqual(problems, [], "\n" + "\n".join(problems))

    def test_layout_names_every_module(self) -> None:
        """The layout block names each module and package of ``tunmesh/``, and only those."""
        named = {n for n in layout_names(self.text) if not n.startswith("tunmesh_plugin")}
        present = {p.name + "/" for p in (REPO / "tunmesh").iterdir() if (p / "__init__.py").exists()}
        present |= {p.name for p in (REPO / "tunmesh").glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
        self.assertEqual(sorted(named - present), [], "named but missing")
        self.assertEqual(sorted(present - named), [], "present but not named")

    def test_the_check_can_fail(self) -> None:
        """Drift is caught: a wrong name, a missing parameter, a wrong default, a missing member."""
        for bad in [
            "`tunmesh.service.makeService(cfg)`",
            "`tunmesh.mesh.timers.KeyedTimers(clock, extra)`",
            "`tunmesh.mesh.backoff.Backoff(initial, maximum, monotonic, rng=5)`",
            "`tunmesh.health.HealthRegistry(...)`: `.no_such_method()`",
            "`tunmesh.no_such_module.Thing`",
        ]:
            checked, problems = contract_problems(bad)
            self.assertNotEqual(problems, [], bad)
        self.assertEqual(contract_problems("`tunmesh.mesh.timers.KeyedTimers(clock)`: `.cancel(key)`"), (2, []))
