"""Rewrite docstrings (and ``#:`` comments) of the given files into the reST dialect of docs/internals.md.

Usage, from the repository root: ``PYTHONPATH=. python contrib/dev/rst_docstrings.py tunmesh/x.py ...``,
then read the diff and run ``tests/unit/test_docstrings.py``. What it does:

- epytext: ``C{x}`` becomes a double-backtick literal, ``L{x}`` a Python role, ``I{x}``/``B{x}`` emphasis,
  ``@param x:``/``@return:``/``@raise E:``/``@ivar x:``/``@type x:`` the reST fields;
- single-backtick spans: a role when the text names a class (``:class:``/``:exc:``), a tunmesh function
  (``:func:``), a module (``:mod:``) or a dotted member (``:meth:``/``:attr:``) the module can reach, a
  double-backtick literal otherwise.

The module is imported to resolve names, so run it where the package imports. Structural problems (a list
without a blank line before it, a Markdown table) are left for a person: the test names them.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys
import types
from pathlib import Path
from typing import Any

IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
EPYTEXT_MARKUP = re.compile(r"\b([CLIBUM])\{")
SINGLE = re.compile(r"(?<![`:\w])`([^`\n]+)`(?![`\w])")
FIELDS = [
    (r"^(\s*)@param (\w+):", r"\1:param \2:"),
    (r"^(\s*)@type (\w+):", r"\1:type \2:"),
    (r"^(\s*)@returns?:", r"\1:returns:"),
    (r"^(\s*)@rtype:", r"\1:rtype:"),
    (r"^(\s*)@raises? (\w+):", r"\1:raises \2:"),
    (r"^(\s*)@ivar (\w+):", r"\1:ivar \2:"),
]


def resolve(module: Any, name: str) -> tuple[Any, Any]:
    """``(object, its parent)`` that ``name`` reaches from ``module`` (globals, then an import path)."""
    parts = name.split(".")
    if hasattr(module, parts[0]):
        start, obj = 1, getattr(module, parts[0])
    else:
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            start = i
            break
        else:
            return None, None
    parent = None
    for part in parts[start:]:
        if not hasattr(obj, part):
            return None, None
        parent, obj = obj, getattr(obj, part)
    return obj, parent


def role_for(module: Any, name: str, strict: bool) -> str | None:
    """The role for ``name`` (``None``: a literal). ``strict`` keeps roles to what is surely a name."""
    if not IDENT.match(name):
        return None
    obj, parent = resolve(module, name)
    if obj is None:
        return None
    if isinstance(obj, types.ModuleType):
        return "mod" if not strict or "." in name or obj.__name__.startswith("tunmesh") else None
    if isinstance(obj, type):
        return "exc" if issubclass(obj, BaseException) else "class"
    if isinstance(parent, type):
        return "meth" if inspect.isfunction(obj) or inspect.ismethod(obj) else "attr"
    owner = getattr(obj, "__module__", "") or ""
    if callable(obj) and (not strict or owner.startswith("tunmesh") or "." in name):
        return "func"
    return None


def closing_brace(text: str, start: int) -> int:
    """The index after the brace matching the one at ``text[start]``."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i + 1
    raise ValueError(f"unbalanced braces: {text[start:start + 40]!r}")


def from_epytext(text: str, module: Any) -> str:
    """Epytext markup and fields to reST."""
    out, i = [], 0
    while m := EPYTEXT_MARKUP.search(text, i):
        out.append(text[i:m.start()])
        end = closing_brace(text, m.end() - 1)
        inner, kind = text[m.end():end - 1], m.group(1)
        if kind in "CM":
            out.append(f"``{inner}``")
        elif kind == "L":
            out.append(f":{role_for(module, inner, strict=False) or 'obj'}:`{inner}`")
        elif kind == "I":
            out.append(f"*{inner}*")
        elif kind == "B":
            out.append(f"**{inner}**")
        else:
            out.append(inner)
        i = end
    out.append(text[i:])
    text = "".join(out)
    for pattern, replacement in FIELDS:
        text = re.sub(pattern, replacement, text, flags=re.M)
    return text


def from_single_backticks(text: str, module: Any) -> str:
    """Single-backtick spans to a role or a double-backtick literal."""

    def replace(m: re.Match[str]) -> str:
        inner = m.group(1)
        role = role_for(module, inner, strict=True)
        if role == "mod":
            full = resolve(module, inner)[0].__name__
            return f":mod:`{inner}`" if full == inner else f":mod:`{inner} <{full}>`"
        return f":{role}:`{inner}`" if role else f"``{inner}``"

    return SINGLE.sub(replace, text)


def convert(path: str) -> bool:
    """Rewrite ``path`` in place; whether anything changed."""
    source = Path(path).read_text(encoding="utf-8")
    name = path[:-3].replace("/", ".").removesuffix(".__init__")
    module = types.ModuleType(name) if name.endswith("__main__") else importlib.import_module(name)
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))

    def offset(lineno: int, col: int) -> int:
        return offsets[lineno - 1] + len(lines[lineno - 1].encode()[:col].decode())

    spans = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                c = first.value
                spans.append((offset(c.lineno, c.col_offset), offset(c.end_lineno or c.lineno, c.end_col_offset or 0)))
    new = source
    for a, b in sorted(spans, reverse=True):
        new = new[:a] + from_single_backticks(from_epytext(new[a:b], module), module) + new[b:]
    new = re.sub(r"(?m)^([ \t]*#:.*)$", lambda m: from_single_backticks(from_epytext(m.group(1), module), module), new)
    if new == source:
        return False
    ast.parse(new)
    Path(path).write_text(new, encoding="utf-8")
    return True


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        if convert(arg):
            print("converted", arg)
