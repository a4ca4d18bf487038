"""The one JSON decoder for untrusted bytes (tokens, HTTP bodies, signed answers).

It is *total*: whatever the input, it returns a value or raises :class:`StrictJSONError` (a
``ValueError``), never ``RecursionError``, ``OverflowError`` or anything else a caller would not expect
(issue 12, contract W18). On top of RFC 8259 it refuses what makes a document ambiguous or a number
unusable:

- invalid UTF-8, a byte-order mark;
- nesting deeper than ``max_depth`` (the stdlib scanner would recurse about 1000 levels and raise
  ``RecursionError``; no tunmesh message nests deeper than a few levels);
- duplicate object keys (two parsers could pick different values);
- ``NaN``/``Infinity`` and numbers that overflow a float;
- integers longer than :data:`MAX_INT_DIGITS` digits, and the non-canonical ``-0``.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

MAX_DEPTH = 32
MAX_INT_DIGITS = 20  # 2**64 has 20 digits; every integer tunmesh sends fits


class StrictJSONError(ValueError):
    """Untrusted JSON refused; ``reason`` is a short fixed word safe to log and count."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise StrictJSONError("duplicate_key")
    return out


def _constant(name: str) -> Any:
    raise StrictJSONError("constant")


def _int(text: str) -> int:
    digits = text[1:] if text.startswith("-") else text
    if len(digits) > MAX_INT_DIGITS:
        raise StrictJSONError("number_too_long")
    if text == "-0":
        raise StrictJSONError("negative_zero")
    return int(text)


def _float(text: str) -> float:
    if len(text) > 64:
        raise StrictJSONError("number_too_long")
    value = float(text)
    if not math.isfinite(value):
        raise StrictJSONError("number_overflow")
    return value


#: a string (to its closing quote, or to the end when unterminated), or a bracket (the group)
_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|([\[\]{}])', re.DOTALL)
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _depth_ok(text: str, max_depth: int) -> bool:
    """Cheap upper bound on nesting: brackets outside strings, counted without a full parse.

    Only called when the document holds more opening brackets than ``max_depth`` at all (every peer
    table of more than a few entries), so it runs in C: the regex skips strings, ``accumulate``
    keeps the running depth. The character loop it replaces cost 10 ms for a table of 500 nodes.
    """
    brackets = "".join(_STRING_OR_BRACKET.findall(text))
    return not brackets or max(accumulate(map(_STEP.__getitem__, brackets))) <= max_depth


def loads(data: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """Decode untrusted JSON; raises only :class:`StrictJSONError`."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise StrictJSONError("not_utf8") from None
    else:
        text = data
    if text.startswith("\ufeff"):
        raise StrictJSONError("bom")
    if text.count("[") + text.count("{") > max_depth and not _depth_ok(text, max_depth):
        raise StrictJSONError("too_deep")
    try:
        return json.loads(text, object_pairs_hook=_object, parse_constant=_constant, parse_int=_int, parse_float=_float)
    except StrictJSONError:
        raise
    except (ValueError, RecursionError, OverflowError, MemoryError, TypeError) as exc:
        raise StrictJSONError("syntax" if isinstance(exc, ValueError) else type(exc).__name__) from None


__all__ = ["MAX_DEPTH", "MAX_INT_DIGITS", "StrictJSONError", "loads"]
