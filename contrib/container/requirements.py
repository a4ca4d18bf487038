"""Print setup.py's ``install_requires``, one per line, without running setup.py.

The image build installs the dependencies in their own layer before the source is copied, so a source change
rebuilds only the last layer (no download, no compile of python-pytun). Reads the literal list with ``ast``.
"""

from __future__ import annotations

import ast
import sys


def install_requires(source: str) -> list[str]:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            value = ast.literal_eval(node.value)
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value
    raise SystemExit("requirements.py: no literal install_requires list in setup.py")


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else "setup.py"
    with open(path, encoding="utf-8") as f:
        print("\n".join(install_requires(f.read())))
