"""Shell completion and the man page, generated from the ``tunmesh`` argument parser.

Both come from ``tunmesh.cli``'s parser, so they cannot drift from the command: completion scripts
through `shtab <https://github.com/iterative/shtab>`_ (``tunmesh completion bash|zsh``), the man page
through `argparse-manpage <https://github.com/praiskup/argparse-manpage>`_ (``tunmesh man``). Both
libraries are the ``docs`` extra (``pip install 'tunmesh[docs]'``); without them the two commands say
so and exit 1, and nothing else of tunmesh needs them.

The generated files are committed (:data:`GENERATED`) and installed by the package (``data_files``
in setup.py: ``share/man/man1``, ``share/bash-completion/completions``, ``share/zsh/site-functions``);
``tests/unit/test_clidocs.py`` fails when they are out of date, and ``python -m tunmesh.clidocs``
rewrites them from a checkout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from tunmesh import __version__

SHELLS = ("bash", "zsh")
#: Metavars of arguments that name a file: completed as file names.
FILE_METAVARS = frozenset({"PATH", "FILE"})
#: shtab's file completion (``shtab.FILE``), spelled out so the parser does not need shtab.
FILE_COMPLETION = {"bash": "_shtab_compgen_files", "zsh": "_files", "tcsh": "f"}
#: Text width for the man page source: argparse wraps to the terminal otherwise, and the committed file
#: must not depend on the terminal it was made in. Wide enough that argparse never wraps: man flows the text.
MAN_WIDTH = 1000


class MissingExtra(RuntimeError):
    """A library of the ``docs`` extra is not installed."""

    def __init__(self, module: str, package: str) -> None:
        super().__init__(
            f"needs the {package} package (not installed): pip install 'tunmesh[docs]' or pip install {package}"
        )
        self.module = module


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every sub-command parser under it."""
    yield parser
    for action in parser._actions:  # argparse has no public walk; shtab and argparse-manpage read the same
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from _subparsers(child)


def _mark_files(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for p in _subparsers(parser):
        for action in p._actions:
            if action.metavar in FILE_METAVARS:
                action.complete = FILE_COMPLETION  # type: ignore[attr-defined]
    return parser


def completion(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for ``shell`` (``bash`` or ``zsh``); :class:`MissingExtra` without shtab."""
    if shell not in SHELLS:
        raise ValueError(f"shell must be one of {', '.join(SHELLS)}, not {shell!r}")
    try:
        import shtab
    except ImportError:
        raise MissingExtra("shtab", "shtab") from None
    return str(shtab.complete(_mark_files(parser), shell=shell))


@contextlib.contextmanager
def _columns(width: int) -> Iterator[None]:
    """``$COLUMNS`` set to ``width`` (argparse's formatter reads it through ``shutil.get_terminal_size``)."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


_SECTIONS = (
    (
        "signals",
        ".TP\n\\fBSIGTERM\\fR, \\fBSIGINT\\fR\nstop the node; it first tells its peers that it leaves.\n"
        ".TP\n\\fBSIGHUP\\fR\nre-read the config file and apply, without dropping a link, the TLS certificate and "
        "key, the trust anchors (ca_file_path, verify_hostname), bootstrap_groups and logging.level. "
        "Keys that need a restart are named in the log.",
    ),
    (
        "environment",
        ".TP\n\\fBTUNMESH_CONFIG_PATH\\fR\nthe config file when \\fB\\-\\-config\\fR is not given.\n"
        ".TP\n\\fBTUNMESH_CLUSTER_SECRET\\fR\nthe cluster secret when the config names none.",
    ),
    ("files", ".TP\n\\fI/etc/tunmesh/config.yaml\\fR\nthe config file when neither \\-\\-config nor "
              "TUNMESH_CONFIG_PATH is set."),
    (
        "exit status",
        "0 on success; 1 when a config, file or certificate is refused (one line per problem on standard "
        "error); 2 on a usage error.",
    ),
    ("see also", "\\fBtwistd\\fR(1); the project's README.md and docs/ (configuration, security, deployment)."),
)


def manpage(parser: argparse.ArgumentParser) -> str:
    """The ``tunmesh(1)`` man page (roff); :class:`MissingExtra` without argparse-manpage."""
    try:
        from argparse_manpage.manpage import Manpage
    except ImportError:
        raise MissingExtra("argparse_manpage", "argparse-manpage") from None
    with _columns(MAN_WIDTH):
        page = Manpage(
            parser,
            _data={
                "project_name": "tunmesh",
                "version": __version__,
                # The release, not the day the file was generated: the committed page must be reproducible.
                "date": __version__,
                "manual_title": "tunmesh manual",
                "description": "Layer 3 mesh VPN sidecar for containers",
            },
        )
        for heading, content in _SECTIONS:
            page.add_section(heading, "=", content)
        return str(page)


#: Committed generated files (relative to the project root) and what makes each one.
GENERATED: dict[str, Callable[[argparse.ArgumentParser], str]] = {
    "docs/man/tunmesh.1": manpage,
    # bash-completion loads completions/<command> on first use: the file is named after the command
    "contrib/completion/bash/tunmesh": lambda p: completion(p, "bash"),
    "contrib/completion/zsh/_tunmesh": lambda p: completion(p, "zsh"),
}


def write_generated(root: Path, make_parser: Callable[[], argparse.ArgumentParser]) -> list[Path]:
    """Rewrite every file of :data:`GENERATED` under ``root``; returns the paths written."""
    written = []
    for relative, make in GENERATED.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(make(make_parser()), encoding="utf-8")
        written.append(path)
    return written


def main() -> None:  # pragma: no cover - a maintainer's command, exercised through write_generated
    from tunmesh.cli import _parser

    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    for path in write_generated(root, _parser):
        print(f"wrote {path}")


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = ["GENERATED", "MissingExtra", "SHELLS", "completion", "manpage", "write_generated"]
