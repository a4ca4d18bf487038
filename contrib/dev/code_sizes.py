#!/usr/bin/env python3
"""Largest classes and functions of a source tree, and its ``Any`` count (issue 11's before/after table).

Usage: ``python contrib/dev/code_sizes.py [PATH ...] [--top N]`` (default: ``tunmesh``). A class's size
is its lines (decorators included) and its own methods; a function's size is its lines. ``Any`` counts
every use of the name ``Any`` (``Any`` and ``typing.Any``) outside imports.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Size:
    where: str
    name: str
    lines: int
    methods: int = 0


def _lines(node: ast.AST) -> int:
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])  # type: ignore[attr-defined]
    return node.end_lineno - first + 1  # type: ignore[attr-defined]


def _sizes(tree: ast.Module, where: str) -> Iterator[Size]:
    def walk(node: ast.AST, prefix: str) -> Iterator[Size]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                methods = sum(isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef)) for c in child.body)
                yield Size(where, prefix + child.name, _lines(child), methods)
                yield from walk(child, prefix + child.name + ".")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield Size(where, prefix + child.name + "()", _lines(child))
                yield from walk(child, prefix + child.name + ".")
            else:
                yield from walk(child, prefix)

    yield from walk(tree, "")


def _any_count(tree: ast.Module) -> int:
    count = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "Any":
            count += 1
        elif isinstance(node, ast.Attribute) and node.attr == "Any":
            count += 1
    return count


def _files(paths: list[str]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(path.rglob("*.py"))
        else:
            yield path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=["tunmesh"])
    parser.add_argument("--top", type=int, default=5, help="how many of each to list (default 5)")
    args = parser.parse_args(argv)
    classes: list[Size] = []
    functions: list[Size] = []
    anys = 0
    for path in _files(args.paths):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for size in _sizes(tree, str(path)):
            (functions if size.name.endswith("()") else classes).append(size)
        anys += _any_count(tree)
    print(f"largest classes ({', '.join(args.paths)}):")
    for size in sorted(classes, key=lambda s: (-s.lines, s.name))[: args.top]:
        print(f"  {size.lines:5d} lines {size.methods:3d} methods  {size.name}  ({size.where})")
    print("largest functions:")
    for size in sorted(functions, key=lambda s: (-s.lines, s.name))[: args.top]:
        print(f"  {size.lines:5d} lines  {size.name}  ({size.where})")
    print(f"Any: {anys}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
