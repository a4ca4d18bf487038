"""The declarative config schema: option types, options and groups.

The config tree is declared once, in ``tunmesh.config.tree``, as frozen attrs classes whose fields carry an
``Option`` in their metadata. Loading, the example config, the reference docs and the dump all walk that one
declaration, so they cannot drift apart.

Each option type turns the YAML value into the Python value the rest of tunmesh uses, or reports why it
cannot. Messages show the offending value, except for options marked secret, where they say "value hidden".
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import stat
import types
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import attrs

from tunmesh.config.errors import ConfigError

#: Returned by a loader that has already reported its problem; parents skip building their value.
INVALID: Any = type("Invalid", (), {"__repr__": lambda self: "<invalid>", "__bool__": lambda self: False})()

#: Placeholders of the example config: quoted YAML strings such as ``"<REQUIRED: url>"`` (values every
#: deployment must choose) and ``"<OPTIONAL: file>"`` (commented-out options without a default).
PLACEHOLDER_RE = re.compile(r"<(?:REQUIRED|OPTIONAL)(?:: [^<>]*)?>")
#: What older example configs (and the original Tun Mesh's) wrote: ``[Deployment Unique Value]``, which YAML
#: reads as a one-item list.
_LEGACY_PLACEHOLDER_RE = re.compile(r"Deployment Unique (?:Value|Key)(?: \w+)?")


def placeholder(label: str, required: bool = True) -> str:
    """The example config's placeholder for an option of type ``label`` (a string once parsed)."""
    return f"<{'REQUIRED' if required else 'OPTIONAL'}: {label}>"


def is_placeholder(value: object) -> bool:
    """True for an example-config placeholder left in a file, in the current or the legacy list form."""
    if isinstance(value, str):
        return PLACEHOLDER_RE.fullmatch(value.strip()) is not None
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return _LEGACY_PLACEHOLDER_RE.fullmatch(value[0].strip()) is not None
    return False


def placeholder_message(value: object) -> str:
    """The one error for a placeholder: the key path is added by the caller."""
    shown = value.strip() if isinstance(value, str) else f"[{value[0]}]"  # type: ignore[index]
    return f"placeholder {shown!r} not replaced with a real value"


def suggest(name: str, choices: Iterable[str]) -> str | None:
    """The closest known key to a misspelt ``name``, or None when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.7)
    return close[0] if close else None

_INT64_MAX = 2**63 - 1


class Uniform(Protocol):
    """What timing ranges need from a random source (``random`` or a seeded ``random.Random``)."""

    def uniform(self, a: float, b: float) -> float: ...


class Invalid(Exception):
    """Raised by a leaf type's ``convert``: the message is reported at the option's path."""


@attrs.define
class LoadContext:
    """What a load needs besides the YAML data: where relative paths start, env, randomness, collected errors."""

    base_dir: Path
    env: Mapping[str, str]
    rng: Uniform
    errors: list[ConfigError] = attrs.Factory(list)
    #: Key path -> environment variable, for every value taken from the environment (cross-key checks
    #: that fail on such a value name the variable too).
    env_sources: dict[str, str] = attrs.Factory(dict)

    def fail(self, path: str, message: str) -> Any:
        self.errors.append(ConfigError(path, message))
        return INVALID


def show(value: object, secret: bool) -> str:
    """The offending value as it may appear in a message: truncated, or hidden for secrets."""
    if secret:
        return "(value hidden)"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def yaml_type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__


def yaml_scalar(value: object) -> str:
    """How a plain value is written in YAML (used by the example config and the docs)."""
    import yaml

    text: str = yaml.safe_dump(value, default_flow_style=True, width=10_000)
    text = text.strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    elif text.endswith("..."):
        text = text[:-3].strip()
    return text


class OptionType:
    """Base of all option types: ``load`` reports problems to the context and returns INVALID on failure."""

    label = "value"
    #: Whether the type itself gives an explicit YAML null a meaning (lists and maps: empty).
    nullable = False

    def load(self, value: Any, path: str, ctx: LoadContext, secret: bool = False) -> Any:
        if is_placeholder(value):
            return ctx.fail(path, placeholder_message(value))
        try:
            return self.convert(value, ctx, secret)
        except Invalid as e:
            return ctx.fail(path, str(e))

    def convert(self, value: Any, ctx: LoadContext, secret: bool) -> Any:
        raise NotImplementedError

    def dump(self, value: Any) -> Any:
        """The resolved value as plain YAML data (str, int, float, bool, list, dict, None)."""
        return value

    def constraints(self) -> str:
        """Human summary of the accepted values beyond the type label, or ''."""
        return ""

    def example_value(self, default: Any) -> str:
        return yaml_scalar(self.dump(default))


class Bool(OptionType):
    """YAML booleans, or the strings "true"/"false" in any case (as the original)."""

    label = "bool"

    def convert(self, value: Any, ctx: LoadContext, secret: bool) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise Invalid(f"must be true or false, got {yaml_type_name(value)} {show(value, secret)}")


class Int(OptionType):
    """Integers, or strings Python reads as integers ("0x10", "1_000"). Floats and booleans are refused."""

    label = "int"

    def __init__(self, min: int = -_INT64_MAX - 1, max: int = _INT64_MAX, base: int = 10) -> None:
        self.min = min
        self.max = max
        self.base = base

    def convert(self, value: Any, ctx: LoadContext, secret: bool) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise Invalid(f"must be an integer, got {yaml_type_name(value)} {show(value, secret)}")
        if isinstance(value, str):
            try:
                number = int(value.strip(), 0)
            except ValueError:
                raise Invalid(f"must be an integer, got string {show(value, secret)}") from None
        else:
            number = value
        if not self.min <= number <= self.max:
            raise Invalid(f"{show(number, secret)} is out of range: {self.constraints()}")
        return number

    def constraints(self) -> str:
        low = self.min > -_INT64_MAX - 1
        high = self.max < _INT64_MAX
        if low and high:
            return f"must be between {self._fmt(self.min)} and {self._fmt(self.max)}"
        if low:
            return f"must be at least {self._fmt(self.min)}"
        if high:
            return f"must be at most {self._fmt(self.max)}"
        return ""

    def _fmt(self, n: int) -> str:
        return hex(n) if self.base == 16 else str(n)

    def example_value(self, default: Any) -> str:
        return hex(default) if self.base == 16 and isinstance(default, int) else str(default)


class UInt(Int):
    """Non-negative integers."""

    label = "uint"

    def __init__(self, min: int = 0, max: int = _INT64_MAX, base: int = 10) -> None:
        if min < 0:
            raise ValueError("UInt minimum must be >= 0")
        super().__init__(min, max, base)


class String(OptionType):
    """Text; numbers are taken in their string form (as the original), other types are refused."""

    label = "string"

    def __init__(
        self,
        min_length: int = 0,
        max_length: int | None = None,
        pattern: str | None = None,
        pattern_help: str = "",
        check: Callable[[str], str | None] | None = None,
    ) -> None:
        self.min_length = min_length
        self.max_length = max_length
        self.pattern = re.compile(pattern) if pattern else None
        self.pattern_help = pattern_help
        self.check = check

    def convert(self, value: Any, ctx: LoadContext, secret: bool) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise Invalid(f"must be a string, got {yaml_type_name(value)}")
        text = value if isinstance(value, str) else str(value)
        if len(text) < self.min_length:
            raise Invalid(f"length {len(text)} is below the minimum of {self.min_length}")
        if self.max_length is not None and len(text) > self.max_length:
            raise Invalid(f"length {len(text)} is above the maximum of {self.max_length}")
        if self.pattern is not None and not self.pattern.fullmatch(text):
            raise Invalid(f"{show(text, secret)} is not valid: {self.pattern_help}")
        if self.check is not None:
            problem = self.check(text)
            if problem:
                raise Invalid(f"{show(text, secret)} {problem}")
        return text

    def constraints(self) -> str:
        parts = []
        if self.min_length:
            parts.append(f"at least {self.min_length} character{'s' if self.min_length != 1 else ''}")
        if self.max_length is not None:
            parts.append(f"at most {self.max_length} characters")
        if self.pattern_help:
            parts.append(self.pattern_help)
        return ", ".join(parts)


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_TIMING_RE = re.compile(rf"\s*{_NUMBER}\s*([smhdSMHD])?\s*")
_RANGE_RE = re.compile(rf"\s*{_NUMBER}\s*\.\.\s*{_NUMBER}\s*([smhdSMHD])?\s*")


def _fmt_seconds(seconds: float) -> str:
    return f"{seconds:g} s"


class Timing(OptionType):
    """Seconds: a number, a string with an s/m/h/d suffix, or a range "a..b" resolved uniformly once at load."""

    label = "timing"

    def __init__(self, min: float = 0.5, max: float = 3600.0) -> None:
        self.min = min
        self.max = max

    def convert(self, value: Any, ctx: LoadContext, secret: bool) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise Invalid(
                f"must be a number of seconds or a string like '30s', '5m', '1..2s', got {yaml_type_name(value)}"
            )
        if isinstance(value, str):
            single = _TIMING_RE.fullmatch(value)
            span = _RANGE_RE.fullmatch(value)
            if single:
                seconds = float(single.group(1)) * _UNITS[(single.group(2) or "s").lower()]
            elif span:
                unit = _UNITS[(span.group(3) or "s").lower()]
                low, high = float(span.group(1)) * unit, float(span.group(2)) * unit
                if low > high:
                    raise Invalid(f"range {show(value, secret)} has its lower end above its upper end")
                self._check_range(low, value, secret)
                self._check_range(high, value, secret)
                return float(ctx.rng.uniform(low, high))
            else:
                raise Invalid(
                    f"{show(value, secret)} is not a timing: use seconds, a suffix s/m/h/d, or a range like '1..2m'"
                )
        else:
            seconds = float(value)
        if not math.isfinite(seconds):
            raise Invalid(f"{show(value, secret)} is not a finite number of seconds")
        self._check_range(seconds, value, secret)
        return seconds

    def _check_range(self, seconds: float, value: Any, secret: bool) -> None:
        if not self.min <= seconds <= self.max:
            raise Invalid(f"{show(value, secret)} is out of range: {self.constraints()}")

    def constraints(self) -> str:
        return f"must be between {_fmt_seconds(self.min)} and {_fmt_seconds(self.max)}"

    def example_value(self, default: Any) -> str:
        return f"{default:g}"


class Url(OptionType):
    """An https URL to a tunmesh node: host required, no userinfo, query or fragment, path empty or "/"."""

    label = "url"

    def __init__(self, max_length: int = 2048) -> None:
        self.max_length = max_length

    def convert(self, value: Any, ctx: LoadContext, secret: bool) -> str:
        if not isinstance(value, str):
            raise Invalid(f"must be a URL string, got {yaml_type_name(value)}")
        text = value.strip()
        shown = show(text, secret)
        if len(text) > self.max_length:
            raise Invalid(f"URL length {len(text)} is above the maximum of {self.max_length}")
        if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text):
            raise Invalid(f"{shown} contains whitespace or control characters")
        try:
            parts = urllib.parse.urlsplit(text)
            port = parts.port
        except ValueError as e:
            raise Invalid(f"{shown} is not a valid URL: {e}") from None
        if parts.scheme.lower() != "https":
            raise Invalid(f"{shown} must use https")
        if not parts.hostname:
            raise Invalid(f"{shown} has no host")
        if parts.username is not None or parts.password is not None:
            raise Invalid("must not contain user information (user:password@)")
        if parts.query or parts.fragment or text.endswith(("?", "#")):
            raise Invalid(f"{shown} must not have a query or fragment")
        if parts.path not in ("", "/"):
            raise Invalid(f"{shown} must not have a path (tunmesh API paths are fixed)")
        if port == 0:
            raise Invalid(f"{shown} has port 0")
        return text

    def constraints(self) -> str:
        return f"https only, host required, no userinfo/path/query/fragment, at most {self.max_length} characters"


class File(OptionType):
    """A file path, relative to the config file's directory; it must be an existing, readable regular file."""

    label = "file"

    def convert(self, value: Any, ctx: LoadContext, secret: bool) -> Path:
        if not isinstance(value, str) or not value.strip():
            raise Invalid(f"must be a file path string, got {yaml_type_name(value)}")
        path = Path(os.path.normpath(ctx.base_dir / value.strip()))
        try:
            st = path.stat()
        except FileNotFoundError:
            raise Invalid(f"{path}: does not exist") from None
        except OSError as e:
            raise Invalid(f"{path}: cannot be examined: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise Invalid(f"{path}: is not a regular file")
        try:
            with path.open("rb"):
                pass
        except OSError as e:
            raise Invalid(f"{path}: is not readable: {e.strerror}") from None
        return path

    def dump(self, value: Any) -> Any:
        return None if value is None else str(value)

    def constraints(self) -> str:
        return "relative to the config file's directory; must be an existing, readable regular file"


class NetAddress(OptionType):
    """An IP network ("10.0.0.0/24") or interface address ("10.0.0.5/24"); the prefix length is required."""

    def __init__(self, version: int | None, interface: bool) -> None:
        if version not in (None, 4, 6):
            raise ValueError("version must be 4, 6 or None")
        self.version = version
        self.interface = interface
        family = {4: "IPv4 ", 6: "IPv6 ", None: ""}[version]
        self.label = f"{family}{'interface' if interface else 'network'}".replace(" ", "_").lower()
        self._what = f"{family}{'address with prefix' if interface else 'network'}"

    def convert(self, value: Any, ctx: LoadContext, secret: bool) -> Any:
        if not isinstance(value, str):
            raise Invalid(f"must be an {self._what} string, got {yaml_type_name(value)}")
        text = value.strip()
        shown = show(text, secret)
        example = self._example()
        if "/" not in text:
            raise Invalid(f"{shown} has no prefix length; write it in CIDR form, e.g. {example}")
        try:
            parsed: Any = ipaddress.ip_interface(text) if self.interface else ipaddress.ip_network(text)
        except ValueError as e:
            if not self.interface and "host bits set" in str(e):
                suggestion = ipaddress.ip_interface(text).network
                raise Invalid(f"{shown} has host bits set; did you mean {suggestion}?") from None
            raise Invalid(f"{shown} is not a valid {self._what}, e.g. {example}") from None
        if self.version is not None and parsed.version != self.version:
            raise Invalid(f"{shown} is not an {self._what}, e.g. {example}")
        return parsed

    def _example(self) -> str:
        if self.version == 6:
            return "fd00:1::5/64" if self.interface else "fd00:1::/64"
        return "10.0.0.5/24" if self.interface else "10.0.0.0/24"

    def dump(self, value: Any) -> Any:
        return None if value is None else str(value)

    def constraints(self) -> str:
        return f"CIDR notation with the prefix length, e.g. {self._example()}"


class IPAddress(OptionType):
    """A bare IPv4 or IPv6 address (no prefix), kept as its normalised string."""

    label = "ip_address"

    def convert(self, value: Any, ctx: LoadContext, secret: bool) -> str:
        if not isinstance(value, str):
            raise Invalid(f"must be an IP address string, got {yaml_type_name(value)}")
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise Invalid(f"{show(value, secret)} is not an IPv4 or IPv6 address") from None

    def constraints(self) -> str:
        return "an IPv4 or IPv6 address, e.g. 0.0.0.0 or ::"


class Enum(OptionType):
    """One of a fixed set of names (compared case-insensitively), each with its own description."""

    label = "enum"

    def __init__(self, choices: Mapping[str, str]) -> None:
        self.choices = dict(choices)

    def convert(self, value: Any, ctx: LoadContext, secret: bool) -> str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            name = str(value).strip().lower()
            if name in self.choices:
                return name
        raise Invalid(f"{show(value, secret)} must be one of {', '.join(self.choices)}")

    def constraints(self) -> str:
        return "one of " + ", ".join(self.choices)


class Version(OptionType):
    """The config format version: only "1.1" (written as the YAML number 1.1 or the string)."""

    label = "version"
    supported = ("1.1",)

    def convert(self, value: Any, ctx: LoadContext, secret: bool) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise Invalid(f"must be a version string, got {yaml_type_name(value)}")
        text = str(value).strip()
        if text not in self.supported:
            raise Invalid(f"unknown config version {text!r}; this tunmesh reads version {', '.join(self.supported)}")
        return text

    def constraints(self) -> str:
        return "must be 1.1"

    def example_value(self, default: Any) -> str:
        return self.supported[-1]


class ListOf(OptionType):
    """A YAML sequence of one item type, loaded into a tuple; null means empty where allowed."""

    def __init__(self, item: OptionType, nullable: bool = True, max_items: int | None = None) -> None:
        self.item = item
        self.nullable = nullable
        self.max_items = max_items
        self.label = f"list of {item.label}"

    def load(self, value: Any, path: str, ctx: LoadContext, secret: bool = False) -> Any:
        if value is None and self.nullable:
            return ()
        if is_placeholder(value):
            return ctx.fail(path, placeholder_message(value))
        if not isinstance(value, list):
            return ctx.fail(path, f"must be a list, got {yaml_type_name(value)}")
        if self.max_items is not None and len(value) > self.max_items:
            return ctx.fail(path, f"has {len(value)} items, more than the maximum of {self.max_items}")
        items = [self.item.load(v, f"{path}/{i}", ctx, secret) for i, v in enumerate(value)]
        return INVALID if any(v is INVALID for v in items) else tuple(items)

    def dump(self, value: Any) -> Any:
        return [self.item.dump(v) for v in value]

    def constraints(self) -> str:
        inner = self.item.constraints()
        return f"each item: {inner}" if inner else ""


class MapOf(OptionType):
    """A YAML mapping from string keys to one value type, loaded read-only; null means empty where allowed."""

    def __init__(
        self,
        value: OptionType,
        nullable: bool = True,
        key_pattern: str = r".+",
        key_help: str = "a non-empty name",
        max_items: int | None = None,
        reserved_keys: Sequence[str] = (),
    ) -> None:
        self.value = value
        self.nullable = nullable
        self.key_pattern = re.compile(key_pattern)
        self.key_help = key_help
        self.max_items = max_items
        self.reserved_keys = tuple(reserved_keys)
        self.label = f"map of {value.label}"

    def load(self, value: Any, path: str, ctx: LoadContext, secret: bool = False) -> Any:
        if value is None and self.nullable:
            return types.MappingProxyType({})
        if is_placeholder(value):
            return ctx.fail(path, placeholder_message(value))
        if not isinstance(value, Mapping):
            return ctx.fail(path, f"must be a mapping, got {yaml_type_name(value)}")
        if self.max_items is not None and len(value) > self.max_items:
            return ctx.fail(path, f"has {len(value)} entries, more than the maximum of {self.max_items}")
        result: dict[str, Any] = {}
        ok = True
        for key, item in value.items():
            name = str(key)
            if is_placeholder(key):
                ctx.fail(path, f"key {placeholder_message(key)}")
                ok = False
                continue
            if isinstance(key, (Mapping, list)) or not self.key_pattern.fullmatch(name):
                ctx.fail(path, f"key {show(name, False)} is not valid: {self.key_help}")
                ok = False
                continue
            if name in self.reserved_keys:
                ctx.fail(path, f"key {name!r} is reserved")
                ok = False
                continue
            loaded = self.value.load(item, f"{path}/{name}", ctx, secret)
            ok = ok and loaded is not INVALID
            result[name] = loaded
        return types.MappingProxyType(result) if ok else INVALID

    def dump(self, value: Any) -> Any:
        return {k: self.value.dump(v) for k, v in value.items()}

    def constraints(self) -> str:
        return f"keys: {self.key_help}"


# --------------------------------------------------------------------------------------------------------------
# Options and groups


@attrs.frozen
class Option:
    """How one key is read and documented. Stored in the attrs field metadata under ``tunmesh``."""

    type: OptionType
    short: str
    long: tuple[str, ...] = ()
    required: bool = False
    default: Any = None
    secret: bool = False
    #: An environment variable whose non-empty value overrides the file (and satisfies ``required``).
    env: str | None = None
    #: Other keys of the same group that satisfy ``required`` when present instead of this one.
    alternatives: tuple[str, ...] = ()
    #: Accepted for compatibility with the original's configs but not used by tunmesh.
    unused: bool = False

    @property
    def conditional(self) -> bool:
        """Required, but something else (env, another key) can stand in for it."""
        return self.required and bool(self.env or self.alternatives)


@attrs.frozen
class GroupInfo:
    """Documentation and optional cross-key resolution of a group class."""

    short: str
    long: tuple[str, ...] = ()
    #: Called with (values, present keys, path, ctx) after the fields loaded; returns the values or INVALID.
    resolve: Callable[[dict[str, Any], frozenset[str], str, LoadContext], Any] | None = None


_META = "tunmesh"
_GROUP_ATTR = "__tunmesh_group__"
T = TypeVar("T")


def option(
    type: OptionType,
    short: str,
    long: Iterable[str] = (),
    *,
    default: Any = None,
    required: bool = False,
    secret: bool = False,
    env: str | None = None,
    alternatives: Iterable[str] = (),
    unused: bool = False,
) -> Any:
    """Declare a leaf option as an attrs field (required options get no attrs default)."""
    opt = Option(
        type=type,
        short=short,
        long=tuple(long),
        required=required,
        default=default,
        secret=secret,
        env=env,
        alternatives=tuple(alternatives),
        unused=unused,
    )
    if required:
        return attrs.field(metadata={_META: opt}, repr=not secret)
    return attrs.field(default=default, metadata={_META: opt}, repr=not secret)


class GroupType(OptionType):
    """A nested group used as a value (a sub-group field, or the values of a map such as bootstrap_groups)."""

    def __init__(self, cls: type, absent_is_none: bool = False) -> None:
        self.cls = cls
        self.absent_is_none = absent_is_none
        self.label = "group"

    def load(self, value: Any, path: str, ctx: LoadContext, secret: bool = False) -> Any:
        if value is None and self.absent_is_none:
            return None
        return load_group(self.cls, value, path, ctx)

    def dump(self, value: Any) -> Any:
        return None if value is None else dump_group(value, redact=False)


@attrs.frozen
class SubGroup:
    """Field metadata of a sub-group: the group type, and whether an absent group means None."""

    type: GroupType


def subgroup(cls: type[T], *, absent_is_none: bool = False) -> Any:
    """Declare a nested group field; optional groups default to all their defaults (or None)."""
    meta = SubGroup(GroupType(cls, absent_is_none))
    if absent_is_none:
        return attrs.field(default=None, metadata={_META: meta})
    if group_required(cls):
        return attrs.field(metadata={_META: meta})
    return attrs.field(factory=cls, metadata={_META: meta})


def group(short: str, long: Iterable[str] = (), resolve: Any = None) -> Callable[[type[T]], type[T]]:
    """Attach documentation (and an optional resolver) to an attrs group class."""

    def deco(cls: type[T]) -> type[T]:
        setattr(cls, _GROUP_ATTR, GroupInfo(short=short, long=tuple(long), resolve=resolve))
        return cls

    return deco


def group_info(cls: type) -> GroupInfo:
    info: GroupInfo = getattr(cls, _GROUP_ATTR)
    return info


def members(cls: type) -> list[tuple[str, Option | SubGroup]]:
    """The (key, Option or SubGroup) pairs of a group class, in declaration order."""
    return [(f.name, f.metadata[_META]) for f in attrs.fields(cls)]


def group_required(cls: type) -> bool:
    """A group must be present iff one of its options is required with nothing that can stand in for it."""
    for _, meta in members(cls):
        if isinstance(meta, Option) and meta.required and not meta.conditional:
            return True
        if isinstance(meta, SubGroup) and not meta.type.absent_is_none and group_required(meta.type.cls):
            return True
    return False


def group_shown_required(cls: type) -> bool:
    """Whether the example and docs show the group as required (conditional options count)."""
    for _, meta in members(cls):
        if isinstance(meta, Option) and meta.required:
            return True
        if isinstance(meta, SubGroup) and not meta.type.absent_is_none and group_shown_required(meta.type.cls):
            return True
    return False


def unknown_key_message(key: str, known: Sequence[str]) -> str:
    """``unknown key; did you mean listen_port?``, or the list of known keys when nothing is close."""
    close = suggest(key, known)
    if close is not None:
        return f"unknown key; did you mean {close}?"
    return f"unknown key; expected one of {', '.join(sorted(known))}"


def _missing_message(key: str, opt: Option) -> str:
    alternatives = [key, *opt.alternatives]
    message = "missing required key" if len(alternatives) == 1 else "missing: set one of " + " or ".join(alternatives)
    if opt.env:
        message += f" (or the environment variable {opt.env})"
    return message


def load_group(cls: type[T], data: Any, path: str, ctx: LoadContext) -> T:
    """Load one group: unknown and missing keys are reported, then every field independently.

    A null group means "all defaults", fixing the original's crash on ``logging:`` with nothing after it.
    """
    if data is None:
        data = {}
    if is_placeholder(data):
        return ctx.fail(path, placeholder_message(data))
    if not isinstance(data, Mapping):
        return ctx.fail(path, f"must be a mapping, got {yaml_type_name(data)}")
    fields = members(cls)
    known = [k for k, _ in fields]
    ok = True
    for key in sorted(str(k) for k in data if k not in known):
        ctx.fail(f"{path}/{key}", unknown_key_message(key, known))
        ok = False
    values: dict[str, Any] = {}
    present = frozenset(k for k in known if data.get(k) is not None)
    for key, meta in fields:
        sub = f"{path}/{key}"
        if isinstance(meta, SubGroup):
            if key in data:
                values[key] = meta.type.load(data[key], sub, ctx)
            elif meta.type.absent_is_none:
                values[key] = None
            elif group_required(meta.type.cls):
                values[key] = ctx.fail(sub, "missing required key")
            else:
                values[key] = load_group(meta.type.cls, {}, sub, ctx)
        else:
            values[key] = _load_option(key, meta, data, present, sub, ctx)
        ok = ok and values[key] is not INVALID
    if not ok:
        return INVALID
    info = group_info(cls)
    if info.resolve is not None:
        resolved = info.resolve(values, present, path, ctx)
        if resolved is INVALID:
            return INVALID
        values = resolved
    return cls(**values)


def _load_option(key: str, opt: Option, data: Mapping[Any, Any], present: frozenset[str], path: str,
                 ctx: LoadContext) -> Any:
    env_value = ctx.env.get(opt.env) if opt.env else None
    if env_value:
        assert opt.env is not None
        loaded = opt.type.load(env_value, path, ctx, opt.secret)
        if loaded is INVALID:
            last = ctx.errors.pop()
            ctx.fail(last.path, f"{last.message} {from_env(opt.env)}")
        else:
            ctx.env_sources[path] = opt.env
        return loaded
    if key not in data:
        if opt.required and not present.intersection(opt.alternatives):
            return ctx.fail(path, _missing_message(key, opt))
        return opt.default
    value = data[key]
    if value is None and not opt.type.nullable:
        if not opt.required and opt.default is None:
            return None
        if opt.required:
            return ctx.fail(path, "null value: a value is required")
        return ctx.fail(path, f"null value: remove the key to use the default ({opt.type.example_value(opt.default)})")
    return opt.type.load(value, path, ctx, opt.secret)


def from_env(variable: str) -> str:
    """The suffix naming where a bad value came from."""
    return f"(from the environment variable {variable})"


REDACTED = "<redacted>"


def dump_group(value: Any, redact: bool = True) -> dict[str, Any]:
    """A group value as plain YAML data; secrets become ``<redacted>`` unless ``redact`` is false."""
    out: dict[str, Any] = {}
    for key, meta in members(type(value)):
        item = getattr(value, key)
        if isinstance(meta, SubGroup):
            out[key] = None if item is None else dump_group(item, redact)
        elif meta.secret and redact and item is not None:
            out[key] = REDACTED
        elif isinstance(meta.type, MapOf) and isinstance(meta.type.value, GroupType):
            out[key] = {k: dump_group(v, redact) for k, v in item.items()}
        else:
            out[key] = None if item is None else meta.type.dump(item)
    return out
