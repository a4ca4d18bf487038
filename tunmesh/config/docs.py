"""Generated documentation: the self-documenting example config and the Markdown reference.

Both walk the declaration in ``tunmesh.config.tree``, so a new option is documented by declaring it. The
example keeps the original Tun Mesh layout (leaves sorted, then sub-groups under a banner; optional values
commented out with their default). Values to choose are quoted placeholders such as ``"<REQUIRED: url>"``: YAML
strings that the loader refuses with "placeholder ... not replaced" naming the key (the original's
``[Deployment Unique Value]`` parsed as a list).
"""

from __future__ import annotations

from tunmesh import __version__
from tunmesh.config.lint import RULES
from tunmesh.config.loader import CONFIG_PATH_ENV, DEFAULT_CONFIG_PATH
from tunmesh.config.schema import (
    Enum,
    GroupType,
    ListOf,
    MapOf,
    Option,
    SubGroup,
    Timing,
    Version,
    group_info,
    group_shown_required,
    members,
    placeholder,
)
from tunmesh.config.tree import ADVERTISE_URL_ENV, ROOT_KEY, SECRET_ENV, TunMeshConfig
from tunmesh.preflight import EXPIRY_WARNING_DAYS
from tunmesh.tls.contexts import MIN_EC_BITS, MIN_RSA_BITS

_INDENT = "  "
DOCS_COMMAND = "python -m tunmesh docs > docs/configuration.md"


def _sorted_members(cls: type) -> tuple[list[tuple[str, Option]], list[tuple[str, SubGroup]]]:
    leaves = sorted((k, m) for k, m in members(cls) if isinstance(m, Option))
    groups = sorted((k, m) for k, m in members(cls) if isinstance(m, SubGroup))
    return leaves, groups


def _type_label(opt: Option) -> str:
    return opt.type.label


def _default_text(opt: Option) -> str:
    if opt.default is None:
        return "(unset)"
    if isinstance(opt.type, Timing):
        return opt.type.example_value(opt.default)
    if isinstance(opt.type, (ListOf, MapOf)):
        return "[]" if isinstance(opt.type, ListOf) else "{}"
    return opt.type.example_value(opt.default)


# ------------------------------------------------------------------------------------------------ example config


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def comment(self, depth: int, text: str = "") -> None:
        self.lines.append(f"{_INDENT * depth}#{' ' + text if text else ''}")

    def value(self, depth: int, text: str, commented: bool) -> None:
        self.lines.append(f"{_INDENT * depth}{'# ' if commented else ''}{text}")

    def blank(self) -> None:
        if self.lines and self.lines[-1] != "":
            self.lines.append("")


def _leaf_comments(w: _Writer, depth: int, key: str, opt: Option) -> None:
    marker = "[REQUIRED]" if opt.required else "[Optional]"
    w.comment(depth, f"{marker} {key} ({_type_label(opt)}): {opt.short}")
    for line in opt.long:
        w.comment(depth, f"  {line}")
    if isinstance(opt.type, Enum):
        w.comment(depth, "  One of:")
        for name, description in opt.type.choices.items():
            suffix = " (Default)" if name == opt.default else ""
            w.comment(depth, f"    {name}: {description}{suffix}")
    else:
        constraints = opt.type.constraints()
        if constraints:
            w.comment(depth, f"  Accepted: {constraints}")
    if opt.secret:
        w.comment(depth, "  Secret: never logged or echoed in errors.")
    if not opt.required:
        w.comment(depth, f"  Default value: {_default_text(opt)}")


def _example_leaf(w: _Writer, depth: int, key: str, opt: Option, commented: bool) -> None:
    _leaf_comments(w, depth, key, opt)
    commented = commented or not opt.required
    kind = opt.type
    if isinstance(kind, Version):
        w.value(depth, f"{key}: {kind.example_value(None)}", commented)
    elif isinstance(kind, ListOf):
        w.value(depth, f"{key}:", commented)
        for item in ("1", "2", "...", "n"):
            if item == "...":
                w.comment(depth + 1, "- ...")
            else:
                w.value(depth + 1, f"- {_quoted(placeholder(f'{kind.item.label} {item}', opt.required))}", commented)
    elif isinstance(kind, MapOf) and isinstance(kind.value, GroupType):
        w.value(depth, f"{key}:", commented)
        w.value(depth + 1, "default:", commented)
        _example_body(w, depth + 2, kind.value.cls, commented)
    elif isinstance(kind, MapOf):
        w.value(depth, f"{key}:", commented)
        for item in ("1", "2", "n"):
            name = _quoted(placeholder(f"name {item}", opt.required))
            value = _quoted(placeholder(f"{kind.value.label} {item}", opt.required))
            w.value(depth + 1, f"{name}: {value}", commented)
    elif opt.required or opt.default is None:
        w.value(depth, f"{key}: {_quoted(placeholder(kind.label, opt.required))}", commented)
    else:
        w.value(depth, f"{key}: {kind.example_value(opt.default)}", commented)
    w.blank()


def _quoted(text: str) -> str:
    return f'"{text}"'


def _example_group(w: _Writer, depth: int, key: str, cls: type, commented: bool, optional: bool = False) -> None:
    info = group_info(cls)
    optional = optional or not group_shown_required(cls)
    w.comment(depth, f"{key} group{' [Optional]' if optional else ''}: {info.short}")
    for line in info.long:
        w.comment(depth, f"  {line}")
    commented = commented or optional
    w.value(depth, f"{key}:", commented)
    _example_body(w, depth + 1, cls, commented)


def _example_body(w: _Writer, depth: int, cls: type, commented: bool) -> None:
    leaves, groups = _sorted_members(cls)
    for key, opt in leaves:
        _example_leaf(w, depth, key, opt, commented)
    if leaves and groups:
        w.comment(depth)
        w.comment(depth, f"{group_key_name(cls)} sub groups")
        w.comment(depth)
        w.blank()
    for key, sub in groups:
        _example_group(w, depth, key, sub.type.cls, commented, optional=sub.type.absent_is_none)
        w.blank()


def group_key_name(cls: type) -> str:
    """The YAML key under which a group class appears (for banners); the root is ``tun_mesh``."""
    return _KEY_NAMES.get(cls, cls.__name__)


def _collect_key_names(cls: type, key: str, out: dict[type, str]) -> dict[type, str]:
    out.setdefault(cls, key)
    for sub_key, meta in members(cls):
        if isinstance(meta, SubGroup):
            _collect_key_names(meta.type.cls, sub_key, out)
        elif isinstance(meta.type, MapOf) and isinstance(meta.type.value, GroupType):
            _collect_key_names(meta.type.value.cls, "<name>", out)
    return out


_KEY_NAMES = _collect_key_names(TunMeshConfig, ROOT_KEY, {})


def example_config() -> str:
    """The self-documenting example config (deterministic, so it can be committed and compared)."""
    w = _Writer()
    w.lines.append(f"# Example tun_mesh config, generated by tunmesh {__version__} (`tunmesh example-config`)")
    w.lines.append("---")
    _example_group(w, 0, ROOT_KEY, TunMeshConfig, commented=False)
    while w.lines and w.lines[-1] == "":
        w.lines.pop()
    return "\n".join(w.lines) + "\n"


# ------------------------------------------------------------------------------------------------ Markdown reference


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _leaf_row(key: str, opt: Option) -> str:
    if opt.required:
        req = "required"
        if opt.alternatives or opt.env:
            others = [f"`{a}`" for a in opt.alternatives] + ([f"`${opt.env}`"] if opt.env else [])
            req = f"required (or {', '.join(others)})"
        default = ""
    else:
        req = "optional"
        default = f"`{_default_text(opt)}`"
    parts = [opt.short, *opt.long]
    if isinstance(opt.type, Enum):
        parts.append("One of: " + "; ".join(f"`{n}`: {d}" for n, d in opt.type.choices.items()))
    else:
        constraints = opt.type.constraints()
        if constraints:
            parts.append(f"Accepted: {constraints}.")
    if opt.secret:
        parts.append("Secret: never logged, redacted in dumps, hidden in errors.")
    if opt.unused:
        parts.append("*Unused by tunmesh.*")
    return f"| `{key}` | {_cell(_type_label(opt))} | {req} | {default} | {_cell(' '.join(parts))} |"


def _md_group(lines: list[str], path: str, cls: type, optional_note: str | None = None) -> None:
    info = group_info(cls)
    leaves, groups = _sorted_members(cls)
    maps = [(k, o) for k, o in leaves if isinstance(o.type, MapOf) and isinstance(o.type.value, GroupType)]
    lines.append(f"### `{path}`")
    lines.append("")
    status = optional_note or ("required group" if group_shown_required(cls) else "optional group")
    lines.append(f"{info.short} ({status})")
    if info.long:
        lines.append("")
        lines.append(" ".join(info.long))
    lines.append("")
    if leaves:
        lines.append("| Key | Type | Required | Default | Description |")
        lines.append("|---|---|---|---|---|")
        lines.extend(_leaf_row(k, o) for k, o in leaves)
        lines.append("")
    for key, opt in maps:
        assert isinstance(opt.type, MapOf) and isinstance(opt.type.value, GroupType)
        _md_group(lines, f"{path}/{key}/<name>", opt.type.value.cls, "one entry per name")
    for key, sub in groups:
        note = "optional group; absent means not configured" if sub.type.absent_is_none else None
        _md_group(lines, f"{path}/{key}", sub.type.cls, note)


_INTRO = f"""# Configuration reference

<!-- Generated from the schema in tunmesh/config/tree.py by `{DOCS_COMMAND}`. Do not edit by hand. -->

tunmesh reads one YAML file. Its location is the `--config` option, else the environment variable
`{CONFIG_PATH_ENV}`, else `{DEFAULT_CONFIG_PATH}`. Every setting lives under the top-level key `{ROOT_KEY}`
(other top-level keys are ignored with a warning line). The format is version 1.1 of the original Tun Mesh:
existing configs load unchanged; keys added by tunmesh are optional.

Print an annotated example with `tunmesh example-config` (a copy is in `contrib/example-config.yaml`). Values to
fill in are quoted placeholders such as `"<REQUIRED: url>"`; one left in place (or the original's
`[Deployment Unique Value]`) is an error, "placeholder ... not replaced with a real value", naming the key.

Check a file with `tunmesh check-config FILE`. It runs the daemon's start-up checks (the preflight) and prints
the resolved config (secrets redacted), or one line per problem on stderr:
`tunmesh: config error: <key path>: <message>` (exit status 1) or `tunmesh: config warning: ...` (the status
stays 0). The daemon runs the same checks before it creates the TUN device and prints the same lines, so what
`check-config` accepts the daemon accepts, and a refused config leaves nothing behind. Beyond the keys and
values below, the preflight checks:

- TLS files: the certificate and key parse, the key is unencrypted RSA of at least {MIN_RSA_BITS} bits or ECDSA on a
  curve of at least {MIN_EC_BITS} bits, and it matches the certificate;
- validity: a certificate in `cert_file_path` that has expired or is not yet valid is an error, one expiring
  within {EXPIRY_WARNING_DAYS} days a warning; in `ca_file_path`, an expired certificate is a warning, and a bundle with no valid
  certificate an error; the system CA store is refused as trust anchor (`ca_file_path`, or
  `cert_file_path` without a CA);
- files read after the privilege drop must be readable by `process.uid` (with `process.gid`, no supplementary
  groups): with `reload_config_on_bootstrap`, the config file and the files it names. Run as root, the check
  is made by a child process that takes those ids; run as another user, it is estimated from permission bits.

## Rules for every key

- Unknown keys are rejected, and so are missing required keys. A group is required when one of its keys is; an
  optional group may be left out, or written with nothing after it (`logging:`), and then takes its defaults.
- An explicit `null` for a key that has a default is an error: remove the key to get the default.
- Duplicate keys in one mapping are rejected.
- `bool`: `true`/`false` (YAML booleans, or the strings in any case).
- `int`/`uint`: integers, or strings such as `"0x10"` or `"1_000"`; floats and booleans are rejected.
- `timing`: seconds, as a number or a string with a suffix `s`, `m`, `h` or `d` (case-insensitive, e.g. `"5m"`).
  A range `"a..b"` (the suffix applies to both ends, e.g. `"50..60m"`) picks a uniformly random value once when
  the config is loaded. Unless stated otherwise a timing must be between 0.5 s and 3600 s.
- `url`: `https` only, with a host; no user information, path, query or fragment; at most 2048 characters.
- `file`: relative paths start at the directory of the config file; the file must exist, be a regular file and be
  readable.
- `ipv4_network`, `ipv4_interface`, ...: CIDR notation with the prefix length (`10.0.0.0/24`, `10.0.0.5/24`).
  A network must not have host bits set.
- Error messages name the key path (`tun_mesh/clustering/bootstrap_groups/<name>/bootstrap_retries: ...`) and
  never show the value of a secret. An unknown key is reported at its own path, with the closest known key
  (`unknown key; did you mean listen_port?`) or the list of keys of that group. A bad value taken from an
  environment variable names the variable (`(from the environment variable TUNMESH_CLUSTER_SECRET)`).

## Environment variables

| Variable | Effect |
|---|---|
| `{CONFIG_PATH_ENV}` | Config file path when `--config` is not given. |
| `{SECRET_ENV}` | When set and non-empty, the cluster secret (overrides `secret` and `secret_file`). |
| `{ADVERTISE_URL_ENV}` | When set and non-empty, overrides `clustering.control_api_advertise_url`. |
"""


def config_reference_markdown() -> str:
    """docs/configuration.md: every option with its path, type, requirement, default and description."""
    lines = [_INTRO, "## Cross-key checks", ""]
    lines.append("After each key is valid on its own, these rules run (in `check-config` and at start):")
    lines.append("")
    lines.extend(f"- **{rule.name}**: {rule.description}" for rule in RULES)
    lines.append("")
    lines.append("## Options")
    lines.append("")
    _md_group(lines, ROOT_KEY, TunMeshConfig)
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


__all__ = ["DOCS_COMMAND", "config_reference_markdown", "example_config"]

